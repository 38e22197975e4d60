//! Informers and the peer monitor (issue 10): every daemon publishes a
//! heartbeat with its free space (statvfs less `annex.diskreserve`) and its
//! transfers in flight every [`HEARTBEAT`], on a gossip topic of its own —
//! short-lived metrics, never written to the branch. Every daemon feeds what
//! it hears from the mesh's members into a [`Monitor`]
//! (`protocol::replication`): a member silent for 10 s is *suspected*, and
//! *down* after the grace; one back within the grace causes nothing.
//! Transitions are kept as alerts. The state is written to
//! `annex/annexmesh/health` for `annexmesh alerts` and the repairer.
//!
//! Heartbeats also name the members their sender is not connected to, so
//! every gateway learns which links between others are cut and routes
//! around them ([`read_cut_links`], `annex/annexmesh/links`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::Uuid;
use protocol::replication::monitor::{Event, Liveness, Metrics, Monitor, MonitorConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::members::Members;
use crate::net::{Net, NetEvent};

pub const HEALTH_TOPIC: &str = "annexmesh/health/1";
/// How often a daemon publishes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How often the monitor looks for silent members.
const TICK: Duration = Duration::from_secs(1);
/// How often the state file is rewritten for metrics alone.
const STATE_REFRESH: Duration = Duration::from_secs(10);
/// Largest heartbeat accepted.
const MAX_BEAT: usize = 16 * 1024;
/// Most members one heartbeat may say it lost.
const MAX_LOST: usize = 256;
/// How long a heartbeat's lost links count.
const LINK_TTL: Duration = Duration::from_secs(10);
/// Lines of the links file older than this are stale (its daemon stopped).
const LINK_FILE_TTL: Duration = Duration::from_secs(20);
/// How often the links file is rewritten while it lists cut links.
const LINK_REFRESH: Duration = Duration::from_secs(5);
/// git-annex's default `annex.diskreserve`.
pub use crate::store::DEFAULT_DISKRESERVE;

/// One heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Beat {
    uuid: String,
    free: u64,
    in_flight: u32,
    reserved: u64,
    /// Members the sender has lost its connection to.
    #[serde(default)]
    lost: Vec<String>,
}

/// The health service of one daemon.
pub struct Health {
    me: Uuid,
    monitor: Mutex<Monitor>,
    started: Instant,
    started_unix_ms: u64,
    state_file: PathBuf,
    links_file: PathBuf,
    /// Per member, the members it last said it had lost, and when.
    lost: Mutex<std::collections::BTreeMap<Uuid, (Vec<Uuid>, u64)>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `annex.diskreserve` as git-annex reads it: a number and a unit
/// (`100 megabytes`, `500M`, `1GB`, `0.5 gb`), decimal units as git-annex's
/// `readSize dataUnits`; `None` when it does not parse.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim();
    let mult: f64 = match unit.trim_end_matches('s') {
        "" | "b" | "byte" => 1.0,
        "k" | "kb" | "kilobyte" => 1e3,
        "m" | "mb" | "megabyte" => 1e6,
        "g" | "gb" | "gigabyte" => 1e9,
        "t" | "tb" | "terabyte" => 1e12,
        "kib" | "kibibyte" => 1024.0,
        "mib" | "mebibyte" => 1_048_576.0,
        "gib" | "gibibyte" => 1_073_741_824.0,
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

/// This repository's `annex.diskreserve`.
pub fn diskreserve(repo: &crate::Repo) -> u64 {
    crate::repo::gitconfig::config_get(&repo.top, "annex.diskreserve")
        .ok()
        .flatten()
        .and_then(|v| parse_size(&v))
        .unwrap_or(DEFAULT_DISKRESERVE)
}

/// This repository's metrics now.
pub fn metrics(store: &crate::Store, reserve: u64) -> Metrics {
    let annex = store.repo().annex_dir();
    let available = crate::sys::available_bytes(&annex).unwrap_or(0);
    let in_flight = crate::busy::count(&crate::busy::dir(&annex), store.uuid());
    Metrics::from_statvfs(
        available,
        reserve,
        u32::try_from(in_flight).unwrap_or(u32::MAX),
        0,
    )
}

impl Health {
    /// Starts publishing this repository's heartbeat and monitoring the
    /// members' on `net`.
    pub async fn start(
        net: Net,
        store: crate::Store,
        members: Arc<Members>,
        config: MonitorConfig,
    ) -> crate::Result<Arc<Health>> {
        let health = Arc::new(Health {
            me: store.uuid().clone(),
            monitor: Mutex::new(Monitor::new(config)),
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            state_file: crate::config::state_dir(store.repo()).join("health"),
            links_file: links_file(&crate::config::state_dir(store.repo())),
            lost: Mutex::new(Default::default()),
        });
        net.subscribe(HEALTH_TOPIC).await?;
        let reserve = diskreserve(store.repo());
        tokio::spawn(publish(
            Arc::downgrade(&health),
            net.clone(),
            store,
            reserve,
            members.clone(),
        ));
        tokio::spawn(listen(
            Arc::downgrade(&health),
            net.events(),
            members.clone(),
        ));
        tokio::spawn(tick(Arc::downgrade(&health), members));
        Ok(health)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Monitor> {
        self.monitor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The monitor's clock: milliseconds since this service started.
    pub fn now_ms(&self) -> u64 {
        self.now()
    }

    /// Runs `f` on the monitor (the repairer reads liveness and room, and
    /// sets the grace from the clusters' policies).
    pub fn with_monitor<R>(&self, f: impl FnOnce(&mut Monitor) -> R) -> R {
        f(&mut self.lock())
    }

    /// The liveness of `node` as this daemon sees it.
    pub fn liveness(&self, node: &Uuid) -> Option<Liveness> {
        self.lock().liveness(node)
    }

    fn heard(&self, beat: &Beat) {
        let Ok(node) = Uuid::parse(&beat.uuid) else {
            return;
        };
        let now = self.now();
        let lost: Vec<Uuid> = beat
            .lost
            .iter()
            .take(MAX_LOST)
            .filter_map(|u| Uuid::parse(u).ok())
            .collect();
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), (lost, now));
        let mut m = self.lock();
        if let Some(e) = m.on_heartbeat(&node, now) {
            log_event(&e);
        }
        m.on_metrics(
            &node,
            Metrics {
                free_bytes: beat.free,
                transfers_in_flight: beat.in_flight,
                reserved_bytes: beat.reserved,
            },
            now,
        );
    }

    /// The links file's text: `<from> <to> <unix ms>` for each member a
    /// member said, in a heartbeat of the last [`LINK_TTL`], it has lost.
    fn render_links(&self) -> String {
        let now = self.now();
        let ttl = u64::try_from(LINK_TTL.as_millis()).unwrap_or(u64::MAX);
        let unix = unix_ms();
        let mut out = String::new();
        let map = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        for (from, (lost, at)) in map.iter() {
            if now.saturating_sub(*at) > ttl {
                continue;
            }
            for to in lost {
                out.push_str(&format!("{from} {to} {unix}\n"));
            }
        }
        out
    }

    /// The state file's text: a line per node, then a line per alert.
    fn render(&self) -> String {
        let now = self.now();
        let m = self.lock();
        let unix = |t: u64| self.started_unix_ms.saturating_add(t);
        let mut out = String::new();
        for (node, liveness, last) in m.nodes() {
            // Metrics not heard yet (or expired) are `-`, not zeros: a
            // reader must not take them for a full disk.
            let metrics = match m.metrics(node, now) {
                Some(x) => format!(
                    "{} {} {}",
                    x.free_bytes, x.transfers_in_flight, x.reserved_bytes
                ),
                None => "- - -".to_owned(),
            };
            out.push_str(&format!(
                "node {node} {} {} {metrics}\n",
                liveness_name(liveness),
                unix(last),
            ));
        }
        for a in m.alerts() {
            out.push_str(&format!(
                "alert {} {} {}\n",
                unix(a.event.at()),
                event_name(&a.event),
                a.event.node()
            ));
        }
        out
    }
}

fn liveness_name(l: Liveness) -> &'static str {
    match l {
        Liveness::Alive => "alive",
        Liveness::Suspected => "suspected",
        Liveness::Down => "down",
    }
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Alive { .. } => "alive",
        Event::Suspected { .. } => "suspected",
        Event::Down { .. } => "down",
        Event::Recovered { .. } => "recovered",
    }
}

fn log_event(e: &Event) {
    match e {
        Event::Alive { .. } => tracing::debug!("{} is alive", e.node()),
        _ => tracing::info!("{} is {}", e.node(), event_name(e)),
    }
}

/// The members this daemon's member keeper sees disconnected.
fn lost_members(state_dir: &Path, members: &Members) -> Vec<String> {
    let seen = crate::keeper::read_seen(state_dir);
    members
        .others()
        .into_iter()
        .filter(|m| seen.get(&m.peer.to_string()).is_some_and(|s| !s.connected))
        .map(|m| m.uuid)
        .take(MAX_LOST)
        .collect()
}

async fn publish(
    health: Weak<Health>,
    net: Net,
    store: crate::Store,
    reserve: u64,
    members: Arc<Members>,
) {
    let state_dir = crate::config::state_dir(store.repo());
    let mut every = tokio::time::interval(HEARTBEAT);
    loop {
        every.tick().await;
        let Some(h) = health.upgrade() else { return };
        let lost = lost_members(&state_dir, &members);
        let s = store.clone();
        let Ok(m) = tokio::task::spawn_blocking(move || metrics(&s, reserve)).await else {
            continue;
        };
        let beat = Beat {
            uuid: h.me.to_string(),
            free: m.free_bytes,
            in_flight: m.transfers_in_flight,
            reserved: m.reserved_bytes,
            lost,
        };
        h.heard(&beat);
        let mut buf = Vec::new();
        if ciborium::into_writer(&beat, &mut buf).is_ok()
            && let Err(e) = net.publish(HEALTH_TOPIC, buf).await
        {
            tracing::debug!("publishing a heartbeat: {e}");
        }
    }
}

async fn listen(
    health: Weak<Health>,
    mut events: broadcast::Receiver<NetEvent>,
    members: Arc<Members>,
) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let NetEvent::Gossip {
            author: Some(author),
            topic,
            data,
        } = event
        else {
            continue;
        };
        if topic != HEALTH_TOPIC || data.len() > MAX_BEAT {
            continue;
        }
        let Some(h) = health.upgrade() else { return };
        let Ok(beat) = ciborium::from_reader::<Beat, _>(&data[..]) else {
            continue;
        };
        // Only a member speaks for itself: its heartbeat names its own uuid.
        if members.uuid_of(&author).as_deref() == Some(beat.uuid.as_str()) {
            h.heard(&beat);
        }
    }
}

async fn tick(health: Weak<Health>, members: Arc<Members>) {
    let mut every = tokio::time::interval(TICK);
    let mut written = String::new();
    let mut states = Vec::new();
    let mut last_write = Instant::now();
    let mut links_written = String::new();
    let mut links_at = Instant::now();
    loop {
        every.tick().await;
        let Some(h) = health.upgrade() else { return };
        let now = h.now();
        {
            let mut m = h.lock();
            for member in members.others() {
                if let Ok(u) = Uuid::parse(&member.uuid) {
                    m.watch(u, now);
                }
            }
            for e in m.tick(now) {
                log_event(&e);
            }
        }
        let links = h.render_links();
        let same = |a: &str, b: &str| {
            let pairs = |t: &str| -> Vec<String> {
                t.lines()
                    .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                    .collect()
            };
            pairs(a) == pairs(b)
        };
        if !same(&links, &links_written)
            || (!links.is_empty() && links_at.elapsed() >= LINK_REFRESH)
        {
            if let Err(e) = write_state(&h.links_file, &links) {
                tracing::debug!("writing the links file: {e}");
            }
            links_written = links;
            links_at = Instant::now();
        }
        let text = h.render();
        // Free space moves all the time: rewritten (and synced) at once when
        // a member's state or the alerts change, else at most every
        // STATE_REFRESH.
        let now_states: Vec<String> = text.lines().map(state_part).collect();
        let due = now_states != states || last_write.elapsed() >= STATE_REFRESH;
        if text != written && due {
            if let Err(e) = write_state(&h.state_file, &text) {
                tracing::debug!("writing the health state: {e}");
            }
            written = text;
            states = now_states;
            last_write = Instant::now();
        }
    }
}

/// A state-file line without its metrics: a node's uuid and state, or an alert.
fn state_part(line: &str) -> String {
    line.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_state(path: &Path, text: &str) -> crate::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::Io {
            context: format!("creating {}", dir.display()),
            source: e,
        })?;
    }
    crate::store::write_atomic(path, text.as_bytes())
}

/// One node as a daemon's health file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    pub uuid: String,
    pub state: String,
    pub last_seen_unix_ms: u64,
    pub free_bytes: u64,
    pub transfers_in_flight: u64,
    pub reserved_bytes: u64,
    /// The metrics above were heard (not `-`: unknown, all zeros then).
    pub metrics_known: bool,
}

/// One alert as a daemon's health file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertLine {
    pub at_unix_ms: u64,
    pub kind: String,
    pub uuid: String,
}

/// Reads a daemon's health file (what `annexmesh alerts` shows).
pub fn read_state(state_dir: &Path) -> (Vec<NodeHealth>, Vec<AlertLine>) {
    let text = std::fs::read_to_string(state_dir.join("health")).unwrap_or_default();
    let mut nodes = Vec::new();
    let mut alerts = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["node", uuid, state, last, free, flight, reserved] => nodes.push(NodeHealth {
                uuid: (*uuid).to_owned(),
                state: (*state).to_owned(),
                last_seen_unix_ms: last.parse().unwrap_or(0),
                free_bytes: free.parse().unwrap_or(0),
                transfers_in_flight: flight.parse().unwrap_or(0),
                reserved_bytes: reserved.parse().unwrap_or(0),
                metrics_known: *free != "-",
            }),
            ["alert", at, kind, uuid] => alerts.push(AlertLine {
                at_unix_ms: at.parse().unwrap_or(0),
                kind: (*kind).to_owned(),
                uuid: (*uuid).to_owned(),
            }),
            _ => {}
        }
    }
    (nodes, alerts)
}

fn links_file(state_dir: &Path) -> PathBuf {
    state_dir.join("links")
}

/// The links between members that are cut now, as this repository's daemon
/// heard from the members' heartbeats: each `(a, b)` means `a` said it has
/// lost its connection to `b`. Empty when no daemon runs (stale lines are
/// ignored).
pub fn read_cut_links(state_dir: &Path) -> Vec<(Uuid, Uuid)> {
    let text = std::fs::read_to_string(links_file(state_dir)).unwrap_or_default();
    let ttl = u64::try_from(LINK_FILE_TTL.as_millis()).unwrap_or(u64::MAX);
    let now = unix_ms();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let a = Uuid::parse(w.next()?).ok()?;
            let b = Uuid::parse(w.next()?).ok()?;
            let at: u64 = w.next()?.parse().ok()?;
            (now.saturating_sub(at) <= ttl).then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_git_annex_reads_them() {
        assert_eq!(parse_size("100 megabytes"), Some(100_000_000));
        assert_eq!(parse_size("500M"), Some(500_000_000));
        assert_eq!(parse_size("0.5 gb"), Some(500_000_000));
        assert_eq!(parse_size("100 KiloBytes"), Some(100_000));
        assert_eq!(parse_size("1 MiB"), Some(1_048_576));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }
}
