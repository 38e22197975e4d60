//! [`LinkTransport`]: libp2p's memory transport with every raw connection
//! routed through a simulated link.
//!
//! It sits below noise and yamux, so the bytes it sees are the encrypted
//! frames a TCP socket would carry. Each connection starts with a small hello
//! from the dialer (a magic and the connection's number in the [`Network`]
//! table), which is how the listening side learns who dialed: the memory
//! transport itself only reports a random port.
//!
//! After the hello every write becomes one frame on the channel:
//! `[deliver-at: u64 ns since the network's epoch][len: u32][bytes]`. The
//! writer stamps the frame with its delivery time (now + the link's latency,
//! after the bandwidth's serialization delay, never before the previous frame);
//! the reader holds the bytes back until then. Delays run on `tokio::time`.
//! A cut connection fails both ends' reads and writes with `ConnectionReset`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt};
use libp2p::Multiaddr;
use libp2p::core::transport::memory::Channel;
use libp2p::core::transport::{
    DialOpts, ListenerId, MemoryTransport, Transport, TransportError, TransportEvent,
};
use libp2p::multiaddr::Protocol;
use tokio::time::{Instant, Sleep};

use crate::error::LinkError;
use crate::network::{Conn, Io, Network, NodeId, Side};
use crate::rng::SimRng;

/// The first bytes of every simulated connection.
const MAGIC: [u8; 8] = *b"simnet/1";

/// Frame header: delivery time and length.
const HEADER: usize = 12;

/// Largest frame; longer writes are split.
pub const MAX_FRAME: usize = 256 * 1024;

/// How long a listener waits for a dialer's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// On a bandwidth-limited link, how many bytes a writer may queue beyond what
/// the link has transmitted (its send buffer).
const SEND_BUFFER: u64 = 256 * 1024;

/// The memory transport behind simulated links, for one node.
pub struct LinkTransport {
    inner: MemoryTransport,
    network: Network,
    local: NodeId,
    /// Our listeners and the port each listens on (once known).
    listeners: Vec<(ListenerId, Option<u64>)>,
}

impl LinkTransport {
    pub fn new(network: Network, local: NodeId) -> LinkTransport {
        network.transport_created(local);
        LinkTransport {
            inner: MemoryTransport::new(),
            network,
            local,
            listeners: Vec::new(),
        }
    }

    fn take_listener(&mut self, id: ListenerId) -> Option<Option<u64>> {
        let i = self.listeners.iter().position(|(l, _)| *l == id)?;
        Some(self.listeners.swap_remove(i).1)
    }
}

impl Drop for LinkTransport {
    fn drop(&mut self) {
        // The memory transport leaves its ports registered in its global hub
        // when dropped; release them so a restarted node can listen again.
        for (id, port) in std::mem::take(&mut self.listeners) {
            self.inner.remove_listener(id);
            if let Some(port) = port {
                self.network.unregister_port(port, self.local);
            }
        }
        self.network.transport_dropped(self.local);
    }
}

fn memory_port(addr: &Multiaddr) -> Option<u64> {
    match addr.iter().next() {
        Some(Protocol::Memory(port)) => Some(port),
        _ => None,
    }
}

impl Transport for LinkTransport {
    type Output = Link;
    type Error = LinkError;
    type ListenerUpgrade = BoxFuture<'static, Result<Link, LinkError>>;
    type Dial = BoxFuture<'static, Result<Link, LinkError>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner
            .listen_on(id, addr)
            .map_err(|e| e.map(LinkError::Memory))?;
        self.listeners.push((id, None));
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        if let Some(Some(port)) = self.take_listener(id) {
            self.network.unregister_port(port, self.local);
        }
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(port) = memory_port(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let remote = self
            .network
            .resolve(self.local, port)
            .map_err(|r| TransportError::Other(r.into()))?;
        self.network
            .admit(self.local, remote)
            .map_err(|r| TransportError::Other(r.into()))?;
        let dial = self
            .inner
            .dial(addr, opts)
            .map_err(|e| e.map(LinkError::Memory))?;
        let network = self.network.clone();
        let local = self.local;
        Ok(async move {
            let mut channel = dial.await?;
            let conn = network.open_conn(local, remote)?;
            let mut hello = [0u8; 16];
            hello[..8].copy_from_slice(&MAGIC);
            hello[8..].copy_from_slice(&conn.id.to_be_bytes());
            channel.write_all(&hello).await?;
            Ok(Link::new(channel, network, conn, Side::Dialer))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        let event = ready!(Pin::new(&mut this.inner).poll(cx));
        let local = this.local;
        let event = match event {
            TransportEvent::NewAddress {
                listener_id,
                listen_addr,
            } => {
                if let Some(port) = memory_port(&listen_addr) {
                    this.network.register_port(port, local);
                    match this.listeners.iter_mut().find(|(id, _)| *id == listener_id) {
                        Some((_, p)) => *p = Some(port),
                        None => this.listeners.push((listener_id, Some(port))),
                    }
                }
                TransportEvent::NewAddress {
                    listener_id,
                    listen_addr,
                }
            }
            TransportEvent::AddressExpired {
                listener_id,
                listen_addr,
            } => {
                if let Some(port) = memory_port(&listen_addr) {
                    this.network.unregister_port(port, local);
                }
                TransportEvent::AddressExpired {
                    listener_id,
                    listen_addr,
                }
            }
            TransportEvent::ListenerClosed {
                listener_id,
                reason,
            } => {
                if let Some(Some(port)) = this.take_listener(listener_id) {
                    this.network.unregister_port(port, local);
                }
                TransportEvent::ListenerClosed {
                    listener_id,
                    reason: reason.map_err(LinkError::Memory),
                }
            }
            other => {
                let network = this.network.clone();
                other
                    .map_upgrade(move |upgrade| {
                        async move {
                            let mut channel = upgrade.await?;
                            let mut hello = [0u8; 16];
                            tokio::time::timeout(HELLO_TIMEOUT, channel.read_exact(&mut hello))
                                .await
                                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                            if hello[..8] != MAGIC {
                                return Err(LinkError::Handshake);
                            }
                            let mut id = [0u8; 8];
                            id.copy_from_slice(&hello[8..]);
                            let conn = network.accept_conn(u64::from_be_bytes(id), local)?;
                            Ok(Link::new(channel, network, conn, Side::Listener))
                        }
                        .boxed()
                    })
                    .map_err(LinkError::Memory)
            }
        };
        Poll::Ready(event)
    }
}

/// A frame being read: when it may be delivered, and how many of its bytes
/// are still to come.
#[derive(Debug, Clone, Copy)]
struct Frame {
    deliver_at: Duration,
    remaining: usize,
}

/// One end of a simulated connection (futures' `AsyncRead`/`AsyncWrite`).
pub struct Link {
    inner: Channel<Vec<u8>>,
    network: Network,
    conn: Arc<Conn>,
    side: Side,
    local: NodeId,
    remote: NodeId,
    // Sending.
    rng: SimRng,
    frames_sent: u64,
    last_delivery: Duration,
    tx_free: Duration,
    out: Vec<u8>,
    out_pos: usize,
    write_sleep: Option<Pin<Box<Sleep>>>,
    // Receiving.
    in_buf: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    frame: Option<Frame>,
    read_sleep: Option<Pin<Box<Sleep>>>,
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection cut by the simulated network",
    )
}

/// Polls a sleep until `at`, reusing the allocation.
fn sleep_until(slot: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let sleep = match slot {
        Some(s) => {
            if s.deadline() != at {
                s.as_mut().reset(at);
            }
            s
        }
        None => slot.insert(Box::pin(tokio::time::sleep_until(at))),
    };
    sleep.as_mut().poll(cx)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Link {
    fn new(inner: Channel<Vec<u8>>, network: Network, conn: Arc<Conn>, side: Side) -> Link {
        let (local, remote) = conn.ends(side);
        let direction = match side {
            Side::Dialer => "out",
            Side::Listener => "back",
        };
        let rng = SimRng::derive(network.seed(), &format!("{} {direction}", conn.label));
        Link {
            inner,
            network,
            conn,
            side,
            local,
            remote,
            rng,
            frames_sent: 0,
            last_delivery: Duration::ZERO,
            tx_free: Duration::ZERO,
            out: Vec::with_capacity(HEADER + MAX_FRAME),
            out_pos: 0,
            write_sleep: None,
            in_buf: vec![0u8; HEADER + MAX_FRAME].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            frame: None,
            read_sleep: None,
        }
    }

    /// Writes out the staged frame.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        Poll::Ready(Ok(()))
    }

    fn check_cut(&self, io: Io, cx: &mut Context<'_>) -> io::Result<()> {
        self.conn.register(self.side, io, cx.waker());
        if self.conn.is_cut() {
            Err(cut_error())
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_cut(Io::Read, cx)?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match &mut this.frame {
                Some(frame) => {
                    let due = this.network.instant(frame.deliver_at);
                    if Instant::now() < due {
                        ready!(sleep_until(&mut this.read_sleep, due, cx));
                    }
                    if frame.remaining == 0 {
                        this.frame = None;
                        continue;
                    }
                    if this.in_start < this.in_end {
                        let n = buf
                            .len()
                            .min(this.in_end - this.in_start)
                            .min(frame.remaining);
                        buf[..n].copy_from_slice(&this.in_buf[this.in_start..this.in_start + n]);
                        this.in_start += n;
                        frame.remaining -= n;
                        if frame.remaining == 0 {
                            this.frame = None;
                        }
                        return Poll::Ready(Ok(n));
                    }
                }
                None if this.in_end - this.in_start >= HEADER => {
                    let h = &this.in_buf[this.in_start..this.in_start + HEADER];
                    let mut at = [0u8; 8];
                    at.copy_from_slice(&h[..8]);
                    let mut len = [0u8; 4];
                    len.copy_from_slice(&h[8..]);
                    let len = u32::from_be_bytes(len) as usize;
                    if len > MAX_FRAME {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "oversized simnet frame",
                        )));
                    }
                    this.in_start += HEADER;
                    this.frame = Some(Frame {
                        deliver_at: Duration::from_nanos(u64::from_be_bytes(at)),
                        remaining: len,
                    });
                    continue;
                }
                None => {}
            }
            // More bytes are needed: make room, then read.
            if this.in_start == this.in_end {
                this.in_start = 0;
                this.in_end = 0;
            } else if this.in_start > 0 {
                this.in_buf.copy_within(this.in_start..this.in_end, 0);
                this.in_end -= this.in_start;
                this.in_start = 0;
            }
            let n =
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.in_buf[this.in_end..]))?;
            if n == 0 {
                return Poll::Ready(if this.in_end == 0 && this.frame.is_none() {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
            this.in_end += n;
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_cut(Io::Write, cx)?;
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let config = this.network.link(this.local, this.remote);
        if let Some(bandwidth) = config.bandwidth {
            // A full send buffer: wait until the link has sent enough of it.
            let ahead = Duration::from_nanos(SEND_BUFFER * 1_000_000_000 / bandwidth.get());
            let now = this.network.now();
            if this.tx_free > now + ahead {
                let due = this.network.instant(this.tx_free - ahead);
                ready!(sleep_until(&mut this.write_sleep, due, cx));
            }
        }
        let n = buf.len().min(MAX_FRAME);
        let (latency, bandwidth) = this.network.frame(
            &this.conn,
            this.local,
            this.remote,
            n,
            this.frames_sent,
            &mut this.rng,
        );
        this.frames_sent += 1;
        let now = this.network.now();
        let sent = match bandwidth {
            Some(bw) => {
                let start = now.max(this.tx_free);
                let serialize =
                    u64::try_from(n as u128 * 1_000_000_000 / u128::from(bw.get())).unwrap_or(0);
                this.tx_free = start + Duration::from_nanos(serialize);
                this.tx_free
            }
            None => now,
        };
        let deliver_at = (sent + latency).max(this.last_delivery);
        this.last_delivery = deliver_at;
        this.out.clear();
        this.out.extend_from_slice(&nanos(deliver_at).to_be_bytes());
        this.out
            .extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
        this.out.extend_from_slice(&buf[..n]);
        this.out_pos = 0;
        // The frame is ours now; push what the channel takes, flush does the rest.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_cut(Io::Write, cx)?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_cut(Io::Write, cx)?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests;
