//! The daemon's stream relay: the other processes of a repository whose
//! daemon runs (annex-shell sessions of a gateway, the branch sync's git
//! helper, `annexmesh put/get`) open their P2P streams over the daemon's
//! swarm — its connections, one per peer, already authenticated — rather
//! than a swarm and a handshake of their own.
//!
//! A Unix socket at `annex/annexmesh/relay.sock` (mode 0600: whoever may
//! use it may read the repository's identity key anyway). A client sends
//! one line, `OPEN <peer address>` (as [`PeerAddress`] spells it, with its
//! `/annex-uuid/<target>`), and gets `OK` or `ERR <reason>`; from then on
//! the socket carries the stream's bytes both ways.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::error::{Error, IoContext, Result};
use crate::net::{Net, PeerAddress};

/// The socket's name in the repository's state directory.
pub const SOCKET: &str = "relay.sock";

/// Streams relayed at once; a client past it waits for a slot.
pub const MAX_RELAYED: usize = 512;

/// The longest request line.
const MAX_REQUEST: u64 = 4096;

/// How long a client has to send its request, and the daemon to open the
/// stream it asks for.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// The relay socket of the repository whose state directory is `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Whether a daemon answers on `path` now.
pub fn answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Listens on `path` (a stale socket from a daemon that died is replaced).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() && !answers(path) {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Serves the relay on `listener` over `net` until the task is dropped.
pub async fn serve(listener: UnixListener, net: Net) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_RELAYED));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("relay socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let net = net.clone();
        tokio::spawn(async move {
            if let Err(e) = relay_one(conn, &net).await {
                tracing::debug!("relay: {e}");
            }
            drop(slot);
        });
    }
}

async fn relay_one(conn: UnixStream, net: &Net) -> Result<()> {
    let mut conn = BufReader::new(conn);
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_DEADLINE,
        (&mut conn).take(MAX_REQUEST).read_line(&mut line),
    )
    .await;
    match read {
        Ok(Ok(0)) => return Ok(()), // a probe (see [`answers`])
        Ok(Ok(_)) if line.ends_with('\n') => {}
        Ok(Ok(_)) => return refuse(conn, "request line too long").await,
        Ok(Err(e)) => return Err(e).context(|| "relay request".into()),
        Err(_) => return refuse(conn, "no request in time").await,
    }
    let Some(text) = line.trim_end().strip_prefix("OPEN ") else {
        return refuse(conn, "expected OPEN <address>").await;
    };
    let address = match PeerAddress::parse(text) {
        Ok(a) => a,
        Err(e) => return refuse(conn, &e.to_string()).await,
    };
    let stream = match tokio::time::timeout(OPEN_DEADLINE, address.open(net)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(conn, &e.to_string()).await,
        Err(_) => return refuse(conn, &format!("{address}: no stream in time")).await,
    };
    conn.get_mut()
        .write_all(b"OK\n")
        .await
        .context(|| "relay socket".into())?;
    // Bytes the client sent after its request line are in the buffer.
    let early = conn.buffer().to_vec();
    let mut conn = conn.into_inner();
    let mut stream = stream.compat();
    if !early.is_empty() {
        stream
            .write_all(&early)
            .await
            .context(|| format!("stream to {address}"))?;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut stream).await;
    Ok(())
}

async fn refuse(mut conn: BufReader<UnixStream>, why: &str) -> Result<()> {
    let why = why.replace('\n', " ");
    let _ = conn
        .get_mut()
        .write_all(format!("ERR {why}\n").as_bytes())
        .await;
    Ok(())
}

/// Opens a stream to `address` through the daemon answering on `path`.
pub async fn open(path: &Path, address: &PeerAddress) -> Result<UnixStream> {
    let conn = UnixStream::connect(path)
        .await
        .context(|| format!("the daemon's relay {}", path.display()))?;
    let mut conn = BufReader::new(conn);
    conn.get_mut()
        .write_all(format!("OPEN {address}\n").as_bytes())
        .await
        .context(|| "relay socket".into())?;
    let mut answer = String::new();
    let n = tokio::time::timeout(
        REQUEST_DEADLINE + OPEN_DEADLINE,
        (&mut conn).take(MAX_REQUEST).read_line(&mut answer),
    )
    .await
    .map_err(|_| Error::Protocol(format!("the daemon's relay did not answer for {address}")))?
    .context(|| "relay socket".into())?;
    match answer.trim_end() {
        "OK" if n > 0 && conn.buffer().is_empty() => Ok(conn.into_inner()),
        "OK" => Err(Error::Protocol("relay: bytes before the stream".into())),
        other => Err(Error::Protocol(format!(
            "the daemon cannot open a stream to {address}: {}",
            other.strip_prefix("ERR ").unwrap_or(other)
        ))),
    }
}
