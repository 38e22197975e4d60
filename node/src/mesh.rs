//! A whole mesh peer: the repository served over `/annex/p2p/1` ([`Peer`]) and
//! its metadata shared by gossip and anti-entropy ([`Meta`]), persisted in the
//! repository's `git-annex` branch in batches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::logs::catalog::{Catalog, record_map};
use protocol::logs::view::ADDRESSES_LOG;

use crate::error::Result;
use crate::journal::log_clock_now;
use crate::meta::{Meta, MetaLink, MetaOptions, Persist};
use crate::peer::{Peer, PeerOptions};

/// How often local changes (git-annex's journal) are committed to the branch.
pub const JOURNAL_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// How long after a session ends its daemon commits what it recorded, so
/// that sessions ending together share one commit.
pub const SESSION_COMMIT_DELAY: Duration = Duration::from_millis(100);

/// Branch files whose change may change what a gateway reaches.
const TOPOLOGY_FILES: [&str; 3] = [protocol::cluster::TOPOLOGY_LOG, "proxy.log", "cluster.log"];

/// How long topology changes are gathered before a gateway follows them.
const FOLLOW_DEBOUNCE: Duration = Duration::from_millis(300);

/// fsck findings waiting for the repairer.
const FSCK_FINDINGS: usize = 256;

/// How often the journal and the branch are looked at for changes made by
/// other processes (annex-shell sessions, setup commands, stock git-annex).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Writes merged metadata into the repository's `git-annex` branch.
pub struct BranchPersist {
    pub git_dir: PathBuf,
}

impl Persist for BranchPersist {
    fn persist(&self, files: &[(String, Vec<u8>)]) -> Result<()> {
        crate::branch::commit_catalog_files(&self.git_dir, files, "annexmesh: merge from peers")
            .map(|_| ())
    }
}

/// What a daemon runs beside serving and gossip.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub monitor: protocol::replication::MonitorConfig,
    /// Keep the git branches in step with the other gateways of this
    /// repository's clusters, fetching through this program
    /// (`annexmesh git-connect`); `None`: not at all.
    pub branch_sync: Option<crate::cluster::heads::Helper>,
    /// Relay other processes' streams ([`crate::net::relay`]).
    pub relay: bool,
}

pub struct Mesh {
    pub peer: Peer,
    pub meta: Arc<Meta>,
    git_dir: PathBuf,
    committer: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
    /// The join server and the member keeper, for a daemon with members.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Heartbeats and the peer monitor, for a daemon with members.
    pub health: Option<Arc<crate::health::Health>>,
    /// The relay socket, removed at shutdown.
    relay: Option<PathBuf>,
    members: Option<Arc<crate::members::Members>>,
    /// `annexmesh fsck --cluster`'s jobs.
    pub fsck: Arc<crate::cluster::fsck::Fsck>,
}

impl Mesh {
    pub async fn start(
        mut options: PeerOptions,
        meta_options: MetaOptions,
        services: Services,
    ) -> Result<Mesh> {
        let git_dir = options.store.repo().git_dir.clone();
        let members = options.members.clone();
        let options_top = options.store.repo().top.clone();
        let state_dir = crate::config::state_dir(options.store.repo());
        let link = Arc::new(MetaLink::default());
        options.store.set_observer(link.clone());
        // Before the catalog is read, so nothing written in between is missed
        // (a change seen twice merges to the same).
        let watcher = crate::watch::Watcher::new(&git_dir)?;
        let catalog = match crate::branch::read(&git_dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot read the git-annex branch, starting empty: {e}");
                Catalog::new()
            }
        };
        let peer = Peer::start(options).await?;
        let meta = Meta::start(
            peer.net.clone(),
            catalog,
            meta_options,
            Some(Arc::new(BranchPersist {
                git_dir: git_dir.clone(),
            })),
        )
        .await?;
        link.set(&meta);
        // Announce where this repository can be reached.
        let addrs: Vec<String> = peer.addrs.iter().map(ToString::to_string).collect();
        let uuid = peer.store.uuid().to_string();
        let content = peer.store.journal().modify(ADDRESSES_LOG, |old| {
            record_map(old, &uuid, &addrs.join(" "), log_clock_now())
        })?;
        meta.record_local(ADDRESSES_LOG, &content);
        let committer = spawn_committer(git_dir.clone());
        let reconfigure = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch(watcher, Arc::downgrade(&meta), reconfigure.clone()));
        let mut tasks = vec![tokio::spawn(follow_topology(
            options_top.clone(),
            reconfigure,
        ))];
        let relay = match services.relay {
            true => start_relay(&peer, &state_dir, &mut tasks),
            false => None,
        };
        if let Some(helper) = services.branch_sync {
            tasks.push(tokio::spawn(crate::cluster::heads::run(
                peer.store.clone(),
                Arc::downgrade(&meta),
                helper,
            )));
        }
        let mut health = None;
        let kept_members = members.clone();
        let (findings_tx, findings_rx) = tokio::sync::mpsc::channel(FSCK_FINDINGS);
        let fsck = crate::cluster::fsck::Fsck::new(
            peer.store.clone(),
            Arc::downgrade(&meta),
            members.is_some().then_some(findings_tx),
        );
        if let Some(members) = members {
            let (h, more) = start_member_services(
                &peer,
                &meta,
                members,
                state_dir,
                services.monitor,
                findings_rx,
            )
            .await?;
            health = Some(h);
            tasks.extend(more);
        }
        Ok(Mesh {
            peer,
            meta,
            git_dir,
            committer,
            watcher,
            tasks,
            health,
            relay,
            members: kept_members,
            fsck,
        })
    }

    /// Serves the HTTP API ([`crate::api`]) on `addr` until shutdown; the
    /// address bound.
    pub async fn start_api(&mut self, addr: std::net::SocketAddr) -> Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| crate::Error::Io {
                context: format!("binding the HTTP API on {addr}"),
                source: e,
            })?;
        let bound = listener.local_addr().map_err(|e| crate::Error::Io {
            context: "the HTTP API's address".into(),
            source: e,
        })?;
        crate::api::token::ensure(&self.git_dir, false)?;
        let state = Arc::new(crate::api::ApiState {
            meta: self.meta.clone(),
            net: self.peer.net.clone(),
            store: self.peer.store.clone(),
            members: self.members.clone(),
            state_dir: crate::config::state_dir(self.peer.store.repo()),
            addrs: self.peer.addrs.iter().map(ToString::to_string).collect(),
            metrics: crate::api::metrics::Metrics::default(),
            stats: self.peer.stats.clone(),
            fsck: self.fsck.clone(),
        });
        self.tasks
            .push(tokio::spawn(crate::api::serve(listener, state)));
        Ok(bound)
    }

    /// Stops serving and writes everything pending to the branch.
    pub async fn shutdown(self) -> usize {
        self.committer.abort();
        self.watcher.abort();
        for t in &self.tasks {
            t.abort();
        }
        if let Some(path) = &self.relay {
            let _ = std::fs::remove_file(path);
        }
        let cut = self.peer.shutdown().await;
        let meta = self.meta.clone();
        let git_dir = self.git_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = meta.flush() {
                tracing::warn!("persisting metadata: {e}");
            }
            if let Err(e) = crate::branch::commit(&git_dir, "annexmesh: record changes") {
                tracing::warn!("committing the journal: {e}");
            }
        })
        .await;
        cut
    }
}

/// Serves the relay socket; `None` (and a warning) when it cannot be bound
/// (a path too long for a Unix socket, say): other processes then dial on
/// their own.
fn start_relay(
    peer: &Peer,
    state_dir: &std::path::Path,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Option<PathBuf> {
    let path = crate::net::relay::socket_path(state_dir);
    match crate::net::relay::bind(&path) {
        Ok(listener) => {
            tasks.push(tokio::spawn(crate::net::relay::serve(
                listener,
                peer.net.clone(),
            )));
            Some(path)
        }
        Err(e) => {
            tracing::warn!("no stream relay for other processes: {e}");
            None
        }
    }
}

/// Gossips every change to the repository's metadata that did not come
/// through this daemon's own store: polls the journal and the branch, and
/// wakes `reconfigure` when the topology's files change. Ends when `meta`
/// is gone. (The simulations run it for their gateways too.)
pub async fn watch(
    watcher: crate::watch::Watcher,
    meta: std::sync::Weak<Meta>,
    reconfigure: Arc<tokio::sync::Notify>,
) {
    let watcher = Arc::new(std::sync::Mutex::new(watcher));
    let mut every = tokio::time::interval(WATCH_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let w = watcher.clone();
        let changes = tokio::task::spawn_blocking(move || {
            w.lock().unwrap_or_else(|p| p.into_inner()).changes()
        })
        .await;
        let Some(meta) = meta.upgrade() else { return };
        match changes {
            Ok(Ok(files)) => {
                if files
                    .iter()
                    .any(|(p, _)| TOPOLOGY_FILES.contains(&p.as_str()))
                {
                    reconfigure.notify_one();
                }
                for (path, content) in files {
                    meta.record_local(&path, &content);
                }
            }
            Ok(Err(e)) => tracing::warn!("watching the journal and branch: {e}"),
            Err(e) => tracing::warn!("watching the journal and branch: {e}"),
        }
    }
}

/// Keeps a gateway's clusters in step with the gossiped topology
/// ([`crate::cluster::follow_topology`]) whenever the watcher sees it change.
async fn follow_topology(top: PathBuf, changed: Arc<tokio::sync::Notify>) {
    loop {
        changed.notified().await;
        tokio::time::sleep(FOLLOW_DEBOUNCE).await;
        let dir = top.clone();
        let done = tokio::task::spawn_blocking(move || crate::cluster::follow_topology(&dir)).await;
        match done {
            Ok(Ok(Some(update))) => {
                for m in update.messages() {
                    if !m.starts_with("No ") {
                        tracing::info!("{m}");
                    }
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("following the topology: {e}"),
            Err(e) => tracing::warn!("following the topology: {e}"),
        }
    }
}

/// The journal committer: every [`JOURNAL_COMMIT_INTERVAL`], and soon after
/// a session ends ([`crate::session::record_state`] nudges it).
fn spawn_committer(commit_dir: PathBuf) -> tokio::task::JoinHandle<()> {
    let nudge = crate::session::COMMITTER
        .get_or_init(|| Arc::new(tokio::sync::Notify::new()))
        .clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(JOURNAL_COMMIT_INTERVAL);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = nudge.notified() => {
                    // Sessions ending together share the commit.
                    tokio::time::sleep(SESSION_COMMIT_DELAY).await;
                }
            }
            let dir = commit_dir.clone();
            let r = tokio::task::spawn_blocking(move || {
                // Every journal this process wrote (a gateway's local
                // nodes too), and its own repository's whoever wrote it.
                crate::branch::commit_written("annexmesh: record changes")?;
                crate::branch::commit(&dir, "annexmesh: record changes")
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!("committing the journal: {e}");
            }
        }
    })
}

/// What a daemon with members runs: heartbeats and the monitor, the join
/// server, and the member keeper.
async fn start_member_services(
    peer: &Peer,
    meta: &Arc<Meta>,
    members: Arc<crate::members::Members>,
    state_dir: PathBuf,
    monitor: protocol::replication::MonitorConfig,
    fsck: tokio::sync::mpsc::Receiver<crate::cluster::fsck::Finding>,
) -> Result<(Arc<crate::health::Health>, Vec<tokio::task::JoinHandle<()>>)> {
    let health = crate::health::Health::start(
        peer.net.clone(),
        peer.store.clone(),
        members.clone(),
        monitor,
    )
    .await?;
    let joins = peer
        .net
        .control()
        .accept(crate::members::JOIN_PROTOCOL)
        .map_err(|e| crate::error::Error::Protocol(format!("join protocol: {e}")))?;
    let joiner = tokio::spawn(crate::members::serve_joins(
        crate::members::JoinServer {
            invites: crate::members::Invites::new(&state_dir),
            journal: peer.store.journal().clone(),
            me: peer.net.peer_id(),
            uuid: peer.store.uuid().to_string(),
            spread: {
                let meta = Arc::downgrade(meta);
                Box::new(move |path: &str, content: &[u8]| {
                    if let Some(m) = meta.upgrade() {
                        m.record_local(path, content);
                    }
                })
            },
        },
        joins,
    ));
    let keeper = tokio::spawn(crate::keeper::keep(
        peer.net.clone(),
        members,
        Arc::downgrade(meta),
        state_dir,
    ));
    let repairer = tokio::spawn(crate::cluster::repair::run_with(
        peer.store.clone(),
        Arc::downgrade(meta),
        Arc::downgrade(&health),
        protocol::replication::repair::RepairConfig {
            suspect_after_ms: monitor.suspect_after_ms,
            settle_ms: crate::cluster::repair::SETTLE.as_millis() as u64,
            ..protocol::replication::repair::RepairConfig::default()
        },
        Some(fsck),
    ));
    Ok((health, vec![joiner, keeper, repairer]))
}
