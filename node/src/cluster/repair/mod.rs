//! The repairer (issue 10): a gateway daemon drives one
//! [`Planner`](protocol::replication::repair::Planner) per cluster it
//! serves, and carries out the copies and drops it plans ([`exec`]).
//!
//! What the planner is fed, all of it as it changes, never by a scan:
//! * every location log a merge changes ([`Meta::subscribe`]; the
//!   gateway's own records come through its journal watcher), and the whole
//!   catalog once at start (or after falling behind);
//! * the replication policy (`annexmesh/replication.log`, `*.log.rpl`);
//! * the cluster's nodes and gateways from the gossiped topology, groups and
//!   preferred/required content from the branch, read again when those
//!   files change;
//! * the monitor's transitions ([`Health`]), whose grace is the clusters'
//!   policy grace (the smallest, when several clusters differ).
//!
//! The state is written to `annex/annexmesh/repair` for `annexmesh status`
//! ([`state`]), and `annexmesh recover` leaves requests in
//! `annex/annexmesh/recover/`.

pub mod exec;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use protocol::Uuid;
use protocol::cluster::topology::{self as topo, TOPOLOGY_LOG};
use protocol::logs::catalog::{Catalog, Family};
use protocol::logs::view::View;
use protocol::preferred;
use protocol::replication::monitor::{Event, Liveness, Monitor};
use protocol::replication::repair::{Env, Planner, RepairConfig, Transfer};
use protocol::replication::{Layout, Policy, PreferredPlacement, REPLICATION_LOG};
use tokio::sync::{broadcast, mpsc};

use crate::health::Health;
use crate::meta::Meta;
use crate::store::Store;

/// How long a key new to the repairer waits before it is judged: the PUT
/// that brought it may still be fanning out to the cluster's other nodes.
pub const SETTLE: Duration = Duration::from_secs(10);

/// How often the planners are polled.
const TICK: Duration = Duration::from_millis(250);
/// How often the state file may be rewritten.
const STATE_EVERY: Duration = Duration::from_secs(1);
/// How often the cluster's shape is read again even if nothing said so.
const RECONFIGURE_EVERY: Duration = Duration::from_secs(30);
/// The longest one transfer may take.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(600);

/// Branch files that change a cluster's shape or what its nodes want.
const SHAPE_FILES: [&str; 12] = [
    TOPOLOGY_LOG,
    "cluster.log",
    "proxy.log",
    "uuid.log",
    "trust.log",
    "group.log",
    "preferred-content.log",
    "required-content.log",
    "group-preferred-content.log",
    "numcopies.log",
    "mincopies.log",
    REPLICATION_LOG,
];

/// One cluster's planner and what it plans over.
struct ClusterRepair {
    planner: Planner,
    nodes: Vec<Uuid>,
    gateways: Vec<Uuid>,
}

/// A transfer's end, reported by its task.
struct Done {
    cluster: Uuid,
    id: u64,
    result: Result<(), String>,
}

struct Driver {
    store: Store,
    me: Uuid,
    config: RepairConfig,
    sessions: exec::Sessions,
    clusters: BTreeMap<Uuid, ClusterRepair>,
    policy: Policy,
    ctx: preferred::Context,
    layout: Layout,
    liveness: HashMap<Uuid, Liveness>,
    done_tx: mpsc::Sender<Done>,
    state_dir: PathBuf,
    written: String,
    /// The clock of the last poll (0 before the first): keys of a cluster
    /// taken up after it are heard of then, and settle.
    polled_ms: u64,
}

/// Runs the repairer for the gateway `store` until `meta` or `health` is gone.
pub async fn run(store: Store, meta: Weak<Meta>, health: Weak<Health>, config: RepairConfig) {
    run_with(store, meta, health, config, None).await;
}

/// [`run`], also taking the findings of `annexmesh fsck --cluster`
/// ([`crate::cluster::fsck`]): a missing copy stops counting, a bad copy
/// with no good one puts the key in error.
pub async fn run_with(
    store: Store,
    meta: Weak<Meta>,
    health: Weak<Health>,
    config: RepairConfig,
    mut fsck: Option<mpsc::Receiver<crate::cluster::fsck::Finding>>,
) {
    let Some(m) = meta.upgrade() else { return };
    let mut changes = m.subscribe();
    let (done_tx, mut done_rx) = mpsc::channel(config.max_in_flight as usize + 16);
    let mut d = Driver {
        me: store.uuid().clone(),
        sessions: exec::Sessions::new(store.clone()),
        state_dir: crate::config::state_dir(store.repo()),
        store,
        config,
        clusters: BTreeMap::new(),
        policy: Policy::new(),
        ctx: preferred::Context::from_view(&View::new(&Catalog::new())),
        layout: Layout::new(),
        liveness: HashMap::new(),
        done_tx,
        written: String::new(),
        polled_ms: 0,
    };
    d.reload(&m).await;
    drop(m);
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_state, mut last_shape) = (Instant::now(), Instant::now());
    loop {
        tokio::select! {
            _ = every.tick() => {}
            Some(done) = done_rx.recv() => {
                let Some(h) = health.upgrade() else { return };
                d.finished(done, h.now_ms());
                // Its slot is free: the next transfer starts now, not at
                // the next tick.
                let transfers = h.with_monitor(|monitor| d.poll(monitor, h.now_ms()));
                for (cluster, t) in transfers {
                    d.spawn(cluster, t);
                }
                continue;
            }
            Some(f) = next_finding(&mut fsck) => {
                d.on_fsck(&f);
                continue;
            }
        }
        let (Some(m), Some(h)) = (meta.upgrade(), health.upgrade()) else {
            return;
        };
        let shape = match d.follow(&m, &mut changes) {
            Follow::Reload => {
                d.reload(&m).await;
                false
            }
            Follow::Changed { shape } => shape,
        };
        if shape || last_shape.elapsed() >= RECONFIGURE_EVERY {
            d.reshape(&m).await;
            if shape {
                d.clusters
                    .values_mut()
                    .for_each(|c| c.planner.reevaluate_all());
            }
            last_shape = Instant::now();
        }
        d.take_recover_requests();
        let transfers = h.with_monitor(|monitor| d.poll(monitor, h.now_ms()));
        for (cluster, t) in transfers {
            d.spawn(cluster, t);
        }
        if last_state.elapsed() >= STATE_EVERY {
            h.with_monitor(|monitor| d.write_state(monitor, h.now_ms()));
            last_state = Instant::now();
        }
    }
}

enum Follow {
    Reload,
    Changed { shape: bool },
}

impl Driver {
    /// Reads the whole catalog: the shape, the policy and every location log
    /// (nothing more than the shape while this gateway serves no cluster).
    async fn reload(&mut self, meta: &Meta) {
        self.clusters.clear();
        self.reshape(meta).await;
    }

    /// Loads the index of clusters new to the repairer.
    fn load_new(&mut self, meta: &Meta, new: &[Uuid]) {
        if new.is_empty() {
            return;
        }
        let catalog = meta.catalog();
        self.policy = Policy::from_catalog(&catalog);
        for c in new {
            if let Some(c) = self.clusters.get_mut(c) {
                c.planner.load_at(&catalog, self.polled_ms);
            }
        }
    }

    /// Applies the paths merges changed since the last call.
    fn follow(
        &mut self,
        meta: &Meta,
        changes: &mut broadcast::Receiver<Arc<Vec<String>>>,
    ) -> Follow {
        let mut shape = false;
        loop {
            let paths = match changes.try_recv() {
                Ok(p) => p,
                Err(broadcast::error::TryRecvError::Empty) => return Follow::Changed { shape },
                Err(broadcast::error::TryRecvError::Lagged(_)) => return Follow::Reload,
                Err(broadcast::error::TryRecvError::Closed) => return Follow::Changed { shape },
            };
            for path in paths.iter() {
                shape |= SHAPE_FILES.contains(&path.as_str());
                let Some(file) = meta.file(path) else {
                    continue;
                };
                if path == REPLICATION_LOG || path.ends_with(".log.rpl") {
                    self.policy.apply_file(path, &file);
                    let key = protocol::replication::policy::override_key(path);
                    for c in self.clusters.values_mut() {
                        match &key {
                            Some(k) => c.planner.reevaluate(k),
                            None => c.planner.reevaluate_all(),
                        }
                    }
                }
                if file.family() == Family::Presence {
                    for c in self.clusters.values_mut() {
                        c.planner.on_location_log(path, &file);
                    }
                }
            }
        }
    }

    /// Reads the clusters this gateway serves, their nodes and gateways,
    /// the layout and the preferred-content context.
    async fn reshape(&mut self, meta: &Meta) {
        let new = self.read_shape(meta).await;
        self.load_new(meta, &new);
    }

    /// [`Driver::reshape`] but the loading; returns the clusters new here.
    async fn read_shape(&mut self, meta: &Meta) -> Vec<Uuid> {
        let mut small = Catalog::new();
        for path in crate::branch::PREFERRED_FILES
            .iter()
            .chain(SHAPE_FILES.iter())
        {
            if let Some(f) = meta.file(path) {
                small.insert_content(path, &f.content());
            }
        }
        let view = View::new(&small);
        self.ctx = preferred::Context::from_view(&view);
        let lines = topo::read(
            &small
                .file(TOPOLOGY_LOG)
                .map(|f| f.content())
                .unwrap_or_default(),
        );
        let Some(mine) = lines.get(&self.me) else {
            self.clusters.clear();
            return Vec::new();
        };
        let store = self.store.clone();
        let wanted: Vec<Uuid> = mine.clusters.clone();
        let shapes = tokio::task::spawn_blocking(move || {
            let topology = crate::topology::topology(&store).ok();
            let mut out = Vec::new();
            for c in &wanted {
                if let Ok(Some(routes)) = crate::topology::routes(&store, c) {
                    out.push((c.clone(), routes));
                }
            }
            (topology, out)
        })
        .await;
        let Ok((topology, shapes)) = shapes else {
            return Vec::new();
        };
        if let Some((t, _)) = &topology {
            self.layout = Layout::from_branch(t, &view);
        }
        let mut seen = BTreeSet::new();
        let mut new = Vec::new();
        for (c, routes) in shapes {
            let gateways: Vec<Uuid> = lines
                .iter()
                .filter(|(_, e)| e.clusters.contains(&c))
                .map(|(g, _)| g.clone())
                .collect();
            let nodes: Vec<Uuid> = routes
                .known()
                .iter()
                .filter(|u| !lines.contains_key(*u) && !u.is_cluster())
                .cloned()
                .collect();
            if !self.clusters.contains_key(&c) {
                new.push(c.clone());
            }
            let repair = self
                .clusters
                .entry(c.clone())
                .or_insert_with(|| ClusterRepair {
                    planner: Planner::new(self.me.clone(), self.config),
                    nodes: Vec::new(),
                    gateways: Vec::new(),
                });
            repair.planner.set_members(nodes.iter().cloned());
            repair.nodes = nodes;
            repair.gateways = gateways;
            seen.insert(c);
        }
        self.clusters.retain(|c, _| seen.contains(c));
        new
    }

    /// Feeds the monitor's transitions and polls every planner.
    fn poll(&mut self, monitor: &mut Monitor, now: u64) -> Vec<(Uuid, Transfer)> {
        self.polled_ms = now;
        let grace = self
            .clusters
            .keys()
            .map(|c| self.policy.grace(c))
            .min()
            .map(|s| s.saturating_mul(1000));
        if let Some(g) = grace {
            monitor.set_grace_ms(g);
        }
        let events = transitions(&mut self.liveness, monitor, now);
        let mut out = Vec::new();
        for (cluster, c) in &mut self.clusters {
            for e in &events {
                c.planner.on_event(e);
            }
            let placement =
                PreferredPlacement::new(&self.ctx, &self.policy, cluster.clone(), &c.nodes);
            let gateways: Vec<Uuid> = c
                .gateways
                .iter()
                .filter(|g| **g == self.me || monitor.liveness(g) != Some(Liveness::Down))
                .cloned()
                .collect();
            let env = Env {
                now,
                placement: &placement,
                monitor,
                layout: &self.layout,
                gateways: &gateways,
                tiebreak: None,
            };
            out.extend(
                c.planner
                    .poll(&env)
                    .into_iter()
                    .map(|t| (cluster.clone(), t)),
            );
        }
        out
    }

    fn spawn(&self, cluster: Uuid, t: Transfer) {
        let sessions = self.sessions.clone();
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            tracing::info!("repair: {:?}", t.action);
            let result =
                match tokio::time::timeout(TRANSFER_DEADLINE, sessions.run(&t.action)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the transfer took too long".to_owned()),
                };
            if let Err(e) = &result {
                tracing::info!("repair of {} failed: {e}", t.action.key());
            }
            let _ = tx
                .send(Done {
                    cluster,
                    id: t.id,
                    result,
                })
                .await;
        });
    }

    fn finished(&mut self, done: Done, now: u64) {
        if let Some(c) = self.clusters.get_mut(&done.cluster) {
            c.planner.on_transfer_done(done.id, done.result, now);
        }
    }

    fn on_fsck(&mut self, f: &crate::cluster::fsck::Finding) {
        let Some(c) = self.clusters.get_mut(&f.cluster) else {
            return;
        };
        if f.missing {
            c.planner.on_missing(&f.key, &f.node);
        }
        if let Some(e) = &f.error {
            c.planner
                .report_error(&f.key, &f.node, &format!("fsck: {e}"));
        }
    }

    fn take_recover_requests(&mut self) {
        for request in state::take_recover_requests(&self.state_dir) {
            for c in self.clusters.values_mut() {
                match &request {
                    state::Recover::All => {
                        c.planner.recover_all();
                    }
                    state::Recover::Key(k) => {
                        c.planner.recover(k);
                    }
                }
            }
        }
    }

    fn write_state(&mut self, monitor: &mut Monitor, now: u64) {
        let mut text = String::new();
        for (cluster, c) in &self.clusters {
            let placement =
                PreferredPlacement::new(&self.ctx, &self.policy, cluster.clone(), &c.nodes);
            let env = Env {
                now,
                placement: &placement,
                monitor,
                layout: &self.layout,
                gateways: &c.gateways,
                tiebreak: None,
            };
            text.push_str(&state::render(cluster, &c.planner, &env));
        }
        if text != self.written {
            if let Err(e) = crate::fs::write_atomic(&state::path(&self.state_dir), text.as_bytes())
            {
                tracing::debug!("writing the repair state: {e}");
            }
            self.written = text;
        }
    }
}

/// The next fsck finding; never, without a channel.
async fn next_finding(
    rx: &mut Option<mpsc::Receiver<crate::cluster::fsck::Finding>>,
) -> Option<crate::cluster::fsck::Finding> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The monitor's transitions since the last call, as events.
fn transitions(seen: &mut HashMap<Uuid, Liveness>, monitor: &Monitor, now: u64) -> Vec<Event> {
    let mut events = Vec::new();
    for (node, liveness, last_seen) in monitor.nodes() {
        let before = seen.insert(node.clone(), liveness);
        if before == Some(liveness) {
            continue;
        }
        let node = node.clone();
        events.push(match (before, liveness) {
            (_, Liveness::Suspected) => Event::Suspected {
                node,
                at: now,
                last_seen,
            },
            (_, Liveness::Down) => Event::Down {
                node,
                at: now,
                last_seen,
            },
            (Some(Liveness::Down), Liveness::Alive) => Event::Recovered {
                node,
                at: now,
                last_seen,
            },
            (_, Liveness::Alive) => Event::Alive { node, at: now },
        });
    }
    events
}
