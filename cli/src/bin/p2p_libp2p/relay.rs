//! Byte relays: half-closing copies, and stdin/stdout as async streams.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileTypeExt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub type BoxedReader = Box<dyn AsyncRead + Unpin + Send>;
pub type BoxedWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// Relay buffer size.
pub const BUF: usize = 256 * 1024;

/// Pipe size asked for stdin/stdout.
const PIPE_SIZE: usize = 1 << 20;

/// Copies `r` to `w` until `r` ends (EOF or error), then shuts `w` down, which
/// half-closes a socket or stream. With `drain`, input is still read to its
/// end after `w` has failed, and dropped. Returns the bytes copied.
pub async fn pump<R, W>(r: &mut R, w: &mut W, drain: bool) -> u64
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; BUF];
    let mut copied = 0u64;
    let mut write_failed = false;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("relay read: {e}");
                break;
            }
        };
        if write_failed {
            continue;
        }
        let written = async {
            w.write_all(&buf[..n]).await?;
            w.flush().await
        };
        match written.await {
            Ok(()) => copied += n as u64,
            Err(e) => {
                tracing::debug!("relay write: {e}");
                write_failed = true;
                if !drain {
                    break;
                }
            }
        }
    }
    if !write_failed {
        let _ = w.shutdown().await;
    }
    copied
}

/// Our stdin, as an async reader (a duplicate of fd 0: non-blocking through the
/// reactor when it is a pipe, as git-annex passes it; else read on tokio's
/// blocking threads).
pub fn stdin() -> io::Result<BoxedReader> {
    let file = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned()?);
    if file.metadata()?.file_type().is_fifo() {
        node::sys::grow_pipe(&file, PIPE_SIZE);
        Ok(Box::new(tokio::net::unix::pipe::Receiver::from_file(file)?))
    } else {
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }
}

/// Our stdout, taken away from fd 1: the returned writer holds the only
/// descriptor of it, and fd 1 is pointed at /dev/null. Dropping the writer
/// therefore closes our stdout, which is how git-annex learns that the peer has
/// closed the connection, while the process goes on reading stdin.
pub fn take_stdout() -> io::Result<BoxedWriter> {
    let file = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    redirect(&null, 1)?;
    if file.metadata()?.file_type().is_fifo() {
        node::sys::grow_pipe(&file, PIPE_SIZE);
        Ok(Box::new(tokio::net::unix::pipe::Sender::from_file(file)?))
    } else {
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }
}

/// `dup2(from, target)`: std offers no safe way to repoint a standard descriptor.
#[allow(unsafe_code)]
fn redirect(from: &impl AsFd, target: i32) -> io::Result<()> {
    // SAFETY: dup2 takes two descriptor numbers and touches no memory of ours.
    // `from` is open for the duration of the call (borrowed); `target` is a
    // standard descriptor, which nothing in this process holds as an `OwnedFd`,
    // so no owner sees its descriptor replaced.
    let r = unsafe { libc::dup2(from.as_fd().as_raw_fd(), target) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
