//! Per key and node status, for `annexmesh status` and an API that streams
//! it (one [`KeyStatus`] at a time, in key order:
//! [`super::Planner::statuses`]), like ipfs-cluster's `/pins` stream.
//!
//! ipfs-cluster has twelve pin states per peer (`pinned`, `pinning`,
//! `pin_queued`, `pin_error`, `unexpectedly_unpinned`, `remote`, …) and its
//! `status` asks every peer, which is "very expensive on clusters with many
//! peers". Here the status is read from the planner's index and in-flight
//! table, with no request to any node:
//!
//! * per node: [`NodeState::Present`] (the location log says so),
//!   [`NodeState::Transferring`] (a copy to it is under way),
//!   [`NodeState::Dropping`], [`NodeState::Error`] (the last transfer to or
//!   from it failed, with the message), [`NodeState::Missing`] (the log
//!   says present, the node says not: ipfs-cluster's
//!   `unexpectedly_unpinned`);
//! * per key: `queued` (waiting for a transfer slot), an error (e.g. the
//!   allocator's shortfall), the copies that count, `min`/`max`, and
//!   `under_replicated` (copies that count < `min`).

use crate::key::Key;
use crate::uuid::Uuid;

use super::monitor::Liveness;

/// One node's state for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    Present,
    Transferring,
    Dropping,
    Error(String),
    Missing,
}

/// One node's line in a key's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: Uuid,
    pub state: NodeState,
    pub liveness: Liveness,
}

/// One key's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub key: Key,
    /// Members with something to say about the key, by uuid.
    pub nodes: Vec<NodeStatus>,
    /// Copies that count (see [`super::repair`]).
    pub copies: u32,
    pub min: u32,
    pub max: u32,
    pub under_replicated: bool,
    /// Waiting for a transfer slot.
    pub queued: bool,
    /// The key's last error (a failed transfer, a shortfall, no alive copy).
    pub error: Option<String>,
    /// Failures since the last success, and when the next retry is due
    /// (`recover` retries at once).
    pub attempts: u8,
    pub retry_at: Option<u64>,
}

/// The states a [`Filter`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateKind {
    Present,
    Queued,
    Transferring,
    Error,
    Missing,
}

impl StateKind {
    /// `present`, `queued`, `transferring`, `error`, `missing`.
    pub fn parse(s: &str) -> Option<StateKind> {
        Some(match s {
            "present" => StateKind::Present,
            "queued" => StateKind::Queued,
            "transferring" => StateKind::Transferring,
            "error" => StateKind::Error,
            "missing" => StateKind::Missing,
            _ => return None,
        })
    }
}

/// Which statuses to list: a key matches if it has one of `states` (any
/// state when empty), on `node` if given, and is under-replicated if
/// `under_replicated` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub states: Vec<StateKind>,
    pub node: Option<Uuid>,
    pub under_replicated: bool,
}

impl NodeState {
    pub fn kind(&self) -> StateKind {
        match self {
            NodeState::Present => StateKind::Present,
            NodeState::Transferring | NodeState::Dropping => StateKind::Transferring,
            NodeState::Error(_) => StateKind::Error,
            NodeState::Missing => StateKind::Missing,
        }
    }
}

impl KeyStatus {
    /// Whether the key has state `kind` (on `node`, if given).
    pub fn has(&self, kind: StateKind, node: Option<&Uuid>) -> bool {
        let on_node = self
            .nodes
            .iter()
            .filter(|n| node.is_none_or(|u| *u == n.node))
            .any(|n| n.state.kind() == kind);
        on_node
            || (node.is_none()
                && match kind {
                    StateKind::Queued => self.queued,
                    StateKind::Error => self.error.is_some(),
                    _ => false,
                })
    }
}

impl Filter {
    pub fn matches(&self, s: &KeyStatus) -> bool {
        if self.under_replicated && !s.under_replicated {
            return false;
        }
        if let Some(n) = &self.node
            && self.states.is_empty()
        {
            return s.nodes.iter().any(|x| x.node == *n);
        }
        self.states.is_empty() || self.states.iter().any(|k| s.has(*k, self.node.as_ref()))
    }
}

/// Counts over every key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub keys: usize,
    pub under_replicated: usize,
    pub queued: usize,
    pub transferring: usize,
    pub errors: usize,
    pub missing: usize,
}

impl Summary {
    pub fn add(&mut self, s: &KeyStatus) {
        self.keys += 1;
        self.under_replicated += usize::from(s.under_replicated);
        self.queued += usize::from(s.queued);
        self.transferring += usize::from(s.has(StateKind::Transferring, None));
        self.errors += usize::from(s.has(StateKind::Error, None));
        self.missing += usize::from(s.has(StateKind::Missing, None));
    }
}

#[cfg(test)]
mod tests;
