//! Our client side over libp2p: connect to a peer's repository and get a P2P
//! session on it (used by `annexmesh put/get/drop/checkpresent`, gateways
//! reaching their mesh nodes, the branch sync's git helper).

use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use protocol::message::{MAX_VERSION, Version};
use protocol::{AuthToken, Uuid};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::error::{Error, Result};
use crate::net::{BoxedTransport, Net, PeerAddress, build_swarm, relay};
use crate::session::ClientSession;

/// Tries at opening an authenticated session before giving up.
const CONNECT_ATTEMPTS: u64 = 8;

/// A byte stream to a peer's repository: a libp2p stream of this process's
/// swarm, or one its repository's daemon relays ([`relay`]).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}
pub type PeerStream = Box<dyn Duplex>;

pub type StreamSession = ClientSession<ReadHalf<PeerStream>, WriteHalf<PeerStream>>;

/// A client endpoint: a swarm used only to dial out.
pub struct Endpoint {
    pub net: Net,
}

/// The swarms of this process by identity: a running daemon's own (shared
/// with [`share`]), or one made on first use and kept for the process's life
/// (an `annex-shell` session's), so that every connection a gateway makes to
/// a mesh node goes over one swarm and one connection per peer, never a new
/// swarm and handshake per session.
static SWARMS: std::sync::Mutex<Vec<Net>> = std::sync::Mutex::new(Vec::new());

/// The environment variable that turns swarm reuse off (see [`Endpoint::shared`]).
pub const NO_SWARM_REUSE: &str = "ANNEXMESH_NO_SWARM_REUSE";

/// Makes `net` (a daemon's swarm) the one this process dials out with for
/// its identity.
pub fn share(net: &Net) {
    let mut swarms = SWARMS.lock().unwrap_or_else(|p| p.into_inner());
    swarms.retain(|n| n.peer_id() != net.peer_id());
    swarms.push(net.clone());
}

/// Stops dialling out with the swarm of `peer` (its daemon is stopping).
pub fn unshare(peer: libp2p::PeerId) {
    SWARMS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|n| n.peer_id() != peer);
}

impl Endpoint {
    /// The endpoint of this process for `key`: the shared swarm of that
    /// identity, or a new one (with TCP) kept for later calls.
    ///
    /// `ANNEXMESH_NO_SWARM_REUSE=1` gives a new swarm every call, as gateways
    /// dialled before the mesh had one swarm per daemon: only for measuring
    /// the difference (the mesh benchmark's baseline).
    pub fn shared(key: &Keypair) -> Result<Endpoint> {
        if no_reuse() {
            return Endpoint::new(key.clone(), crate::net::tcp_transport(key)?);
        }
        let me = key.public().to_peer_id();
        let mut swarms = SWARMS.lock().unwrap_or_else(|p| p.into_inner());
        swarms.retain(Net::is_alive);
        if let Some(net) = swarms.iter().find(|n| n.peer_id() == me) {
            return Ok(Endpoint { net: net.clone() });
        }
        let endpoint = Endpoint::new(key.clone(), crate::net::tcp_transport(key)?)?;
        swarms.push(endpoint.net.clone());
        Ok(endpoint)
    }

    /// This process's swarm for `key` when it has one (it is that
    /// identity's daemon, or has dialled with it before).
    pub fn existing(key: &Keypair) -> Option<Endpoint> {
        let me = key.public().to_peer_id();
        let mut swarms = SWARMS.lock().unwrap_or_else(|p| p.into_inner());
        swarms.retain(Net::is_alive);
        let net = swarms.iter().find(|n| n.peer_id() == me)?;
        Some(Endpoint { net: net.clone() })
    }

    pub fn new(key: Keypair, transport: BoxedTransport) -> Result<Endpoint> {
        Ok(Endpoint {
            net: Net::spawn(build_swarm(key, transport)?),
        })
    }

    /// Opens a session: `AUTH` as `me` with `token`, then `VERSION 4`.
    /// Returns the session and the UUID the peer answered with.
    pub async fn connect(
        &self,
        address: &PeerAddress,
        me: Uuid,
        token: AuthToken,
    ) -> Result<(StreamSession, Uuid)> {
        self.connect_offering(address, me, token, Some(Version::from(MAX_VERSION)))
            .await
    }

    /// [`Endpoint::connect`], offering `version` (see [`Dialer::connect_offering`]).
    pub async fn connect_offering(
        &self,
        address: &PeerAddress,
        me: Uuid,
        token: AuthToken,
        version: Option<Version>,
    ) -> Result<(StreamSession, Uuid)> {
        let dialer = Dialer::Swarm(Endpoint {
            net: self.net.clone(),
        });
        dialer.connect_offering(address, me, token, version).await
    }
}

fn no_reuse() -> bool {
    std::env::var_os(NO_SWARM_REUSE).is_some_and(|v| v == "1")
}

/// How a process reaches peers: over a swarm of its own, or over its
/// repository's running daemon (its connections, through [`relay`]).
pub enum Dialer {
    Swarm(Endpoint),
    Relay(PathBuf),
}

impl Dialer {
    /// For a process of the repository with state directory `state_dir`
    /// and identity `key`: this process's own swarm of that identity if it
    /// has one (it is the daemon), else the daemon's relay when a daemon
    /// answers, else a swarm of its own ([`Endpoint::shared`]).
    pub fn for_repo(state_dir: &Path, key: &Keypair) -> Result<Dialer> {
        if no_reuse() {
            return Ok(Dialer::Swarm(Endpoint::shared(key)?));
        }
        if let Some(e) = Endpoint::existing(key) {
            return Ok(Dialer::Swarm(e));
        }
        let socket = relay::socket_path(state_dir);
        if relay::answers(&socket) {
            return Ok(Dialer::Relay(socket));
        }
        Ok(Dialer::Swarm(Endpoint::shared(key)?))
    }

    /// Whether streams go through a daemon.
    pub fn is_relayed(&self) -> bool {
        matches!(self, Dialer::Relay(_))
    }

    /// A stream to `address`'s repository (`TARGET` sent when it names one).
    pub async fn open(&self, address: &PeerAddress) -> Result<PeerStream> {
        match self {
            Dialer::Swarm(e) => Ok(Box::new(address.open(&e.net).await?.compat())),
            Dialer::Relay(path) => Ok(Box::new(relay::open(path, address).await?)),
        }
    }

    /// Opens a session: `AUTH` as `me` with `token`, then `VERSION version`
    /// (`None`: no `VERSION` is sent, so the session stays at version 0; a
    /// relay offers its client's). Returns the session and the UUID the peer
    /// answered with.
    pub async fn connect_offering(
        &self,
        address: &PeerAddress,
        me: Uuid,
        token: AuthToken,
        version: Option<Version>,
    ) -> Result<(StreamSession, Uuid)> {
        let (mut session, answer) = self.open_and_auth(address, &me, &token).await?;
        let Some(uuid) = answer else {
            return Err(Error::Protocol(format!(
                "{address} refused our authentication (no token or grant for us)"
            )));
        };
        if let Some(want) = &address.target
            && want != &uuid
        {
            return Err(Error::Protocol(format!(
                "{address} answered as {uuid}, not {want}"
            )));
        }
        if let Some(v) = version {
            session.negotiate_version(v).await?;
        }
        Ok((session, uuid))
    }

    /// Opens a stream and sends `AUTH`. A stream that closes before any answer
    /// is retried: libp2p-stream drops inbound streams that arrive while the
    /// server's accept queue (one slot) is full, and nothing has happened yet.
    async fn open_and_auth(
        &self,
        address: &PeerAddress,
        me: &Uuid,
        token: &AuthToken,
    ) -> Result<(StreamSession, Option<Uuid>)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let stream = self.open(address).await?;
                let (r, w) = tokio::io::split(stream);
                let mut session = ClientSession::new(r, w);
                let answer = session.auth(me.clone(), token.clone()).await?;
                Ok::<_, Error>((session, answer))
            }
            .await;
            match result {
                Ok(ok) => return Ok(ok),
                Err(e) if attempt < CONNECT_ATTEMPTS => {
                    tracing::debug!("connecting to {address} (attempt {attempt}): {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
