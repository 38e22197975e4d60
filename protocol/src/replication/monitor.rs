//! The peer monitor: heartbeats in, liveness transitions out, and the
//! informers' latest metrics per node.
//!
//! ```text
//!            heartbeat                 silent ≥ suspect_after
//!   (new) ─────────────▶ Alive ──────────────────────────────▶ Suspected
//!                          ▲  ◀──── heartbeat: `Alive` ──────────  │
//!                          │                                       │ silent ≥ suspect_after + grace
//!                          └──── heartbeat: `Recovered` ◀── Down ◀─┘
//! ```
//!
//! A node silent for `suspect_after` (default 10 s) is *suspected*; after
//! `grace` more (default 300 s, the cluster's policy) it is *down*, and only
//! then does the repair planner replace its copies. A suspected node that
//! comes back is `Alive` again and causes no repair at all. ipfs-cluster has
//! no such step: its ping metric expires after 30 s and the first alert
//! triggers repinning (when enabled); Ceph waits 20 s for *down* and 600 s
//! for *out*.
//!
//! Every transition is returned as an [`Event`] and kept, with its time, in
//! a bounded alert list (oldest dropped first), like ipfs-cluster's
//! `/health/alerts`. Times are milliseconds of the caller's monotonic clock.
//!
//! Metrics (free bytes = the file system's available bytes less
//! `annex.diskreserve`, transfers in flight, bytes those transfers reserve)
//! expire after `metric_ttl` (default 30 s, ipfs-cluster's informer TTL):
//! [`Monitor::metrics`] ignores expired ones, so a node whose informer fell
//! silent gets no new copies.

use std::collections::{BTreeMap, VecDeque};

use crate::uuid::Uuid;

/// The monitor's settings (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    pub suspect_after_ms: u64,
    pub grace_ms: u64,
    pub metric_ttl_ms: u64,
    /// Alerts kept.
    pub max_alerts: usize,
    /// Nodes tracked; heartbeats and metrics of further nodes are ignored.
    pub max_nodes: usize,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            suspect_after_ms: 10_000,
            grace_ms: super::policy::DEFAULT_GRACE * 1000,
            metric_ttl_ms: 30_000,
            max_alerts: 1024,
            max_nodes: 4096,
        }
    }
}

/// A node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    Alive,
    Suspected,
    Down,
}

/// A transition. `at` is when it was noticed, `last_seen` the node's last
/// heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// First heard of, or back from suspicion within grace (no repair).
    Alive {
        node: Uuid,
        at: u64,
    },
    Suspected {
        node: Uuid,
        at: u64,
        last_seen: u64,
    },
    Down {
        node: Uuid,
        at: u64,
        last_seen: u64,
    },
    /// Heard again after being down.
    Recovered {
        node: Uuid,
        at: u64,
        last_seen: u64,
    },
}

impl Event {
    pub fn node(&self) -> &Uuid {
        match self {
            Event::Alive { node, .. }
            | Event::Suspected { node, .. }
            | Event::Down { node, .. }
            | Event::Recovered { node, .. } => node,
        }
    }

    pub fn at(&self) -> u64 {
        match self {
            Event::Alive { at, .. }
            | Event::Suspected { at, .. }
            | Event::Down { at, .. }
            | Event::Recovered { at, .. } => *at,
        }
    }

    /// The state the node is in after this event.
    pub fn liveness(&self) -> Liveness {
        match self {
            Event::Alive { .. } | Event::Recovered { .. } => Liveness::Alive,
            Event::Suspected { .. } => Liveness::Suspected,
            Event::Down { .. } => Liveness::Down,
        }
    }
}

/// A kept transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub event: Event,
}

/// An informer's report of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metrics {
    /// Available bytes less `annex.diskreserve`.
    pub free_bytes: u64,
    pub transfers_in_flight: u32,
    /// Bytes the transfers in flight will still write.
    pub reserved_bytes: u64,
}

impl Metrics {
    /// From `statvfs`'s available bytes and `annex.diskreserve`
    /// (git-annex's default is 100 MB).
    pub fn from_statvfs(
        available: u64,
        diskreserve: u64,
        in_flight: u32,
        reserved: u64,
    ) -> Metrics {
        Metrics {
            free_bytes: available.saturating_sub(diskreserve),
            transfers_in_flight: in_flight,
            reserved_bytes: reserved,
        }
    }

    /// Bytes a new copy may take: free less reserved.
    pub fn room(&self) -> u64 {
        self.free_bytes.saturating_sub(self.reserved_bytes)
    }
}

#[derive(Debug, Clone)]
struct NodeState {
    liveness: Liveness,
    last_seen: u64,
}

/// The monitor.
#[derive(Debug, Clone)]
pub struct Monitor {
    config: MonitorConfig,
    nodes: BTreeMap<Uuid, NodeState>,
    metrics: BTreeMap<Uuid, (u64, Metrics)>,
    alerts: VecDeque<Alert>,
}

impl Monitor {
    pub fn new(config: MonitorConfig) -> Monitor {
        Monitor {
            config,
            nodes: BTreeMap::new(),
            metrics: BTreeMap::new(),
            alerts: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Sets the grace (the cluster's policy, [`super::policy::Policy::grace`]).
    pub fn set_grace_ms(&mut self, grace_ms: u64) {
        self.config.grace_ms = grace_ms;
    }

    /// Expects heartbeats from `node` from now on (a cluster member that has
    /// not spoken yet is suspected if it stays silent). No event. Returns
    /// false if the node limit is reached.
    pub fn watch(&mut self, node: Uuid, now: u64) -> bool {
        if self.nodes.contains_key(&node) {
            return true;
        }
        if self.nodes.len() >= self.config.max_nodes {
            return false;
        }
        self.nodes.insert(
            node,
            NodeState {
                liveness: Liveness::Alive,
                last_seen: now,
            },
        );
        true
    }

    /// Stops tracking a node (it left the cluster).
    pub fn forget(&mut self, node: &Uuid) {
        self.nodes.remove(node);
        self.metrics.remove(node);
    }

    /// A heartbeat from `node` at `now`.
    pub fn on_heartbeat(&mut self, node: &Uuid, now: u64) -> Option<Event> {
        let event = match self.nodes.get_mut(node) {
            Some(s) => {
                let last_seen = s.last_seen;
                s.last_seen = s.last_seen.max(now);
                let before = std::mem::replace(&mut s.liveness, Liveness::Alive);
                match before {
                    Liveness::Alive => return None,
                    Liveness::Suspected => Event::Alive {
                        node: node.clone(),
                        at: now,
                    },
                    Liveness::Down => Event::Recovered {
                        node: node.clone(),
                        at: now,
                        last_seen,
                    },
                }
            }
            None => {
                if !self.watch(node.clone(), now) {
                    return None;
                }
                Event::Alive {
                    node: node.clone(),
                    at: now,
                }
            }
        };
        self.alert(event.clone());
        Some(event)
    }

    /// The transitions due at `now`, in node uuid order (a node silent for
    /// both limits at once gives `Suspected` then `Down`).
    pub fn tick(&mut self, now: u64) -> Vec<Event> {
        let suspect = self.config.suspect_after_ms;
        let down = suspect.saturating_add(self.config.grace_ms);
        let mut events = Vec::new();
        for (node, s) in &mut self.nodes {
            let silent = now.saturating_sub(s.last_seen);
            if s.liveness == Liveness::Alive && silent >= suspect {
                s.liveness = Liveness::Suspected;
                events.push(Event::Suspected {
                    node: node.clone(),
                    at: now,
                    last_seen: s.last_seen,
                });
            }
            if s.liveness == Liveness::Suspected && silent >= down {
                s.liveness = Liveness::Down;
                events.push(Event::Down {
                    node: node.clone(),
                    at: now,
                    last_seen: s.last_seen,
                });
            }
        }
        for e in &events {
            self.alert(e.clone());
        }
        events
    }

    /// When the next transition can happen if no heartbeat arrives (for the
    /// driver's timer); `None` when every node is down.
    pub fn next_deadline(&self) -> Option<u64> {
        let suspect = self.config.suspect_after_ms;
        let down = suspect.saturating_add(self.config.grace_ms);
        self.nodes
            .values()
            .filter_map(|s| match s.liveness {
                Liveness::Alive => Some(s.last_seen.saturating_add(suspect)),
                Liveness::Suspected => Some(s.last_seen.saturating_add(down)),
                Liveness::Down => None,
            })
            .min()
    }

    fn alert(&mut self, event: Event) {
        if self.config.max_alerts == 0 {
            return;
        }
        while self.alerts.len() >= self.config.max_alerts {
            self.alerts.pop_front();
        }
        self.alerts.push_back(Alert { event });
    }

    /// The kept transitions, oldest first.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter()
    }

    pub fn liveness(&self, node: &Uuid) -> Option<Liveness> {
        self.nodes.get(node).map(|s| s.liveness)
    }

    pub fn last_seen(&self, node: &Uuid) -> Option<u64> {
        self.nodes.get(node).map(|s| s.last_seen)
    }

    /// Every tracked node with its state and last heartbeat, by uuid.
    pub fn nodes(&self) -> impl Iterator<Item = (&Uuid, Liveness, u64)> {
        self.nodes.iter().map(|(u, s)| (u, s.liveness, s.last_seen))
    }

    /// Those of `among` that are not down (unknown ones included): the
    /// gateways to pass to [`super::repair::Env::gateways`].
    pub fn not_down<'a>(&self, among: impl IntoIterator<Item = &'a Uuid>) -> Vec<Uuid> {
        among
            .into_iter()
            .filter(|u| self.liveness(u) != Some(Liveness::Down))
            .cloned()
            .collect()
    }

    /// An informer's report; returns false if ignored (node limit reached,
    /// or older than the one kept).
    pub fn on_metrics(&mut self, node: &Uuid, metrics: Metrics, now: u64) -> bool {
        match self.metrics.get_mut(node) {
            Some((at, m)) => {
                if now < *at {
                    return false;
                }
                *at = now;
                *m = metrics;
            }
            None => {
                if self.metrics.len() >= self.config.max_nodes {
                    return false;
                }
                self.metrics.insert(node.clone(), (now, metrics));
            }
        }
        true
    }

    /// The node's latest metrics, unless older than the TTL at `now`.
    pub fn metrics(&self, node: &Uuid, now: u64) -> Option<&Metrics> {
        let (at, m) = self.metrics.get(node)?;
        (now.saturating_sub(*at) < self.config.metric_ttl_ms).then_some(m)
    }

    /// The node's room ([`Metrics::room`]) from fresh metrics.
    pub fn room(&self, node: &Uuid, now: u64) -> Option<u64> {
        self.metrics(node, now).map(Metrics::room)
    }
}

#[cfg(test)]
mod tests;
