//! [`Sim`]: real annexmesh peers in one process, on simulated links.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, Transport, noise, yamux};
use node::net::{BoxedTransport, Net, PeerAddress};
use node::peer::{Limits, Peer, PeerOptions};
use node::remote::{Endpoint, StreamSession};
use node::store::Store;
use protocol::server::ServeMode;
use protocol::{AuthToken, Uuid};

use crate::error::{Error, Result};
use crate::link::LinkTransport;
use crate::network::{LinkConfig, Network, NodeId};
use crate::rng::SimRng;

/// How long opening a session may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a crashing node may take to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that fixes the seed.
pub const SEED_VAR: &str = "SIMNET_SEED";

/// The seed from `SIMNET_SEED`, or a fresh random one.
pub fn seed_from_env() -> u64 {
    std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random)
}

/// Polls `condition` every 10 ms until it holds, for at most `limit`.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// `future`, or [`Error::Timeout`] after `limit`.
pub async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| Error::Timeout {
            what: what.to_owned(),
            after: limit,
        })
}

/// Waits until `net`'s swarm has no connection to `other`.
async fn wait_not_connected(net: &Net, other: PeerId, what: &str) -> Result<()> {
    within(what, CONNECT_TIMEOUT, async {
        loop {
            if !net.connected_peers().await?.contains(&other) {
                return Ok::<(), Error>(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?
}

/// The stack every simulated node uses: a [`LinkTransport`] for `node` under
/// noise and yamux, exactly as `node::net::memory_transport` builds it.
pub fn transport(network: &Network, node: NodeId, key: &Keypair) -> Result<BoxedTransport> {
    let noise = noise::Config::new(key).map_err(|e| Error::Identity(format!("noise: {e}")))?;
    Ok(LinkTransport::new(network.clone(), node)
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Prints the seed when dropped during a panic, so that a failing test says
/// how to replay it. [`Sim`] holds one; hold another where a test compares
/// several simulations.
#[derive(Debug)]
pub struct SeedGuard(pub u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simnet: failed with seed {seed}; replay with {SEED_VAR}={seed}",
                seed = self.0
            );
        }
    }
}

/// A simulated peer, as [`Sim::add_peer`] made it.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    pub name: String,
    pub node: NodeId,
    pub peer_id: PeerId,
    pub uuid: Uuid,
    /// Its repository (kept across crashes).
    pub dir: PathBuf,
}

struct SimNode {
    id: NodeId,
    key: Keypair,
    uuid: Uuid,
    kind: Kind,
}

enum Kind {
    Peer {
        dir: PathBuf,
        running: Option<Box<Peer>>,
        /// Where it listens (or last listened, while crashed).
        addr: Multiaddr,
    },
    Client {
        endpoint: Option<Endpoint>,
    },
}

/// A simulation: peers and clients on one [`Network`], each with an identity
/// and UUID derived from the seed and its name, repositories in a temporary
/// directory. Dropping it stops everything; if that happens during a panic
/// (a failing test) it prints the seed.
pub struct Sim {
    seed: u64,
    _guard: SeedGuard,
    network: Network,
    rng: SimRng,
    token: AuthToken,
    nodes: BTreeMap<String, SimNode>,
    dir: tempfile::TempDir,
}

impl Sim {
    pub fn new(seed: u64) -> Result<Sim> {
        let token = AuthToken::generate(&SimRng::derive(seed, "token").bytes::<512>());
        Ok(Sim {
            seed,
            _guard: SeedGuard(seed),
            network: Network::new(seed),
            rng: SimRng::derive(seed, "test"),
            token,
            nodes: BTreeMap::new(),
            dir: tempfile::Builder::new().prefix("simnet-").tempdir()?,
        })
    }

    /// A simulation seeded from `SIMNET_SEED`, or randomly (the seed is printed
    /// either way; the test harness shows it for failing tests).
    pub fn from_env() -> Result<Sim> {
        let seed = seed_from_env();
        println!("simnet seed {seed} ({SEED_VAR}={seed} replays)");
        Sim::new(seed)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The test's own random stream (content, choices), derived from the seed.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// A scratch directory inside the simulation's temporary directory.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The trace of the network's decisions (see [`Network::trace`]).
    pub fn trace(&self) -> Vec<String> {
        self.network.trace()
    }

    fn node(&self, name: &str) -> Result<&SimNode> {
        self.nodes
            .get(name)
            .ok_or_else(|| Error::UnknownNode(name.to_owned()))
    }

    fn id(&self, name: &str) -> Result<NodeId> {
        Ok(self.node(name)?.id)
    }

    /// The identity and the UUID's random bytes of node `name`.
    fn derive_identity(&self, name: &str) -> Result<(Keypair, [u8; 16])> {
        let secret = SimRng::derive(self.seed, &format!("identity {name}")).bytes::<32>();
        let key =
            Keypair::ed25519_from_bytes(secret).map_err(|e| Error::Identity(e.to_string()))?;
        let uuid = SimRng::derive(self.seed, &format!("uuid {name}")).bytes::<16>();
        Ok((key, uuid))
    }

    /// Every node's PeerId, granted read-write.
    fn grants(&self) -> Vec<(PeerId, ServeMode)> {
        self.nodes
            .values()
            .map(|n| (n.key.public().to_peer_id(), ServeMode::ReadWrite))
            .collect()
    }

    /// Starts a peer listening at `listen` (a memory address; port 0 for a
    /// new one).
    async fn start_peer(
        &self,
        id: NodeId,
        key: &Keypair,
        store: Store,
        listen: Multiaddr,
    ) -> Result<Peer> {
        let options = PeerOptions {
            store,
            keypair: key.clone(),
            transport: transport(&self.network, id, key)?,
            listen: vec![listen],
            grants: self.grants(),
            limits: Limits::default(),
            serve_git: false,
            members: None,
        };
        Ok(within("starting a peer", CONNECT_TIMEOUT, Peer::start(options)).await??)
    }

    /// Adds a peer: a new bare repository, served over the simulated network.
    /// Every node of the simulation may use it read-write: the nodes that
    /// exist when it starts by PeerId grant, later ones by the simulation's
    /// token (written to its `p2pauth`).
    pub async fn add_peer(&mut self, name: &str) -> Result<PeerHandle> {
        let (key, uuid_bytes) = self.derive_identity(name)?;
        let dir = self.dir.path().join("peers").join(name);
        if self.nodes.contains_key(name) {
            return Err(Error::Duplicate(name.to_owned()));
        }
        let id = self.network.add_node(name)?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let init = node::init::init(&dir, name, uuid_bytes)?;
        // The repository's identity is the simulated one, as a daemon's is
        // its repository's: what a gateway in it dials its nodes with.
        let encoded = key
            .to_protobuf_encoding()
            .map_err(|e| Error::Node(node::Error::Protocol(format!("identity: {e}"))))?;
        node::store::write_atomic(
            &node::config::state_dir(&init.repo).join("identity.key"),
            &encoded,
        )?;
        let store = Store::new(init.repo);
        let uuid = store.uuid().clone();
        node::auth::AccessRules::new(&store.repo().git_dir, key.public().to_peer_id(), vec![])
            .add_token(&self.token, "")?;
        // Registered before it starts, so that its grants include itself.
        self.nodes.insert(
            name.to_owned(),
            SimNode {
                id,
                key: key.clone(),
                uuid: uuid.clone(),
                kind: Kind::Client { endpoint: None },
            },
        );
        let fresh = Multiaddr::empty().with(libp2p::multiaddr::Protocol::Memory(0));
        let peer = match self.start_peer(id, &key, store, fresh).await {
            Ok(p) => p,
            Err(e) => {
                self.nodes.remove(name);
                return Err(e);
            }
        };
        let addr = peer.addrs.first().cloned().unwrap_or_else(Multiaddr::empty);
        if let Some(n) = self.nodes.get_mut(name) {
            n.kind = Kind::Peer {
                dir: dir.clone(),
                running: Some(Box::new(peer)),
                addr,
            };
        }
        Ok(PeerHandle {
            name: name.to_owned(),
            node: id,
            peer_id: key.public().to_peer_id(),
            uuid,
            dir,
        })
    }

    /// Adds a client: a node without a store that only dials out (like
    /// `annexmesh put/get`), with its own identity.
    pub async fn add_client(&mut self, name: &str) -> Result<NodeId> {
        let (key, uuid_bytes) = self.derive_identity(name)?;
        let uuid = Uuid::new_v4(uuid_bytes);
        if self.nodes.contains_key(name) {
            return Err(Error::Duplicate(name.to_owned()));
        }
        let id = self.network.add_node(name)?;
        let endpoint = Endpoint::new(key.clone(), transport(&self.network, id, &key)?)?;
        self.nodes.insert(
            name.to_owned(),
            SimNode {
                id,
                key,
                uuid,
                kind: Kind::Client {
                    endpoint: Some(endpoint),
                },
            },
        );
        Ok(id)
    }

    pub fn node_id(&self, name: &str) -> Result<NodeId> {
        self.id(name)
    }

    pub fn peer_id(&self, name: &str) -> Result<PeerId> {
        Ok(self.node(name)?.key.public().to_peer_id())
    }

    pub fn uuid(&self, name: &str) -> Result<Uuid> {
        Ok(self.node(name)?.uuid.clone())
    }

    /// The running peer `name`.
    pub fn peer(&self, name: &str) -> Result<&Peer> {
        match &self.node(name)?.kind {
            Kind::Peer {
                running: Some(p), ..
            } => Ok(p),
            Kind::Peer { running: None, .. } => Err(Error::NotRunning(name.to_owned())),
            Kind::Client { .. } => Err(Error::NotAPeer(name.to_owned())),
        }
    }

    /// The store of peer `name`, running or not.
    pub fn store(&self, name: &str) -> Result<Store> {
        match &self.node(name)?.kind {
            Kind::Peer {
                running: Some(p), ..
            } => Ok(p.store.clone()),
            Kind::Peer { dir, .. } => Ok(Store::open(dir)?),
            Kind::Client { .. } => Err(Error::NotAPeer(name.to_owned())),
        }
    }

    /// The swarm handle of a running node.
    pub fn net(&self, name: &str) -> Result<Net> {
        match &self.node(name)?.kind {
            Kind::Peer {
                running: Some(p), ..
            } => Ok(p.net.clone()),
            Kind::Client {
                endpoint: Some(e), ..
            } => Ok(e.net.clone()),
            _ => Err(Error::NotRunning(name.to_owned())),
        }
    }

    /// Where peer `name` listens (or last listened).
    pub fn addr(&self, name: &str) -> Result<Multiaddr> {
        match &self.node(name)?.kind {
            Kind::Peer { addr, .. } => Ok(addr.clone()),
            Kind::Client { .. } => Err(Error::NotAPeer(name.to_owned())),
        }
    }

    /// Opens a P2P session from node `from` (its own swarm and identity) to
    /// peer `to`: `AUTH` with the simulation's token, then `VERSION`.
    pub async fn session(&self, from: &str, to: &str) -> Result<StreamSession> {
        let net = self.net(from)?;
        let me = self.uuid(from)?;
        let address = PeerAddress {
            addr: self.addr(to)?,
            target: None,
        };
        let endpoint = Endpoint { net };
        let (session, uuid) = within(
            &format!("connecting {from} to {to}"),
            CONNECT_TIMEOUT,
            endpoint.connect(&address, me, self.token.clone()),
        )
        .await??;
        let want = self.uuid(to)?;
        if uuid != want {
            return Err(Error::Node(node::Error::Protocol(format!(
                "{to} answered as {uuid}, not {want}"
            ))));
        }
        Ok(session)
    }

    /// Opens a P2P session from node `from` to the repository `target` that
    /// peer `to` serves (a gateway's cluster or node: `/annex-uuid/<target>`),
    /// with the simulation's token.
    pub async fn session_to(&self, from: &str, to: &str, target: &Uuid) -> Result<StreamSession> {
        let endpoint = Endpoint {
            net: self.net(from)?,
        };
        let address = PeerAddress {
            addr: self.addr(to)?,
            target: Some(target.clone()),
        };
        let (session, _) = within(
            &format!("connecting {from} to {target} on {to}"),
            CONNECT_TIMEOUT,
            endpoint.connect(&address, self.uuid(from)?, self.token.clone()),
        )
        .await??;
        Ok(session)
    }

    /// Sets the latency of both directions between `a` and `b`.
    pub fn set_latency(&self, a: &str, b: &str, latency: RangeInclusive<Duration>) -> Result<()> {
        self.set_latency_oneway(a, b, latency.clone())?;
        self.set_latency_oneway(b, a, latency)
    }

    /// Sets the latency of `from → to` only.
    pub fn set_latency_oneway(
        &self,
        from: &str,
        to: &str,
        latency: RangeInclusive<Duration>,
    ) -> Result<()> {
        let (from, to) = (self.id(from)?, self.id(to)?);
        let config = LinkConfig {
            latency,
            ..self.network.link(from, to)
        };
        self.network.set_link(from, to, config);
        Ok(())
    }

    /// Limits both directions between `a` and `b` to `bytes_per_second`
    /// (`None`: unlimited).
    pub fn set_bandwidth(&self, a: &str, b: &str, bytes_per_second: Option<u64>) -> Result<()> {
        let (a, b) = (self.id(a)?, self.id(b)?);
        let bandwidth = bytes_per_second.and_then(std::num::NonZeroU64::new);
        for (from, to) in [(a, b), (b, a)] {
            let config = LinkConfig {
                bandwidth,
                ..self.network.link(from, to)
            };
            self.network.set_link(from, to, config);
        }
        Ok(())
    }

    /// Cuts the connections between `a` and `b` and refuses new ones until
    /// [`Sim::heal`]. Returns how many connections were cut.
    pub fn partition(&self, a: &str, b: &str) -> Result<usize> {
        Ok(self.network.partition(self.id(a)?, self.id(b)?))
    }

    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        self.network.heal(self.id(a)?, self.id(b)?);
        Ok(())
    }

    /// Cuts the connections between `a` and `b`; new ones may be made at once.
    pub fn cut(&self, a: &str, b: &str) -> Result<usize> {
        Ok(self.network.cut(self.id(a)?, self.id(b)?))
    }

    /// Waits until neither node's swarm counts a connection to the other
    /// (after a cut, so a new dial cannot pick up a dying connection).
    /// A node that is not running counts as disconnected.
    pub async fn wait_disconnected(&self, a: &str, b: &str) -> Result<()> {
        for (node, other) in [(a, b), (b, a)] {
            if let Ok(net) = self.net(node) {
                let what = format!("{node} to notice it lost {other}");
                wait_not_connected(&net, self.peer_id(other)?, &what).await?;
            }
        }
        Ok(())
    }

    /// Crashes node `name`: its connections are cut at once, dials to it fail,
    /// its peer (or client endpoint) is shut down and its swarm dropped. Its
    /// directory stays. Returns how many sessions the peer had to cut short.
    pub async fn crash(&mut self, name: &str) -> Result<usize> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| Error::UnknownNode(name.to_owned()))?;
        let id = node.id;
        let sessions = match &mut node.kind {
            Kind::Peer { running, .. } => {
                let peer = running
                    .take()
                    .ok_or_else(|| Error::NotRunning(name.to_owned()))?;
                self.network.crash(id);
                within(&format!("stopping {name}"), STOP_TIMEOUT, peer.shutdown()).await?
            }
            Kind::Client { endpoint } => {
                let endpoint = endpoint
                    .take()
                    .ok_or_else(|| Error::NotRunning(name.to_owned()))?;
                self.network.crash(id);
                drop(endpoint);
                0
            }
        };
        // The swarm task ends once its last handle is gone; its transport goes
        // with it.
        let network = self.network.clone();
        wait_until(
            &format!("the swarm of {name} to stop"),
            STOP_TIMEOUT,
            || network.live_transports(id) == 0,
        )
        .await?;
        // And every other node has noticed.
        let gone = self.peer_id(name)?;
        for other in self.nodes.keys() {
            if other.as_str() != name
                && let Ok(net) = self.net(other)
            {
                let what = format!("{other} to notice that {name} crashed");
                wait_not_connected(&net, gone, &what).await?;
            }
        }
        Ok(sessions)
    }

    /// Starts a crashed node again, with the same identity and (for a peer)
    /// the same repository, listening at the same address (as a daemon
    /// restarted with its `--listen` does).
    pub async fn restart(&mut self, name: &str) -> Result<()> {
        let node = self.node(name)?;
        let (id, key) = (node.id, node.key.clone());
        match &node.kind {
            Kind::Peer { dir, running, addr } => {
                if running.is_some() {
                    return Err(Error::Running(name.to_owned()));
                }
                let store = Store::open(dir)?;
                let listen: Multiaddr = addr
                    .iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .collect();
                self.network.restart(id);
                let peer = self.start_peer(id, &key, store, listen).await?;
                if let Some(SimNode {
                    kind: Kind::Peer { running, addr, .. },
                    ..
                }) = self.nodes.get_mut(name)
                {
                    *addr = peer.addrs.first().cloned().unwrap_or_else(Multiaddr::empty);
                    *running = Some(Box::new(peer));
                }
            }
            Kind::Client { endpoint } => {
                if endpoint.is_some() {
                    return Err(Error::Running(name.to_owned()));
                }
                self.network.restart(id);
                let fresh = Endpoint::new(key.clone(), transport(&self.network, id, &key)?)?;
                if let Some(SimNode {
                    kind: Kind::Client { endpoint },
                    ..
                }) = self.nodes.get_mut(name)
                {
                    *endpoint = Some(fresh);
                }
            }
        }
        Ok(())
    }

    /// The root of the simulation's temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
