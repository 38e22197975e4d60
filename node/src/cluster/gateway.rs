//! The cluster gateway: serves a P2P session for a cluster uuid (annex-spec
//! §4.4–4.8) as a [`Backend`](crate::backend::Backend) over the cluster's
//! nodes, driven by the one server driver ([`crate::session::serve_backend`]
//! over `protocol::server::Server`, which answers AUTH, VERSION, BYPASS, the
//! modes and every protocol error, and shapes the `-PLUS` replies). The
//! gateway's decisions come from `protocol::cluster`: the PUT's targets and
//! `PUT-FROM` ([`protocol::cluster::plan`]), the VALID gate, the GET cursor
//! with failover ([`protocol::cluster::GetCursor`]) and what the replies list
//! and the gateway records ([`protocol::cluster::reply`]). This module only
//! gathers facts, moves bytes and applies the answers.
//!
//! Local git-annex repositories are written directly through their
//! [`Store`]s, with no `git-annex-shell` per node (git-annex
//! starts one per node and connection). A PUT is hashed once here for every
//! local node written from offset 0 ([`StreamCheck`](crate::store::StreamCheck));
//! a node resuming a partial upload re-hashes its own prefix. Other kinds of
//! node ([`GatewayNode`]): git-annex repositories behind `git-annex-shell
//! p2pstdio` (run directly or over ssh) and annexmesh peers on the mesh, both
//! reached with our client ([`RemoteNode`]), and directory/external special
//! remotes ([`SpecialNode`]).
//!
//! PUT (`put`) is one pass over the client's bytes, checked once here, and
//! streamed to every target as the bytes arrive: local nodes and directory
//! special remotes (a temp file inside the directory, renamed in once the
//! check passes) are written in the read loop; each remote node has one
//! bounded channel and its own future (`remote::PutTarget`), so a slow node
//! holds the stream back while a dead one is dropped from the operation. Each
//! node takes the bytes at and after its own offset. The one spool left is
//! for external special remotes, whose `TRANSFER STORE` needs a file: it is
//! written under `annex/tmp/annexmesh-gateway` as the bytes arrive, and
//! handed over once checked. Nodes that answer `ALREADY-HAVE` are recorded
//! in the gateway's location log (git-annex does not: transcript cluster-11b).
//!
//! GET (`get`) reads from the cheapest node holding the key
//! ([`crate::cluster::Cost`]), then the least busy (transfers in flight per
//! node, across processes), at random among ties. Remote nodes' `DATA` is
//! relayed as it arrives and directory special remotes are read in place
//! (external ones are fetched to a spool first). A node that fails after k
//! bytes is replaced by the next holder from the same position (`GET k` for
//! remote nodes); `VALID` goes to the client only if every piece sent was valid.
//!
//! A node's refusal (locked content, a failed write) is a clean `FAILURE` for
//! that node; it is logged through `tracing` at info level (hidden unless
//! `ANNEXMESH_LOG` asks for it), so it never reaches the client's terminal,
//! which sees the shell's stderr.
//!
//! Replies follow git-annex's gateway (transcripts `cluster-*`): `AUTH-SUCCESS
//! <cluster uuid>`, `-PLUS` replies at v2+, `LOCKCONTENT` always `FAILURE`, `GET`
//! of content no node has is `DATA 0` + `INVALID`, `NOTIFYCHANGE` a protocol
//! error. Unlike git-annex, `CHECKPRESENT` asks the nodes rather than
//! trusting the gateway's log.
//!
//! `REMOVE-BEFORE` deadlines: the gateway's `GETTIMESTAMP` is this host's
//! monotonic clock, which is also the clock of every local node's store, so a
//! deadline is passed to each node unchanged (no per-node translation needed).

mod backend;
mod get;
mod put;
mod remote;

use std::path::PathBuf;

use protocol::cluster::Routes;
use protocol::logs::catalog::Catalog;
use protocol::logs::presence::Status;
use protocol::logs::view::View;
use protocol::message::MAX_VERSION;
use protocol::preferred::{self, Facts};
use protocol::server::{CloseReason, GitAccess, ServeMode, Server, ServerConfig, Start};
use protocol::{Key, Uuid};
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use remote::Conn;
pub use remote::{Reach, RemoteNode};

use crate::cluster::{Cost, NodeStore};
use crate::error::{Error, Result};
use crate::session::{Authenticator, ServeContext};
use crate::special::SpecialNode;
use crate::store::Store;

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

/// A spool file for content passing through a gateway, removed when dropped.
pub(crate) struct Spool {
    pub(crate) path: PathBuf,
    pub(crate) file: std::fs::File,
}

impl Spool {
    /// A new spool file at `path` (its directory made if need be).
    pub(crate) fn create(path: PathBuf) -> Result<Spool> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                context: format!("creating {}", dir.display()),
                source: e,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::Io {
                context: format!("creating {}", path.display()),
                source: e,
            })?;
        Ok(Spool { path, file })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
    /// The routes from this gateway over the cluster's topology, when known.
    /// `Some`: a PUT follows [`protocol::cluster::plan_put`], each next-hop
    /// gateway (a "cluster via" node) sent its own `BYPASS` so every wanted
    /// node gets the PUT once. `None`: the configured nodes as they are, a
    /// "cluster via" node sent the client's `BYPASS` plus this gateway.
    pub routes: Option<Routes>,
}

impl Gateway<'_> {
    /// Serves one session to its end; `CONNECT` is refused as
    /// `git-annex-shell p2pstdio` refuses it.
    pub async fn serve<R, W>(&self, reader: R, writer: W) -> Result<CloseReason>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        self.serve_with_git(reader, writer, None).await
    }

    /// [`Gateway::serve`], with `CONNECT` reaching the gateway's own git
    /// repository through `git` (as git-annex serves a proxied remote's git
    /// from the gateway), so a client of the cluster over libp2p can `git
    /// fetch` the gateway's branches and learn the nodes.
    pub async fn serve_with_git<R, W>(
        &self,
        reader: R,
        writer: W,
        git: Option<&dyn crate::session::GitService>,
    ) -> Result<CloseReason>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        self.serve_timed(reader, writer, git, None).await
    }

    /// [`Gateway::serve_with_git`], timing the `PUT`s and `GET`s served in
    /// `timings`.
    pub async fn serve_timed<R, W>(
        &self,
        reader: R,
        writer: W,
        git: Option<&dyn crate::session::GitService>,
        timings: Option<&crate::session::Timings>,
    ) -> Result<CloseReason>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let start = match self.auth {
            None => Start::Preauthenticated { mode: self.mode },
            Some(_) => Start::RequireAuth,
        };
        let server = Server::new(ServerConfig {
            uuid: self.cluster.clone(),
            start,
            git: if git.is_some() {
                GitAccess::Served
            } else {
                GitAccess::Proxied
            },
            max_version: i64::from(MAX_VERSION),
        });
        let ctx = ServeContext {
            auth: self.auth,
            git,
            timings,
        };
        let mut session = backend::GatewaySession::new(self);
        crate::session::serve_backend(server, reader, writer, &mut session, &ctx).await
    }

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
        // The remote nodes all at once, each within its reply deadline (a
        // silent node answers nothing, which is not a yes). Every request
        // runs to its end or its deadline: none is left mid-request.
        let me = self.gateway.uuid();
        let shells = self.shells();
        let answers =
            futures::future::join_all(shells.iter().map(|s| s.check_present(me, key))).await;
        if answers.iter().any(|a| matches!(a, Ok(true))) {
            return true;
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
        if uuids.is_empty() {
            return;
        }
        if let Err(e) = self.gateway.record_presence_many(key, &uuids, status) {
            tracing::info!("cannot record location of {key}: {e}");
        }
    }

    /// Which of `candidates` want `key` for `file` by their preferred content
    /// (annex-spec §4.6 step 1), evaluated as for a node lacking it, with the
    /// copies the gateway's log knows plus `holders`. What it needs of the
    /// branch is read into `catalog`; if it cannot be read, every node wants
    /// everything. A
    /// node whose expression does not parse wants everything (logged once
    /// per node and expression).
    fn wanting<'u>(
        &self,
        catalog: &mut Option<Catalog>,
        file: Option<&str>,
        key: &Key,
        holders: &[Uuid],
        candidates: impl Iterator<Item = &'u Uuid>,
    ) -> std::collections::BTreeSet<Uuid> {
        // What the decision needs for this key only (the whole branch only
        // for balanced terms with a maxsize): a session's cost does not grow
        // with the number of keys the branch knows.
        let fresh = crate::branch::read_for_keys(&self.gateway.repo().git_dir, &[key])
            .unwrap_or_else(|e| {
                tracing::info!("cannot read preferred content: {e}");
                Catalog::new()
            });
        let catalog = catalog.insert(fresh);
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
        candidates
            .filter(|u| match ctx.expression(u.as_str()) {
                None => true,
                Some(Ok(e)) => e.wants(&ctx, u.as_str(), &facts),
                Some(Err(e)) => {
                    unparsable_once(u, &e.0);
                    true
                }
            })
            .cloned()
            .collect()
    }
}

/// Logs a node's unparsable preferred content once per node and expression.
fn unparsable_once(node: &Uuid, expression: &str) {
    static UNPARSABLE: std::sync::Mutex<Vec<(Uuid, String)>> = std::sync::Mutex::new(Vec::new());
    let mut seen = UNPARSABLE.lock().unwrap_or_else(|p| p.into_inner());
    let entry = (node.clone(), expression.to_owned());
    if !seen.contains(&entry) {
        tracing::info!("node {node}: {expression}; it is sent everything");
        if seen.len() >= 256 {
            seen.clear();
        }
        seen.push(entry);
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

/// Where the gateway's spool files live: `annex/tmp/annexmesh-gateway`.
fn spool_path(gateway: &Store, key: &Key, what: &str) -> PathBuf {
    spool_path_in(gateway, "annexmesh-gateway", key, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::AuthToken;
    use protocol::server::{READ_ONLY_ERROR, Validity};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            routes: None,
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
            // The order the GET cursor tries them in.
            let (usable, holders) = get::candidates(&gw, &busy_dir);
            let mut cursor = protocol::cluster::GetCursor::new(&holders, 0, None, rand::random());
            let mut order = Vec::new();
            while let protocol::cluster::GetStep::Try { node, .. } = cursor.next() {
                let n = usable
                    .iter()
                    .find(|n| n.uuid() == &node)
                    .expect("a candidate");
                order.push(n.remote().to_owned());
                cursor.on_failure();
            }
            order
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
            routes: None,
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

    /// A node behind `git-annex-shell p2pstdio` played by a script: it says
    /// it lacks every key (`CHECKPRESENT` → `FAILURE`), then answers `PUT`
    /// with `put_answer`.
    fn scripted_node(dir: &std::path::Path, uuid: &str, put_answer: &str) -> RemoteNode {
        script_node(dir, uuid, &format!("PUT*) echo '{put_answer}' ;;"))
    }

    /// A node played by a shell script: `VERSION 4`, `BYPASS` and
    /// `CHECKPRESENT` (`FAILURE`) answered, then the `case` arms given; every
    /// line it reads is appended to `<dir>/lines-<uuid>`.
    fn script_node(dir: &std::path::Path, uuid: &str, arms: &str) -> RemoteNode {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join(format!("shell-{uuid}"));
        let lines = dir.join(format!("lines-{uuid}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"AUTH-SUCCESS $5\"\nwhile read -r line; do\n  echo \"$line\" >> '{}'\n  \
                 case \"$line\" in\n    VERSION*) echo 'VERSION 4' ;;\n    BYPASS*) ;;\n    \
                 CHECKPRESENT*) echo FAILURE ;;\n    {arms}\n    *) echo 'ERROR unexpected command' ;;\n  \
                 esac\ndone\n",
                lines.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        RemoteNode::shell(
            Uuid::parse(uuid).expect("uuid"),
            format!("S-{uuid}"),
            crate::cluster::ShellCommand::Program {
                program: script,
                path: dir.to_path_buf(),
            },
        )
    }

    fn location_log(g: &Store, key: &Key) -> String {
        let log = g
            .journal()
            .read(&protocol::logs::presence::location_log_path(key))
            .expect("log");
        String::from_utf8_lossy(&log).into_owned()
    }

    /// Transcript cluster-11b: git-annex's gateway does not log the nodes
    /// that answer `ALREADY-HAVE`, so a later GET through the cluster finds
    /// no holder. This gateway records them (and their `-PLUS` uuids).
    #[tokio::test]
    async fn already_have_holders_are_recorded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (g, nodes, cluster) = two_nodes(tmp.path());
        let s3 = "33333333-3333-4333-8333-333333333333";
        let s7 = "77777777-7777-4777-8777-777777777777";
        let key = Key::parse(HELLO).expect("key");
        // Every node answers ALREADY-HAVE: so does the gateway, and it logs them.
        let gw = Gateway {
            cluster: cluster.clone(),
            gateway: &g,
            nodes: vec![GatewayNode::Remote(Box::new(scripted_node(
                tmp.path(),
                s3,
                &format!("ALREADY-HAVE-PLUS {s7}"),
            )))],
            mode: ServeMode::ReadWrite,
            auth: None,
            routes: None,
        };
        let out = session(&gw, format!("VERSION 4\nPUT x {HELLO}\n").as_bytes()).await;
        assert_eq!(
            out,
            format!("AUTH-SUCCESS {cluster}\nVERSION 4\nALREADY-HAVE-PLUS {s3} {s7}\n")
        );
        let log = location_log(&g, &key);
        assert!(log.contains(s3) && log.contains(s7), "{log}");
        assert!(!log.contains(cluster.as_str()), "{log}");

        // A local node takes the bytes while the remote one already has it:
        // SUCCESS-PLUS lists both, and the remote one is logged too.
        let other = Key::parse(
            "SHA256E-s26--808b73473846350b7de5ac8e0c3d12318d9da9fa5ad1e37d161b3dd640381043.txt",
        )
        .expect("key");
        let gw = Gateway {
            nodes: vec![
                GatewayNode::Local(nodes[0].clone(), Cost::CHEAP),
                GatewayNode::Remote(Box::new(scripted_node(tmp.path(), s3, "ALREADY-HAVE"))),
            ],
            ..gw
        };
        let out = session(
            &gw,
            format!("VERSION 4\nPUT x {other}\nDATA 26\nworld, this is a P2P test\nVALID\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!(
                "AUTH-SUCCESS {cluster}\nVERSION 4\nPUT-FROM 0\nSUCCESS-PLUS {} {s3}\n",
                nodes[0].uuid
            )
        );
        let log = location_log(&g, &other);
        assert!(
            log.contains(s3) && log.contains(nodes[0].uuid.as_str()),
            "{log}"
        );
    }

    /// The machine's answers reach the client unchanged through the gateway
    /// backend: BYPASS has no reply, an unparsable line is `ERROR unknown
    /// command`, `NOTIFYCHANGE` ends the session as a protocol error, and
    /// `DATA-PRESENT` asks the nodes.
    #[tokio::test]
    async fn one_driver_for_the_gateway() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (g, nodes, cluster) = two_nodes(tmp.path());
        let key = Key::parse(HELLO).expect("key");
        let mut up = nodes[1].store.begin_upload(&key, 0).expect("upload");
        up.write(b"hello\n").expect("write");
        nodes[1].store.commit(up, Validity::Valid).expect("commit");
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
            routes: None,
        };
        let out = session(
            &gw,
            format!(
                "VERSION 4\nBYPASS {}\nfrobnicate\nPUT x {HELLO}\nDATA-PRESENT\nPUT y {HELLO}\nCHECKPRESENT {HELLO}\nNOTIFYCHANGE\nCHECKPRESENT {HELLO}\n",
                nodes[0].uuid
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!(
                "AUTH-SUCCESS {cluster}\nVERSION 4\nERROR unknown command\nPUT-FROM 0\nSUCCESS-PLUS {}\n\
                 PUT-FROM 0\nERROR expected DATA\nERROR protocol error\n",
                nodes[1].uuid
            )
        );
    }

    /// With routes, a PUT follows `plan_put`: the local nodes are written
    /// here, and the next-hop gateway H (its "cluster via H" node) is sent
    /// the BYPASS that leaves it only its own share (N4).
    #[tokio::test]
    async fn routed_put_sends_each_hop_its_bypass() {
        use protocol::cluster::topology::{Cost as LinkCost, Entry, Link, Topology};
        let tmp = tempfile::tempdir().expect("tempdir");
        let (g, nodes, cluster) = two_nodes(tmp.path());
        let h = Uuid::parse("88888888-8888-4888-8888-888888888888").expect("uuid");
        let n4 = "44444444-4444-4444-8444-444444444444";
        let link = |to: &Uuid| Link {
            to: to.clone(),
            cost: LinkCost::from_hundredths(10000),
            name: None,
        };
        let mut topology = Topology::new();
        topology.insert(
            g.uuid().clone(),
            Entry {
                clusters: vec![cluster.clone()],
                nodes: nodes.iter().map(|n| link(&n.uuid)).collect(),
                gateways: vec![link(&h)],
            },
        );
        topology.insert(
            h.clone(),
            Entry {
                clusters: vec![cluster.clone()],
                nodes: vec![link(&Uuid::parse(n4).expect("uuid"))],
                gateways: vec![link(g.uuid())],
            },
        );
        let alive = [g.uuid().clone(), h.clone()].into_iter().collect();
        let routes = topology.routes(g.uuid(), &cluster, &alive, &Default::default());
        let via_h = script_node(
            tmp.path(),
            cluster.as_str(),
            &format!(
                "PUT*) echo 'PUT-FROM 0' ;;\n    DATA*) read -r bytes ;;\n    VALID) echo 'SUCCESS-PLUS {n4}' ;;"
            ),
        )
        .via_gateway(h.clone());
        let mut gw_nodes: Vec<GatewayNode> = nodes
            .iter()
            .cloned()
            .map(|n| GatewayNode::Local(n, Cost::CHEAP))
            .collect();
        gw_nodes.push(GatewayNode::Remote(Box::new(via_h)));
        let gw = Gateway {
            cluster: cluster.clone(),
            gateway: &g,
            nodes: gw_nodes,
            mode: ServeMode::ReadWrite,
            auth: None,
            routes: Some(routes),
        };
        let out = session(
            &gw,
            format!("VERSION 4\nPUT x {HELLO}\nDATA 6\nhello\nVALID\n").as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!(
                "AUTH-SUCCESS {cluster}\nVERSION 4\nPUT-FROM 0\nSUCCESS-PLUS {} {} {n4}\n",
                nodes[0].uuid, nodes[1].uuid
            )
        );
        let key = Key::parse(HELLO).expect("key");
        assert!(nodes.iter().all(|n| n.store.contains(&key)));
        let lines = std::fs::read_to_string(tmp.path().join(format!("lines-{cluster}")))
            .expect("the hop's lines");
        assert!(
            lines.contains(&format!(
                "BYPASS {} {} {}\nPUT ",
                nodes[0].uuid,
                nodes[1].uuid,
                g.uuid()
            )),
            "{lines}"
        );
        let log = location_log(&g, &key);
        assert!(log.contains(n4), "{log}");
    }

    fn store_hello(store: &Store) -> Key {
        let key = Key::parse(HELLO).expect("key");
        let mut up = store.begin_upload(&key, 0).expect("upload");
        up.write(b"hello\n").expect("write");
        store.commit(up, Validity::Valid).expect("commit");
        key
    }

    /// `annex.diskreserve` at the fan-out: a local node without room is
    /// skipped, not filled; the reply lists the node that stored. A local
    /// node that already has a key is recorded as a holder (cluster-11b).
    #[tokio::test]
    async fn a_full_node_is_skipped_and_holders_are_recorded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (g, nodes, cluster) = two_nodes(tmp.path());
        crate::cluster::config_set(&nodes[0].store.repo().top, "annex.diskreserve", "1000 TB")
            .expect("config");
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
            routes: None,
        };
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
        let key = Key::parse(HELLO).expect("key");
        assert!(!nodes[0].store.contains(&key) && nodes[0].store.partial_size(&key) == 0);
        assert!(nodes[1].store.contains(&key));
        let log = location_log(&g, &key);
        assert!(log.contains(nodes[1].uuid.as_str()), "{log}");
        assert!(!log.contains(nodes[0].uuid.as_str()), "{log}");

        // A fresh gateway repository, and the key already on N1 alone: its
        // ALREADY-HAVE is recorded.
        let g2 = repo(
            &tmp.path().join("G2"),
            "88888888-8888-4888-8888-888888888888",
        );
        let gw = Gateway {
            gateway: &g2,
            nodes: vec![GatewayNode::Local(nodes[1].clone(), Cost::CHEAP)],
            ..gw
        };
        let out = session(&gw, format!("VERSION 4\nPUT x {HELLO}\n").as_bytes()).await;
        assert_eq!(
            out,
            format!(
                "AUTH-SUCCESS {cluster}\nVERSION 4\nALREADY-HAVE-PLUS {}\n",
                nodes[1].uuid
            )
        );
        let log = location_log(&g2, &key);
        assert!(log.contains(nodes[1].uuid.as_str()), "{log}");
    }

    /// GET through the cursor: the cheaper node's damaged copy (the wrong
    /// size) is passed over for the next holder, from the client's offset;
    /// content no node has is `DATA 0` + `INVALID`.
    #[tokio::test]
    async fn get_passes_over_bad_copies() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (g, nodes, cluster) = two_nodes(tmp.path());
        let key = store_hello(&nodes[0].store);
        store_hello(&nodes[1].store);
        let path = nodes[0].store.content_path(&key).expect("content");
        let dir = path.parent().expect("dir").to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&path, b"hell").expect("damage");
        let gw = Gateway {
            cluster: cluster.clone(),
            gateway: &g,
            nodes: vec![
                GatewayNode::Local(nodes[0].clone(), Cost(50.0)),
                GatewayNode::Local(nodes[1].clone(), Cost(100.0)),
            ],
            mode: ServeMode::ReadOnly,
            auth: None,
            routes: None,
        };
        let other =
            "SHA256E-s26--808b73473846350b7de5ac8e0c3d12318d9da9fa5ad1e37d161b3dd640381043.txt";
        let out = session(
            &gw,
            format!("VERSION 4\nGET 1 x {HELLO}\nSUCCESS\nGET 0 y {other}\nFAILURE\n").as_bytes(),
        )
        .await;
        assert_eq!(
            out,
            format!("AUTH-SUCCESS {cluster}\nVERSION 4\nDATA 5\nello\nVALID\nDATA 0\nINVALID\n")
        );
    }
}
