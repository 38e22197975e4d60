//! A running annexmesh peer: a repository's store served over libp2p.
//!
//! Every inbound `/annex/p2p/1` stream is one P2P session: the client must
//! `AUTH` first (a token from git-annex's `p2pauth`, or a granted PeerId), then
//! it gets the protocol as git-annex's remotedaemon serves it, `CONNECT` and
//! `NOTIFYCHANGE` included. Streams are bounded per peer and in total; excess
//! streams are refused at once rather than queued (a read-write member of the
//! mesh, a gateway carrying its clients' sessions, is bounded by the totals
//! only). A stream counts against
//! the sessions' limits only once authenticated: before, it holds one of a few
//! pending slots (bounded per peer, per IP address and in total), for at most the
//! authentication deadline (`annexmesh.authtimeout`), so idle streams cannot
//! lock anyone out. An authenticated session waiting on its client longer than
//! `annexmesh.idletimeout` is closed: for its next bytes, or for it to take
//! ours (a client that stops reading mid-`GET` without closing).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use protocol::message::MAX_VERSION;
use protocol::server::{CloseReason, GitAccess, Server, ServerConfig, Start};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use crate::auth::AccessRules;
use crate::error::{Error, Result};
use crate::git::GitRelay;
use crate::net::{BoxedTransport, Net, P2P_PROTOCOL, TARGET_PROTOCOL, build_swarm};
use crate::session::{ServeContext, serve};
use crate::store::Store;

/// Bounds on concurrent sessions, and the deadlines on their clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Authenticated sessions.
    pub streams_total: usize,
    pub streams_per_peer: usize,
    /// Streams not yet authenticated.
    pub pending_total: usize,
    pub pending_per_peer: usize,
    /// Streams not yet authenticated from one IP address, whatever the
    /// PeerIds (which cost nothing to make).
    pub pending_per_address: usize,
    /// `AUTH` (and the `TARGET` line) must have arrived within this.
    pub auth_timeout: Duration,
    /// An authenticated session waiting this long for its client (to send,
    /// or to take what it is sent) is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // git-annex's remotedaemon serves at most 100 connections per network.
        Limits {
            streams_total: 100,
            streams_per_peer: 32,
            pending_total: 64,
            pending_per_peer: 8,
            pending_per_address: 32,
            auth_timeout: protocol::deadline::DEFAULT_AUTH_TIMEOUT,
            idle_timeout: protocol::deadline::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl Limits {
    /// These limits, with the deadlines a repository's git config sets
    /// (`annexmesh.authtimeout`, `annexmesh.idletimeout`: `10s`, `15m`, …).
    /// A bad value is warned about and the default kept.
    pub fn configured(mut self, repo: &crate::repo::Repo) -> Self {
        for (name, field) in [
            ("annexmesh.authtimeout", &mut self.auth_timeout),
            ("annexmesh.idletimeout", &mut self.idle_timeout),
        ] {
            match crate::repo::gitconfig::config_get(&repo.top, name) {
                Ok(Some(v)) => match protocol::deadline::parse_duration(&v) {
                    Some(d) => *field = d,
                    None => tracing::warn!("{name}: bad duration {v:?}; keeping {field:?}"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!("reading {name}: {e}"),
            }
        }
        self
    }
}

/// What to start a peer with.
pub struct PeerOptions {
    pub store: Store,
    pub keypair: Keypair,
    pub transport: BoxedTransport,
    pub listen: Vec<Multiaddr>,
    pub grants: Vec<(PeerId, protocol::server::ServeMode)>,
    pub limits: Limits,
    /// Serve `CONNECT` (git over the protocol).
    pub serve_git: bool,
    /// The mesh's members, let in with their roles (a daemon's).
    pub members: Option<Arc<crate::members::Members>>,
}

/// A started peer. Dropping it (or [`Peer::shutdown`]) stops serving.
pub struct Peer {
    pub net: Net,
    pub addrs: Vec<Multiaddr>,
    pub store: Store,
    /// What the served sessions moved, per peer.
    pub stats: Arc<crate::net::stats::Stats>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<usize>,
}

impl Peer {
    pub async fn start(options: PeerOptions) -> Result<Peer> {
        let PeerOptions {
            store,
            keypair,
            transport,
            listen,
            grants,
            limits,
            serve_git,
            members,
        } = options;
        let swarm = build_swarm(keypair, transport)?;
        let net = Net::spawn(swarm);
        // Gateway sessions of this process dial nodes over this swarm.
        crate::remote::share(&net);
        let mut addrs = Vec::new();
        for addr in listen {
            addrs.push(net.listen(addr).await?);
        }
        let limits = limits.configured(store.repo());
        let mut rules = AccessRules::new(&store.repo().git_dir, net.peer_id(), grants);
        if let Some(m) = members {
            rules = rules.with_members(m);
        }
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(crate::net::stats::Stats::default());
        let server = tokio::spawn(accept_loop(
            net.clone(),
            store.clone(),
            rules,
            limits,
            serve_git,
            stats.clone(),
            stopped,
        )?);
        Ok(Peer {
            net,
            addrs,
            store,
            stats,
            stop,
            server,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    /// Stops accepting and ends every session. Content being uploaded stays in
    /// its (invisible) partial file, ready for a resume. Returns how many
    /// sessions were cut short.
    pub async fn shutdown(self) -> usize {
        crate::remote::unshare(self.net.peer_id());
        let _ = self.stop.send(true);
        self.server.await.unwrap_or(0)
    }
}

/// Registers the stream protocols and returns the loop serving them. Errors here
/// (a protocol registered twice) are reported before anything runs.
fn accept_loop(
    net: Net,
    store: Store,
    rules: AccessRules,
    limits: Limits,
    serve_git: bool,
    stats: Arc<crate::net::stats::Stats>,
    mut stopped: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = usize>> {
    let mut control = net.control();
    let plain = control
        .accept(P2P_PROTOCOL)
        .map_err(|e| Error::Protocol(format!("{P2P_PROTOCOL}: {e}")))?;
    let targeted = control
        .accept(TARGET_PROTOCOL)
        .map_err(|e| Error::Protocol(format!("{TARGET_PROTOCOL}: {e}")))?;
    let mut incoming = futures::stream::select(
        plain.map(|(p, s)| (p, s, P2P_PROTOCOL)),
        targeted.map(|(p, s)| (p, s, TARGET_PROTOCOL)),
    );
    let shared = Arc::new(Shared {
        store,
        rules,
        serve_git,
        sessions: Arc::new(Pool::new(
            limits.streams_total,
            limits.streams_per_peer,
            usize::MAX,
            stats.sessions_authenticated.clone(),
        )),
        pending: Arc::new(Pool::new(
            limits.pending_total,
            limits.pending_per_peer,
            limits.pending_per_address,
            stats.streams_pending.clone(),
        )),
        limits,
        stats: stats.clone(),
    });
    Ok(async move {
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = stopped.changed() => break,
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!("a session panicked: {e}");
                    }
                }
                next = incoming.next() => {
                    let Some((peer, stream, protocol)) = next else { break };
                    let host = net.host_of(&peer);
                    let wide = shared.carries_many(&peer);
                    let Some(slot) = Slot::take(&shared.pending, peer, host, wide) else {
                        tracing::warn!(
                            "refusing a stream from {peer} ({}): too many unauthenticated streams",
                            host.map_or("-".to_owned(), |h| h.to_string())
                        );
                        drop(stream);
                        continue;
                    };
                    let shared = shared.clone();
                    let counters = stats.peer(&peer.to_string());
                    sessions.spawn(async move {
                        let _counted = crate::net::stats::Session::start(counters.clone());
                        let gate = Gate {
                            access: shared.rules.for_peer(peer),
                            sessions: &shared.sessions,
                            peer,
                            wide,
                            pending: Mutex::new(Some(slot)),
                            slot: Mutex::new(None),
                        };
                        let serving = serve_stream(&shared, stream, protocol, &gate, counters);
                        // Past the deadline an unauthenticated stream is
                        // dropped (which closes it); an authenticated one
                        // goes on.
                        let deadline = async {
                            tokio::time::sleep(shared.limits.auth_timeout).await;
                            if gate.authenticated() {
                                std::future::pending::<()>().await;
                            }
                        };
                        let ended = tokio::select! {
                            r = serving => Some(r),
                            () = deadline => None,
                        };
                        match ended {
                            Some(Ok(reason)) => tracing::debug!("session with {peer} ended: {reason:?}"),
                            Some(Err(e)) => tracing::info!("session with {peer} failed: {e}"),
                            None => tracing::info!(
                                "closing a stream from {peer}: not authenticated within {:?}",
                                shared.limits.auth_timeout
                            ),
                        }
                        // As an annex-shell session does: what it changed is
                        // in the branch when it ends, not at the next tick.
                        crate::session::record_state("annexmesh: record changes").await;
                    });
                }
            }
        }
        let cut = sessions.len();
        sessions.shutdown().await;
        cut
    })
}

struct Shared {
    store: Store,
    rules: AccessRules,
    serve_git: bool,
    /// Authenticated sessions.
    sessions: Arc<Pool>,
    /// Streams not authenticated yet.
    pending: Arc<Pool>,
    limits: Limits,
    stats: Arc<crate::net::stats::Stats>,
}

impl Shared {
    /// Whether `peer` is a read-write member of the mesh: a gateway, whose
    /// one identity carries the sessions of all its clients to this node
    /// (one per client session). Its streams are bounded by the totals
    /// only, not per peer, or a gateway with more clients than the per-peer
    /// limit would find its nodes refusing it and its `PUT`s storing
    /// nowhere.
    fn carries_many(&self, peer: &PeerId) -> bool {
        self.rules
            .members
            .as_ref()
            .is_some_and(|m| m.role(peer) == Some(protocol::server::ServeMode::ReadWrite))
    }
}

/// Slots bounded in total, per peer and per IP address.
struct Pool {
    total: Semaphore,
    counts: Mutex<HashMap<Claim, usize>>,
    per_peer_limit: usize,
    per_host_limit: usize,
    /// Slots held now (a gauge of [`crate::net::stats::Stats`]).
    held: Arc<AtomicU64>,
}

/// What a slot is counted against besides the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Claim {
    Peer(PeerId),
    Host(std::net::IpAddr),
}

impl Pool {
    fn new(total: usize, per_peer: usize, per_host: usize, held: Arc<AtomicU64>) -> Pool {
        Pool {
            total: Semaphore::new(total),
            counts: Mutex::new(HashMap::new()),
            per_peer_limit: per_peer,
            per_host_limit: per_host,
            held,
        }
    }

    fn limit(&self, claim: &Claim) -> usize {
        match claim {
            Claim::Peer(_) => self.per_peer_limit,
            Claim::Host(_) => self.per_host_limit,
        }
    }
}

/// One stream's claim on a pool; released on drop.
struct Slot {
    pool: Arc<Pool>,
    claims: Vec<Claim>,
}

impl Slot {
    /// A slot for `peer` (connected from `host`), unless the total, the
    /// peer's or the address's limit is reached; `wide`: bounded by the
    /// total only.
    fn take(
        pool: &Arc<Pool>,
        peer: PeerId,
        host: Option<std::net::IpAddr>,
        wide: bool,
    ) -> Option<Slot> {
        let claims: Vec<Claim> = std::iter::once(Claim::Peer(peer))
            .chain(host.map(Claim::Host))
            .collect();
        let permit = pool.total.try_acquire().ok()?;
        let mut map = pool.counts.lock().unwrap_or_else(|p| p.into_inner());
        let full = |c: &Claim| map.get(c).copied().unwrap_or(0) >= pool.limit(c);
        if !wide && claims.iter().any(full) {
            return None;
        }
        for c in &claims {
            *map.entry(*c).or_insert(0) += 1;
        }
        permit.forget();
        pool.held.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            pool: pool.clone(),
            claims,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(1, Ordering::Relaxed);
        self.pool.total.add_permits(1);
        let mut map = self.pool.counts.lock().unwrap_or_else(|p| p.into_inner());
        for c in &self.claims {
            if let Some(count) = map.get_mut(c) {
                *count -= 1;
                if *count == 0 {
                    map.remove(c);
                }
            }
        }
    }
}

/// A stream's authenticator: a good `AUTH` also trades the stream's pending
/// slot for a session slot. With no session slot free, the `AUTH` fails
/// (and the stream then ends at the authentication deadline at the latest).
struct Gate<'a> {
    access: crate::auth::StreamAccess<'a>,
    sessions: &'a Arc<Pool>,
    peer: PeerId,
    /// Bounded by the totals only (see [`Shared::carries_many`]).
    wide: bool,
    pending: Mutex<Option<Slot>>,
    slot: Mutex<Option<Slot>>,
}

impl Gate<'_> {
    fn authenticated(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl crate::session::Authenticator for Gate<'_> {
    fn check(
        &self,
        client: Option<&protocol::Uuid>,
        token: &protocol::AuthToken,
    ) -> Option<protocol::server::ServeMode> {
        let mode = self.access.check(client, token)?;
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let Some(taken) = Slot::take(self.sessions, self.peer, None, self.wide) else {
                tracing::warn!("refusing AUTH from {}: too many sessions", self.peer);
                return None;
            };
            *slot = Some(taken);
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
        }
        Some(mode)
    }
}

async fn serve_stream(
    shared: &Shared,
    stream: libp2p::Stream,
    protocol: StreamProtocol,
    gate: &Gate<'_>,
    counters: Arc<crate::net::stats::PeerCounters>,
) -> Result<CloseReason> {
    let stream = crate::net::stats::Counted::new(stream.compat(), counters);
    let (reader, writer) = tokio::io::split(stream);
    let reader = crate::session::IdleReader::new(reader, shared.limits.idle_timeout);
    let mut writer = crate::session::IdleWriter::new(writer, shared.limits.idle_timeout);
    let mut reader = tokio::io::BufReader::new(reader);
    let store = &shared.store;
    if protocol == TARGET_PROTOCOL {
        // `TARGET <uuid>\n` first: this repository, a cluster this gateway
        // serves, or a node it proxies (annex-spec §4.4).
        let mut line = String::new();
        let n = (&mut reader)
            .take(256)
            .read_line(&mut line)
            .await
            .map_err(|e| Error::Protocol(format!("target line: {e}")))?;
        let target = line.trim_end().strip_prefix("TARGET ").unwrap_or("");
        if n > 0 && target != store.uuid().as_str() {
            let access = gate;
            let relay = GitRelay {
                git_dir: store.repo().git_dir.clone(),
            };
            let git: Option<&dyn crate::session::GitService> = shared
                .serve_git
                .then_some(&relay as &dyn crate::session::GitService);
            match crate::cluster::resolve(store, target) {
                Ok(Some(crate::cluster::Served::Cluster {
                    uuid,
                    nodes,
                    routes,
                })) => {
                    let gateway = crate::gateway::Gateway {
                        cluster: uuid,
                        gateway: store,
                        nodes,
                        mode: protocol::server::ServeMode::ReadOnly,
                        auth: Some(access),
                        routes,
                    };
                    return gateway
                        .serve_timed(reader, writer, git, Some(&shared.stats.timings))
                        .await;
                }
                Ok(Some(crate::cluster::Served::Node(node))) => {
                    return crate::proxy::serve_node(
                        *node,
                        store,
                        protocol::server::ServeMode::ReadOnly,
                        Some(access),
                        git,
                        reader,
                        writer,
                    )
                    .await;
                }
                Ok(None) => {}
                Err(e) => tracing::info!("resolving target {target}: {e}"),
            }
        }
        if n == 0 || target != store.uuid().as_str() {
            let msg = format!("ERROR this peer does not serve repository {target}\n");
            let _ = writer.write_all(msg.as_bytes()).await;
            let _ = writer.shutdown().await;
            return Ok(CloseReason::ProtocolError(format!(
                "unknown target {target}"
            )));
        }
    }
    let server = Server::new(ServerConfig {
        uuid: store.uuid().clone(),
        start: Start::RequireAuth,
        git: if shared.serve_git {
            GitAccess::Served
        } else {
            GitAccess::Refused
        },
        max_version: i64::from(MAX_VERSION),
    });
    let relay = GitRelay {
        git_dir: store.repo().git_dir.clone(),
    };
    let ctx = ServeContext {
        auth: Some(gate),
        git: Some(&relay),
        timings: Some(&shared.stats.timings),
    };
    serve(server, reader, writer, store, &ctx).await
}
