//! `git-annex-p2p-libp2p <my-address> <socketfile>`: the listener that
//! `git annex remotedaemon` starts.
//!
//! git-annex already listens on `<socketfile>`. Every incoming `/annex/p2p/1`
//! stream gets its own connection to that socket, and bytes are copied both
//! ways with half-closes. The helper exits when the socket stops accepting
//! (refused, or gone) or when its parent, the remotedaemon, has gone: git-annex
//! neither waits for nor kills it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use libp2p::Multiaddr;
use node::net::{Net, P2P_PROTOCOL, PeerAddress, build_swarm, tcp_transport};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::relay::pump;
use super::repo::{RepoFiles, split_peer};

/// Relays at once (git-annex serves at most 100 connections per network).
const MAX_RELAYS: usize = 100;

/// How long to keep trying a port that is taken. (libp2p-tcp binds with
/// SO_REUSEPORT, so a predecessor of ours that still runs shares the port until
/// it notices, within [`WATCH_EVERY`], that its remotedaemon has gone.)
const BIND_RETRY: Duration = Duration::from_secs(10);

/// How often to check that the parent and the socket are still there.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How long a peer may go on sending after git-annex has closed its side.
const GRACE: Duration = Duration::from_secs(60);

pub async fn run(my_address: &str, socket: &str) -> anyhow::Result<ExitCode> {
    let parent = std::os::unix::process::parent_id();
    let me = PeerAddress::parse(my_address)
        .with_context(|| format!("bad listen address {my_address:?}"))?;
    if me.target.is_some() {
        bail!("{my_address}: a listen address names no /annex-uuid/");
    }
    let (listen_on, peer) = split_peer(&me.addr)?;
    let repo = RepoFiles::discover()?;
    let key = match repo.helper_identity()? {
        Some(key) if key.public().to_peer_id() == peer => key,
        _ => {
            if let Some(key) = repo.annexmesh_identity()?
                && key.public().to_peer_id() == peer
            {
                eprintln!(
                    "git-annex-p2p-libp2p: {my_address} is this repository's annexmesh \
                     peer; its daemon serves it, so there is nothing to listen on here"
                );
                return Ok(ExitCode::SUCCESS);
            }
            bail!(
                "{my_address}: this repository has no libp2p identity {peer} \
                 (run `git annex p2p --enable libp2p`)"
            );
        }
    };
    let socket = std::env::current_dir()?.join(socket);

    let net = Net::spawn(build_swarm(key.clone(), tcp_transport(&key)?)?);
    let mut incoming = net
        .control()
        .accept(P2P_PROTOCOL)
        .map_err(|e| anyhow::anyhow!("{P2P_PROTOCOL}: {e}"))?;
    listen(&net, listen_on).await?;

    let slots = Arc::new(Semaphore::new(MAX_RELAYS));
    let (refused, mut socket_gone) = mpsc::channel::<()>(1);
    let mut relays = JoinSet::new();
    let mut watch = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            _ = watch.tick() => {
                if std::os::unix::process::parent_id() != parent {
                    tracing::info!("the remotedaemon has gone; exiting");
                    break;
                }
                if !socket.exists() {
                    tracing::info!("{} has gone; exiting", socket.display());
                    break;
                }
            }
            _ = socket_gone.recv() => {
                tracing::info!("{} refuses connections; exiting", socket.display());
                break;
            }
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
            next = incoming.next() => {
                let Some((from, stream)) = next else { break };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    eprintln!("git-annex-p2p-libp2p: too busy; dropped a connection from {from}");
                    continue;
                };
                let socket = socket.clone();
                let refused = refused.clone();
                relays.spawn(async move {
                    let _slot = slot;
                    relay_one(stream, &socket, &refused).await;
                });
            }
        }
    }
    relays.abort_all();
    Ok(ExitCode::SUCCESS)
}

/// Listens on `addr`, retrying for a while if the address is still taken.
async fn listen(net: &Net, addr: Multiaddr) -> anyhow::Result<Multiaddr> {
    let start = Instant::now();
    loop {
        match net.listen(addr.clone()).await {
            Ok(a) => return Ok(a),
            Err(e) if start.elapsed() < BIND_RETRY => {
                tracing::debug!("listening on {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("cannot listen on {addr}: {e}"),
        }
    }
}

/// One incoming stream, delivered to git-annex's socket.
async fn relay_one(stream: libp2p::Stream, socket: &Path, refused: &mpsc::Sender<()>) {
    let unix = match tokio::net::UnixStream::connect(socket).await {
        Ok(unix) => unix,
        Err(e) => {
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) {
                let _ = refused.try_send(());
            } else {
                eprintln!(
                    "git-annex-p2p-libp2p: cannot connect to {}: {e}",
                    socket.display()
                );
            }
            return;
        }
    };
    let (mut unix_r, mut unix_w) = unix.into_split();
    let (mut peer_r, mut peer_w) = tokio::io::split(stream.compat());
    let inbound = pump(&mut peer_r, &mut unix_w, false);
    let outbound = pump(&mut unix_r, &mut peer_w, false);
    tokio::pin!(inbound, outbound);
    tokio::select! {
        _ = &mut inbound => {
            // The peer is done sending; git-annex finishes and closes.
            outbound.await;
        }
        _ = &mut outbound => {
            // git-annex is done; the peer may still send its last words.
            let _ = tokio::time::timeout(GRACE, inbound).await;
        }
    }
}
