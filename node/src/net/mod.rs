//! The libp2p side of a peer: the swarm, its behaviour, and [`Net`], a cloneable
//! handle through which any task dials, listens and opens streams. One task owns
//! the swarm; others talk to it over a bounded channel (rust-libp2p's
//! file-sharing example shape).
//!
//! The annex P2P protocol runs as the stream protocol [`P2P_PROTOCOL`]: one
//! stream is one P2P connection, byte for byte what git-annex sends over ssh.

pub mod auth;
pub mod members;
pub mod relay;
pub mod remote;
pub mod stats;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, ListenerId};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, gossipsub, identify, noise, ping, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// The annex P2P protocol as a libp2p stream protocol.
pub const P2P_PROTOCOL: StreamProtocol = StreamProtocol::new("/annex/p2p/1");

/// Like [`P2P_PROTOCOL`], but the stream starts with one line
/// `TARGET <uuid>\n` naming the repository wanted behind the peer (a gateway's
/// cluster or node); the P2P session follows.
pub const TARGET_PROTOCOL: StreamProtocol = StreamProtocol::new("/annex/p2p-target/1");

/// How long an idle connection stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Commands queued to the swarm task.
const COMMAND_QUEUE: usize = 64;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub stream: libp2p_stream::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
}

/// Largest gossip message (metadata deltas are batched below this).
pub const MAX_GOSSIP: usize = 256 * 1024;

impl Behaviour {
    pub fn new(
        key: &Keypair,
    ) -> std::result::Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
        let config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .max_transmit_size(MAX_GOSSIP)
            .build()?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)?;
        Ok(Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new("/annexmesh/1".into(), key.public())
                    .with_agent_version(format!("annexmesh/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
            stream: libp2p_stream::Behaviour::new(),
            gossipsub,
        })
    }
}

/// What the swarm reports to the rest of the peer.
#[derive(Debug, Clone)]
pub enum NetEvent {
    Connected(PeerId),
    Disconnected(PeerId),
    /// A gossip message, from its (signature-checked) author.
    Gossip {
        author: Option<PeerId>,
        topic: String,
        data: Vec<u8>,
    },
}

/// Events buffered per subscriber before the oldest are dropped (gossip is
/// lossy by design; anti-entropy repairs what is lost).
const EVENT_BUFFER: usize = 1024;

/// An authenticated, multiplexed transport, boxed so real and simulated networks
/// build the same swarm.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// TCP with noise and yamux (plus QUIC with the `quic` feature).
pub fn tcp_transport(key: &Keypair) -> Result<BoxedTransport> {
    let noise = noise::Config::new(key).map_err(|e| Error::Protocol(format!("noise: {e}")))?;
    let tcp = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true))
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    #[cfg(feature = "quic")]
    {
        let quic = libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
        return Ok(tcp
            .or_transport(quic)
            .map(|either, _| either.into_inner())
            .boxed());
    }
    #[cfg(not(feature = "quic"))]
    Ok(tcp.boxed())
}

/// The in-process memory transport with noise and yamux (simnet and tests).
pub fn memory_transport(key: &Keypair) -> Result<BoxedTransport> {
    let noise = noise::Config::new(key).map_err(|e| Error::Protocol(format!("noise: {e}")))?;
    Ok(libp2p::core::transport::MemoryTransport::default()
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

pub fn build_swarm(key: Keypair, transport: BoxedTransport) -> Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| Error::Protocol(format!("transport: {e}")))?
        .with_behaviour(Behaviour::new)
        .map_err(|e| Error::Protocol(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

enum Command {
    Listen(Multiaddr, oneshot::Sender<Result<Multiaddr>>),
    Dial(PeerId, Multiaddr, oneshot::Sender<Result<()>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Subscribe(String, oneshot::Sender<Result<()>>),
    Publish(String, Vec<u8>, oneshot::Sender<Result<bool>>),
    Disconnect(PeerId, oneshot::Sender<()>),
}

/// A handle on a running swarm. Cheap to clone.
#[derive(Clone)]
pub struct Net {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    events: tokio::sync::broadcast::Sender<NetEvent>,
    /// The IP address of each connected peer's newest connection.
    hosts: Hosts,
}

/// Connected peers' IP addresses, kept by the swarm's task.
type Hosts = Arc<Mutex<HashMap<PeerId, IpAddr>>>;

/// The IP address a multiaddr starts with (none for the memory transport).
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Net {
    /// Moves the swarm onto its own task. The task ends when every `Net` handle
    /// (and the streams' control) is dropped.
    pub fn spawn(swarm: Swarm<Behaviour>) -> Net {
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
        let hosts = Hosts::default();
        tokio::spawn(drive(swarm, rx, events.clone(), hosts.clone()));
        Net {
            peer_id,
            commands: tx,
            control,
            events,
            hosts,
        }
    }

    /// The IP address `peer` is connected from (its newest connection's), if
    /// it is connected over IP.
    pub fn host_of(&self, peer: &PeerId) -> Option<IpAddr> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(peer).copied()
    }

    /// Whether the swarm's task still runs (it ends with its runtime).
    pub fn is_alive(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Subscribes to connection and gossip events from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    /// Joins a gossip topic.
    pub async fn subscribe(&self, topic: &str) -> Result<()> {
        self.ask(|tx| Command::Subscribe(topic.to_owned(), tx))
            .await?
    }

    /// Publishes on a topic. `Ok(false)` when no peer is there to hear it yet.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<bool> {
        self.ask(|tx| Command::Publish(topic.to_owned(), data, tx))
            .await?
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The stream control, for accepting and opening streams.
    pub fn control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Protocol("the swarm has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Protocol("the swarm has stopped".into()))
    }

    /// Starts listening; returns the concrete address (port chosen, `/p2p/` added).
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr> {
        let addr = self.ask(|tx| Command::Listen(addr, tx)).await??;
        Ok(with_peer(addr, self.peer_id))
    }

    /// Every address listened on, each ending in `/p2p/<PeerId>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        let addrs = self.ask(Command::ListenAddrs).await?;
        Ok(addrs
            .into_iter()
            .map(|a| with_peer(a, self.peer_id))
            .collect())
    }

    pub async fn connected_peers(&self) -> Result<Vec<PeerId>> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Closes every connection to `peer` gracefully and waits until they are
    /// closed. Stream data already written (and stream closes) is flushed to
    /// the socket first, so a short-lived process can call this before it exits.
    pub async fn disconnect(&self, peer: PeerId) -> Result<()> {
        self.ask(|tx| Command::Disconnect(peer, tx)).await
    }

    /// Dials an address that ends in `/p2p/<PeerId>` and waits for the connection.
    pub async fn dial(&self, addr: &Multiaddr) -> Result<PeerId> {
        let peer = peer_of(addr)?;
        self.ask(|tx| Command::Dial(peer, addr.clone(), tx))
            .await??;
        Ok(peer)
    }

    /// Opens a stream of `protocol` to the peer at `addr` (dialing it if needed).
    pub async fn open(&self, addr: &Multiaddr, protocol: StreamProtocol) -> Result<libp2p::Stream> {
        let peer = self.dial(addr).await?;
        self.open_to(peer, protocol).await
    }

    /// Opens a stream to an already known peer.
    pub async fn open_to(&self, peer: PeerId, protocol: StreamProtocol) -> Result<libp2p::Stream> {
        let mut control = self.control.clone();
        control
            .open_stream(peer, protocol)
            .await
            .map_err(|e| Error::Protocol(format!("cannot open a stream to {peer}: {e}")))
    }
}

/// The PeerId an address ends with.
pub fn peer_of(addr: &Multiaddr) -> Result<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok(peer),
        _ => Err(Error::Usage(format!(
            "{addr} does not end in /p2p/<PeerId>"
        ))),
    }
}

/// `addr` with `/p2p/<peer>` at the end (unless it is already there).
pub fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr
    } else {
        addr.with(Protocol::P2p(peer))
    }
}

async fn drive(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    events: tokio::sync::broadcast::Sender<NetEvent>,
    hosts: Hosts,
) {
    let mut pending_listen: HashMap<ListenerId, oneshot::Sender<Result<Multiaddr>>> =
        HashMap::new();
    let mut pending_dial: HashMap<PeerId, Vec<oneshot::Sender<Result<()>>>> = HashMap::new();
    let mut pending_disconnect: HashMap<PeerId, Vec<oneshot::Sender<()>>> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::Listen(addr, reply) => match swarm.listen_on(addr) {
                        Ok(id) => {
                            pending_listen.insert(id, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(Error::Protocol(format!("cannot listen: {e}"))));
                        }
                    },
                    Command::Dial(peer, addr, reply) => {
                        if swarm.is_connected(&peer) {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        swarm.add_peer_address(peer, addr.clone());
                        let first = !pending_dial.contains_key(&peer);
                        pending_dial.entry(peer).or_default().push(reply);
                        if first && let Err(e) = swarm.dial(addr) {
                            for r in pending_dial.remove(&peer).unwrap_or_default() {
                                let _ = r.send(Err(Error::Protocol(format!("cannot dial {peer}: {e}"))));
                            }
                        }
                    }
                    Command::ListenAddrs(reply) => {
                        let _ = reply.send(swarm.listeners().cloned().collect());
                    }
                    Command::ConnectedPeers(reply) => {
                        let _ = reply.send(swarm.connected_peers().copied().collect());
                    }
                    Command::Subscribe(topic, reply) => {
                        let r = swarm
                            .behaviour_mut()
                            .gossipsub
                            .subscribe(&gossipsub::IdentTopic::new(topic))
                            .map(|_| ())
                            .map_err(|e| Error::Protocol(format!("subscribe: {e}")));
                        let _ = reply.send(r);
                    }
                    Command::Publish(topic, data, reply) => {
                        let r = match swarm
                            .behaviour_mut()
                            .gossipsub
                            .publish(gossipsub::IdentTopic::new(topic), data)
                        {
                            Ok(_) => Ok(true),
                            Err(gossipsub::PublishError::NoPeersSubscribedToTopic)
                            | Err(gossipsub::PublishError::Duplicate) => Ok(false),
                            Err(e) => Err(Error::Protocol(format!("publish: {e}"))),
                        };
                        let _ = reply.send(r);
                    }
                    Command::Disconnect(peer, reply) => {
                        if swarm.disconnect_peer_id(peer).is_ok() {
                            pending_disconnect.entry(peer).or_default().push(reply);
                        } else {
                            let _ = reply.send(());
                        }
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    if let Some(reply) = pending_listen.remove(&listener_id) {
                        let _ = reply.send(Ok(address));
                    }
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    if let Some(reply) = pending_listen.remove(&listener_id) {
                        let _ = reply.send(Err(Error::Protocol(format!("listener closed: {reason:?}"))));
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                    tracing::debug!("connection established with {peer_id} ({num_established} now)");
                    if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                        hosts.lock().unwrap_or_else(|p| p.into_inner()).insert(peer_id, ip);
                    }
                    for r in pending_dial.remove(&peer_id).unwrap_or_default() {
                        let _ = r.send(Ok(()));
                    }
                    if num_established.get() == 1 {
                        let _ = events.send(NetEvent::Connected(peer_id));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                    let _ = events.send(NetEvent::Gossip {
                        author: message.source,
                        topic: message.topic.into_string(),
                        data: message.data,
                    });
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    hosts.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer_id);
                    for r in pending_disconnect.remove(&peer_id).unwrap_or_default() {
                        let _ = r.send(());
                    }
                    let _ = events.send(NetEvent::Disconnected(peer_id));
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. }
                    if !swarm.is_connected(&peer) =>
                {
                    for r in pending_dial.remove(&peer).unwrap_or_default() {
                        let _ = r.send(Err(Error::Protocol(format!("cannot connect to {peer}: {error}"))));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    for addr in info.listen_addrs {
                        swarm.add_peer_address(peer_id, addr);
                    }
                }
                _ => {}
            },
        }
    }
}

/// A peer address as annexmesh and its git-annex helper spell it: a multiaddr
/// ending in `/p2p/<PeerId>`, optionally followed by `/annex-uuid/<uuid>` to name
/// a repository behind that peer (a gateway's cluster or one of its nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    pub addr: Multiaddr,
    pub target: Option<protocol::Uuid>,
}

impl PeerAddress {
    pub fn parse(s: &str) -> Result<PeerAddress> {
        let (base, target) = match s.split_once("/annex-uuid/") {
            Some((base, uuid)) => (
                base,
                Some(
                    protocol::Uuid::parse(uuid)
                        .map_err(|e| Error::Usage(format!("bad uuid in {s}: {e}")))?,
                ),
            ),
            None => (s, None),
        };
        let addr: Multiaddr = base
            .parse()
            .map_err(|e| Error::Usage(format!("bad multiaddr {base:?}: {e}")))?;
        peer_of(&addr)?;
        Ok(PeerAddress { addr, target })
    }

    /// Opens a P2P stream to the address: plain, or naming the target.
    pub async fn open(&self, net: &Net) -> Result<libp2p::Stream> {
        match &self.target {
            None => net.open(&self.addr, P2P_PROTOCOL).await,
            Some(uuid) => {
                use futures::AsyncWriteExt;
                let mut s = net.open(&self.addr, TARGET_PROTOCOL).await?;
                s.write_all(format!("TARGET {uuid}\n").as_bytes())
                    .await
                    .map_err(|e| Error::Protocol(format!("target line: {e}")))?;
                Ok(s)
            }
        }
    }
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(t) = &self.target {
            write!(f, "/annex-uuid/{t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        let peer = PeerId::random();
        let a = PeerAddress::parse(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")).unwrap();
        assert_eq!(a.target, None);
        let b = PeerAddress::parse(&format!(
            "/ip4/127.0.0.1/tcp/4001/p2p/{peer}/annex-uuid/acae2ff6-6c1e-8bec-b8b9-397a3755f397"
        ))
        .unwrap();
        assert!(b.target.as_ref().unwrap().is_cluster());
        assert_eq!(PeerAddress::parse(&b.to_string()).unwrap(), b);
        assert!(PeerAddress::parse("/ip4/127.0.0.1/tcp/4001").is_err());
        assert!(PeerAddress::parse("garbage").is_err());
    }
}
