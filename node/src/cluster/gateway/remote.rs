//! The gateway's remote nodes (git-annex repositories behind
//! `git-annex-shell p2pstdio`, annexmesh peers on the mesh), reached with our
//! client [`ClientSession`](crate::session::ClientSession), and the streaming
//! halves of the gateway's PUT and GET on them: [`PutTarget`] takes the
//! client's bytes from a bounded channel as they arrive and [`Fetch`] relays
//! a node's `DATA` as it arrives. Nothing is spooled.

use std::sync::Arc;

use protocol::deadline::NodeDeadlines;
use protocol::message::{MAX_VERSION, Message, Version};
use protocol::server::Validity;
use protocol::{AssociatedFile, Key, Uuid};

use crate::cluster::{Cost, ShellCommand};
use crate::error::{Error, Result};
use crate::net::PeerAddress;
use crate::process::ShellConnection;
use crate::remote::{Dialer, StreamSession};
use crate::session::PutStart;

/// How the gateway reaches a remote node.
#[derive(Debug, Clone)]
pub enum Reach {
    /// `git-annex-shell p2pstdio`, run directly or through ssh.
    Shell(ShellCommand),
    /// An annexmesh peer (`/annex/p2p/1`), dialled with the gateway's identity.
    Mesh(PeerAddress),
}

/// A live connection to a remote node.
pub(crate) enum Conn {
    Shell(Box<ShellConnection>),
    Mesh {
        session: Box<StreamSession>,
        /// The process's swarm for the gateway's identity (shared), or its
        /// daemon's relay.
        _dialer: Dialer,
    },
}

/// Runs the same client call on either kind of session.
macro_rules! on_session {
    ($conn:expr, $s:ident => $body:expr) => {
        match $conn {
            Conn::Shell(c) => {
                let $s = &mut c.session;
                $body
            }
            Conn::Mesh { session, .. } => {
                let $s = &mut **session;
                $body
            }
        }
    };
}

impl Conn {
    /// The protocol version agreed with the node.
    pub(crate) fn version(&self) -> Version {
        match self {
            Conn::Shell(c) => c.session.version(),
            Conn::Mesh { session, .. } => session.version(),
        }
    }

    /// Message-level access for relays (see `ClientSession::send_message`).
    pub(crate) async fn send(&mut self, m: &Message) -> Result<()> {
        on_session!(self, s => s.send_message(m).await)
    }

    pub(crate) async fn flush(&mut self) -> Result<()> {
        on_session!(self, s => s.flush().await)
    }

    /// The node's next message; its end of stream is an error here, since a
    /// relay only reads when a reply is due.
    pub(crate) async fn reply(&mut self) -> Result<Message> {
        on_session!(self, s => s.read_message().await)?
            .ok_or_else(|| Error::Peer("the node closed the connection".into()))
    }

    /// Copies `len` payload bytes from the node to `to`; returns how many.
    pub(crate) async fn payload_to<T: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        to: &mut T,
        len: u64,
    ) -> Result<u64> {
        on_session!(self, s => s.relay_payload_to(to, len).await)
    }

    /// Copies `len` payload bytes from `from` to the node; returns how many.
    pub(crate) async fn payload_from<T: tokio::io::AsyncBufRead + Unpin>(
        &mut self,
        from: &mut T,
        len: u64,
    ) -> Result<u64> {
        on_session!(self, s => s.relay_payload_from(from, len).await)
    }

    /// Ends the session cleanly: the node sees our end of stream and exits.
    pub(crate) async fn close(self) -> Result<()> {
        match self {
            Conn::Shell(c) => c.finish().await.map(|_| ()),
            Conn::Mesh { session, .. } => session.close().await,
        }
    }
}

/// A node reached with our client (see [`Reach`]). One connection is started
/// on first use and kept for the gateway session; a request that fails drops
/// it, and the next request starts a new one.
pub struct RemoteNode {
    pub uuid: Uuid,
    pub remote: String,
    pub reach: Reach,
    /// Its cost for GETs (see [`Cost`]).
    pub cost: Cost,
    /// The gateway's libp2p identity and state directory, for mesh nodes.
    identity: Option<(libp2p::identity::Keypair, std::path::PathBuf)>,
    /// When this node is the cluster itself, reached through another gateway
    /// of it: that gateway's uuid (annex-spec §4.9).
    pub via: Option<Uuid>,
    /// Gateways to avoid, sent as `BYPASS` on connecting (version 2+).
    bypass: std::sync::Mutex<Vec<Uuid>>,
    /// How long it may take to answer, and when its transfers count as
    /// stalled (`annex.stalldetection`).
    pub deadlines: NodeDeadlines,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl Clone for RemoteNode {
    fn clone(&self) -> Self {
        RemoteNode {
            uuid: self.uuid.clone(),
            remote: self.remote.clone(),
            reach: self.reach.clone(),
            cost: self.cost,
            identity: self.identity.clone(),
            via: self.via.clone(),
            bypass: std::sync::Mutex::new(self.bypass_list()),
            deadlines: self.deadlines,
            conn: tokio::sync::Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteNode")
            .field("uuid", &self.uuid)
            .field("remote", &self.remote)
            .field("reach", &self.reach)
            .finish_non_exhaustive()
    }
}

type ShellGuard<'a> = tokio::sync::MutexGuard<'a, Option<Conn>>;

impl RemoteNode {
    pub fn shell(uuid: Uuid, remote: String, shell: ShellCommand) -> RemoteNode {
        RemoteNode {
            uuid,
            remote,
            cost: match &shell {
                ShellCommand::Program { .. } => Cost::CHEAP,
                ShellCommand::Ssh { .. } => Cost::EXPENSIVE,
            },
            reach: Reach::Shell(shell),
            identity: None,
            via: None,
            bypass: std::sync::Mutex::new(Vec::new()),
            deadlines: NodeDeadlines::default(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// This node is the cluster as another gateway (`gateway`) serves it.
    pub fn via_gateway(mut self, gateway: Uuid) -> RemoteNode {
        self.via = Some(gateway);
        self
    }

    fn bypass_list(&self) -> Vec<Uuid> {
        self.bypass.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Sets the gateways a new connection asks the node to avoid.
    pub fn set_bypass(&self, uuids: Vec<Uuid>) {
        if let Ok(mut b) = self.bypass.lock() {
            *b = uuids;
        }
    }

    /// Whether this node is the cluster via a gateway the client asked to avoid.
    pub fn bypassed(&self) -> bool {
        self.via
            .as_ref()
            .is_some_and(|g| self.bypass_list().contains(g))
    }

    /// A mesh peer, dialled as `identity` (the gateway's), through the
    /// gateway's daemon when one runs (`state_dir`: the gateway repository's).
    pub fn mesh(
        uuid: Uuid,
        remote: String,
        address: PeerAddress,
        identity: libp2p::identity::Keypair,
        state_dir: std::path::PathBuf,
    ) -> RemoteNode {
        RemoteNode {
            uuid,
            remote,
            reach: Reach::Mesh(address),
            cost: Cost::VERY_EXPENSIVE,
            identity: Some((identity, state_dir)),
            via: None,
            bypass: std::sync::Mutex::new(Vec::new()),
            deadlines: NodeDeadlines::default(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub fn with_cost(mut self, cost: Cost) -> RemoteNode {
        self.cost = cost;
        self
    }

    pub fn with_deadlines(mut self, deadlines: NodeDeadlines) -> RemoteNode {
        self.deadlines = deadlines;
        self
    }

    /// The connection, started as `client` if there is none.
    async fn connection(&self, client: &Uuid) -> Result<ShellGuard<'_>> {
        let mut g = self.conn.lock().await;
        if g.is_none() {
            *g = Some(self.start(client).await?);
        }
        Ok(g)
    }

    async fn start(&self, client: &Uuid) -> Result<Conn> {
        let bypass = self.bypass_list();
        let mut c = self.open(client, Some(Version::from(MAX_VERSION))).await?;
        if c.version() >= 2 && !bypass.is_empty() {
            on_session!(&mut c, s => s.bypass(bypass).await)?;
        }
        Ok(c)
    }

    /// A new connection to the node as `client`, offering `version` (`None`:
    /// no `VERSION`, so the session stays at version 0). The gateway's own
    /// sessions offer the highest; a relay ([`crate::proxy`]) offers its
    /// client's.
    ///
    /// Connecting (and `AUTH`, `VERSION`) must be done within the reply
    /// deadline; every wait of the connection is bounded from then on.
    pub(crate) async fn open(&self, client: &Uuid, version: Option<Version>) -> Result<Conn> {
        let reply = self.deadlines.reply();
        let mut conn = tokio::time::timeout(reply, self.connect(client, version))
            .await
            .map_err(|_| Error::Node {
                node: self.remote.clone(),
                reason: format!("no connection within {}s", reply.as_secs()),
            })??;
        let stall = self.deadlines.stall;
        on_session!(&mut conn, s => s.set_deadlines(stall, reply));
        Ok(conn)
    }

    async fn connect(&self, client: &Uuid, version: Option<Version>) -> Result<Conn> {
        match &self.reach {
            Reach::Shell(shell) => {
                let cmd =
                    shell.command("p2pstdio", &[client.as_str(), "--uuid", self.uuid.as_str()]);
                let (mut c, _) =
                    ShellConnection::spawn(tokio::process::Command::from(cmd), Some(&self.uuid))
                        .await?;
                if let Some(v) = version {
                    c.session.negotiate_version(v).await?;
                }
                Ok(Conn::Shell(Box::new(c)))
            }
            Reach::Mesh(address) => {
                let (key, state_dir) = self
                    .identity
                    .as_ref()
                    .ok_or_else(|| Error::Protocol("no identity to dial with".into()))?;
                let dialer = Dialer::for_repo(state_dir, key)?;
                let token = protocol::AuthToken::parse("")
                    .ok_or_else(|| Error::Protocol("empty token".into()))?;
                let (session, uuid) = dialer
                    .connect_offering(address, client.clone(), token, version)
                    .await?;
                if uuid != self.uuid {
                    return Err(Error::Peer(format!(
                        "{address} answered as {uuid}, not {}",
                        self.uuid
                    )));
                }
                Ok(Conn::Mesh {
                    session: Box::new(session),
                    _dialer: dialer,
                })
            }
        }
    }

    /// The error for a connection that is gone.
    fn lost(&self) -> Error {
        Error::Node {
            node: self.remote.clone(),
            reason: "no connection".into(),
        }
    }

    fn settle<T>(&self, g: &mut ShellGuard<'_>, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            tracing::info!("node {}: {e}", self.remote);
            **g = None;
        }
        r
    }

    pub(super) async fn check_present(&self, client: &Uuid, key: &Key) -> Result<bool> {
        let mut g = self.connection(client).await?;
        let r = match g.as_mut() {
            Some(c) => on_session!(c, s => s.check_present(key).await),
            None => Err(self.lost()),
        };
        self.settle(&mut g, r)
    }

    /// `REMOVE`, or `REMOVE-BEFORE` with the gateway's deadline translated to
    /// the node's clock (the gateway's time left, added to the node's `GETTIMESTAMP`).
    /// Whether the node removed it, and the other repositories it reports as
    /// changed (`SUCCESS-PLUS`/`FAILURE-PLUS`: a cluster via another gateway).
    pub(super) async fn remove(
        &self,
        client: &Uuid,
        key: &Key,
        before: Option<i64>,
    ) -> Result<(bool, Vec<Uuid>)> {
        let mut g = self.connection(client).await?;
        let r = match g.as_mut() {
            Some(c) => on_session!(c, s => match before {
                None => s.remove(key, None).await,
                Some(deadline) => {
                    let left = deadline - crate::clock::monotonic_seconds();
                    if left <= 0 {
                        Ok((false, Vec::new()))
                    } else {
                        match s.get_timestamp().await {
                            Ok(now) => s.remove(key, Some(now + left)).await,
                            Err(e) => Err(e),
                        }
                    }
                }
            }),
            None => Err(self.lost()),
        };
        self.settle(&mut g, r)
    }

    /// Starts a streamed `PUT` of `key`: the node's own offset, or the
    /// other uuids that already have it (its `-PLUS` ones). With `bypass`
    /// (a next-hop gateway's share of a planned PUT), that `BYPASS` is sent
    /// first (version 2+), replacing the one sent on connecting.
    pub(super) async fn put_start(
        &self,
        client: &Uuid,
        key: &Key,
        bypass: Option<Vec<Uuid>>,
    ) -> Result<PutBegin<'_>> {
        let mut g = self.connection(client).await?;
        let r = match g.as_mut() {
            Some(c) => {
                let bypass = bypass.filter(|_| c.version() >= 2);
                on_session!(c, s => async {
                    if let Some(b) = bypass {
                        s.bypass(b).await?;
                    }
                    s.put_stream_start(key, AssociatedFile::none()).await
                }.await)
            }
            None => Err(self.lost()),
        };
        match self.settle(&mut g, r)? {
            PutStart::From(from) => Ok(PutBegin::From(PutTarget {
                node: self,
                guard: g,
                from,
                done: false,
            })),
            PutStart::AlreadyHave(plus) => Ok(PutBegin::AlreadyHave(plus)),
        }
    }

    /// If the node has `key`, starts a relayed `GET` from `offset`: the
    /// transfer and its `DATA` length.
    pub(super) async fn get_start(
        &self,
        client: &Uuid,
        key: &Key,
        offset: u64,
    ) -> Result<Option<(Fetch<'_>, u64)>> {
        let mut g = self.connection(client).await?;
        let r = match g.as_mut() {
            Some(c) => on_session!(c, s => match s.check_present(key).await {
                Ok(true) => s.get_relay_start(key, offset).await.map(Some),
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            }),
            None => Err(self.lost()),
        };
        Ok(self.settle(&mut g, r)?.map(|len| {
            (
                Fetch {
                    node: self,
                    guard: g,
                    done: false,
                },
                len,
            )
        }))
    }
}

/// How a node answered a streamed `PUT`.
pub(super) enum PutBegin<'a> {
    From(PutTarget<'a>),
    AlreadyHave(Vec<Uuid>),
}

/// What the gateway's PUT sends each remote node through its bounded channel.
#[derive(Clone)]
pub(super) enum Feed {
    /// Bytes of the stream starting at this stream position.
    Bytes(u64, Arc<[u8]>),
    /// The stream ended; `VALID` or `INVALID` for the node.
    End { valid: bool },
}

/// A remote node whose `PUT` answered `PUT-FROM from`; it holds the node's
/// connection until the upload ends.
pub(super) struct PutTarget<'a> {
    node: &'a RemoteNode,
    guard: ShellGuard<'a>,
    from: u64,
    /// The request ended cleanly: the connection can serve the next one.
    done: bool,
}

/// A node left mid-request (the session ended, the upload was abandoned)
/// cannot serve another: its connection is dropped.
impl Drop for PutTarget<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.guard = None;
        }
    }
}

impl<'a> PutTarget<'a> {
    pub(super) fn node(&self) -> &'a RemoteNode {
        self.node
    }

    pub(super) fn from(&self) -> u64 {
        self.from
    }

    /// The client did not send `DATA`: the node is mid-request, so its
    /// connection is dropped (the next request starts a new one).
    pub(super) fn abandon(mut self) {
        *self.guard = None;
    }

    /// Sends the node `DATA (end - from)`, then the stream's bytes at and
    /// after `from` as they come through `feed`, then `VALID`/`INVALID`.
    /// Returns the other uuids now holding the content (its `-PLUS` ones),
    /// or `None` if it failed or refused. A closed `feed` without
    /// [`Feed::End`] (the client's data was short) drops the connection; so
    /// does any failure, which closes `feed` and so takes the node out of the
    /// operation without holding up the others.
    pub(super) async fn run(
        mut self,
        end: u64,
        mut feed: tokio::sync::mpsc::Receiver<Feed>,
    ) -> Option<Vec<Uuid>> {
        let from = self.from;
        let key_node = self.node;
        let r: Result<Option<Vec<Uuid>>> = async {
            let Some(conn) = self.guard.as_mut() else {
                return Err(key_node.lost());
            };
            if from > end {
                return Err(Error::Peer(format!(
                    "node resumes at {from}, past the content's end {end}"
                )));
            }
            on_session!(conn, s => s.put_stream_data(end - from).await)?;
            loop {
                match feed.recv().await {
                    Some(Feed::Bytes(start, bytes)) => {
                        let skip =
                            usize::try_from(from.saturating_sub(start)).unwrap_or(usize::MAX);
                        if let Some(part) = bytes.get(skip..)
                            && !part.is_empty()
                        {
                            on_session!(conn, s => s.put_stream_write(part).await)?;
                            crate::net::stats::node_bytes()
                                .sent(key_node.uuid.as_str(), part.len());
                        }
                    }
                    Some(Feed::End { valid }) => {
                        let o = on_session!(conn, s => s.put_stream_finish(valid).await)?;
                        if !o.stored {
                            tracing::info!("node {} refused the content", key_node.remote);
                            return Ok(None);
                        }
                        return Ok(Some(o.also));
                    }
                    None => {
                        return Err(Error::Node {
                            node: key_node.remote.clone(),
                            reason: "upload abandoned".into(),
                        });
                    }
                }
            }
        }
        .await;
        match r {
            Ok(stored) => {
                self.done = true;
                stored
            }
            Err(e) => {
                drop(feed);
                tracing::info!("node {}: {e}", key_node.remote);
                *self.guard = None;
                None
            }
        }
    }
}

/// A relayed `GET` from a remote node, holding its connection.
pub(super) struct Fetch<'a> {
    node: &'a RemoteNode,
    guard: ShellGuard<'a>,
    /// The request ended (cleanly or not, the connection is settled).
    done: bool,
}

/// A relayed `GET` given up mid-request drops the node's connection.
impl Drop for Fetch<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.guard = None;
        }
    }
}

impl Fetch<'_> {
    /// Up to `max` payload bytes as they arrive; empty when the node's stream
    /// ended.
    pub(super) async fn chunk(&mut self, max: u64) -> Result<&[u8]> {
        match self.guard.as_mut() {
            Some(c) => on_session!(c, s => s.relay_chunk(max).await),
            None => Err(self.node.lost()),
        }
    }

    pub(super) fn consume(&mut self, n: usize) {
        if let Some(c) = self.guard.as_mut() {
            on_session!(c, s => s.relay_consume(n));
            crate::net::stats::node_bytes().received(self.node.uuid.as_str(), n);
        }
    }

    /// All bytes relayed: the node's `VALID`/`INVALID`, answered with
    /// `SUCCESS` unless it said `INVALID` (the client verifies the content).
    pub(super) async fn finish(mut self) -> Result<Validity> {
        let r = match self.guard.as_mut() {
            Some(c) => on_session!(c, s => match s.relay_validity().await {
                Ok(v) => s.relay_finish(v != Validity::Invalid).await.map(|()| v),
                Err(e) => Err(e),
            }),
            None => Err(self.node.lost()),
        };
        let node = self.node;
        self.done = true;
        node.settle(&mut self.guard, r)
    }

    /// The node failed mid-transfer: its connection is dropped.
    pub(super) fn fail(mut self, why: &str) {
        tracing::info!("node {} failed mid-GET: {why}", self.node.remote);
        *self.guard = None;
    }
}
