//! `annexmesh fsck --cluster` (issue 10): a gateway daemon checks, in the
//! background, every copy its location logs say the cluster's nodes hold,
//! and repairs what it finds as `protocol::replication::fsck` decides.
//!
//! * A local node's copy is hashed in place; any other node's is read in a
//!   session the gateway serves to itself ([`exec::Sessions::verify`]: the
//!   path and deadlines of a client's `GET`) and hashed as it streams. Keys
//!   of backends without a checksum get a size check.
//! * A missing copy is recorded absent in the gateway's location log (and
//!   in a local node's own).
//! * A bad copy is moved aside on a local node (`annex/bad/`), removed on a
//!   remote one (`REMOVE`, the good copy locked meanwhile), recorded absent,
//!   and copied back from a verified-good holder with the repairer's
//!   executor (verified on arrival). With no good copy it is kept, and the
//!   key is reported to the repairer as in error, for `annexmesh status`.
//!
//! At most [`CONCURRENCY`] keys are checked at once, one copy at a time
//! each, so user traffic keeps the rest of the nodes' and the disk's time;
//! a copy being read counts as a transfer of its node (`busy`), so clients'
//! downloads through the gateway go to other holders meanwhile.
//! One job runs at a time; its progress and findings are kept in memory
//! (at most [`MAX_FINDINGS`] findings) until the next job starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use protocol::logs::catalog::Family;
use protocol::logs::presence::Status;
use protocol::replication::fsck::{self as decide, Checked, Found, Progress, Step};
use protocol::replication::repair::Action;
use protocol::{Key, Uuid};
use tokio::sync::mpsc;

use super::repair::exec;
use crate::gateway::GatewayNode;
use crate::meta::Meta;
use crate::store::Store;

/// Keys checked at once.
pub const CONCURRENCY: usize = 2;
/// The most findings a job keeps (its counts go on).
pub const MAX_FINDINGS: usize = 10_000;
/// Location logs copied out of the catalog per look.
const PAGE: usize = 512;
/// The longest one copy's check, or one repair, may take.
const STEP_DEADLINE: Duration = Duration::from_secs(600);
/// Bytes read per chunk when hashing a local copy.
const READ_CHUNK: usize = 1 << 20;

/// A finding the repairer is told, so `annexmesh status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub cluster: Uuid,
    pub key: Key,
    pub node: Uuid,
    /// The log said present, the node has not got it.
    pub missing: bool,
    /// The key needs a person (bad copies and no good one).
    pub error: Option<String>,
}

/// One copy found wrong, and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingLine {
    pub key: String,
    pub node: String,
    /// `missing`, `bad` or `unchecked`.
    pub found: String,
    pub message: Option<String>,
    /// What was done (`recorded absent`, `repaired`, `kept: …`, …).
    pub action: String,
}

/// A job's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub id: u64,
    pub cluster: String,
    pub running: bool,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub progress: Progress,
    pub findings: Vec<FindingLine>,
    /// Findings not kept past [`MAX_FINDINGS`].
    pub findings_dropped: u64,
    /// Why the job could not run to its end.
    pub error: Option<String>,
}

/// Why a job was not started.
#[derive(Debug)]
pub enum StartError {
    /// One is running.
    Running(Box<JobView>),
    /// No cluster of this gateway has that name or uuid.
    NoCluster(String),
    /// The gateway's configuration could not be read.
    Failed(String),
}

/// The gateway's fsck jobs.
pub struct Fsck {
    gateway: Store,
    meta: Weak<Meta>,
    sessions: exec::Sessions,
    job: Mutex<Option<JobView>>,
    next_id: AtomicU64,
    repairer: Option<mpsc::Sender<Finding>>,
    /// Counts over every job since the daemon started (for `/metrics`).
    totals: Mutex<Progress>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A number from the key, to spread repairs over the good copies.
fn spread(key: &Key) -> u64 {
    key.as_str().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Fsck {
    /// The jobs of gateway `gateway`; findings go to `repairer` if given.
    pub fn new(
        gateway: Store,
        meta: Weak<Meta>,
        repairer: Option<mpsc::Sender<Finding>>,
    ) -> Arc<Fsck> {
        Arc::new(Fsck {
            sessions: exec::Sessions::new(gateway.clone()),
            gateway,
            meta,
            job: Mutex::new(None),
            next_id: AtomicU64::new(1),
            repairer,
            totals: Mutex::new(Progress::default()),
        })
    }

    /// The running job, else the last one.
    pub fn view(&self) -> Option<JobView> {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts over every job since the daemon started.
    pub fn totals(&self) -> Progress {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut JobView)) {
        if let Some(j) = self.job.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f(j);
        }
    }

    /// Starts checking `cluster` (a name or uuid): `keys`, or every key its
    /// nodes hold when empty. Returns the new job at once.
    pub async fn start(
        self: &Arc<Self>,
        cluster: &str,
        keys: Vec<Key>,
    ) -> Result<JobView, StartError> {
        let (uuid, nodes) = self.cluster(cluster).await?;
        let view = {
            let mut job = self.job.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(j) = job.as_ref().filter(|j| j.running) {
                return Err(StartError::Running(Box::new(j.clone())));
            }
            let view = JobView {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                cluster: uuid.to_string(),
                running: true,
                started_unix_ms: unix_ms(),
                finished_unix_ms: None,
                progress: Progress::default(),
                findings: Vec::new(),
                findings_dropped: 0,
                error: None,
            };
            *job = Some(view.clone());
            view
        };
        let me = self.clone();
        tokio::spawn(async move {
            let error = me.run(&uuid, &nodes, keys).await.err();
            if let Some(e) = &error {
                tracing::warn!("fsck of cluster {uuid}: {e}");
            }
            me.update(|j| {
                j.running = false;
                j.finished_unix_ms = Some(unix_ms());
                j.error = error;
            });
        });
        Ok(view)
    }

    /// The cluster named `name` (or with that uuid) that this gateway
    /// serves, as its git config says, and its nodes: the configured ones
    /// and those `cluster.log` adds (behind other gateways).
    async fn cluster(&self, name: &str) -> Result<(Uuid, Vec<Uuid>), StartError> {
        let no = || StartError::NoCluster(format!("this gateway serves no cluster {name:?}"));
        let repo = self.gateway.repo().clone();
        let clusters = tokio::task::spawn_blocking(move || crate::cluster::configured(&repo))
            .await
            .map_err(|e| StartError::Failed(e.to_string()))?
            .map_err(|e| StartError::Failed(format!("reading the clusters: {e}")))?;
        let cluster = clusters
            .into_iter()
            .find(|c| c.name == name || c.uuid.as_str() == name)
            .ok_or_else(no)?;
        let mut nodes: Vec<Uuid> = cluster.nodes.iter().map(|n| n.uuid.clone()).collect();
        if let Some(f) = self.meta.upgrade().and_then(|m| m.file("cluster.log")) {
            let mut catalog = protocol::logs::catalog::Catalog::new();
            catalog.insert_content("cluster.log", &f.content());
            let listed = protocol::logs::view::View::new(&catalog)
                .clusters()
                .remove(cluster.uuid.as_str())
                .unwrap_or_default();
            nodes.extend(listed.iter().filter_map(|n| Uuid::parse(n).ok()));
        }
        nodes.retain(|n| !n.is_cluster());
        nodes.sort();
        nodes.dedup();
        Ok((cluster.uuid, nodes))
    }

    /// The keys of one page of location logs after `after` that `nodes`
    /// hold, with those holders; the last path looked at.
    fn page(
        meta: &Meta,
        after: Option<&str>,
        nodes: &[Uuid],
    ) -> (Vec<(Key, Vec<Uuid>)>, Option<String>) {
        let page = meta.page(after, PAGE, |p| {
            Family::of(p) == Family::Presence && p.ends_with(".log")
        });
        let last = page.last().map(|(p, _)| p.clone());
        let keys = page
            .iter()
            .filter_map(|(path, file)| {
                let key = key_of(path)?;
                let holders = held_by(&file.content(), nodes);
                (!holders.is_empty()).then_some((key, holders))
            })
            .collect();
        (keys, last)
    }

    /// Checks `keys` (every key `nodes` hold when empty) of `cluster`.
    async fn run(&self, cluster: &Uuid, nodes: &[Uuid], keys: Vec<Key>) -> Result<(), String> {
        let gone = || "the daemon is stopping".to_owned();
        if !keys.is_empty() {
            let meta = self.meta.upgrade().ok_or_else(gone)?;
            let list: Vec<(Key, Vec<Uuid>)> = keys
                .into_iter()
                .map(|k| {
                    let path = protocol::logs::presence::location_log_path(&k);
                    let holders = meta
                        .file(&path)
                        .map(|f| held_by(&f.content(), nodes))
                        .unwrap_or_default();
                    (k, holders)
                })
                .collect();
            drop(meta);
            self.update(|j| j.progress.keys_total = list.len() as u64);
            self.check_all(cluster, list).await;
            return Ok(());
        }
        // The count first (a page at a time), then the checks.
        let (mut after, mut total) = (None::<String>, 0u64);
        loop {
            let meta = self.meta.upgrade().ok_or_else(gone)?;
            let (page, last) = Self::page(&meta, after.as_deref(), nodes);
            total += page.len() as u64;
            let Some(last) = last else { break };
            after = Some(last);
        }
        self.update(|j| j.progress.keys_total = total);
        let mut after = None::<String>;
        loop {
            let (page, last) = {
                let meta = self.meta.upgrade().ok_or_else(gone)?;
                Self::page(&meta, after.as_deref(), nodes)
            };
            let Some(last) = last else { return Ok(()) };
            self.check_all(cluster, page).await;
            after = Some(last);
        }
    }

    async fn check_all(&self, cluster: &Uuid, keys: Vec<(Key, Vec<Uuid>)>) {
        futures::stream::iter(keys)
            .map(|(k, holders)| self.check_key(cluster, k, holders))
            .buffer_unordered(CONCURRENCY)
            .for_each(|()| async {})
            .await;
    }

    /// Checks every holder's copy of `key`, then does what the findings ask.
    async fn check_key(&self, cluster: &Uuid, key: Key, holders: Vec<Uuid>) {
        let mut checks = Vec::new();
        let mut bytes = 0;
        for node in holders {
            let (c, b) = self.check_copy(&key, &node).await;
            bytes += b;
            checks.push(c);
        }
        let plan = decide::plan(&checks, spread(&key));
        let mut lines: Vec<FindingLine> = checks
            .iter()
            .filter(|c| c.found != Found::Good)
            .map(|c| finding_line(&key, c))
            .collect();
        let repaired = self.apply(&key, &plan.steps, &mut lines).await;
        let errors = lines
            .iter()
            .filter(|l| l.action.starts_with("failed"))
            .count() as u64;
        for c in &checks {
            let missing = c.found == Found::Missing;
            let bad = matches!(c.found, Found::Bad(_));
            if !(missing || bad && plan.error.is_some()) {
                continue;
            }
            self.tell_repairer(Finding {
                cluster: cluster.clone(),
                key: key.clone(),
                node: c.node.clone(),
                missing,
                error: if bad { plan.error.clone() } else { None },
            });
        }
        if let Some(e) = &plan.error {
            tracing::warn!("fsck: {key}: {e}");
        }
        let count = |p: &mut Progress| {
            p.add_key(&checks, bytes);
            p.repaired += repaired;
            p.errors += errors + u64::from(plan.error.is_some());
        };
        count(&mut self.totals.lock().unwrap_or_else(|p| p.into_inner()));
        self.update(|j| {
            count(&mut j.progress);
            // Keys logged since the count are checked too.
            j.progress.keys_total = j.progress.keys_total.max(j.progress.keys_checked);
            for l in lines {
                if j.findings.len() < MAX_FINDINGS {
                    j.findings.push(l);
                } else {
                    j.findings_dropped += 1;
                }
            }
        });
    }

    fn tell_repairer(&self, f: Finding) {
        if let Some(tx) = &self.repairer
            && tx.try_send(f).is_err()
        {
            tracing::debug!("fsck: the repairer is busy; the finding is in the job's report");
        }
    }

    /// One copy's finding, and the bytes read for it.
    async fn check_copy(&self, key: &Key, node: &Uuid) -> (Checked, u64) {
        // Counted as a transfer of the node's, so the gateway's downloads
        // prefer its other holders meanwhile.
        let _busy = crate::busy::start(&crate::busy::dir(&self.gateway.repo().annex_dir()), node);
        let (local, result) = match self.sessions.node(node).await {
            Err(e) => (false, Err(e.to_string())),
            Ok(GatewayNode::Local(n, _)) => {
                let (store, k) = (n.store.clone(), key.clone());
                let r = tokio::task::spawn_blocking(move || hash_local(&store, &k))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                (true, r)
            }
            Ok(_) => {
                let r = tokio::time::timeout(STEP_DEADLINE, self.sessions.verify(key, node)).await;
                let r = match r {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the check took too long".to_owned()),
                };
                (false, r)
            }
        };
        let (found, bytes) = result.unwrap_or_else(|e| (Found::Unchecked(e), 0));
        let checked = Checked {
            node: node.clone(),
            local,
            found,
        };
        (checked, bytes)
    }

    /// Carries out `steps` in order; a node whose step fails gets none of
    /// its later ones. Notes what was done in `lines`; returns the copies
    /// repaired.
    async fn apply(&self, key: &Key, steps: &[Step], lines: &mut [FindingLine]) -> u64 {
        let mut failed: Vec<Uuid> = Vec::new();
        let mut repaired = 0;
        for step in steps {
            let node = match step {
                Step::RecordAbsent(n) | Step::MoveAside(n) | Step::KeepBad(n) => n,
                Step::Drop { node, .. } => node,
                Step::Copy { to, .. } => to,
            };
            if failed.contains(node) {
                continue;
            }
            let result = self.step(key, step).await;
            let Some(line) = lines.iter_mut().find(|l| l.node == node.as_str()) else {
                continue;
            };
            match result {
                Ok(done) => {
                    if matches!(step, Step::Copy { .. }) {
                        repaired += 1;
                    }
                    if line.action.is_empty() {
                        line.action = done;
                    } else {
                        line.action = format!("{}, {done}", line.action);
                    }
                }
                Err(e) => {
                    tracing::warn!("fsck: {key} on {node}: {e}");
                    line.action = format!("failed: {e} (after: {})", line.action);
                    failed.push(node.clone());
                }
            }
        }
        repaired
    }

    /// One step; what was done.
    async fn step(&self, key: &Key, step: &Step) -> Result<String, String> {
        match step {
            Step::RecordAbsent(node) => {
                self.record(key, node, Status::Absent).await?;
                Ok("recorded absent".into())
            }
            Step::MoveAside(node) => {
                let local = match self.sessions.node(node).await {
                    Ok(GatewayNode::Local(n, _)) => n.store.clone(),
                    _ => return Err("not a local node".into()),
                };
                let k = key.clone();
                let to = tokio::task::spawn_blocking(move || local.move_aside(&k))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(match to {
                    Some(p) => format!("moved aside to {}", p.display()),
                    None => "already gone".into(),
                })
            }
            Step::Drop { node, keep } => {
                let action = Action::Drop {
                    key: key.clone(),
                    from: node.clone(),
                    lock: vec![keep.clone()],
                };
                self.transfer(&action).await?;
                Ok("removed".into())
            }
            Step::Copy { from, to } => {
                let action = Action::Copy {
                    key: key.clone(),
                    from: from.clone(),
                    to: to.clone(),
                };
                self.transfer(&action).await?;
                // The proxy recorded it in the journal; the catalog now too.
                self.record(key, to, Status::Present).await?;
                Ok(format!("repaired from {from}"))
            }
            Step::KeepBad(_) => Ok("kept: no good copy to replace it".into()),
        }
    }

    async fn transfer(&self, action: &Action) -> Result<(), String> {
        match tokio::time::timeout(STEP_DEADLINE, self.sessions.run(action)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("took too long".into()),
        }
    }

    /// Records in the gateway's location log, and a local node's own, that
    /// `node` has (or lacks) `key`, and merges it into the daemon's catalog
    /// at once (the journal watcher would take up to its interval), so the
    /// repairer and the next job see it.
    async fn record(&self, key: &Key, node: &Uuid, status: Status) -> Result<(), String> {
        let local = match self.sessions.node(node).await {
            Ok(GatewayNode::Local(n, _)) => Some(n.store.clone()),
            _ => None,
        };
        let (gateway, k, n) = (self.gateway.clone(), key.clone(), node.clone());
        let content = tokio::task::spawn_blocking(move || {
            if let Some(s) = local {
                s.record_presence(&k, &n, status)?;
            }
            gateway.record_presence(&k, &n, status)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e: crate::Error| e.to_string())?;
        if let Some(meta) = self.meta.upgrade() {
            let path = protocol::logs::presence::location_log_path(key);
            meta.record_local(&path, &content);
        }
        Ok(())
    }
}

fn key_of(path: &str) -> Option<Key> {
    let file = path.rsplit('/').next()?.strip_suffix(".log")?;
    Key::from_file(file).ok()
}

/// The nodes of `nodes` a location log says hold the key.
fn held_by(content: &[u8], nodes: &[Uuid]) -> Vec<Uuid> {
    let present = protocol::logs::presence::present(content);
    nodes
        .iter()
        .filter(|n| present.iter().any(|p| p == n.as_str()))
        .cloned()
        .collect()
}

fn finding_line(key: &Key, c: &Checked) -> FindingLine {
    let (found, message) = match &c.found {
        Found::Good => ("good", None),
        Found::Missing => ("missing", None),
        Found::Bad(m) => ("bad", Some(m.clone())),
        Found::Unchecked(m) => ("unchecked", Some(m.clone())),
    };
    FindingLine {
        key: key.to_string(),
        node: c.node.to_string(),
        found: found.to_owned(),
        message,
        action: String::new(),
    }
}

/// Hashes a local node's copy in place.
fn hash_local(store: &Store, key: &Key) -> crate::Result<(Found, u64)> {
    use std::io::Read;
    let Some((mut file, _)) = store.open_content(key)? else {
        return Ok((Found::Missing, 0));
    };
    let mut check = protocol::verify::Verifier::new(key);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| crate::Error::Io {
            context: format!("reading {key}"),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]);
        read += n as u64;
    }
    Ok((Found::of_verdict(&check.finish()), read))
}
