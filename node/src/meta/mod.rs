//! Shared metadata over the mesh: git-annex's branch logs as a CRDT
//! ([`protocol::logs::catalog::Catalog`]), spread two ways.
//!
//! * **Gossip** (gossipsub topic [`META_TOPIC`]): every local change is published
//!   at once as a small delta (the changed files' winning lines, CBOR, batched
//!   below [`MAX_DELTA`]). Deltas are accepted only from authorized peers.
//! * **Anti-entropy** ([`SYNC_PROTOCOL`]): on every new connection and
//!   periodically, two peers compare a two-level digest of their catalogs
//!   (256 buckets, then 256 sub-buckets of the buckets that differ) and send each
//!   other the files of the sub-buckets that differ. A peer that was offline,
//!   cut off or brand new converges with one exchange.
//!
//! Merging is the CRDT join, so order, duplication and loss do not matter.
//! Received changes are written to the repository's `git-annex` branch in
//! batches by [`Persist`].

pub mod health;
pub mod keeper;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use protocol::logs::authorize::{self, Author, Authority};
use protocol::logs::catalog::Catalog;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::error::{Error, Result};
use crate::members::Members;
use crate::net::{Net, NetEvent};
use crate::store::StoreObserver;
use protocol::logs::members::MEMBERS_LOG;
use protocol::server::ServeMode;

pub const META_TOPIC: &str = "annexmesh/meta/1";
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/annexmesh/sync/1");

/// Largest delta published (below gossipsub's transmit limit).
pub const MAX_DELTA: usize = 200 * 1024;
/// Largest sync frame accepted.
const MAX_FRAME: usize = 8 << 20;
/// Files per sync frame.
const FILES_PER_FRAME: usize = 2000;
/// Longest branch path and log line accepted from a peer.
const MAX_PATH: usize = 1024;
const MAX_LINE: usize = 32 * 1024;

/// Who may change our metadata.
#[derive(Debug, Clone)]
pub enum Allowed {
    Any,
    Peers(HashSet<PeerId>),
    /// The mesh's members as the membership log says now (and the peers
    /// fixed by grants and configuration); recomputed on every change.
    Members(Arc<Members>),
}

impl Allowed {
    fn permits(&self, peer: Option<&PeerId>) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Peers(set) => peer.is_some_and(|p| set.contains(p)),
            Allowed::Members(m) => peer.is_some_and(|p| m.trusts(p)),
        }
    }

    /// Who a change from `peer` counts as, for [`authorize`]: a member with
    /// its uuid and role; a peer fixed by a read-write or append-only grant
    /// or by the configuration, with no membership line, is unrestricted (as
    /// before membership); a read-only grant and anyone else write nothing.
    fn author(&self, peer: Option<&PeerId>) -> Author {
        match self {
            Allowed::Any | Allowed::Peers(_) => Author::Unrestricted,
            Allowed::Members(m) => {
                let Some(p) = peer else {
                    return Author::Outsider;
                };
                match (m.uuid_of(p), m.role(p)) {
                    (Some(uuid), Some(role)) => Author::Member { uuid, role },
                    _ if m.fixed_role(p) == Some(ServeMode::ReadOnly) => Author::Outsider,
                    _ if m.trusts(p) => Author::Unrestricted,
                    _ => Author::Outsider,
                }
            }
        }
    }
}

/// Files that anti-entropy merges and gossip then spreads on: small, and
/// needed at once by members that have not met the sender yet.
const REPUBLISHED: [&str; 2] = [MEMBERS_LOG, protocol::logs::view::ADDRESSES_LOG];

/// Files whose change from a peer is persisted at once, not at the next
/// tick: what other processes (a gateway following the topology, an
/// annex-shell session routing) read from the branch.
const URGENT: [&str; 4] = [
    MEMBERS_LOG,
    protocol::cluster::TOPOLOGY_LOG,
    "proxy.log",
    "cluster.log",
];

/// Where merged changes go (the repository's git-annex branch, in the daemon).
pub trait Persist: Send + Sync {
    /// Stores the given files' merged contents.
    fn persist(&self, files: &[(String, Vec<u8>)]) -> Result<()>;
}

#[derive(Debug, Clone)]
pub struct MetaOptions {
    pub allowed: Allowed,
    /// How often to run anti-entropy with a random connected peer.
    pub sync_interval: Duration,
    /// How often to persist received changes.
    pub persist_interval: Duration,
}

impl Default for MetaOptions {
    fn default() -> Self {
        MetaOptions {
            allowed: Allowed::Any,
            sync_interval: Duration::from_secs(30),
            persist_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Delta {
    files: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Level1(Vec<u64>),
    Level2(Vec<(u8, Vec<u64>)>),
    Files(Vec<(String, Vec<String>)>),
    Done,
}

struct State {
    catalog: Catalog,
    /// Paths changed by peers and not yet persisted.
    dirty: BTreeSet<String>,
    /// Per-path hash, for digests; kept in step with the catalog.
    hashes: BTreeMap<String, u64>,
}

/// What the metadata service did, for metrics.
#[derive(Debug, Default)]
pub struct MetaCounters {
    pub gossip_in: AtomicU64,
    pub gossip_out: AtomicU64,
    /// From peers not trusted, too large, or undecodable.
    pub gossip_rejected: AtomicU64,
    /// Branch lines refused because their author may not write them
    /// ([`authorize`]), from gossip and anti-entropy.
    pub lines_rejected: AtomicU64,
    pub sync_rounds: AtomicU64,
    pub sync_failed: AtomicU64,
}

/// The metadata service of one peer.
pub struct Meta {
    pub counters: MetaCounters,
    state: Mutex<State>,
    net: Net,
    options: MetaOptions,
    persist: Option<Arc<dyn Persist>>,
    outbox: Mutex<Delta>,
    outbox_ready: Arc<Notify>,
    changed: Notify,
    persist_now: Arc<Notify>,
    /// The paths each merge changed, for services that follow the catalog
    /// ([`Meta::subscribe`]).
    changes: tokio::sync::broadcast::Sender<Arc<Vec<String>>>,
    /// When refused lines were last logged, and how many since.
    reject_log: Mutex<(Option<Instant>, u64)>,
}

/// How often refused lines are logged at most.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Merges a subscriber may fall behind by before it must reload.
const CHANGES_BACKLOG: usize = 4096;

fn path_hash(path: &str, content: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(content);
    let out = h.finalize();
    let b = out.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn bucket_of(path: &str) -> (u8, u8) {
    let h = blake3::hash(path.as_bytes());
    let b = h.as_bytes();
    (b[0], b[1])
}

/// A branch path a peer may write: relative, no `..`, at most three components,
/// no control characters.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.starts_with('/')
        && path.split('/').count() <= 3
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && !path.chars().any(|c| c.is_control() || c == '\\')
}

fn valid_line(line: &str) -> bool {
    line.len() <= MAX_LINE && !line.contains(['\n', '\r'])
}

impl Meta {
    /// Starts the service on `net`, beginning from `catalog` (what the branch holds).
    pub async fn start(
        net: Net,
        catalog: Catalog,
        options: MetaOptions,
        persist: Option<Arc<dyn Persist>>,
    ) -> Result<Arc<Meta>> {
        let mut hashes = BTreeMap::new();
        for (path, file) in catalog.files() {
            hashes.insert(path.to_owned(), path_hash(path, &file.content()));
        }
        let meta = Arc::new(Meta {
            counters: MetaCounters::default(),
            state: Mutex::new(State {
                catalog,
                dirty: BTreeSet::new(),
                hashes,
            }),
            net: net.clone(),
            options,
            persist,
            outbox: Mutex::new(Delta::default()),
            outbox_ready: Arc::new(Notify::new()),
            changed: Notify::new(),
            persist_now: Arc::new(Notify::new()),
            changes: tokio::sync::broadcast::channel(CHANGES_BACKLOG).0,
            reject_log: Mutex::new((None, 0)),
        });
        meta.members_changed();
        net.subscribe(META_TOPIC).await?;
        let incoming = net
            .control()
            .accept(SYNC_PROTOCOL)
            .map_err(|e| Error::Protocol(format!("{SYNC_PROTOCOL}: {e}")))?;
        tokio::spawn(serve_syncs(Arc::downgrade(&meta), incoming));
        tokio::spawn(event_loop(Arc::downgrade(&meta), net.events()));
        tokio::spawn(publisher(Arc::downgrade(&meta)));
        tokio::spawn(ticker(Arc::downgrade(&meta)));
        Ok(meta)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Merges lines `author` may write into the catalog ([`authorize`]);
    /// returns the paths that changed. The others are counted and logged.
    fn merge_lines(
        &self,
        author: &Author,
        files: &[(String, Vec<String>)],
        mark_dirty: bool,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        let mut rejected = 0u64;
        let mut example = None;
        {
            let mut st = self.lock();
            // Who proxies whom decides location lines: take the gateways'
            // own proxy and cluster lines of this batch first.
            let mut order: Vec<&(String, Vec<String>)> = files.iter().collect();
            order.sort_by_key(|(p, _)| match p.as_str() {
                "proxy.log" => 0,
                "cluster.log" => 1,
                _ => 2,
            });
            let mut authority: Option<Authority> = None;
            for (path, lines) in order {
                if !valid_path(path) {
                    continue;
                }
                if authorize::needs_authority(author) && authority.is_none() {
                    authority = Some(Authority::from_catalog(&st.catalog));
                }
                let verdict = authorize::judge(
                    author,
                    authority.as_ref().unwrap_or(&Authority::default()),
                    path,
                    st.catalog.file(path),
                    lines.iter().map(String::as_str).filter(|l| valid_line(l)),
                );
                if !verdict.rejected.is_empty() {
                    rejected += verdict.rejected.len() as u64;
                    if example.is_none() {
                        example = Some(format!("{path}: {}", verdict.rejected[0]));
                    }
                }
                let mut any = false;
                for l in verdict.accepted {
                    any |= st.catalog.insert_line(path, l);
                }
                if any && (path == "proxy.log" || path == "cluster.log") {
                    authority = None;
                }
                if any {
                    let content = st
                        .catalog
                        .file(path)
                        .map(|f| f.content())
                        .unwrap_or_default();
                    st.hashes.insert(path.clone(), path_hash(path, &content));
                    if mark_dirty {
                        st.dirty.insert(path.clone());
                    }
                    changed.push(path.clone());
                }
            }
        }
        if rejected > 0 {
            self.rejected(author, rejected, example.unwrap_or_default());
        }
        if changed.iter().any(|p| p == MEMBERS_LOG) {
            self.members_changed();
        }
        if mark_dirty && changed.iter().any(|p| URGENT.contains(&p.as_str())) {
            self.persist_now.notify_one();
        }
        if !changed.is_empty() {
            self.changed.notify_waiters();
            let _ = self.changes.send(Arc::new(changed.clone()));
        }
        changed
    }

    /// Counts refused lines, and logs them at most once per
    /// [`REJECT_LOG_EVERY`] (with how many were refused since).
    fn rejected(&self, author: &Author, n: u64, example: String) {
        self.counters.lines_rejected.fetch_add(n, Ordering::Relaxed);
        let mut log = self.reject_log.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += n;
        let now = Instant::now();
        if log
            .0
            .is_some_and(|t| now.duration_since(t) < REJECT_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            "metadata: refused {} line(s) their author may not write (latest from {author:?}: {example})",
            log.1
        );
        *log = (Some(now), 0);
    }

    /// The paths every later merge changes, in order. A receiver that falls
    /// more than [`CHANGES_BACKLOG`] merges behind gets `Lagged` and must
    /// read the catalog again.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<String>>> {
        self.changes.subscribe()
    }

    /// A copy of one file.
    pub fn file(&self, path: &str) -> Option<protocol::logs::catalog::LogFile> {
        self.lock().catalog.file(path).cloned()
    }

    /// Recomputes the trust set from the membership log.
    fn members_changed(&self) {
        if let Allowed::Members(m) = &self.options.allowed {
            let lines = self.file_lines(MEMBERS_LOG);
            m.update(lines.iter().map(String::as_str));
        }
    }

    /// Queues files for gossip.
    fn publish_files(&self, files: Vec<(String, Vec<String>)>) {
        let mut out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        out.files.extend(files);
        self.outbox_ready.notify_one();
    }

    /// A local change (this peer's store wrote `path`): merge and publish it.
    pub fn record_local(&self, path: &str, content: &[u8]) {
        let lines: Vec<String> = protocol::logs::lines(content).map(str::to_owned).collect();
        let files = vec![(path.to_owned(), lines)];
        if self
            .merge_lines(&Author::Unrestricted, &files, false)
            .is_empty()
        {
            return;
        }
        self.publish_files(files);
    }

    /// A copy of the catalog.
    pub fn catalog(&self) -> Catalog {
        self.lock().catalog.clone()
    }

    /// Reads one file's winning lines.
    pub fn file_lines(&self, path: &str) -> Vec<String> {
        self.lock()
            .catalog
            .file(path)
            .map(|f| f.lines().map(std::borrow::Cow::into_owned).collect())
            .unwrap_or_default()
    }

    /// Up to `limit` files after `after` in path order that `keep` selects,
    /// copied (a page of a listing that holds the lock only for the page).
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<(String, protocol::logs::catalog::LogFile)> {
        self.lock()
            .catalog
            .files_after(after)
            .filter(|(p, _)| keep(p))
            .take(limit)
            .map(|(p, f)| (p.to_owned(), f.clone()))
            .collect()
    }

    /// How many files `keep` selects.
    pub fn count(&self, keep: impl Fn(&str) -> bool) -> usize {
        self.lock().catalog.files().filter(|(p, _)| keep(p)).count()
    }

    /// Number of files in the catalog.
    pub fn len(&self) -> usize {
        self.lock().catalog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when the catalog next changes (for waiting in tests and tools).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The level-1 digest: 256 bucket hashes.
    fn level1(&self) -> Vec<u64> {
        let st = self.lock();
        let mut d = vec![0u64; 256];
        for (path, h) in &st.hashes {
            d[bucket_of(path).0 as usize] ^= h;
        }
        d
    }

    fn level2(&self, buckets: &[u8]) -> Vec<(u8, Vec<u64>)> {
        let wanted: HashSet<u8> = buckets.iter().copied().collect();
        let st = self.lock();
        let mut out: BTreeMap<u8, Vec<u64>> =
            buckets.iter().map(|b| (*b, vec![0u64; 256])).collect();
        for (path, h) in &st.hashes {
            let (b1, b2) = bucket_of(path);
            if wanted.contains(&b1)
                && let Some(v) = out.get_mut(&b1)
            {
                v[b2 as usize] ^= h;
            }
        }
        out.into_iter().collect()
    }

    fn files_in(&self, cells: &HashSet<(u8, u8)>) -> Vec<(String, Vec<String>)> {
        let st = self.lock();
        st.catalog
            .files()
            .filter(|(p, _)| cells.contains(&bucket_of(p)))
            .map(|(p, f)| {
                (
                    p.to_owned(),
                    f.lines().map(std::borrow::Cow::into_owned).collect(),
                )
            })
            .collect()
    }

    /// Runs one anti-entropy exchange with `peer` over a new stream.
    /// [`Meta::sync_with`], counted as an anti-entropy round.
    async fn counted_sync(&self, peer: PeerId) -> Result<usize> {
        self.counters.sync_rounds.fetch_add(1, Ordering::Relaxed);
        let r = self.sync_with(peer).await;
        if r.is_err() {
            self.counters.sync_failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    pub async fn sync_with(&self, peer: PeerId) -> Result<usize> {
        if !self.options.allowed.permits(Some(&peer)) {
            return Ok(0);
        }
        let stream = self.net.open_to(peer, SYNC_PROTOCOL).await?;
        self.exchange(peer, stream).await
    }

    /// The symmetric exchange both sides run. What `peer` sends is judged
    /// as written by `peer` ([`authorize`]): a line it relays from a third
    /// repository is taken only if `peer` could have written it itself.
    async fn exchange(&self, peer: PeerId, stream: libp2p::Stream) -> Result<usize> {
        let (mut r, mut w) = stream.split();
        let mine = self.level1();
        let frame = Frame::Level1(mine.clone());
        let (sent, theirs) = tokio::join!(write_frame(&mut w, &frame), read_frame(&mut r));
        sent?;
        let Frame::Level1(theirs) = theirs? else {
            return Err(Error::Protocol("sync: expected a level-1 digest".into()));
        };
        if theirs.len() != 256 {
            return Err(Error::Protocol("sync: bad digest".into()));
        }
        let differ: Vec<u8> = (0..=255u8)
            .filter(|b| mine[*b as usize] != theirs[*b as usize])
            .collect();
        let my2 = self.level2(&differ);
        let frame = Frame::Level2(my2.clone());
        let (sent, their2) = tokio::join!(write_frame(&mut w, &frame), read_frame(&mut r));
        sent?;
        let Frame::Level2(their2) = their2? else {
            return Err(Error::Protocol("sync: expected a level-2 digest".into()));
        };
        let their2: BTreeMap<u8, Vec<u64>> = their2.into_iter().collect();
        let mut cells = HashSet::new();
        for (b1, mine) in &my2 {
            let theirs = their2.get(b1);
            for b2 in 0..=255u8 {
                let t = theirs
                    .and_then(|v| v.get(b2 as usize))
                    .copied()
                    .unwrap_or(0);
                if mine[b2 as usize] != t {
                    cells.insert((*b1, b2));
                }
            }
        }
        let files = self.files_in(&cells);
        let send = async {
            for chunk in files.chunks(FILES_PER_FRAME) {
                write_frame(&mut w, &Frame::Files(chunk.to_vec())).await?;
            }
            write_frame(&mut w, &Frame::Done).await?;
            w.close()
                .await
                .map_err(|e| Error::Protocol(format!("sync: {e}")))
        };
        let receive = async {
            let mut merged = 0;
            loop {
                match read_frame(&mut r).await? {
                    Frame::Files(files) => {
                        let files: Vec<_> = files
                            .into_iter()
                            .filter(|(p, _)| cells.contains(&bucket_of(p)))
                            .collect();
                        let author = self.options.allowed.author(Some(&peer));
                        let changed = self.merge_lines(&author, &files, true);
                        merged += changed.len();
                        let spread: Vec<(String, Vec<String>)> = changed
                            .iter()
                            .filter(|p| REPUBLISHED.contains(&p.as_str()))
                            .map(|p| (p.clone(), self.file_lines(p)))
                            .collect();
                        if !spread.is_empty() {
                            self.publish_files(spread);
                        }
                    }
                    Frame::Done => return Ok::<usize, Error>(merged),
                    _ => return Err(Error::Protocol("sync: unexpected frame".into())),
                }
            }
        };
        let (sent, merged) = tokio::join!(send, receive);
        sent?;
        merged
    }

    /// Persists what peers changed since the last call.
    pub fn flush(&self) -> Result<usize> {
        let Some(persist) = &self.persist else {
            return Ok(0);
        };
        let files: Vec<(String, Vec<u8>)> = {
            let mut st = self.lock();
            let dirty = std::mem::take(&mut st.dirty);
            dirty
                .into_iter()
                .filter_map(|p| st.catalog.file(&p).map(|f| (p.clone(), f.content())))
                .collect()
        };
        if files.is_empty() {
            return Ok(0);
        }
        let n = files.len();
        if let Err(e) = persist.persist(&files) {
            // Keep them dirty for the next attempt.
            let mut st = self.lock();
            st.dirty.extend(files.into_iter().map(|(p, _)| p));
            return Err(e);
        }
        Ok(n)
    }
}

impl StoreObserver for Meta {
    fn changed(&self, path: &str, content: &[u8]) {
        self.record_local(path, content);
    }
}

/// Forwards store changes to a [`Meta`] that starts after the store.
#[derive(Default)]
pub struct MetaLink(Mutex<Option<std::sync::Weak<Meta>>>);

impl MetaLink {
    pub fn set(&self, meta: &Arc<Meta>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(meta));
    }
}

impl StoreObserver for MetaLink {
    fn changed(&self, path: &str, content: &[u8]) {
        let meta = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        if let Some(meta) = meta {
            meta.record_local(path, content);
        }
    }
}

async fn write_frame<W: futures::AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    let mut buf = Vec::new();
    ciborium::into_writer(frame, &mut buf).map_err(|e| Error::Protocol(format!("cbor: {e}")))?;
    if buf.len() > MAX_FRAME {
        return Err(Error::Protocol("sync frame too large".into()));
    }
    let len = u32::try_from(buf.len()).map_err(|_| Error::Protocol("frame too large".into()))?;
    w.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| Error::Protocol(format!("sync: {e}")))?;
    w.write_all(&buf)
        .await
        .map_err(|e| Error::Protocol(format!("sync: {e}")))?;
    w.flush()
        .await
        .map_err(|e| Error::Protocol(format!("sync: {e}")))
}

async fn read_frame<R: futures::AsyncRead + Unpin>(r: &mut R) -> Result<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(|e| Error::Protocol(format!("sync: {e}")))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::Protocol(format!(
            "sync frame of {len} bytes refused"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| Error::Protocol(format!("sync: {e}")))?;
    ciborium::from_reader(&buf[..]).map_err(|e| Error::Protocol(format!("sync: bad frame: {e}")))
}

/// Serves inbound anti-entropy streams from authorized peers.
async fn serve_syncs(meta: std::sync::Weak<Meta>, mut incoming: libp2p_stream::IncomingStreams) {
    // One exchange at a time per peer is plenty; bound the total.
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    while let Some((peer, stream)) = incoming.next().await {
        let Some(m) = meta.upgrade() else { return };
        if !m.options.allowed.permits(Some(&peer)) {
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            match m.exchange(peer, stream).await {
                Ok(n) => tracing::debug!("sync from {peer}: {n} file(s) changed"),
                Err(e) => tracing::debug!("sync from {peer} failed: {e}"),
            }
        });
    }
}

/// Gossip in, and anti-entropy on every new connection.
async fn event_loop(meta: std::sync::Weak<Meta>, mut events: broadcast::Receiver<NetEvent>) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!("metadata: {n} network event(s) dropped; anti-entropy repairs");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(m) = meta.upgrade() else { return };
        match event {
            NetEvent::Gossip {
                author,
                topic,
                data,
            } if topic == META_TOPIC => {
                if !m.options.allowed.permits(author.as_ref()) || data.len() > MAX_DELTA * 2 {
                    m.counters.gossip_rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match ciborium::from_reader::<Delta, _>(&data[..]) {
                    Ok(delta) => {
                        m.counters.gossip_in.fetch_add(1, Ordering::Relaxed);
                        let who = m.options.allowed.author(author.as_ref());
                        m.merge_lines(&who, &delta.files, true);
                    }
                    Err(e) => {
                        m.counters.gossip_rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("bad delta from {author:?}: {e}");
                    }
                }
            }
            NetEvent::Connected(peer) => {
                tokio::spawn(async move {
                    if let Err(e) = m.counted_sync(peer).await {
                        tracing::debug!("sync with {peer}: {e}");
                    }
                });
            }
            _ => {}
        }
    }
}

/// Publishes local changes, batched for a few milliseconds.
async fn publisher(meta: std::sync::Weak<Meta>) {
    let Some(ready) = meta.upgrade().map(|m| m.outbox_ready.clone()) else {
        return;
    };
    loop {
        let notified = ready.notified();
        let Some(m) = meta.upgrade() else { return };
        let pending = {
            let out = m.outbox.lock().unwrap_or_else(|p| p.into_inner());
            !out.files.is_empty()
        };
        if !pending {
            drop(m);
            // Wake up now and then to notice the service is gone.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let files = std::mem::take(&mut m.outbox.lock().unwrap_or_else(|p| p.into_inner()).files);
        for batch in batches(files) {
            let mut buf = Vec::new();
            if ciborium::into_writer(&batch, &mut buf).is_ok() {
                publish(&m, buf).await;
            }
        }
    }
}

/// Tries to publish a delta this many times while peers are connected but
/// none has told gossipsub it subscribes yet (a connection just made, on a
/// loaded machine), [`PUBLISH_RETRY`] apart; past that, or with no peer at
/// all, anti-entropy carries the change (at the next connection or tick).
const PUBLISH_ATTEMPTS: usize = 10;
const PUBLISH_RETRY: Duration = Duration::from_millis(500);

async fn publish(m: &Meta, delta: Vec<u8>) {
    for _ in 0..PUBLISH_ATTEMPTS {
        match m.net.publish(META_TOPIC, delta.clone()).await {
            Ok(true) => {
                m.counters.gossip_out.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(false) if m.net.connected_peers().await.is_ok_and(|p| !p.is_empty()) => {
                tokio::time::sleep(PUBLISH_RETRY).await;
            }
            Ok(false) => return,
            Err(e) => {
                tracing::debug!("publish: {e}");
                return;
            }
        }
    }
}

/// Splits files into deltas that each encode below [`MAX_DELTA`].
fn batches(files: Vec<(String, Vec<String>)>) -> Vec<Delta> {
    let mut out = Vec::new();
    let mut cur = Delta::default();
    let mut size = 0;
    for (path, lines) in files {
        let this = path.len() + lines.iter().map(|l| l.len() + 4).sum::<usize>() + 8;
        if this > MAX_DELTA {
            continue; // anti-entropy carries what gossip cannot
        }
        if size + this > MAX_DELTA && !cur.files.is_empty() {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += this;
        cur.files.push((path, lines));
    }
    if !cur.files.is_empty() {
        out.push(cur);
    }
    out
}

/// Periodic anti-entropy and persistence.
async fn ticker(meta: std::sync::Weak<Meta>) {
    let (sync_every, persist_every, persist_now) = match meta.upgrade() {
        Some(m) => (
            m.options.sync_interval,
            m.options.persist_interval,
            m.persist_now.clone(),
        ),
        None => return,
    };
    let mut sync = tokio::time::interval(sync_every);
    let mut persist = tokio::time::interval(persist_every);
    sync.tick().await;
    persist.tick().await;
    loop {
        tokio::select! {
            _ = sync.tick() => {
                let Some(m) = meta.upgrade() else { return };
                let peers = m.net.connected_peers().await.unwrap_or_default();
                if peers.is_empty() {
                    continue;
                }
                let pick = peers[rand::random::<usize>() % peers.len()];
                tokio::spawn(async move {
                    if let Err(e) = m.counted_sync(pick).await {
                        tracing::debug!("periodic sync with {pick}: {e}");
                    }
                });
            }
            () = async {
                tokio::select! {
                    _ = persist.tick() => {}
                    () = persist_now.notified() => {}
                }
            } => {
                let Some(m) = meta.upgrade() else { return };
                match tokio::task::spawn_blocking(move || m.flush()).await {
                    Ok(Err(e)) => tracing::warn!("persisting metadata: {e}"),
                    Err(e) => tracing::warn!("persisting metadata: {e}"),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_peers() {
        assert!(valid_path("uuid.log"));
        assert!(valid_path("fbd/530/SHA256E-s3--x.txt.log"));
        assert!(!valid_path("../x"));
        assert!(!valid_path("/etc/passwd"));
        assert!(!valid_path("a/b/c/d"));
        assert!(!valid_path("a//b"));
        assert!(!valid_path("a\nb"));
        assert!(valid_line("1s 1 u"));
        assert!(!valid_line("1s 1 u\n2s 0 u"));
    }

    #[test]
    fn deltas_stay_below_the_limit() {
        let files: Vec<(String, Vec<String>)> = (0..5000)
            .map(|i| {
                (
                    format!("aaa/bbb/K{i}.log"),
                    vec![format!("1700000000s 1 {i:036}")],
                )
            })
            .collect();
        let out = batches(files);
        assert!(out.len() > 1);
        for d in &out {
            let mut buf = Vec::new();
            ciborium::into_writer(d, &mut buf).unwrap();
            assert!(buf.len() <= MAX_DELTA + 1024, "{}", buf.len());
        }
        assert_eq!(out.iter().map(|d| d.files.len()).sum::<usize>(), 5000);
    }
}
