//! Stall detection on a client's byte stream: [`Watched`] wraps each half
//! of a connection to a node and feeds a shared
//! [`protocol::deadline::StallDetector`] the bytes moved; while a read or a
//! write waits on the peer past a period that moved too little, it fails
//! with `TimedOut`, which ends the request like a broken stream (the
//! caller drops the connection). Without a [`Watch`] the halves pass
//! through untouched.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::time::Instant;

use protocol::deadline::{StallDetector, StallRule};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's detector, shared by its two halves.
#[derive(Clone)]
pub struct Watch {
    inner: Arc<Mutex<(StallDetector, Instant)>>,
}

impl Watch {
    pub fn new(rule: StallRule) -> Watch {
        Watch {
            inner: Arc::new(Mutex::new((StallDetector::new(rule, 0), Instant::now()))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut StallDetector, u64, Instant) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (d, origin) = &mut *g;
        let now = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        f(d, now, *origin)
    }
}

/// One half of a watched connection.
pub struct Watched<T> {
    inner: T,
    watch: Option<Watch>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Watched<T> {
    pub fn new(inner: T) -> Watched<T> {
        Watched {
            inner,
            watch: None,
            timer: None,
        }
    }

    pub fn set_watch(&mut self, watch: Watch) {
        self.watch = Some(watch);
        self.timer = None;
    }

    fn progress(&mut self, n: usize) {
        self.timer = None;
        if let Some(w) = &self.watch {
            w.with(|d, now, _| d.moved(n as u64, now));
        }
    }

    /// The peer keeps us waiting: `Ready(Err)` once the detector says the
    /// connection stalled.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        use std::future::Future;
        let Some(w) = self.watch.clone() else {
            return Poll::Pending;
        };
        loop {
            if self.timer.is_none() {
                let Some(at) = w.with(|d, now, origin| {
                    d.waiting(now);
                    d.deadline()
                        .map(|ms| origin + std::time::Duration::from_millis(ms))
                }) else {
                    return Poll::Pending;
                };
                self.timer = Some(Box::pin(tokio::time::sleep_until(at)));
            }
            let Some(timer) = self.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.timer = None;
            let (stalled, rule) = w.with(|d, now, _| (d.stalled(now), d.rule()));
            if stalled {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("stalled: less than {rule}"),
                ));
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.progress(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.stalled(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.progress(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.stalled(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx).map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_stalls_a_read_and_a_flowing_one_does_not() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut r = Watched::new(far);
        r.set_watch(Watch::new(StallRule::parse("10B/1s").unwrap()));
        let mut buf = [0u8; 64];
        // 20 bytes a period: never stalled.
        for _ in 0..5 {
            near.write_all(&[7; 20]).await.unwrap();
            assert_eq!(r.read(&mut buf).await.unwrap(), 20);
            tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        }
        // Then silence: the read fails (the paused clock jumps to it).
        let e = r.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_not_reading_stalls_a_write() {
        let (_near, far) = tokio::io::duplex(16);
        let mut w = Watched::new(far);
        w.set_watch(Watch::new(StallRule::default()));
        let e = w.write_all(&[1; 1000]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn unwatched_halves_wait() {
        let (_near, far) = tokio::io::duplex(16);
        let mut r = Watched::new(far);
        let mut buf = [0u8; 4];
        let waited =
            tokio::time::timeout(std::time::Duration::from_secs(3600), r.read(&mut buf)).await;
        assert!(waited.is_err());
    }
}
