//! The cluster gateway: serves a P2P session for a cluster uuid (annex-spec
//! §4.4–4.8) and answers each request by acting on the cluster's nodes.
//!
//! Local git-annex repositories are written directly through their
//! [`Store`](crate::store::Store)s, with no `git-annex-shell` per node (git-annex
//! starts one per node and connection). A PUT is hashed once here for every
//! local node written from offset 0 ([`StreamCheck`]); a node resuming a
//! partial upload re-hashes its own prefix. Other kinds of node
//! ([`GatewayNode`]): git-annex repositories behind `git-annex-shell p2pstdio`
//! (run directly or over ssh) and annexmesh peers on the mesh, both reached
//! with our client ([`RemoteNode`]), and directory/external special remotes
//! ([`SpecialNode`]).
//!
//! PUT is one pass over the client's bytes, checked once here, and streamed
//! to every target as the bytes arrive: local nodes and directory special
//! remotes (a temp file inside the directory, renamed in once the check
//! passes) are written in the read loop; each remote node has one bounded
//! channel and its own future ([`remote::PutTarget`]), so a slow node holds
//! the stream back while a dead one is dropped from the operation. The
//! `PUT-FROM` sent to the client is the smallest of the targets' offsets
//! (local partials, remote nodes' own `PUT-FROM`s), each node taking the bytes
//! at and after its own. Remote nodes get `VALID` only if the gateway's check
//! accepted the content. The one spool left is for external special remotes,
//! whose `TRANSFER STORE` needs a file: it is written under
//! `annex/tmp/annexmesh-gateway` as the bytes arrive, and handed over once
//! checked.
//!
//! GET reads from the cheapest node holding the key ([`crate::cluster::Cost`]),
//! then the least busy (transfers in flight per node in this process), at
//! random among ties. Remote nodes' `DATA` is relayed as it arrives and
//! directory special remotes are read in place (external ones are fetched to a
//! spool first). A node that fails after k bytes is replaced by the next
//! holder from the same position (`GET pos` for remote nodes); `VALID` goes to
//! the client only if every piece sent was valid.
//!
//! A node's refusal (locked content, a
//! failed write) is a clean `FAILURE` for that node; it is logged through
//! `tracing` at info level (hidden unless `ANNEXMESH_LOG` asks for it), so it
//! never reaches the client's terminal, which sees the shell's stderr.
//!
//! Replies follow git-annex's gateway (transcripts `cluster-*`): `AUTH-SUCCESS
//! <cluster uuid>`, `-PLUS` replies at v2+, `LOCKCONTENT` always `FAILURE`, `GET`
//! of content no node has is `DATA 0` + `INVALID`. Unlike git-annex,
//! `CHECKPRESENT` asks the nodes rather than trusting the gateway's log.
//!
//! `REMOVE-BEFORE` deadlines: the gateway's `GETTIMESTAMP` is this host's
//! monotonic clock, which is also the clock of every local node's store, so a
//! deadline is passed to each node unchanged (no per-node translation needed).

mod remote;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use protocol::logs::catalog::Catalog;
use protocol::logs::presence::Status;
use protocol::logs::view::View;
use protocol::message::{MAX_VERSION, Message, Version};
use protocol::preferred::{self, Facts};
use protocol::routing::Route;
use protocol::server::{
    APPEND_ONLY_ERROR, CloseReason, MAX_AUTH_ATTEMPTS, READ_ONLY_ERROR, ServeMode, Validity,
};
use protocol::{Key, Uuid};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use std::path::PathBuf;

pub(crate) use remote::Conn;
pub use remote::{Reach, RemoteNode};

use crate::cluster::{Cost, NodeStore};
use crate::error::{Error, Result};
use crate::session::{Authenticator, IO_BUFFER, LineRead, read_line};
use crate::special::{DirUpload, SpecialNode};
use crate::store::{Store, Stored, StreamCheck, Upload};

/// A cluster node as the gateway reaches it.
// Local nodes, the common case, stay unboxed; the rare kinds are boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum GatewayNode {
    /// A local repository, written directly through its store (the fast
    /// path), and its cost.
    Local(NodeStore, Cost),
    /// A git-annex repository behind `git-annex-shell p2pstdio`, or an
    /// annexmesh peer on the mesh: reached with our client.
    Remote(Box<RemoteNode>),
    /// A special remote (directory or external program); `LOCKCONTENT` is
    /// `FAILURE`.
    Special(Box<SpecialNode>),
}

impl GatewayNode {
    pub fn uuid(&self) -> &Uuid {
        match self {
            GatewayNode::Local(n, _) => &n.uuid,
            GatewayNode::Remote(n) => &n.uuid,
            GatewayNode::Special(n) => &n.uuid,
        }
    }

    pub fn remote(&self) -> &str {
        match self {
            GatewayNode::Local(n, _) => &n.remote,
            GatewayNode::Remote(n) => &n.remote,
            GatewayNode::Special(n) => &n.remote,
        }
    }

    pub fn cost(&self) -> Cost {
        match self {
            GatewayNode::Local(_, c) => *c,
            GatewayNode::Remote(n) => n.cost,
            GatewayNode::Special(n) => n.cost,
        }
    }
}

/// The order GET tries nodes in (`protocol::routing`): the cheapest path
/// first (a node's cost, which for the cluster through another gateway counts
/// that gateway's hop too), then the least busy in any process serving this
/// gateway (`busy`), then at random among equals. A cluster via a gateway the
/// client bypasses is left out.
fn get_order<'n>(nodes: &'n [GatewayNode], busy_dir: &Path) -> Vec<&'n GatewayNode> {
    let usable: Vec<&GatewayNode> = nodes
        .iter()
        .filter(|n| !matches!(n, GatewayNode::Remote(r) if r.bypassed()))
        .collect();
    let routes: Vec<Route> = usable
        .iter()
        .map(|n| Route {
            cost: n.cost().0,
            busy: u32::try_from(crate::busy::count(busy_dir, n.uuid())).unwrap_or(u32::MAX),
        })
        .collect();
    protocol::routing::rank(&routes, rand::random())
        .into_iter()
        .filter_map(|i| usable.get(i).copied())
        .collect()
}

/// A fresh path under the gateway's `annex/tmp` for content passing through it.
fn spool_path(gateway: &Store, key: &Key, what: &str) -> PathBuf {
    spool_path_in(gateway, "annexmesh-gateway", key, what)
}

/// A fresh path in `annex/tmp/<dir>` of the gateway (here and in `proxy`).
pub(crate) fn spool_path_in(gateway: &Store, dir: &str, key: &Key, what: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    gateway
        .repo()
        .annex_dir()
        .join("tmp")
        .join(dir)
        .join(format!("{}-{n}-{what}-{}", std::process::id(), key.file()))
}

/// A cluster gateway session.
pub struct Gateway<'a> {
    pub cluster: Uuid,
    /// The gateway's own repository: its journal records where content went.
    pub gateway: &'a Store,
    pub nodes: Vec<GatewayNode>,
    /// What the client may do. With `auth`, the mode its `AUTH` is granted
    /// replaces this.
    pub mode: ServeMode,
    /// `None`: the transport authenticated the client (`p2pstdio`), so
    /// `AUTH-SUCCESS` is sent at once. `Some`: the client must send `AUTH`
    /// first (libp2p and other P2P transports).
    pub auth: Option<&'a dyn Authenticator>,
}

/// The client's side of a session served by a gateway (here and in `proxy`).
pub(crate) struct Io<R, W> {
    pub(crate) reader: BufReader<R>,
    pub(crate) writer: BufWriter<W>,
    line: Vec<u8>,
}

pub(crate) fn io_err(e: std::io::Error) -> Error {
    Error::Io {
        context: "p2p stream".into(),
        source: e,
    }
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> Io<R, W> {
    pub(crate) fn new(reader: R, writer: W) -> Self {
        Io {
            reader: BufReader::with_capacity(IO_BUFFER, reader),
            writer: BufWriter::with_capacity(IO_BUFFER, writer),
            line: Vec::with_capacity(256),
        }
    }

    pub(crate) async fn send(&mut self, m: &Message) -> Result<()> {
        self.writer.write_all(&m.to_line()).await.map_err(io_err)
    }

    /// The next message; `Ok(None)` at EOF; an unparsable line is `Some(None)`;
    /// an over-long line is a protocol error.
    pub(crate) async fn next(&mut self) -> Result<Option<Option<Message>>> {
        self.writer.flush().await.map_err(io_err)?;
        match read_line(&mut self.reader, &mut self.line)
            .await
            .map_err(io_err)?
        {
            LineRead::Line => Ok(Some(Message::parse(&self.line).ok())),
            LineRead::Eof => Ok(None),
            LineRead::TooLong => Err(Error::Protocol("over-long line".into())),
        }
    }
}

/// Reads `AUTH` lines until one is granted (`Ok(Ok(mode))`), as the plain
/// server does: `AUTH-FAILURE` for a refused one, `ERROR unexpected command`
/// for anything else, and the session ends after too many failures. A
/// granted `AUTH` is answered `AUTH-SUCCESS <serving>`.
pub(crate) async fn authenticate<R, W>(
    io: &mut Io<R, W>,
    auth: &dyn Authenticator,
    serving: &Uuid,
) -> Result<std::result::Result<ServeMode, CloseReason>>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut failures = 0;
    loop {
        let msg = match io.next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(Err(CloseReason::Eof)),
            Err(Error::Protocol(e)) => return Ok(Err(CloseReason::ProtocolError(e))),
            Err(e) => return Err(e),
        };
        match msg {
            None => io.send(&Message::Error("unknown command".into())).await?,
            Some(Message::Error(e)) => return Ok(Err(CloseReason::ClientError(e))),
            Some(Message::Auth(uuid, token)) => match auth.check(uuid.as_ref(), &token) {
                Some(mode) => {
                    io.send(&Message::AuthSuccess(serving.clone())).await?;
                    return Ok(Ok(mode));
                }
                None => {
                    io.send(&Message::AuthFailure).await?;
                    failures += 1;
                    if failures >= MAX_AUTH_ATTEMPTS {
                        return Ok(Err(CloseReason::TooManyAuthAttempts));
                    }
                }
            },
            Some(_) => {
                io.send(&Message::Error("unexpected command".into()))
                    .await?
            }
        }
    }
}

/// Runs `f` on every item, on its own thread when there are several, off
/// the runtime (see [`off_runtime`]).
fn each_parallel<T: Send, O: Send>(items: Vec<T>, f: impl Fn(T) -> O + Sync) -> Vec<O> {
    off_runtime(|| each_parallel_here(items, f))
}

/// Chunks at least this large are written to the nodes on a thread each;
/// smaller ones (a small file's whole content) are written in turn, as a
/// thread costs more than writing a few KiB to the page cache.
const PARALLEL_WRITE_MIN: usize = 256 << 10;

/// [`each_parallel`] when `parallel`, else in turn on this thread.
fn each_parallel_if<T: Send, O: Send>(
    parallel: bool,
    items: Vec<T>,
    f: impl Fn(T) -> O + Sync,
) -> Vec<O> {
    if parallel {
        each_parallel(items, f)
    } else {
        items.into_iter().map(f).collect()
    }
}

/// Runs blocking disk work (writes, fsyncs, waiting for a group commit)
/// without stalling the runtime's other sessions: on a multi-thread runtime
/// the worker first hands its other tasks to another thread. Elsewhere (the
/// current-thread runtime of `annex-shell`) it simply runs.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn each_parallel_here<T: Send, O: Send>(items: Vec<T>, f: impl Fn(T) -> O + Sync) -> Vec<O> {
    if items.len() <= 1 {
        return items.into_iter().map(&f).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|it| {
                let f = &f;
                s.spawn(move || f(it))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("gateway worker panicked"))
            .collect()
    })
}

/// An upload to one node: its bytes start at `have` in the stream.
struct Target<'n> {
    node: &'n NodeStore,
    upload: Option<Upload>,
    have: u64,
    /// Opened with `begin_unhashed_upload`: committed with the gateway's check.
    unhashed: bool,
}

impl Gateway<'_> {
    fn locals(&self) -> Vec<&NodeStore> {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                GatewayNode::Local(l, _) => Some(l),
                _ => None,
            })
            .collect()
    }

    fn specials(&self) -> Vec<&SpecialNode> {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                GatewayNode::Special(s) => Some(&**s),
                _ => None,
            })
            .collect()
    }

    /// Where transfers in flight are counted (`busy`).
    fn busy_dir(&self) -> PathBuf {
        crate::busy::dir(&self.gateway.repo().annex_dir())
    }

    /// Remote nodes, without the cluster via a gateway the client bypasses.
    fn shells(&self) -> Vec<&RemoteNode> {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                GatewayNode::Remote(s) if !s.bypassed() => Some(&**s),
                _ => None,
            })
            .collect()
    }

    /// `BYPASS`: the client's gateways to avoid, plus this gateway, for every
    /// remote node (annex-spec §4.5).
    fn set_bypass(&self, client: Vec<Uuid>) {
        let mut all = client;
        if !all.contains(self.gateway.uuid()) {
            all.push(self.gateway.uuid().clone());
        }
        for n in &self.nodes {
            if let GatewayNode::Remote(r) = n {
                r.set_bypass(all.clone());
            }
        }
    }

    /// Whether a node has the content (local nodes first: no round trip).
    async fn any_has(&self, key: &Key) -> bool {
        if self.locals().iter().any(|n| n.store.contains(key)) {
            return true;
        }
        for s in self.shells() {
            if matches!(s.check_present(self.gateway.uuid(), key).await, Ok(true)) {
                return true;
            }
        }
        self.specials()
            .iter()
            .any(|s| matches!(s.contains(key), Ok(true)))
    }

    /// Records where content is (or is not) in the gateway's journal: one
    /// journal write for all of `uuids`.
    fn record(&self, key: &Key, uuids: &[Uuid], status: Status) {
        // Cluster uuids are never logged as holding content.
        let uuids: Vec<Uuid> = uuids.iter().filter(|u| !u.is_cluster()).cloned().collect();
        let uuids = uuids.as_slice();
        if uuids.is_empty() {
            return;
        }
        if let Err(e) = self
            .gateway
            .journal()
            .record_presence_many(key, uuids, status)
        {
            tracing::info!("cannot record location of {key}: {e}");
        }
    }

    fn plus_or(&self, version: Version, uuids: Vec<Uuid>, plain: Message) -> Message {
        if version >= 2 {
            match plain {
                Message::Success => Message::SuccessPlus(uuids),
                Message::Failure => Message::FailurePlus(uuids),
                Message::AlreadyHave => Message::AlreadyHavePlus(uuids),
                other => other,
            }
        } else {
            plain
        }
    }

    /// Serves one session to its end.
    pub async fn serve<R, W>(&self, reader: R, writer: W) -> Result<CloseReason>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let mut io = Io::new(reader, writer);
        let reason = self.session(&mut io).await;
        let _ = io.writer.flush().await;
        let _ = io.writer.shutdown().await;
        reason
    }

    async fn session<R, W>(&self, io: &mut Io<R, W>) -> Result<CloseReason>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let mut version: Version = 0;
        // The gateway's branch, read on the first PUT (for the nodes'
        // preferred content) and kept for the session.
        let mut catalog: Option<Catalog> = None;
        self.set_bypass(Vec::new());
        let mode = match self.auth {
            None => {
                io.send(&Message::AuthSuccess(self.cluster.clone())).await?;
                self.mode
            }
            Some(auth) => match authenticate(io, auth, &self.cluster).await? {
                Ok(mode) => mode,
                Err(reason) => return Ok(reason),
            },
        };
        loop {
            let msg = match io.next().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(CloseReason::Eof),
                Err(Error::Protocol(e)) => return Ok(CloseReason::ProtocolError(e)),
                Err(e) => return Err(e),
            };
            let Some(msg) = msg else {
                io.send(&Message::Error("unknown command".into())).await?;
                continue;
            };
            use Message as M;
            match msg {
                M::Error(e) => return Ok(CloseReason::ClientError(e)),
                M::Version(v) => {
                    version = v.min(Version::from(MAX_VERSION));
                    io.send(&M::Version(version)).await?;
                }
                M::Bypass(uuids) => self.set_bypass(uuids),
                M::CheckPresent(key) => {
                    let have = self.any_has(&key).await;
                    io.send(if have { &M::Success } else { &M::Failure })
                        .await?;
                }
                M::LockContent(_) => io.send(&M::Failure).await?,
                M::GetTimestamp => {
                    io.send(&M::Timestamp(crate::clock::monotonic_seconds()))
                        .await?
                }
                M::Remove(key) => self.remove(io, mode, version, key, None).await?,
                M::RemoveBefore(ts, key) => self.remove(io, mode, version, key, Some(ts)).await?,
                M::Put(file, key) => {
                    if mode == ServeMode::ReadOnly {
                        io.send(&M::Error(READ_ONLY_ERROR.into())).await?;
                    } else if let Some(reason) = self
                        .put(io, version, &mut catalog, file.as_deref(), key)
                        .await?
                    {
                        return Ok(reason);
                    }
                }
                M::Get(offset, _file, key) => {
                    if let Some(reason) = self.get(io, version, key, offset).await? {
                        return Ok(reason);
                    }
                }
                M::Connect(_) => {
                    return Ok(CloseReason::Unsupported(
                        "relaying to git not supported on this connection",
                    ));
                }
                M::NotifyChange => {
                    io.send(&M::Error("protocol error".into())).await?;
                    return Ok(CloseReason::ProtocolError("NOTIFYCHANGE".into()));
                }
                _ => io.send(&M::Error("unexpected command".into())).await?,
            }
        }
    }

    async fn remove<R, W>(
        &self,
        io: &mut Io<R, W>,
        mode: ServeMode,
        version: Version,
        key: Key,
        before: Option<i64>,
    ) -> Result<()>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        match mode {
            ServeMode::ReadWrite => {}
            ServeMode::AppendOnly => {
                return io.send(&Message::Error(APPEND_ONLY_ERROR.into())).await;
            }
            ServeMode::ReadOnly => return io.send(&Message::Error(READ_ONLY_ERROR.into())).await,
        }
        let mut results = each_parallel(self.locals(), |n| {
            let r = n.store.remove(&key, before);
            if let Err(e) = &r {
                tracing::info!("remove {key} from node {}: {e}", n.remote);
            }
            (n.uuid.clone(), matches!(r, Ok(true)))
        });
        let me = self.gateway.uuid();
        let shells = self.shells();
        let also_removed = std::sync::Mutex::new(Vec::<Uuid>::new());
        results.extend(
            futures::future::join_all(shells.iter().map(|s| async {
                match s.remove(me, &key, before).await {
                    Ok((ok, also)) => {
                        also_removed.lock().map(|mut a| a.extend(also)).ok();
                        (s.uuid.clone(), ok)
                    }
                    Err(_) => (s.uuid.clone(), false),
                }
            }))
            .await,
        );
        results.extend(each_parallel(self.specials(), |s| {
            // No clock on a special remote: a passed deadline refuses.
            let late = before.is_some_and(|d| crate::clock::monotonic_seconds() >= d);
            let r = if late { Ok(false) } else { s.remove(&key) };
            if let Err(e) = &r {
                tracing::info!("remove {key} from node {}: {e}", s.remote);
            }
            (s.uuid.clone(), matches!(r, Ok(true)))
        }));
        let mut removed: Vec<Uuid> = results
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(u, _)| u.clone())
            .collect();
        for u in also_removed.into_inner().unwrap_or_default() {
            if !removed.contains(&u) {
                removed.push(u);
            }
        }
        let all = results.iter().all(|(_, ok)| *ok) && !results.is_empty();
        self.record(&key, &removed, Status::Absent);
        let plain = if all {
            Message::Success
        } else {
            Message::Failure
        };
        io.send(&self.plus_or(version, removed, plain)).await
    }

    /// Which nodes want `key` for `file` by their preferred content (annex-spec
    /// §4.6 step 1), evaluated as for a node lacking it, with the copies the
    /// gateway's log knows plus `holders`. The branch is read once into
    /// `catalog`; if it cannot be read, every node wants everything. A node
    /// whose expression does not parse wants everything (logged once per
    /// node and expression).
    fn wanting(
        &self,
        catalog: &mut Option<Catalog>,
        file: Option<&str>,
        key: &Key,
        holders: &[Uuid],
    ) -> std::collections::BTreeSet<Uuid> {
        static UNPARSABLE: std::sync::Mutex<Vec<(Uuid, String)>> =
            std::sync::Mutex::new(Vec::new());
        let catalog = catalog.get_or_insert_with(|| {
            crate::branch::read(&self.gateway.repo().git_dir).unwrap_or_else(|e| {
                tracing::info!("cannot read preferred content: {e}");
                Catalog::new()
            })
        });
        let view = View::new(catalog);
        let ctx = preferred::Context::from_view(&view);
        let mut locations: std::collections::BTreeSet<String> =
            view.whereis(key).copies.into_iter().collect();
        locations.extend(holders.iter().map(|u| u.as_str().to_owned()));
        let metadata = view.metadata(key);
        let facts = Facts {
            file,
            key,
            locations: &locations,
            metadata: Some(&metadata),
        };
        self.nodes
            .iter()
            .map(GatewayNode::uuid)
            .filter(|u| match ctx.expression(u.as_str()) {
                None => true,
                Some(Ok(e)) => e.wants(&ctx, u.as_str(), &facts),
                Some(Err(e)) => {
                    let mut seen = UNPARSABLE.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = ((*u).clone(), e.0.clone());
                    if !seen.contains(&entry) {
                        tracing::info!("node {u}: {e}; it is sent everything");
                        if seen.len() >= 256 {
                            seen.clear();
                        }
                        seen.push(entry);
                    }
                    true
                }
            })
            .cloned()
            .collect()
    }

    /// `PUT`: fans the content out to the nodes that lack it and whose
    /// preferred content wants it; if none wants it, to every node lacking it
    /// (git-annex's `proxyPUT` rule, annex-spec §4.6 step 1).
    async fn put<R, W>(
        &self,
        io: &mut Io<R, W>,
        version: Version,
        catalog: &mut Option<Catalog>,
        file: Option<&str>,
        key: Key,
    ) -> Result<Option<CloseReason>>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let me = self.gateway.uuid();
        let (holders, mut lacking): (Vec<&NodeStore>, Vec<&NodeStore>) = self
            .locals()
            .into_iter()
            .partition(|n| n.store.contains(&key));
        let mut holder_uuids: Vec<Uuid> = holders.iter().map(|n| n.uuid.clone()).collect();
        let mut lacking_shells: Vec<&RemoteNode> = Vec::new();
        for s in self.shells() {
            match s.check_present(me, &key).await {
                Ok(true) => holder_uuids.push(s.uuid.clone()),
                Ok(false) => lacking_shells.push(s),
                Err(_) => {}
            }
        }
        let mut lacking_specials: Vec<&SpecialNode> = Vec::new();
        for s in self.specials() {
            match s.contains(&key) {
                Ok(true) => holder_uuids.push(s.uuid.clone()),
                Ok(false) => lacking_specials.push(s),
                Err(e) => tracing::info!("node {}: {e}", s.remote),
            }
        }
        self.record(&key, &holder_uuids, Status::Present);
        if lacking.is_empty()
            && lacking_shells.is_empty()
            && lacking_specials.is_empty()
            && !holder_uuids.is_empty()
        {
            io.send(&self.plus_or(version, holder_uuids, Message::AlreadyHave))
                .await?;
            return Ok(None);
        }
        let wanting = self.wanting(catalog, file, &key, &holder_uuids);
        if lacking.iter().any(|n| wanting.contains(&n.uuid))
            || lacking_shells.iter().any(|s| wanting.contains(&s.uuid))
            || lacking_specials.iter().any(|s| wanting.contains(&s.uuid))
        {
            lacking.retain(|n| wanting.contains(&n.uuid));
            lacking_shells.retain(|s| wanting.contains(&s.uuid));
            lacking_specials.retain(|s| wanting.contains(&s.uuid));
        }
        let _busy: Vec<crate::busy::Busy> = lacking
            .iter()
            .map(|n| &n.uuid)
            .chain(lacking_shells.iter().map(|s| &s.uuid))
            .chain(lacking_specials.iter().map(|s| &s.uuid))
            .map(|u| crate::busy::start(&self.busy_dir(), u))
            .collect();
        let mut targets: Vec<Target> = lacking
            .into_iter()
            .filter_map(|n| {
                // A node resuming a partial upload re-hashes its own prefix
                // (the gateway never saw those bytes); a node starting at 0 is
                // written unhashed and committed with the gateway's one check.
                let have = n.store.partial_size(&key);
                let opened = if have == 0 {
                    n.store.begin_unhashed_upload(&key)
                } else {
                    n.store.begin_upload(&key, have)
                };
                match opened {
                    Ok(up) => Some(Target {
                        node: n,
                        have: up.len(),
                        unhashed: have == 0,
                        upload: Some(up),
                    }),
                    Err(e) => {
                        tracing::info!("node {} cannot take {key}: {e}", n.remote);
                        None
                    }
                }
            })
            .collect();
        // Remote nodes: each answers our PUT with its own offset (or already
        // has the content, like a holder).
        let mut remotes: Vec<remote::PutTarget> = Vec::new();
        let begun =
            futures::future::join_all(lacking_shells.iter().map(|s| s.put_start(me, &key))).await;
        for b in begun {
            match b {
                Ok(remote::PutBegin::From(t)) => remotes.push(t),
                Ok(remote::PutBegin::AlreadyHave(uuids)) => holder_uuids.extend(uuids),
                Err(_) => {}
            }
        }
        // Directory special remotes are written in place from 0; external ones
        // get a spool file (their TRANSFER STORE needs one), also from 0.
        let mut dirs: Vec<(&SpecialNode, Option<DirUpload>)> = Vec::new();
        let mut externals: Vec<&SpecialNode> = Vec::new();
        for s in lacking_specials.iter().copied() {
            match s.begin_dir_upload(&key) {
                Ok(Some(up)) => dirs.push((s, Some(up))),
                Ok(None) => externals.push(s),
                Err(e) => tracing::info!("node {} cannot take {key}: {e}", s.remote),
            }
        }
        let mut spool = if externals.is_empty() {
            None
        } else {
            let path = spool_path(self.gateway, &key, "put");
            match std::fs::File::create(&path).or_else(|_| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::File::create(&path)
            }) {
                Ok(f) => Some((path, f)),
                Err(e) => {
                    tracing::info!("cannot spool {key}: {e}");
                    None
                }
            }
        };
        let from_zero = spool.is_some() || !dirs.is_empty();
        let offset = targets
            .iter()
            .map(|t| t.have)
            .chain(remotes.iter().map(|r| r.from()))
            .chain(from_zero.then_some(0))
            .min()
            .unwrap_or(0);
        // Hash once here, for every node taking the stream from 0.
        let mut check = (offset == 0).then(|| StreamCheck::new(&key));
        io.send(&Message::PutFrom(offset)).await?;
        let len = match io.next().await {
            Ok(Some(Some(Message::Data(len)))) => len,
            Ok(Some(Some(Message::DataPresent))) if version >= 4 => {
                // The client says the content is already here: it is if a node has it.
                drop(targets);
                drop(dirs);
                remotes.into_iter().for_each(remote::PutTarget::abandon);
                if let Some((path, _)) = spool.take() {
                    let _ = std::fs::remove_file(path);
                }
                let mut have: Vec<Uuid> = self
                    .locals()
                    .iter()
                    .filter(|n| n.store.confirm_present(&key))
                    .map(|n| n.uuid.clone())
                    .collect();
                for s in &lacking_shells {
                    if matches!(s.check_present(me, &key).await, Ok(true)) {
                        have.push(s.uuid.clone());
                    }
                }
                for s in &lacking_specials {
                    if matches!(s.contains(&key), Ok(true)) {
                        have.push(s.uuid.clone());
                    }
                }
                self.record(&key, &have, Status::Present);
                let plain = if have.is_empty() {
                    Message::Failure
                } else {
                    Message::Success
                };
                io.send(&self.plus_or(version, have, plain)).await?;
                return Ok(None);
            }
            other => {
                remotes.into_iter().for_each(remote::PutTarget::abandon);
                if let Some((path, _)) = spool.take() {
                    let _ = std::fs::remove_file(path);
                }
                return match other {
                    Ok(Some(_)) => {
                        io.send(&Message::Error("expected DATA".into())).await?;
                        Ok(None)
                    }
                    Ok(None) => Ok(Some(CloseReason::ProtocolError(
                        "connection closed mid-request".into(),
                    ))),
                    Err(Error::Protocol(e)) => Ok(Some(CloseReason::ProtocolError(e))),
                    Err(e) => Err(e),
                };
            }
        };
        let end = offset.saturating_add(len);
        // One bounded channel and one future per remote node.
        let mut feeds = Vec::new();
        let mut runs = Vec::new();
        for r in remotes {
            let (tx, rx) = tokio::sync::mpsc::channel::<remote::Feed>(FEED_DEPTH);
            feeds.push((r.node(), tx));
            runs.push(r.run(end, rx));
        }
        let produce = async {
            // Read the payload once; each chunk goes to every local node (in
            // parallel), every directory remote and the spool, then to each
            // remote node's channel. The next chunk is read only when every
            // local node has written this one and every remote channel took it.
            let mut pos = offset;
            let mut complete = true;
            while pos < end {
                let avail = io.reader.fill_buf().await.map_err(io_err)?;
                if avail.is_empty() {
                    complete = false;
                    break;
                }
                let n = avail
                    .len()
                    .min(usize::try_from(end - pos).unwrap_or(usize::MAX));
                let chunk = &avail[..n];
                let chunk_start = pos;
                if let Some((path, f)) = spool.as_mut() {
                    use std::io::Write;
                    if let Err(e) = f.write_all(chunk) {
                        tracing::info!("spooling {key} to {}: {e}", path.display());
                        let _ = std::fs::remove_file(path);
                        spool = None;
                    }
                }
                if let Some(c) = check.as_mut()
                    && let Err(e) = c.update(chunk)
                {
                    tracing::info!("hashing {key}: {e}");
                    check = None;
                }
                for (s, up) in dirs.iter_mut() {
                    if let Some(u) = up
                        && let Err(e) = u.write(chunk)
                    {
                        tracing::info!("node {} cannot store {key}: {e}", s.remote);
                        *up = None;
                    }
                }
                let work: Vec<&mut Target> = targets
                    .iter_mut()
                    .filter(|t| t.upload.is_some() && t.have < chunk_start + n as u64)
                    .collect();
                each_parallel_if(n >= PARALLEL_WRITE_MIN, work, |t| {
                    let skip = usize::try_from(t.have.saturating_sub(chunk_start)).unwrap_or(0);
                    let Some(up) = t.upload.as_mut() else {
                        return;
                    };
                    if let Err(e) = up.write(&chunk[skip..]) {
                        tracing::info!("node {} cannot store {}: {e}", t.node.remote, up.key());
                        t.upload = None;
                    }
                    t.have = chunk_start + n as u64;
                });
                if !feeds.is_empty() {
                    let shared: Arc<[u8]> = Arc::from(chunk);
                    feed_all(&mut feeds, remote::Feed::Bytes(chunk_start, shared)).await;
                }
                io.reader.consume(n);
                pos += n as u64;
            }
            if !complete {
                // Closing the channels without an end drops the remote nodes'
                // connections: they never see VALID.
                feeds.clear();
                return Ok(Err(CloseReason::ProtocolError("short DATA".into())));
            }
            let validity = if version >= 1 {
                match io.next().await {
                    Ok(Some(Some(Message::Valid))) => Validity::Valid,
                    Ok(Some(Some(Message::Invalid))) => Validity::Invalid,
                    Ok(Some(_)) => {
                        io.send(&Message::Error("expected VALID or INVALID".into()))
                            .await?;
                        Validity::Unknown
                    }
                    Ok(None) => {
                        feeds.clear();
                        return Ok(Err(CloseReason::ProtocolError(
                            "connection closed mid-request".into(),
                        )));
                    }
                    Err(Error::Protocol(e)) => {
                        feeds.clear();
                        return Ok(Err(CloseReason::ProtocolError(e)));
                    }
                    Err(e) => return Err(e),
                }
            } else {
                Validity::Unknown
            };
            let checked = match check.take().map(StreamCheck::finish) {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    tracing::info!("hashing {key}: {e}");
                    None
                }
                None => None,
            };
            // Remote nodes get VALID only if the gateway's check accepted the
            // content; a stream that started past 0 was not checked here, so
            // they get the client's word (and check it themselves).
            let good = match &checked {
                Some(c) => c.verdict().accepted_given(validity),
                None => offset > 0 && validity != Validity::Invalid,
            };
            feed_all(&mut feeds, remote::Feed::End { valid: good }).await;
            feeds.clear();
            Ok::<_, Error>(Ok((validity, checked)))
        };
        let (produced, remote_done) = futures::join!(produce, futures::future::join_all(runs));
        let (validity, checked) = match produced {
            Ok(Ok(v)) => v,
            Ok(Err(reason)) => {
                if let Some((path, _)) = spool.take() {
                    let _ = std::fs::remove_file(path);
                }
                io.send(&Message::Failure).await?;
                return Ok(Some(reason));
            }
            Err(e) => {
                if let Some((path, _)) = spool.take() {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        let stored: Vec<Uuid> = each_parallel(targets, |t| {
            let up = t.upload?;
            let done = if t.unhashed {
                match &checked {
                    Some(c) => t.node.store.commit_checked(up, c, validity),
                    None => Err(Error::Protocol("the gateway's check failed".into())),
                }
            } else {
                t.node.store.commit(up, validity)
            };
            match done {
                Ok(Stored::Stored) => Some(t.node.uuid.clone()),
                Ok(other) => {
                    tracing::info!("node {} refused {key}: {other:?}", t.node.remote);
                    None
                }
                Err(e) => {
                    tracing::info!("node {} storing {key}: {e}", t.node.remote);
                    None
                }
            }
        })
        .into_iter()
        .flatten()
        .collect();
        let mut stored = stored;
        for uuids in remote_done.into_iter().flatten() {
            for u in uuids {
                if !stored.contains(&u) {
                    stored.push(u);
                }
            }
        }
        // Directory remotes and the spool were written from 0: checked here.
        let checked_good = checked
            .as_ref()
            .is_some_and(|c| c.verdict().accepted_given(validity));
        for (s, up) in dirs {
            let Some(up) = up else { continue };
            if !checked_good {
                continue;
            }
            match up.commit() {
                Ok(()) => stored.push(s.uuid.clone()),
                Err(e) => tracing::info!("node {} storing {key}: {e}", s.remote),
            }
        }
        if let Some((path, f)) = spool.take() {
            drop(f);
            if checked_good {
                let path = &path;
                let done = each_parallel(externals, |s| match s.store(&key, path) {
                    Ok(true) => Some(s.uuid.clone()),
                    Ok(false) => {
                        tracing::info!("node {} refused {key}", s.remote);
                        None
                    }
                    Err(e) => {
                        tracing::info!("node {} storing {key}: {e}", s.remote);
                        None
                    }
                });
                stored.extend(done.into_iter().flatten());
            }
            let _ = std::fs::remove_file(&path);
        }
        off_runtime(|| self.record(&key, &stored, Status::Present));
        if stored.is_empty() {
            io.send(&Message::Failure).await?;
        } else {
            let mut all = stored;
            for u in holder_uuids {
                if !all.contains(&u) {
                    all.push(u);
                }
            }
            io.send(&self.plus_or(version, all, Message::Success))
                .await?;
        }
        Ok(None)
    }

    /// `GET`: streams the content from the cheapest, least busy node that has
    /// it, continuing on the next one from the same position if a node fails
    /// mid-transfer.
    async fn get<R, W>(
        &self,
        io: &mut Io<R, W>,
        version: Version,
        key: Key,
        offset: u64,
    ) -> Result<Option<CloseReason>>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let me = self.gateway.uuid();
        let mut out = Outgoing {
            offset,
            pos: offset,
            size: None,
            valid: true,
        };
        let mut buf = vec![0u8; IO_BUFFER];
        for node in get_order(&self.nodes, &self.busy_dir()) {
            if out.size.is_some_and(|s| out.pos >= s) {
                break;
            }
            let _busy = crate::busy::start(&self.busy_dir(), node.uuid());
            match node {
                GatewayNode::Local(n, _) => {
                    if !n.store.contains(&key) {
                        continue;
                    }
                    let opened = n.store.open_content(&key).map_err(|e| e.to_string());
                    out.send_file(io, &key, &n.remote, opened, &mut buf).await?;
                }
                GatewayNode::Special(s) => match &s.special {
                    crate::special::Special::Directory(_) => {
                        let opened = s.open_dir_content(&key).map_err(|e| e.to_string());
                        if matches!(opened, Ok(None)) {
                            continue;
                        }
                        out.send_file(io, &key, &s.remote, opened, &mut buf).await?;
                    }
                    crate::special::Special::External { .. } => {
                        // TRANSFER RETRIEVE writes a file: spooled, then sent.
                        if !matches!(s.contains(&key), Ok(true)) {
                            continue;
                        }
                        let dest = spool_path(self.gateway, &key, "get");
                        if let Some(dir) = dest.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        let opened = match s.retrieve(&key, &dest) {
                            Ok(true) => std::fs::File::open(&dest)
                                .and_then(|f| Ok(Some((f.metadata()?.len(), f))))
                                .map(|o| o.map(|(len, f)| (f, len)))
                                .map_err(|e| e.to_string()),
                            Ok(false) => Ok(None),
                            Err(e) => Err(e.to_string()),
                        };
                        let sent = out.send_file(io, &key, &s.remote, opened, &mut buf).await;
                        let _ = std::fs::remove_file(&dest);
                        sent?;
                    }
                },
                GatewayNode::Remote(r) => {
                    let (mut fetch, len) = match r.get_start(me, &key, out.pos).await {
                        Ok(Some(f)) => f,
                        Ok(None) | Err(_) => continue,
                    };
                    let total = out.pos.saturating_add(len);
                    if out.size.or(key.size()).is_some_and(|s| s != total) {
                        fetch.fail(&format!("offers {total} bytes of {key}"));
                        continue;
                    }
                    out.start(io, total).await?;
                    let mut failed = None;
                    while out.pos < total {
                        let chunk = match fetch.chunk(total - out.pos).await {
                            Ok(c) if !c.is_empty() => c,
                            Ok(_) => {
                                failed = Some("its stream ended".to_owned());
                                break;
                            }
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        };
                        io.writer.write_all(chunk).await.map_err(io_err)?;
                        let n = chunk.len();
                        fetch.consume(n);
                        out.pos += n as u64;
                    }
                    match failed {
                        Some(why) => fetch.fail(&why),
                        None => match fetch.finish().await {
                            Ok(v) => out.valid &= v != Validity::Invalid,
                            Err(e) => tracing::info!("node {} finishing GET: {e}", r.remote),
                        },
                    }
                }
            }
        }
        let Some(size) = out.size else {
            io.send(&Message::Data(0)).await?;
            if version >= 1 {
                io.send(&Message::Invalid).await?;
            }
            return self.await_get_result(io).await;
        };
        if out.pos < size {
            // No node could finish: there is no in-band abort.
            return Ok(Some(CloseReason::ProtocolError(format!(
                "no node could send all of {key}"
            ))));
        }
        if version >= 1 {
            io.send(if out.valid {
                &Message::Valid
            } else {
                &Message::Invalid
            })
            .await?;
        }
        self.await_get_result(io).await
    }

    async fn await_get_result<R, W>(&self, io: &mut Io<R, W>) -> Result<Option<CloseReason>>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        match io.next().await {
            Ok(Some(Some(
                Message::Success
                | Message::Failure
                | Message::SuccessPlus(_)
                | Message::FailurePlus(_),
            ))) => Ok(None),
            Ok(Some(_)) => {
                io.send(&Message::Error("expected SUCCESS or FAILURE".into()))
                    .await?;
                Ok(None)
            }
            Ok(None) => Ok(Some(CloseReason::ProtocolError(
                "connection closed mid-request".into(),
            ))),
            Err(Error::Protocol(e)) => Ok(Some(CloseReason::ProtocolError(e))),
            Err(e) => Err(e),
        }
    }
}

/// How deep each remote node's channel is during a PUT, in chunks of at most
/// [`IO_BUFFER`] bytes.
const FEED_DEPTH: usize = 4;

/// Sends `item` to every remote node's channel, waiting for room (a slow node
/// holds the stream back); a node whose channel closed (it failed) is dropped.
async fn feed_all(
    feeds: &mut Vec<(&RemoteNode, tokio::sync::mpsc::Sender<remote::Feed>)>,
    item: remote::Feed,
) {
    let mut i = 0;
    while i < feeds.len() {
        if feeds[i].1.send(item.clone()).await.is_ok() {
            i += 1;
        } else {
            let (node, _) = feeds.swap_remove(i);
            tracing::info!("node {} dropped out of the upload", node.remote);
        }
    }
}

/// A GET's reply to the client in progress.
struct Outgoing {
    /// The client's offset.
    offset: u64,
    /// How far the content has been sent.
    pos: u64,
    /// The content's size, once `DATA` was sent.
    size: Option<u64>,
    valid: bool,
}

impl Outgoing {
    /// Sends `DATA` for content of `size` bytes, unless already sent.
    async fn start<R, W>(&mut self, io: &mut Io<R, W>, size: u64) -> Result<()>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        if self.size.is_none() {
            self.size = Some(size);
            self.pos = self.offset.min(size);
            io.send(&Message::Data(size.saturating_sub(self.offset)))
                .await?;
        }
        Ok(())
    }

    /// Sends the rest of the content from a node's file. A node whose file
    /// has the wrong size is skipped; one that fails midway leaves `pos` where
    /// it stopped, for the next node.
    async fn send_file<R, W>(
        &mut self,
        io: &mut Io<R, W>,
        key: &Key,
        node: &str,
        opened: std::result::Result<Option<(std::fs::File, u64)>, String>,
        buf: &mut [u8],
    ) -> Result<()>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let (file, len) = match opened {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::info!("node {node} cannot send {key}: {e}");
                return Ok(());
            }
        };
        // The key's own size when it has one: a node holding a damaged copy
        // of another size is skipped for the next one.
        let size = self.size.or(key.size()).unwrap_or(len);
        if len != size {
            tracing::info!("node {node} has {len} bytes of {key}, expected {size}");
            return Ok(());
        }
        self.start(io, size).await?;
        match send_from(&mut io.writer, file, &mut self.pos, size, buf).await {
            Ok(stable) => self.valid &= stable,
            Err(SendError::Stream(e)) => return Err(io_err(e)),
            Err(SendError::Node(e)) => tracing::info!("node {node} failed sending {key}: {e}"),
        }
        Ok(())
    }
}

enum SendError {
    Stream(std::io::Error),
    Node(String),
}

/// Sends bytes `[*pos, size)` of the node's content, advancing `*pos` as they
/// go out. Returns whether the content stayed the same size while read.
async fn send_from<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    mut file: std::fs::File,
    pos: &mut u64,
    size: u64,
    buf: &mut [u8],
) -> std::result::Result<bool, SendError> {
    let node = |e: &dyn std::fmt::Display| SendError::Node(e.to_string());
    file.seek(SeekFrom::Start(*pos)).map_err(|e| node(&e))?;
    while *pos < size {
        let n = buf
            .len()
            .min(usize::try_from(size - *pos).unwrap_or(usize::MAX));
        let got = file.read(&mut buf[..n]).map_err(|e| node(&e))?;
        if got == 0 {
            return Err(SendError::Node("content shrank".into()));
        }
        writer
            .write_all(&buf[..got])
            .await
            .map_err(SendError::Stream)?;
        *pos += got as u64;
    }
    let after = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(after == size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::AuthToken;
    use tokio::io::AsyncReadExt;

    const HELLO: &str =
        "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt";

    /// A gateway G with two local nodes N0, N1 and a cluster uuid.
    fn two_nodes(dir: &std::path::Path) -> (Store, Vec<NodeStore>, Uuid) {
        let g = repo(&dir.join("G"), "99999999-9999-4999-8999-999999999999");
        let nodes = [
            "11111111-1111-4111-8111-111111111111",
            "22222222-2222-4222-8222-222222222222",
        ]
        .iter()
        .enumerate()
        .map(|(i, u)| NodeStore {
            uuid: Uuid::parse(u).expect("uuid"),
            remote: format!("N{i}"),
            store: repo(&dir.join(format!("N{i}")), u),
        })
        .collect();
        let cluster = Uuid::parse("ac525812-b24e-81d5-ad3f-c2acde9c9b05").expect("uuid");
        (g, nodes, cluster)
    }

    fn repo(dir: &std::path::Path, uuid: &str) -> Store {
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .output()
                .map(|o| o.status.success());
            assert!(matches!(ok, Ok(true)), "git {args:?}");
        };
        std::fs::create_dir_all(dir).expect("mkdir");
        git(&["init", "-q"]);
        git(&["config", "annex.uuid", uuid]);
        Store::open(dir).expect("open store")
    }

    struct Token;
    impl Authenticator for Token {
        fn check(&self, _client: Option<&Uuid>, token: &AuthToken) -> Option<ServeMode> {
            (token.as_str() == "good").then_some(ServeMode::ReadWrite)
        }
    }

    async fn session(gw: &Gateway<'_>, input: &[u8]) -> String {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (sr, sw) = tokio::io::split(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        let drive = async {
            cw.write_all(input).await.expect("write");
            cw.shutdown().await.expect("shutdown");
            let mut out = Vec::new();
            cr.read_to_end(&mut out).await.expect("read");
            out
        };
        let (served, out) = tokio::join!(gw.serve(sr, sw), drive);
        served.expect("session");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn auth_put_get_remove() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (g, nodes, cluster) = two_nodes(tmp.path());
        let gw = Gateway {
            cluster: cluster.clone(),
            gateway: &g,
            nodes: nodes
                .iter()
                .cloned()
                .map(|n| GatewayNode::Local(n, Cost::CHEAP))
                .collect(),
            mode: ServeMode::ReadOnly,
            auth: Some(&Token),
        };
        let client = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";
        let out = session(
            &gw,
            format!(
                "VERSION 4\nAUTH {client} bad\nAUTH {client} good\nVERSION 4\n\
                 PUT x {HELLO}\nDATA 6\nhello\nVALID\nCHECKPRESENT {HELLO}\nGET 2 x {HELLO}\nSUCCESS\n\
                 LOCKCONTENT {HELLO}\nREMOVE {HELLO}\nCHECKPRESENT {HELLO}\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!(
                "ERROR unexpected command\nAUTH-FAILURE\nAUTH-SUCCESS {cluster}\nVERSION 4\n\
                 PUT-FROM 0\nSUCCESS-PLUS 11111111-1111-4111-8111-111111111111 22222222-2222-4222-8222-222222222222\n\
                 SUCCESS\nDATA 4\nllo\nVALID\nFAILURE\n\
                 SUCCESS-PLUS 11111111-1111-4111-8111-111111111111 22222222-2222-4222-8222-222222222222\n\
                 FAILURE\n"
            )
        );
        let key = Key::parse(HELLO).expect("key");
        assert!(nodes.iter().all(|n| !n.store.contains(&key)));
        // The gateway's log has the nodes' lines, never the cluster's.
        let log = g
            .journal()
            .read(&protocol::logs::presence::location_log_path(&key))
            .expect("log");
        let log = String::from_utf8_lossy(&log);
        assert!(
            log.contains("11111111-1111-4111-8111-111111111111"),
            "{log}"
        );
        assert!(!log.contains(cluster.as_str()), "{log}");

        // Preauthenticated read-only: PUT is refused in words.
        let gw = Gateway { auth: None, ..gw };
        let out = session(&gw, format!("VERSION 1\nPUT x {HELLO}\n").as_bytes()).await;
        assert_eq!(
            out,
            format!("AUTH-SUCCESS {cluster}\nVERSION 1\nERROR {READ_ONLY_ERROR}\n")
        );
    }

    #[test]
    fn get_order_is_by_cost_then_idleness() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (_g, nodes, _) = two_nodes(tmp.path());
        let busy_dir = crate::busy::dir(tmp.path());
        let order = |costs: [f64; 2]| -> Vec<String> {
            let gw: Vec<GatewayNode> = nodes
                .iter()
                .zip(costs)
                .map(|(n, c)| GatewayNode::Local(n.clone(), Cost(c)))
                .collect();
            get_order(&gw, &busy_dir)
                .into_iter()
                .map(|n| n.remote().to_owned())
                .collect()
        };
        // N0 busy with a transfer (of any process): at the same cost, idle N1
        // comes first; a cheaper N0 still wins.
        let busy = crate::busy::start(&busy_dir, &nodes[0].uuid);
        assert_eq!(crate::busy::count(&busy_dir, &nodes[0].uuid), 1);
        for _ in 0..8 {
            assert_eq!(order([100.0, 100.0]), ["N1", "N0"]);
            assert_eq!(order([50.0, 100.0]), ["N0", "N1"]);
        }
        drop(busy);
        assert_eq!(crate::busy::count(&busy_dir, &nodes[0].uuid), 0);
        assert_eq!(order([100.0, 60.0]), ["N1", "N0"]);
    }

    #[tokio::test]
    async fn put_hashes_once_and_resuming_nodes_check_their_prefix() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (g, nodes, cluster) = two_nodes(tmp.path());
        let gw = Gateway {
            cluster: cluster.clone(),
            gateway: &g,
            nodes: nodes
                .iter()
                .cloned()
                .map(|n| GatewayNode::Local(n, Cost::CHEAP))
                .collect(),
            mode: ServeMode::ReadWrite,
            auth: None,
        };
        let key = Key::parse(HELLO).expect("key");
        // Bad content: the gateway's one check refuses it on every node.
        let out = session(
            &gw,
            format!("VERSION 4\nPUT x {HELLO}\nDATA 6\njello\nVALID\n").as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!("AUTH-SUCCESS {cluster}\nVERSION 4\nPUT-FROM 0\nFAILURE\n")
        );
        assert!(nodes.iter().all(|n| !n.store.contains(&key)));
        assert!(nodes.iter().all(|n| n.store.partial_size(&key) == 0));
        // N0 holds a corrupt 3-byte prefix, N1 nothing: the stream starts at 0,
        // N1 is vouched for by the gateway, N0 re-hashes its prefix and refuses.
        let mut up = nodes[0].store.begin_upload(&key, 0).expect("upload");
        up.write(b"jel").expect("write");
        drop(up);
        let out = session(
            &gw,
            format!("VERSION 4\nPUT x {HELLO}\nDATA 6\nhello\nVALID\n").as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!(
                "AUTH-SUCCESS {cluster}\nVERSION 4\nPUT-FROM 0\nSUCCESS-PLUS {}\n",
                nodes[1].uuid
            )
        );
        assert!(!nodes[0].store.contains(&key));
        assert!(nodes[1].store.contains(&key));
        // A good prefix on N0: the stream resumes at 3 and N0 stores it.
        let mut up = nodes[0].store.begin_upload(&key, 0).expect("upload");
        up.write(b"hel").expect("write");
        drop(up);
        let out = session(
            &gw,
            format!("VERSION 4\nPUT x {HELLO}\nDATA 3\nlo\nVALID\n").as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!(
                "AUTH-SUCCESS {cluster}\nVERSION 4\nPUT-FROM 3\nSUCCESS-PLUS {} {}\n",
                nodes[0].uuid, nodes[1].uuid
            )
        );
        assert!(nodes[0].store.contains(&key));
    }
}
