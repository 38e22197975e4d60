//! git over the P2P protocol: `CONNECT git-upload-pack|git-receive-pack` relays
//! the service's stdin and stdout as `DATA` frames (annex-spec §8.2).
//!
//! Unlike git-annex's remotedaemon, the service's output is drained to its end
//! before `CONNECTDONE` is sent: git-annex can send `CONNECTDONE` while the last
//! pack bytes are still unread, and `git fetch` then hangs
//! (git-annex-modern.md §5.3).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use protocol::Service;
use protocol::message::{MAX_LINE, Message};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, IoContext, Result};
use crate::session::{GitService, RelayIo};

/// Largest `DATA` frame we send, and the largest we accept (git-annex sends up
/// to 64 KiB; anything much larger is hostile).
const MAX_FRAME: u64 = 1 << 20;
const CHUNK: usize = 64 * 1024;

/// How long to wait for the client's own `CONNECTDONE` after ours.
const GRACE: Duration = Duration::from_secs(10);

/// Serves `git upload-pack` / `git receive-pack` on one repository.
pub struct GitRelay {
    pub git_dir: PathBuf,
}

impl GitService for GitRelay {
    fn relay<'a>(
        &'a self,
        service: Service,
        io: &'a mut (dyn RelayIo + Send),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (reader, writer) = io.split();
            relay(&self.git_dir, service, reader, writer).await
        })
    }
}

async fn relay(
    git_dir: &std::path::Path,
    service: Service,
    reader: &mut (dyn tokio::io::AsyncBufRead + Unpin + Send),
    writer: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<()> {
    let sub = match service {
        Service::UploadPack => "upload-pack",
        Service::ReceivePack => "receive-pack",
    };
    let mut child = tokio::process::Command::new("git")
        .arg(sub)
        .arg(git_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context(|| format!("starting git {sub}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(Error::Protocol("git child has no pipes".into()));
    };
    let to_client = async {
        let result = pump_out(stdout, &mut *writer).await;
        // Drained: now the exit status.
        let code = match child.wait().await {
            Ok(status) => status.code().unwrap_or(1),
            Err(_) => 1,
        };
        let code = if result.is_ok() { code } else { 1 };
        writer
            .write_all(&Message::ConnectDone(code).to_line())
            .await
            .context(|| "p2p stream".into())?;
        writer.flush().await.context(|| "p2p stream".into())
    };
    let from_client = pump_in(&mut *reader, stdin);
    tokio::pin!(to_client);
    tokio::pin!(from_client);
    // Both directions run at once. Our side ends when git exits and all its
    // output is sent; the client may still send its CONNECTDONE, awaited briefly.
    let mut client_done = false;
    loop {
        tokio::select! {
            r = &mut to_client => {
                r?;
                break;
            }
            r = &mut from_client, if !client_done => {
                client_done = true;
                if let Err(e) = r {
                    tracing::debug!("git relay, client side: {e}");
                }
            }
        }
    }
    if !client_done {
        let _ = tokio::time::timeout(GRACE, &mut from_client).await;
    }
    Ok(())
}

/// git's stdout → `DATA` frames.
async fn pump_out<W: AsyncWrite + Unpin + ?Sized>(
    mut stdout: impl AsyncRead + Unpin,
    writer: &mut W,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .context(|| "reading git".into())?;
        if n == 0 {
            return Ok(());
        }
        writer
            .write_all(&Message::Data(n as u64).to_line())
            .await
            .context(|| "p2p stream".into())?;
        writer
            .write_all(&buf[..n])
            .await
            .context(|| "p2p stream".into())?;
        writer.flush().await.context(|| "p2p stream".into())?;
    }
}

/// Client `DATA` frames → git's stdin, until the client's `CONNECTDONE` or EOF.
async fn pump_in<R: tokio::io::AsyncBufRead + Unpin + ?Sized>(
    reader: &mut R,
    mut stdin: tokio::process::ChildStdin,
) -> Result<()> {
    let mut line = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        line.clear();
        let n = (&mut *reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .context(|| "p2p stream".into())?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(()); // EOF (or an over-long line): stop feeding git
        }
        line.pop();
        match Message::parse(&line) {
            Ok(Message::Data(len)) if len <= MAX_FRAME => {
                let mut left = len as usize;
                while left > 0 {
                    let want = left.min(buf.len());
                    reader
                        .read_exact(&mut buf[..want])
                        .await
                        .context(|| "p2p stream".into())?;
                    // git may exit early (e.g. nothing to do); keep reading frames.
                    let _ = stdin.write_all(&buf[..want]).await;
                    left -= want;
                }
                let _ = stdin.flush().await;
            }
            Ok(Message::ConnectDone(_)) => return Ok(()),
            _ => return Err(Error::Protocol("expected DATA or CONNECTDONE".into())),
        }
    }
}

/// The client side of `CONNECT`, as git-annex's `git-remote-p2p-annex`
/// does it: `AUTH` as `me` (no `VERSION`), `CONNECT <service>`, then `local`
/// (git's end of the pipe: what git writes goes out as `DATA`, the peer's
/// `DATA` comes back) until the peer's `CONNECTDONE`. When git closes its
/// side, `CONNECTDONE 0` tells the peer so (its service then ends).
/// Returns the service's exit code.
pub async fn connect_service<S, I, O>(
    stream: S,
    me: &protocol::Uuid,
    token: &protocol::AuthToken,
    service: Service,
    local_in: I,
    mut local_out: O,
) -> Result<i32>
where
    S: AsyncRead + AsyncWrite + Unpin,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = tokio::io::BufReader::new(reader);
    let auth = Message::Auth(Some(me.clone()), token.clone());
    writer
        .write_all(&auth.to_line())
        .await
        .context(|| "p2p stream".into())?;
    writer.flush().await.context(|| "p2p stream".into())?;
    match read_message(&mut reader).await? {
        Some(Message::AuthSuccess(_)) => {}
        Some(Message::AuthFailure) => {
            return Err(Error::Protocol(
                "the peer refused our authentication".into(),
            ));
        }
        other => return Err(Error::Peer(format!("expected AUTH-SUCCESS, got {other:?}"))),
    }
    writer
        .write_all(&Message::Connect(service).to_line())
        .await
        .context(|| "p2p stream".into())?;
    writer.flush().await.context(|| "p2p stream".into())?;
    let outgoing = async {
        pump_local(local_in, &mut writer).await?;
        writer
            .write_all(&Message::ConnectDone(0).to_line())
            .await
            .context(|| "p2p stream".into())?;
        writer.flush().await.context(|| "p2p stream".into())
    };
    let incoming = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read_message(&mut reader).await? {
                Some(Message::Data(len)) if len <= MAX_FRAME => {
                    let mut left = len as usize;
                    while left > 0 {
                        let want = left.min(buf.len());
                        reader
                            .read_exact(&mut buf[..want])
                            .await
                            .context(|| "p2p stream".into())?;
                        local_out
                            .write_all(&buf[..want])
                            .await
                            .context(|| "git's pipe".into())?;
                        left -= want;
                    }
                    local_out.flush().await.context(|| "git's pipe".into())?;
                }
                Some(Message::ConnectDone(code)) => return Ok(code),
                Some(other) => {
                    return Err(Error::Peer(format!(
                        "expected DATA or CONNECTDONE, got {other:?}"
                    )));
                }
                None => return Err(Error::Peer("the stream ended before CONNECTDONE".into())),
            }
        }
    };
    tokio::pin!(outgoing);
    tokio::pin!(incoming);
    let mut sent = false;
    loop {
        tokio::select! {
            code = &mut incoming => return code,
            r = &mut outgoing, if !sent => {
                sent = true;
                r?;
            }
        }
    }
}

/// git's output → `DATA` frames, until git closes its side.
async fn pump_local<W: AsyncWrite + Unpin>(
    local: impl AsyncRead + Unpin,
    writer: &mut W,
) -> Result<()> {
    pump_out(local, writer).await
}

/// One protocol line (at most [`MAX_LINE`] bytes); `None` at the end.
async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Message>> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .context(|| "p2p stream".into())?;
    if n == 0 {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err(Error::Peer("over-long or unterminated line".into()));
    }
    Message::parse(&line)
        .map(Some)
        .map_err(|e| Error::Peer(format!("bad line: {e}")))
}
