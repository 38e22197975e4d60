//! What a daemon's served sessions move, per peer: bytes in and out,
//! sessions served and open, and the streams holding a pending or a
//! session slot (read by the HTTP API's `/metrics`). Bounded:
//! past [`MAX_PEERS`] distinct peers, the rest are counted under `other`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most peers counted apart.
pub const MAX_PEERS: usize = 4096;

/// One peer's counters.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub sessions: AtomicU64,
    pub open: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Stats {
    peers: Mutex<HashMap<String, Arc<PeerCounters>>>,
    /// The served `PUT`s' and `GET`s' durations.
    pub timings: crate::session::Timings,
    /// Streams holding a pending slot now (not authenticated yet).
    pub streams_pending: Arc<AtomicU64>,
    /// Sessions holding a session slot now (authenticated).
    pub sessions_authenticated: Arc<AtomicU64>,
}

impl Stats {
    /// The counters of `peer` (or of `other`, past the bound).
    pub fn peer(&self, peer: &str) -> Arc<PeerCounters> {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(peer) {
            return c.clone();
        }
        let name = if map.len() < MAX_PEERS { peer } else { "other" };
        map.entry(name.to_owned()).or_default().clone()
    }

    /// (peer, counters), for a scrape.
    pub fn snapshot(&self) -> Vec<(String, Arc<PeerCounters>)> {
        let map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// What this process's cluster gateways moved, per node uuid: content sent
/// to nodes (`PUT`s fanned out) and received from them (`GET`s relayed).
/// Bounded as [`Stats`] is.
#[derive(Debug, Default)]
pub struct NodeBytes {
    nodes: Mutex<HashMap<String, Arc<(AtomicU64, AtomicU64)>>>,
}

impl NodeBytes {
    fn node(&self, uuid: &str) -> Arc<(AtomicU64, AtomicU64)> {
        let mut map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(uuid) {
            return c.clone();
        }
        let name = if map.len() < MAX_PEERS { uuid } else { "other" };
        map.entry(name.to_owned()).or_default().clone()
    }

    pub fn sent(&self, uuid: &str, n: usize) {
        self.node(uuid).0.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn received(&self, uuid: &str, n: usize) {
        self.node(uuid).1.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// (node uuid, bytes sent, bytes received), for a scrape.
    pub fn snapshot(&self) -> Vec<(String, u64, u64)> {
        let map = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    c.0.load(Ordering::Relaxed),
                    c.1.load(Ordering::Relaxed),
                )
            })
            .collect();
        v.sort();
        v
    }
}

/// The process's gateway byte counters.
pub fn node_bytes() -> &'static NodeBytes {
    static NODES: std::sync::OnceLock<NodeBytes> = std::sync::OnceLock::new();
    NODES.get_or_init(NodeBytes::default)
}

/// A session's claim: counted served and open while it lives.
pub struct Session(Arc<PeerCounters>);

impl Session {
    pub fn start(c: Arc<PeerCounters>) -> Session {
        c.sessions.fetch_add(1, Ordering::Relaxed);
        c.open.fetch_add(1, Ordering::Relaxed);
        Session(c)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream whose bytes are counted.
pub struct Counted<S> {
    inner: S,
    counters: Arc<PeerCounters>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counters: Arc<PeerCounters>) -> Self {
        Counted { inner, counters }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.counters
            .bytes_in
            .fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters
                .bytes_out
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_bytes_both_ways_and_open_sessions() {
        let stats = Stats::default();
        let c = stats.peer("p1");
        let (a, mut b) = tokio::io::duplex(64);
        let session = Session::start(c.clone());
        let mut a = Counted::new(a, c.clone());
        a.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.expect("read");
        b.write_all(b"abc").await.expect("write");
        let mut back = [0u8; 3];
        a.read_exact(&mut back).await.expect("read");
        assert_eq!(c.bytes_out.load(Ordering::Relaxed), 5);
        assert_eq!(c.bytes_in.load(Ordering::Relaxed), 3);
        assert_eq!(c.open.load(Ordering::Relaxed), 1);
        drop(session);
        assert_eq!(c.open.load(Ordering::Relaxed), 0);
        assert_eq!(c.sessions.load(Ordering::Relaxed), 1);
        assert_eq!(stats.snapshot().len(), 1);
    }
}
