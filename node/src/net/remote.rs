//! Our client side over libp2p: connect to a peer's repository and get a P2P
//! session on it (used by `annexmesh put/get/drop/checkpresent`).

use libp2p::identity::Keypair;
use protocol::message::{MAX_VERSION, Version};
use protocol::{AuthToken, Uuid};
use tokio::io::{ReadHalf, WriteHalf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::error::{Error, Result};
use crate::net::{BoxedTransport, Net, PeerAddress, build_swarm};
use crate::session::ClientSession;

/// Tries at opening an authenticated session before giving up.
const CONNECT_ATTEMPTS: u64 = 8;

pub type StreamSession =
    ClientSession<ReadHalf<Compat<libp2p::Stream>>, WriteHalf<Compat<libp2p::Stream>>>;

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
        if std::env::var_os(NO_SWARM_REUSE).is_some_and(|v| v == "1") {
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

    /// [`Endpoint::connect`], offering `version` (`None`: no `VERSION` is
    /// sent, so the session stays at version 0). A relay offers its client's.
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
                let stream = address.open(&self.net).await?;
                let (r, w) = tokio::io::split(stream.compat());
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
