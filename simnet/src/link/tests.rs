use std::pin::Pin;
use std::time::Duration;

use futures::future::poll_fn;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::core::Endpoint;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, Transport, TransportEvent};
use tokio::time::Instant;

use super::{Link, LinkTransport};
use crate::network::{LinkConfig, Network, NodeId};

struct Pair {
    a: NodeId,
    b: NodeId,
    ta: LinkTransport,
    tb: LinkTransport,
    addr: libp2p::Multiaddr,
}

async fn listening(network: &Network) -> Pair {
    let a = network.add_node("a").unwrap();
    let b = network.add_node("b").unwrap();
    let mut tb = LinkTransport::new(network.clone(), b);
    tb.listen_on(ListenerId::next(), "/memory/0".parse().unwrap())
        .unwrap();
    let addr = match poll_fn(|cx| Pin::new(&mut tb).poll(cx)).await {
        TransportEvent::NewAddress { listen_addr, .. } => listen_addr,
        _ => panic!("expected the listen address"),
    };
    let ta = LinkTransport::new(network.clone(), a);
    Pair { a, b, ta, tb, addr }
}

fn opts() -> DialOpts {
    DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    }
}

async fn connect(p: &mut Pair) -> (Link, Link) {
    let dial = p.ta.dial(p.addr.clone(), opts()).unwrap();
    let tb = &mut p.tb;
    let accept = async {
        match poll_fn(|cx| Pin::new(&mut *tb).poll(cx)).await {
            TransportEvent::Incoming { upgrade, .. } => upgrade.await.unwrap(),
            _ => panic!("expected a connection"),
        }
    };
    let (x, y) = futures::join!(dial, accept);
    (x.unwrap(), y)
}

#[tokio::test]
async fn bytes_arrive_intact_and_in_order() {
    let network = Network::new(1);
    let mut p = listening(&network).await;
    network.set_link(
        p.a,
        p.b,
        LinkConfig {
            latency: Duration::ZERO..=Duration::from_millis(2),
            bandwidth: None,
        },
    );
    let (mut x, mut y) = connect(&mut p).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let writer = async {
        for chunk in data.chunks(100_000) {
            x.write_all(chunk).await.unwrap();
        }
        x.flush().await.unwrap();
        x
    };
    let reader = async {
        let mut got = vec![0u8; data.len()];
        y.read_exact(&mut got).await.unwrap();
        got
    };
    let (_x, got) = futures::join!(writer, reader);
    assert!(got == data, "payload corrupted");
    assert_eq!(network.bytes_sent(p.a, p.b), data.len() as u64);
}

#[tokio::test]
async fn latency_delays_delivery() {
    let network = Network::new(2);
    let mut p = listening(&network).await;
    let delay = Duration::from_millis(40);
    network.set_link(
        p.a,
        p.b,
        LinkConfig {
            latency: delay..=delay,
            bandwidth: None,
        },
    );
    let (mut x, mut y) = connect(&mut p).await;
    let start = Instant::now();
    x.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    y.read_exact(&mut buf).await.unwrap();
    assert!(start.elapsed() >= delay, "{:?}", start.elapsed());
    // The other direction has no latency configured.
    let start = Instant::now();
    y.write_all(b"pong").await.unwrap();
    x.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    assert!(start.elapsed() < delay, "{:?}", start.elapsed());
}

#[tokio::test]
async fn bandwidth_spreads_a_transfer() {
    let network = Network::new(3);
    let mut p = listening(&network).await;
    network.set_link(
        p.a,
        p.b,
        LinkConfig {
            latency: Duration::ZERO..=Duration::ZERO,
            bandwidth: std::num::NonZeroU64::new(4 << 20),
        },
    );
    let (mut x, mut y) = connect(&mut p).await;
    let data = vec![5u8; 1 << 20];
    let start = Instant::now();
    let writer = async {
        x.write_all(&data).await.unwrap();
        x.flush().await.unwrap();
    };
    let reader = async {
        let mut got = vec![0u8; data.len()];
        y.read_exact(&mut got).await.unwrap();
    };
    futures::join!(writer, reader);
    // 1 MiB at 4 MiB/s: at least a quarter second.
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn partition_cuts_and_refuses_until_healed() {
    let network = Network::new(4);
    let mut p = listening(&network).await;
    let (mut x, mut y) = connect(&mut p).await;
    let mut buf = [0u8; 8];
    let pending_read = tokio::spawn(async move {
        let r = y.read(&mut buf).await;
        (y, r)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(network.partition(p.a, p.b), 1);
    let (_y, r) = pending_read.await.unwrap();
    assert_eq!(
        r.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset,
        "a blocked read fails"
    );
    assert_eq!(
        x.write_all(b"x").await.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert!(p.ta.dial(p.addr.clone(), opts()).is_err(), "dial refused");
    network.heal(p.a, p.b);
    let (mut x, mut y) = connect(&mut p).await;
    x.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    y.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    let trace = network.trace().join("\n");
    assert!(trace.contains("connect a->b#0"), "{trace}");
    assert!(trace.contains("partition a|b: 1 cut"), "{trace}");
    assert!(
        trace.contains("dial a->b refused: a and b are partitioned"),
        "{trace}"
    );
    assert!(trace.contains("connect a->b#1"), "{trace}");
}

#[tokio::test]
async fn dropping_the_transport_frees_the_port() {
    let network = Network::new(5);
    let p = listening(&network).await;
    let port = match p.addr.iter().next() {
        Some(libp2p::multiaddr::Protocol::Memory(port)) => port,
        _ => unreachable!(),
    };
    assert_eq!(network.node_at(port), Some(p.b));
    assert_eq!(network.live_transports(p.b), 1);
    drop(p.tb);
    assert_eq!(network.node_at(port), None);
    assert_eq!(network.live_transports(p.b), 0);
    // The memory transport's hub let go of the port too.
    let mut again = LinkTransport::new(network.clone(), p.b);
    again.listen_on(ListenerId::next(), p.addr.clone()).unwrap();
}
