//! `git-annex-p2p-libp2p <peer-address>`: one outgoing P2P connection.
//!
//! Dials the peer, opens one stream (`/annex/p2p/1`, or the target protocol
//! for an address with `/annex-uuid/`), and relays stdin → stream and
//! stream → stdout. When the peer closes, stdout is closed at once, but stdin
//! is still relayed to its end: after a `CONNECT` the client sends its own
//! `CONNECTDONE` after the server's.
//!
//! A stream that the peer closes before answering anything is opened again,
//! and what was sent on it is sent again. Every P2P session starts with the
//! client's `AUTH` and the server's answer to it, so a stream closed without an
//! answer was never served: libp2p-stream drops inbound streams that arrive
//! faster than the server takes them (its queue holds one), and git-annex
//! closes connections beyond its limit of 100 without a word.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use node::net::{Net, PeerAddress, build_swarm, peer_of, tcp_transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use super::relay::{self, BUF, BoxedReader, pump};
use super::repo::RepoFiles;

/// How long dialing and opening the stream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the graceful close (flushing what was written) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams opened at most for one connection (see the module comment).
const ATTEMPTS: u32 = 10;

/// Most bytes kept for sending again; a client that sends more before any
/// answer is not a P2P client, and gets no second stream.
const REPLAY_LIMIT: usize = 64 * 1024;

type StreamIo = Compat<libp2p::Stream>;

pub async fn run(address: &str) -> anyhow::Result<ExitCode> {
    let target =
        PeerAddress::parse(address).with_context(|| format!("bad peer address {address:?}"))?;
    let peer = peer_of(&target.addr)?;
    let key = identity_for(peer);
    let net = Net::spawn(build_swarm(key.clone(), tcp_transport(&key)?)?);
    let started = Instant::now();
    let mut stream = open(&net, &target).await?;

    let mut input = relay::stdin().context("stdin")?;
    let mut output = relay::take_stdout().context("stdout")?;
    let mut sent = Sent::default();
    let mut attempt = 1;
    let (first, mut from_peer, mut to_peer) = loop {
        if let Some(answered) = first_answer(stream, &mut input, &mut sent).await {
            break answered;
        }
        let retry = attempt < ATTEMPTS
            && !(sent.input_done && sent.bytes.is_empty())
            && !sent.overflowed
            && started.elapsed() < CONNECT_TIMEOUT;
        if !retry {
            drop(output);
            if !sent.input_done {
                let _ = pump(&mut input, &mut tokio::io::sink(), true).await;
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, net.disconnect(peer)).await;
            bail!("{target} closed the connection without answering");
        }
        tracing::debug!("stream {attempt} closed unanswered; opening another");
        tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
        attempt += 1;
        stream = open(&net, &target).await?;
    };
    drop(sent.bytes);

    let upstream = async {
        if !sent.input_done {
            pump(&mut input, &mut to_peer, true).await;
        }
    };
    let downstream = async move {
        if output.write_all(&first).await.is_ok() && output.flush().await.is_ok() {
            pump(&mut from_peer, &mut output, false).await;
        }
        drop(output); // closes our stdout: git-annex sees the peer's EOF
    };
    tokio::join!(upstream, downstream);
    // Flush what was written (and our close) before the process exits.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, net.disconnect(peer)).await;
    Ok(ExitCode::SUCCESS)
}

async fn open(net: &Net, target: &PeerAddress) -> anyhow::Result<libp2p::Stream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, target.open(net)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => bail!("cannot connect to {target}: {e}"),
        Err(_) => bail!("cannot connect to {target}: no answer in {CONNECT_TIMEOUT:?}"),
    }
}

/// What the client has sent so far, while no answer has come.
#[derive(Default)]
struct Sent {
    bytes: Vec<u8>,
    overflowed: bool,
    /// stdin has ended (and the stream was closed for writing).
    input_done: bool,
}

/// Sends what was sent before (on a stream that was dropped), then relays
/// stdin to the stream until the peer's first bytes arrive. Returns them with
/// the stream's halves, or `None` if the stream ended without an answer.
async fn first_answer(
    stream: libp2p::Stream,
    input: &mut BoxedReader,
    sent: &mut Sent,
) -> Option<(Vec<u8>, ReadHalf<StreamIo>, WriteHalf<StreamIo>)> {
    let (mut from_peer, mut to_peer) = tokio::io::split(stream.compat());
    let mut writable = to_peer.write_all(&sent.bytes).await.is_ok();
    if sent.input_done && writable {
        let _ = to_peer.shutdown().await;
    }
    let mut answer = vec![0u8; BUF];
    let mut chunk = vec![0u8; BUF];
    loop {
        tokio::select! {
            read = from_peer.read(&mut answer) => {
                return match read {
                    Ok(n) if n > 0 => {
                        answer.truncate(n);
                        Some((answer, from_peer, to_peer))
                    }
                    _ => None,
                };
            }
            read = input.read(&mut chunk), if !sent.input_done => match read {
                Ok(n) if n > 0 => {
                    if sent.bytes.len() + n <= REPLAY_LIMIT {
                        sent.bytes.extend_from_slice(&chunk[..n]);
                    } else {
                        sent.overflowed = true;
                    }
                    writable = writable
                        && to_peer.write_all(&chunk[..n]).await.is_ok()
                        && to_peer.flush().await.is_ok();
                }
                _ => {
                    sent.input_done = true;
                    if writable {
                        let _ = to_peer.shutdown().await;
                    }
                }
            },
        }
    }
}

/// The repository's annexmesh identity when there is one (so that PeerId
/// grants on the other side apply), else a fresh one.
fn identity_for(peer: PeerId) -> Keypair {
    RepoFiles::discover()
        .ok()
        .and_then(|repo| repo.annexmesh_identity().ok().flatten())
        .filter(|key| key.public().to_peer_id() != peer)
        .unwrap_or_else(Keypair::generate_ed25519)
}
