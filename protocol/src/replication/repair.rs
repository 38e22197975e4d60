//! The repair planner: which copies to make and drop, and when.
//!
//! # The index
//!
//! The planner keeps an incremental index of the cluster's location logs:
//! key → holders and node → keys held, updated by [`Planner::on_presence`]
//! as location-log changes arrive (and by finished transfers). A monitor
//! [`Event`] marks only the keys the node holds for re-evaluation, never the
//! whole catalog: ipfs-cluster scans its entire pinset on every alert.
//! Keys are interned (`u32` ids, one shared `Arc<Key>`), nodes too.
//!
//! # What is planned
//!
//! For each key, with the [`Effective`] numbers and who wants or requires
//! it from the caller's [`Placement`]:
//!
//! * a holder's copy **counts** unless the node reported it missing, or the
//!   node is not alive and has been silent for `suspect_after + grace` (the
//!   key's grace: a per-key grace longer than the cluster's defers that key
//!   past the node's `Down`; a shorter one takes effect at `Down`);
//! * below `min`: `Copy { from, to }` plans, targets from [`super::alloc`],
//!   sources among the alive holders (same site as the target first, then
//!   the least busy); nodes whose required content matches get a copy
//!   whatever `max` says;
//! * between `min` and `max`: nothing moves;
//! * above `max` (counting only alive holders, with nothing in flight for
//!   the key): one `Drop { from, lock }` at a time, from a node that does not
//!   require the key and has a free slot (not-wanting first, then a node
//!   sharing its site with another holder, then the fullest), after locking `keep = max(min,
//!   numcopies)` other alive copies, so a drop never leaves fewer than
//!   numcopies. While a drop runs nothing else is planned for its key (its
//!   source still counts until it ends). A node that comes back after its keys were re-replicated
//!   thus sheds the extra copies.
//!
//! Transfers in flight are bounded per source node, per target node and in
//! total; keys waiting for a slot sit in one global queue, fewest copies
//! first (each key at most once, so the queue is bounded by the index). A
//! failed transfer (or a placement that cannot succeed: everything full)
//! sets the key's error and retries after a backoff of 60 s doubling up to
//! 64 min (Garage's resync); [`Planner::recover`] retries at once
//! (ipfs-cluster's `recover`). A key with no alive holder waits, *starved*,
//! until one comes back.
//!
//! # Two gateways
//!
//! Every gateway of a cluster runs a planner over the same gossiped facts.
//! Each key has one **coordinator**, the only gateway that plans its repair:
//! the alive gateway whose `stable_hash(key, gateway uuid)` is lowest
//! (rendezvous hashing, [`coordinator`]). It is a pure function of the key
//! and the set of alive gateways, so gateways that agree on that set never
//! repair the same key at once, and when a gateway goes down only its share
//! of the keys moves to the others. A gateway counts as alive until it is
//! `Down` (suspicion is not enough), so views differ only across a real
//! partition of more than `grace`, where each side repairs what it can reach;
//! the worst case is then an extra copy per key, which the drop rule trims
//! once the partition heals. No lease is written to the branch: a lease
//! needs agreement the CRDT cannot give, and the hash gives the same
//! exclusion whenever liveness views agree. After a partition heals, the
//! merged location logs and the `Recovered` events re-evaluate both sides'
//! keys in the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::alloc::{Candidate, Layout, Request, allocate};
use super::monitor::{Event, Liveness, Monitor};
use super::policy::Effective;
use super::stable_hash;
use super::status::{Filter, KeyStatus, NodeState, NodeStatus, Summary};
use crate::key::Key;
use crate::logs::catalog::{Catalog, Family, LogFile};
use crate::logs::presence;
use crate::uuid::Uuid;

/// The longest error message kept per key.
pub const MAX_ERROR_BYTES: usize = 256;

/// The planner's limits (milliseconds for times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairConfig {
    /// Transfers in flight from one node.
    pub max_per_source: u32,
    /// Transfers in flight to one node.
    pub max_per_target: u32,
    /// Transfers in flight in total.
    pub max_in_flight: u32,
    /// Keys indexed; presence of further keys is ignored.
    pub max_keys: usize,
    /// Nodes indexed.
    pub max_nodes: usize,
    /// Keys (re-)evaluated per [`Planner::poll`].
    pub eval_batch: usize,
    /// Queued keys examined per [`Planner::poll`].
    pub dispatch_scan: usize,
    /// The monitor's `suspect_after`, for per-key grace.
    pub suspect_after_ms: u64,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a key first heard of after start waits before it is judged
    /// (its PUT may still be fanning out to the other nodes).
    pub settle_ms: u64,
}

impl Default for RepairConfig {
    fn default() -> RepairConfig {
        RepairConfig {
            max_per_source: 4,
            max_per_target: 4,
            max_in_flight: 32,
            max_keys: 50_000_000,
            max_nodes: 4096,
            eval_batch: 200_000,
            dispatch_scan: 4096,
            suspect_after_ms: 10_000,
            retry_base_ms: 60_000,
            retry_max_ms: 64 * 60_000,
            settle_ms: 0,
        }
    }
}

pub use super::policy::{Needs, Placement};

/// A planned transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Copy {
        key: Key,
        from: Uuid,
        to: Uuid,
    },
    /// Lock `lock` (LOCKCONTENT), then remove from `from`.
    Drop {
        key: Key,
        from: Uuid,
        lock: Vec<Uuid>,
    },
}

impl Action {
    pub fn key(&self) -> &Key {
        match self {
            Action::Copy { key, .. } | Action::Drop { key, .. } => key,
        }
    }
}

/// A transfer handed to the driver; report it with
/// [`Planner::on_transfer_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: u64,
    pub action: Action,
}

/// What the planner reads at each poll.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// Milliseconds, the monitor's clock.
    pub now: u64,
    pub placement: &'a dyn Placement,
    /// For room ([`Monitor::room`]).
    pub monitor: &'a Monitor,
    pub layout: &'a Layout,
    /// The cluster's gateways that are not down (this one is always counted).
    pub gateways: &'a [Uuid],
    /// Passed to the allocator ([`Request::tiebreak`]).
    pub tiebreak: Option<u64>,
}

/// The gateway that plans `key`'s repair among `gateways` (see the module
/// docs); `None` if there are none.
pub fn coordinator<'a>(key: &Key, gateways: &'a [Uuid]) -> Option<&'a Uuid> {
    gateways.iter().min_by_key(|g| {
        (
            stable_hash(&[key.as_str().as_bytes(), g.as_str().as_bytes()]),
            *g,
        )
    })
}

/// The retry delay after `attempts` failures: base, doubling, capped.
pub fn backoff(config: &RepairConfig, attempts: u8) -> u64 {
    let shift = u32::from(attempts.saturating_sub(1)).min(20);
    config
        .retry_base_ms
        .saturating_mul(1u64 << shift)
        .min(config.retry_max_ms)
}

type NodeId = u32;
type KeyId = u32;

#[derive(Debug, Clone)]
struct Node {
    uuid: Uuid,
    member: bool,
    liveness: Liveness,
    last_seen: u64,
    src: u32,
    dst: u32,
    reserved: u64,
    held: BTreeSet<KeyId>,
}

/// What is rare per key, boxed so healthy keys stay small.
#[derive(Debug, Clone, Default)]
struct Trouble {
    /// The last error, and the node it concerned.
    error: Option<(Option<NodeId>, Box<str>)>,
    /// Holders that reported they do not have it.
    missing: Vec<NodeId>,
    /// What a check of the copies (fsck) found that needs a person, on
    /// which node: kept across evaluations, until the key is recovered or
    /// that node gets a copy again.
    found: Option<(NodeId, Box<str>)>,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Arc<Key>,
    holders: Vec<NodeId>,
    in_flight: u16,
    attempts: u8,
    not_before: u64,
    /// When the key was first heard of (the clock of the poll before), 0
    /// for keys loaded at start: a key younger than `settle_ms` is not
    /// judged yet, as the PUT that brought it may still be fanning out.
    seen_at: u64,
    queued: Option<u32>,
    trouble: Option<Box<Trouble>>,
}

impl Entry {
    fn missing(&self, n: NodeId) -> bool {
        self.trouble
            .as_ref()
            .is_some_and(|t| t.missing.contains(&n))
    }

    fn counts(&self, n: NodeId) -> bool {
        self.holders.binary_search(&n).is_ok() && !self.missing(n)
    }

    fn trouble(&mut self) -> &mut Trouble {
        self.trouble.get_or_insert_with(Default::default)
    }

    fn set_error(&mut self, node: Option<NodeId>, msg: &str) {
        self.trouble().error = Some((node, bounded(msg).into()));
    }

    fn clear_error(&mut self) {
        if let Some(t) = &mut self.trouble {
            t.error = None;
            self.tidy();
        }
    }

    fn clear_found(&mut self) {
        if let Some(t) = &mut self.trouble {
            t.found = None;
            self.tidy();
        }
    }

    fn tidy(&mut self) {
        if self
            .trouble
            .as_ref()
            .is_some_and(|t| t.error.is_none() && t.missing.is_empty() && t.found.is_none())
        {
            self.trouble = None;
        }
    }

    /// The key's error to show: the last one, else a check's finding.
    fn shown_error(&self) -> Option<(Option<NodeId>, &str)> {
        let t = self.trouble.as_ref()?;
        match (&t.error, &t.found) {
            (Some((n, m)), _) => Some((*n, m)),
            (None, Some((n, m))) => Some((Some(*n), m)),
            (None, None) => None,
        }
    }
}

/// `msg`, cut to [`MAX_ERROR_BYTES`] at a character boundary.
fn bounded(msg: &str) -> &str {
    let mut end = msg.len().min(MAX_ERROR_BYTES);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Copy { from: NodeId, to: NodeId },
    Drop { from: NodeId },
}

#[derive(Debug, Clone)]
struct Flight {
    key: KeyId,
    kind: Kind,
    size: u64,
}

/// One key's state, as judged at one moment.
#[derive(Debug)]
struct Judged {
    effective: Effective,
    /// Copies that count (see the module docs), copies under way.
    live: u32,
    pending: u32,
    /// Alive holders: sources, and drop candidates.
    alive: Vec<NodeId>,
    /// Required members without the key, alive, no copy under way.
    required_targets: Vec<NodeId>,
    need: u32,
    excess: u32,
    /// A down holder still counts until then, and without it the key would
    /// be short.
    wait_until: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Fine,
    Wait(u64),
    Work { priority: u32 },
    Starved,
}

/// What dispatching one queued key came to.
enum Outcome {
    /// Nothing (more) to start now; the key leaves the queue.
    Done,
    /// Transfer limits: stays queued.
    Blocked,
    Failed(String),
    Starved,
    Wait(u64),
}

/// The planner of one gateway for one cluster.
#[derive(Debug, Clone)]
pub struct Planner {
    me: Uuid,
    config: RepairConfig,
    nodes: Vec<Node>,
    node_ids: BTreeMap<Uuid, NodeId>,
    members: Vec<NodeId>,
    member_uuids: Vec<Uuid>,
    keys: Vec<Entry>,
    key_ids: BTreeMap<Arc<Key>, KeyId>,
    dirty: BTreeSet<KeyId>,
    deferred: BTreeSet<(u64, KeyId)>,
    queue: BTreeSet<(u32, KeyId)>,
    others: BTreeSet<KeyId>,
    starved: BTreeSet<KeyId>,
    flights: BTreeMap<u64, Flight>,
    next_id: u64,
    gateways: Vec<Uuid>,
    needs: Needs,
    ignored: u64,
    /// The last poll's clock (0 before the first).
    clock: u64,
}

impl Planner {
    /// A planner for gateway `me`.
    pub fn new(me: Uuid, config: RepairConfig) -> Planner {
        Planner {
            me,
            config,
            nodes: Vec::new(),
            node_ids: BTreeMap::new(),
            members: Vec::new(),
            member_uuids: Vec::new(),
            keys: Vec::new(),
            key_ids: BTreeMap::new(),
            dirty: BTreeSet::new(),
            deferred: BTreeSet::new(),
            queue: BTreeSet::new(),
            others: BTreeSet::new(),
            starved: BTreeSet::new(),
            flights: BTreeMap::new(),
            next_id: 1,
            gateways: Vec::new(),
            needs: Needs::default(),
            ignored: 0,
            clock: 0,
        }
    }

    pub fn config(&self) -> &RepairConfig {
        &self.config
    }

    fn node_id(&mut self, uuid: &Uuid) -> Option<NodeId> {
        if let Some(&n) = self.node_ids.get(uuid) {
            return Some(n);
        }
        if self.nodes.len() >= self.config.max_nodes {
            return None;
        }
        let n = NodeId::try_from(self.nodes.len()).ok()?;
        self.nodes.push(Node {
            uuid: uuid.clone(),
            member: false,
            liveness: Liveness::Alive,
            last_seen: 0,
            src: 0,
            dst: 0,
            reserved: 0,
            held: BTreeSet::new(),
        });
        self.node_ids.insert(uuid.clone(), n);
        Some(n)
    }

    fn key_id(&mut self, key: &Key) -> Option<KeyId> {
        if let Some(&k) = self.key_ids.get(key) {
            return Some(k);
        }
        if self.keys.len() >= self.config.max_keys {
            return None;
        }
        let k = KeyId::try_from(self.keys.len()).ok()?;
        let key = Arc::new(key.clone());
        self.keys.push(Entry {
            key: key.clone(),
            holders: Vec::new(),
            in_flight: 0,
            attempts: 0,
            not_before: 0,
            seen_at: self.clock,
            queued: None,
            trouble: None,
        });
        self.key_ids.insert(key, k);
        Some(k)
    }

    /// Sets the cluster's nodes (the only ones whose copies count and that
    /// get copies). Every key is re-evaluated if the set changed.
    pub fn set_members(&mut self, nodes: impl IntoIterator<Item = Uuid>) {
        let mut ids: Vec<NodeId> = nodes.into_iter().filter_map(|u| self.node_id(&u)).collect();
        ids.sort_by(|a, b| {
            self.nodes[*a as usize]
                .uuid
                .cmp(&self.nodes[*b as usize].uuid)
        });
        ids.dedup();
        if ids == self.members {
            return;
        }
        for n in &mut self.nodes {
            n.member = false;
        }
        for &n in &ids {
            self.nodes[n as usize].member = true;
        }
        self.member_uuids = ids
            .iter()
            .map(|&n| self.nodes[n as usize].uuid.clone())
            .collect();
        self.members = ids;
        self.dirty.extend(0..self.keys.len() as KeyId);
    }

    /// A location-log change: `node` has (or no longer has) `key`. Returns
    /// whether the index changed. Beyond the key or node limits, presence
    /// is ignored (counted in [`Planner::ignored`]).
    pub fn on_presence(&mut self, key: &Key, node: &Uuid, present: bool) -> bool {
        let k = if present {
            self.key_id(key)
        } else {
            self.key_ids.get(key).copied()
        };
        let (Some(k), Some(n)) = (k, self.node_id(node)) else {
            if present {
                self.ignored += 1;
            }
            return false;
        };
        let e = &mut self.keys[k as usize];
        let mut changed = match (e.holders.binary_search(&n), present) {
            (Err(i), true) => {
                e.holders.insert(i, n);
                self.nodes[n as usize].held.insert(k);
                true
            }
            (Ok(i), false) => {
                e.holders.remove(i);
                self.nodes[n as usize].held.remove(&k);
                true
            }
            _ => false,
        };
        if let Some(t) = &mut e.trouble
            && let Some(i) = t.missing.iter().position(|m| *m == n)
        {
            t.missing.remove(i);
            changed = true;
        }
        // A new copy on the node a check found wrong.
        if changed
            && present
            && e.trouble
                .as_ref()
                .and_then(|t| t.found.as_ref())
                .is_some_and(|(m, _)| *m == n)
        {
            e.clear_found();
        }
        if changed {
            self.dirty.insert(k);
        }
        changed
    }

    /// A changed branch file: if it is a location log
    /// (`<hashdir>/<keyFile>.log`), the key's holders become the uuids its
    /// newest lines say are present (cluster uuids are never holders).
    /// Returns whether the index changed; other files are ignored.
    pub fn on_location_log(&mut self, path: &str, file: &LogFile) -> bool {
        if file.family() != Family::Presence || !path.ends_with(".log") {
            return false;
        }
        let Some(key) = path
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".log"))
            .and_then(|f| Key::from_file(f).ok())
        else {
            return false;
        };
        if presence::location_log_path(&key) != path {
            return false;
        }
        let present: BTreeSet<Uuid> = presence::present(&file.content())
            .into_iter()
            .filter_map(|u| Uuid::parse(&u).ok())
            .filter(|u| !u.is_cluster())
            .collect();
        let mut changed = false;
        for h in self.holders(&key) {
            if !present.contains(&h) {
                changed |= self.on_presence(&key, &h, false);
            }
        }
        for u in &present {
            changed |= self.on_presence(&key, u, true);
        }
        changed
    }

    /// Feeds every location log of `catalog` (at start-up; afterwards
    /// [`Planner::on_location_log`] for the paths a merge changed).
    pub fn load(&mut self, catalog: &Catalog) {
        for (path, file) in catalog.files() {
            self.on_location_log(path, file);
        }
    }

    /// [`Planner::load`] for a cluster taken up while the repairer runs (it
    /// just appeared, or the repairer lost track and reloads): its keys
    /// count as heard of at `now`, so they settle like any new key, as
    /// their `PUT`s may still be fanning out.
    pub fn load_at(&mut self, catalog: &Catalog, now: u64) {
        self.clock = self.clock.max(now);
        self.load(catalog);
    }

    /// `node` says it lacks `key` though the location log lists it (a failed
    /// `CHECKPRESENT` or fsck): that copy stops counting until the log
    /// changes for it.
    pub fn on_missing(&mut self, key: &Key, node: &Uuid) -> bool {
        let (Some(&k), Some(&n)) = (self.key_ids.get(key), self.node_ids.get(node)) else {
            return false;
        };
        let e = &mut self.keys[k as usize];
        if e.holders.binary_search(&n).is_err() || e.missing(n) {
            return false;
        }
        e.trouble().missing.push(n);
        self.dirty.insert(k);
        true
    }

    /// A check of `node`'s copy (fsck) found something that needs a person:
    /// the key shows `msg` as its error (on `node`) until a transfer of it
    /// succeeds or it is recovered. Returns false for an unknown key or node.
    pub fn report_error(&mut self, key: &Key, node: &Uuid, msg: &str) -> bool {
        let (Some(&k), Some(&n)) = (self.key_ids.get(key), self.node_ids.get(node)) else {
            return false;
        };
        self.keys[k as usize].trouble().found = Some((n, bounded(msg).into()));
        true
    }

    /// A monitor transition. `Down` and `Recovered` re-evaluate exactly the
    /// keys the node holds; `Suspected` and `Alive` change nothing planned
    /// (an `Alive` retries keys that had no alive holder).
    pub fn on_event(&mut self, event: &Event) {
        let Some(n) = self.node_id(event.node()) else {
            return;
        };
        let node = &mut self.nodes[n as usize];
        node.liveness = event.liveness();
        match event {
            Event::Alive { at, .. } | Event::Recovered { at, .. } => {
                node.last_seen = node.last_seen.max(*at)
            }
            Event::Suspected { last_seen, .. } | Event::Down { last_seen, .. } => {
                node.last_seen = *last_seen
            }
        }
        match event {
            Event::Down { .. } | Event::Recovered { .. } => {
                self.dirty
                    .extend(self.nodes[n as usize].held.iter().copied());
            }
            Event::Alive { .. } | Event::Suspected { .. } => {}
        }
        if event.liveness() == Liveness::Alive {
            let held = &self.nodes[n as usize].held;
            let back: Vec<KeyId> = self
                .starved
                .iter()
                .filter(|k| held.contains(k))
                .copied()
                .collect();
            for k in back {
                self.starved.remove(&k);
                self.dirty.insert(k);
            }
        }
    }

    /// Re-evaluates every key at the next polls (the policy, the nodes'
    /// preferred content or the layout changed).
    pub fn reevaluate_all(&mut self) {
        self.dirty.extend(0..self.keys.len() as KeyId);
    }

    /// Re-evaluates `key` at the next poll (its override changed).
    pub fn reevaluate(&mut self, key: &Key) {
        if let Some(&k) = self.key_ids.get(key) {
            self.dirty.insert(k);
        }
    }

    /// Presence reports ignored for the key or node limits.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Keys waiting for a transfer slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Keys waiting to be (re-)evaluated.
    pub fn pending_evaluation(&self) -> usize {
        self.dirty.len()
    }

    /// Keys below `min` with no alive holder.
    pub fn starved(&self) -> usize {
        self.starved.len()
    }

    /// Keys that need work another gateway coordinates.
    pub fn owned_by_others(&self) -> usize {
        self.others.len()
    }

    /// Keys waiting for a retry or for a holder's grace to run out.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// The holders the index lists for `key`, by uuid.
    pub fn holders(&self, key: &Key) -> Vec<Uuid> {
        let Some(&k) = self.key_ids.get(key) else {
            return Vec::new();
        };
        let mut out: Vec<Uuid> = self.keys[k as usize]
            .holders
            .iter()
            .map(|&n| self.nodes[n as usize].uuid.clone())
            .collect();
        out.sort();
        out
    }

    /// How many keys the index says `node` holds.
    pub fn held_by(&self, node: &Uuid) -> usize {
        self.node_ids
            .get(node)
            .map_or(0, |&n| self.nodes[n as usize].held.len())
    }
}

impl Planner {
    /// Targets of copies of `k` under way.
    fn targets_in_flight(&self, k: KeyId) -> Vec<NodeId> {
        if self.keys[k as usize].in_flight == 0 {
            return Vec::new();
        }
        self.flights
            .values()
            .filter(|f| f.key == k)
            .filter_map(|f| match f.kind {
                Kind::Copy { to, .. } => Some(to),
                Kind::Drop { .. } => None,
            })
            .collect()
    }

    /// Whether a drop of `k` is under way.
    fn dropping(&self, k: KeyId) -> bool {
        self.keys[k as usize].in_flight > 0
            && self
                .flights
                .values()
                .any(|f| f.key == k && matches!(f.kind, Kind::Drop { .. }))
    }

    /// Asks the placement about `k`; `needs` is then sized to the members.
    fn ask(&self, k: KeyId, env: &Env<'_>, needs: &mut Needs) {
        let e = &self.keys[k as usize];
        let holders: Vec<&Uuid> = e
            .holders
            .iter()
            .map(|&n| &self.nodes[n as usize].uuid)
            .collect();
        needs.reset(self.members.len());
        env.placement
            .needs(&e.key, &holders, &self.member_uuids, needs);
        // A careless placement must not make us index out of bounds.
        needs.wanting.resize(self.members.len(), false);
        needs.required.resize(self.members.len(), false);
    }

    /// Counts `k`'s copies and what it needs (see the module docs).
    fn judge(&self, k: KeyId, env: &Env<'_>, needs: &mut Needs) -> Judged {
        self.ask(k, env, needs);
        let eff = needs.effective;
        let e = &self.keys[k as usize];
        let in_flight_to = self.targets_in_flight(k);
        let lost_after = self
            .config
            .suspect_after_ms
            .saturating_add(eff.grace.saturating_mul(1000));
        let mut j = Judged {
            effective: eff,
            live: 0,
            pending: in_flight_to.len() as u32,
            alive: Vec::new(),
            required_targets: Vec::new(),
            need: 0,
            excess: 0,
            wait_until: None,
        };
        let (mut required_total, mut soon_lost) = (0u32, 0u32);
        for (i, &n) in self.members.iter().enumerate() {
            let node = &self.nodes[n as usize];
            required_total += u32::from(needs.required[i]);
            if e.counts(n) {
                match node.liveness {
                    Liveness::Alive => {
                        j.live += 1;
                        j.alive.push(n);
                    }
                    Liveness::Suspected => j.live += 1,
                    Liveness::Down => {
                        let lost_at = node.last_seen.saturating_add(lost_after);
                        if env.now < lost_at {
                            j.live += 1;
                            soon_lost += 1;
                            j.wait_until = Some(j.wait_until.map_or(lost_at, |w| w.min(lost_at)));
                        }
                    }
                }
            } else if needs.required[i]
                && node.liveness == Liveness::Alive
                && !in_flight_to.contains(&n)
            {
                j.required_targets.push(n);
            }
        }
        if self.dropping(k) {
            // A drop runs alone: its source still counts until it ends, so
            // a copy planned meanwhile would be judged on a copy that is
            // going away. The drop's end re-evaluates the key.
            j.wait_until = None;
            return j;
        }
        let have = j.live + j.pending;
        j.need = eff
            .min
            .saturating_sub(have)
            .max(j.required_targets.len() as u32);
        if have.saturating_sub(soon_lost) >= eff.min {
            j.wait_until = None;
        }
        let keep = eff.max.max(eff.keep).max(required_total);
        if e.in_flight == 0 && j.need == 0 {
            j.excess = (j.alive.len() as u32).saturating_sub(keep);
        }
        j
    }

    fn verdict(j: &Judged) -> Verdict {
        if j.need > 0 {
            if j.alive.is_empty() {
                return Verdict::Starved;
            }
            return Verdict::Work {
                priority: j.live + j.pending,
            };
        }
        if let Some(t) = j.wait_until {
            return Verdict::Wait(t);
        }
        if j.excess > 0 {
            return Verdict::Work {
                priority: j.live + j.pending,
            };
        }
        Verdict::Fine
    }

    fn mine(&self, k: KeyId) -> bool {
        if self.gateways.is_empty() {
            return true;
        }
        coordinator(&self.keys[k as usize].key, &self.gateways) == Some(&self.me)
    }

    fn unqueue(&mut self, k: KeyId) {
        if let Some(p) = self.keys[k as usize].queued.take() {
            self.queue.remove(&(p, k));
        }
    }

    fn enqueue(&mut self, k: KeyId, priority: u32) {
        self.unqueue(k);
        self.keys[k as usize].queued = Some(priority);
        self.queue.insert((priority, k));
    }

    fn defer(&mut self, k: KeyId, until: u64) {
        self.unqueue(k);
        let e = &mut self.keys[k as usize];
        if e.not_before > 0 {
            self.deferred.remove(&(e.not_before, k));
        }
        e.not_before = until;
        self.deferred.insert((until, k));
    }

    /// Records a failure of `k` and defers it by the backoff.
    fn fail(&mut self, k: KeyId, node: Option<NodeId>, msg: &str, now: u64) {
        let e = &mut self.keys[k as usize];
        e.attempts = e.attempts.saturating_add(1);
        e.set_error(node, msg);
        let until = now.saturating_add(backoff(&self.config, e.attempts));
        self.defer(k, until);
    }

    /// Takes in the alive gateways; if they changed, every key another
    /// gateway owned, and every queued key, is re-evaluated.
    fn sync_gateways(&mut self, gateways: &[Uuid]) {
        let mut g: Vec<Uuid> = gateways.to_vec();
        if !g.is_empty() && !g.contains(&self.me) {
            g.push(self.me.clone());
        }
        g.sort();
        g.dedup();
        if g == self.gateways {
            return;
        }
        self.gateways = g;
        let others = std::mem::take(&mut self.others);
        self.dirty.extend(others);
        let queued: Vec<KeyId> = self.queue.iter().map(|(_, k)| *k).collect();
        self.dirty.extend(queued);
    }

    fn wake(&mut self, now: u64) {
        while let Some(&(t, k)) = self.deferred.first() {
            if t > now {
                break;
            }
            self.deferred.pop_first();
            self.keys[k as usize].not_before = 0;
            self.dirty.insert(k);
        }
    }
}

impl Planner {
    /// Plans: re-evaluates changed keys (up to `eval_batch`), then starts
    /// transfers for queued keys within the limits. Returns the transfers
    /// to perform.
    pub fn poll(&mut self, env: &Env<'_>) -> Vec<Transfer> {
        self.clock = env.now.max(1);
        self.sync_gateways(env.gateways);
        self.wake(env.now);
        let mut needs = std::mem::take(&mut self.needs);
        self.evaluate(env, &mut needs);
        let mut out = Vec::new();
        self.dispatch_queue(env, &mut needs, &mut out);
        self.needs = needs;
        out
    }

    fn evaluate(&mut self, env: &Env<'_>, needs: &mut Needs) {
        for _ in 0..self.config.eval_batch {
            let Some(k) = self.dirty.pop_first() else {
                break;
            };
            if self.keys[k as usize].not_before > env.now {
                continue;
            }
            if !self.held(k) {
                // Dropped from every node: no longer the cluster's key.
                self.unqueue(k);
                self.others.remove(&k);
                self.starved.remove(&k);
                let e = &mut self.keys[k as usize];
                e.attempts = 0;
                e.clear_error();
                continue;
            }
            let seen = self.keys[k as usize].seen_at;
            if seen > 0 && env.now < seen.saturating_add(self.config.settle_ms) {
                self.defer(k, seen.saturating_add(self.config.settle_ms));
                continue;
            }
            let j = self.judge(k, env, needs);
            self.others.remove(&k);
            self.starved.remove(&k);
            match Self::verdict(&j) {
                Verdict::Fine => {
                    self.unqueue(k);
                    let e = &mut self.keys[k as usize];
                    e.attempts = 0;
                    e.clear_error();
                }
                Verdict::Wait(t) => self.defer(k, t),
                Verdict::Starved => self.starve(k),
                Verdict::Work { priority } => {
                    if self.mine(k) {
                        self.enqueue(k, priority);
                    } else {
                        self.unqueue(k);
                        self.others.insert(k);
                    }
                }
            }
        }
    }

    /// Whether the cluster holds key `k`: a location log says one of its
    /// nodes has it (whether or not that node is alive). A cluster holds a
    /// key from the moment it is stored on one of its nodes until it is
    /// dropped from all of them; a key it does not hold is not judged and
    /// not listed.
    fn held(&self, k: KeyId) -> bool {
        self.keys[k as usize]
            .holders
            .iter()
            .any(|n| self.nodes[*n as usize].member)
    }

    fn starve(&mut self, k: KeyId) {
        self.unqueue(k);
        self.starved.insert(k);
        self.keys[k as usize].set_error(None, "no alive node holds a copy");
    }

    fn dispatch_queue(&mut self, env: &Env<'_>, needs: &mut Needs, out: &mut Vec<Transfer>) {
        let batch: Vec<KeyId> = self
            .queue
            .iter()
            .take(self.config.dispatch_scan)
            .map(|(_, k)| *k)
            .collect();
        for k in batch {
            if self.flights.len() >= self.config.max_in_flight as usize || !self.any_slot() {
                break;
            }
            if !self.may_send(k) {
                continue;
            }
            match self.dispatch(k, env, needs, out) {
                Outcome::Done => self.unqueue(k),
                Outcome::Blocked => {}
                Outcome::Starved => self.starve(k),
                Outcome::Wait(t) => self.defer(k, t),
                Outcome::Failed(msg) => self.fail(k, None, &msg, env.now),
            }
        }
    }

    /// Whether some alive member could still send and some could receive.
    fn any_slot(&self) -> bool {
        let alive = || {
            self.members
                .iter()
                .map(|&n| &self.nodes[n as usize])
                .filter(|n| n.liveness == Liveness::Alive)
        };
        alive().any(|n| n.src < self.config.max_per_source)
            && alive().any(|n| n.dst < self.config.max_per_target)
    }

    /// Whether some alive holder of `k` has a free sending slot: without
    /// one neither a copy nor a drop can start, so the key is skipped
    /// without asking the placement.
    fn may_send(&self, k: KeyId) -> bool {
        self.keys[k as usize].holders.iter().any(|&h| {
            let n = &self.nodes[h as usize];
            n.member && n.liveness == Liveness::Alive && n.src < self.config.max_per_source
        })
    }

    fn dispatch(
        &mut self,
        k: KeyId,
        env: &Env<'_>,
        needs: &mut Needs,
        out: &mut Vec<Transfer>,
    ) -> Outcome {
        let j = self.judge(k, env, needs);
        match Self::verdict(&j) {
            Verdict::Fine => Outcome::Done,
            Verdict::Wait(t) => Outcome::Wait(t),
            Verdict::Starved => Outcome::Starved,
            Verdict::Work { .. } if j.need > 0 => self.start_copies(k, &j, env, needs, out),
            Verdict::Work { .. } => self.start_drop(k, &j, env, needs, out),
        }
    }

    /// The allocator's view of the members for key `k`.
    fn candidates(&self, k: KeyId, env: &Env<'_>, needs: &Needs) -> Vec<Candidate> {
        let e = &self.keys[k as usize];
        let in_flight_to = self.targets_in_flight(k);
        let anyone = needs.wanting.iter().any(|w| *w);
        self.members
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let node = &self.nodes[n as usize];
                Candidate {
                    node: node.uuid.clone(),
                    wants: needs.wanting[i] || needs.required[i] || !anyone,
                    alive: node.liveness == Liveness::Alive,
                    room: env
                        .monitor
                        .room(&node.uuid, env.now)
                        .map(|r| r.saturating_sub(node.reserved)),
                    holds: e.counts(n) || in_flight_to.contains(&n),
                    busy: node.dst >= self.config.max_per_target,
                }
            })
            .collect()
    }
}

impl Planner {
    fn start_copies(
        &mut self,
        k: KeyId,
        j: &Judged,
        env: &Env<'_>,
        needs: &Needs,
        out: &mut Vec<Transfer>,
    ) -> Outcome {
        let eff = j.effective;
        let mut cands = self.candidates(k, env, needs);
        let size = self.keys[k as usize].key.size().unwrap_or(0);
        let mut holders: Vec<Uuid> = j.alive.iter().map(|&n| self.uuid(n).clone()).collect();
        holders.extend(
            self.targets_in_flight(k)
                .iter()
                .map(|&n| self.uuid(n).clone()),
        );
        let required: Vec<Candidate> = cands
            .iter()
            .filter(|c| j.required_targets.iter().any(|&n| *self.uuid(n) == c.node))
            .cloned()
            .collect();
        let mut chosen = Vec::new();
        let mut blocked = false;
        let mut failure = None;
        let mut place = |cands: &[Candidate], want: usize, chosen: &mut Vec<Uuid>| {
            let req = Request {
                size,
                want,
                at_least: want,
                holders: &holders,
                tiebreak: env.tiebreak,
            };
            match allocate(env.layout, cands, &req) {
                Ok(v) => chosen.extend(v),
                Err(s) => {
                    chosen.extend(s.placed.iter().cloned());
                    if s.blocked_by_limits() {
                        blocked = true;
                    } else {
                        failure = Some(s.to_string());
                    }
                }
            }
        };
        place(&required, required.len(), &mut chosen);
        let have = (j.live + j.pending) as usize + chosen.len();
        let rest = (eff.min as usize).saturating_sub(have);
        if rest > 0 {
            for c in &mut cands {
                c.holds |= chosen.contains(&c.node);
            }
            place(&cands, rest, &mut chosen);
        }
        for to in chosen {
            if !self.start_copy(k, &j.alive, &to, env.layout, out) {
                blocked = true;
                break;
            }
        }
        match failure {
            Some(msg) => Outcome::Failed(msg),
            None if blocked => Outcome::Blocked,
            None => Outcome::Done,
        }
    }

    fn uuid(&self, n: NodeId) -> &Uuid {
        &self.nodes[n as usize].uuid
    }

    /// Starts one copy of `k` to `to` from the best alive holder with a free
    /// slot: same site first, then the least busy, then by uuid.
    fn start_copy(
        &mut self,
        k: KeyId,
        alive: &[NodeId],
        to: &Uuid,
        layout: &Layout,
        out: &mut Vec<Transfer>,
    ) -> bool {
        let Some(&t) = self.node_ids.get(to) else {
            return false;
        };
        if self.flights.len() >= self.config.max_in_flight as usize {
            return false;
        }
        let site = layout.site(to);
        let Some(&from) = alive
            .iter()
            .filter(|&&s| self.nodes[s as usize].src < self.config.max_per_source)
            .min_by_key(|&&s| {
                let n = &self.nodes[s as usize];
                (layout.site(&n.uuid) != site, n.src, &n.uuid)
            })
        else {
            return false;
        };
        let size = self.keys[k as usize].key.size().unwrap_or(0);
        self.nodes[from as usize].src += 1;
        let target = &mut self.nodes[t as usize];
        target.dst += 1;
        target.reserved = target.reserved.saturating_add(size);
        let action = Action::Copy {
            key: (*self.keys[k as usize].key).clone(),
            from: self.uuid(from).clone(),
            to: to.clone(),
        };
        self.launch(k, Kind::Copy { from, to: t }, size, action, out);
        true
    }

    fn launch(&mut self, k: KeyId, kind: Kind, size: u64, action: Action, out: &mut Vec<Transfer>) {
        let id = self.next_id;
        self.next_id += 1;
        self.keys[k as usize].in_flight += 1;
        self.flights.insert(id, Flight { key: k, kind, size });
        out.push(Transfer { id, action });
    }

    fn start_drop(
        &mut self,
        k: KeyId,
        j: &Judged,
        env: &Env<'_>,
        needs: &Needs,
        out: &mut Vec<Transfer>,
    ) -> Outcome {
        let eff = j.effective;
        let index = |n: NodeId| self.members.iter().position(|m| *m == n);
        let mut per_site: BTreeMap<&Uuid, usize> = BTreeMap::new();
        for &n in &j.alive {
            *per_site.entry(env.layout.site(self.uuid(n))).or_default() += 1;
        }
        let free = |n: NodeId| self.nodes[n as usize].src < self.config.max_per_source;
        let victim = j
            .alive
            .iter()
            .copied()
            .filter(|&n| index(n).is_some_and(|i| !needs.required[i]) && free(n))
            .min_by_key(|&n| {
                let u = self.uuid(n);
                let wants = index(n).is_some_and(|i| needs.wanting[i]);
                let alone = per_site.get(env.layout.site(u)).copied().unwrap_or(0) <= 1;
                let room = env.monitor.room(u, env.now).unwrap_or(u64::MAX);
                (wants, alone, room, u)
            });
        let Some(victim) = victim else {
            // Every candidate is busy (wait), or every holder requires it.
            let busy = j
                .alive
                .iter()
                .any(|&n| index(n).is_some_and(|i| !needs.required[i]));
            return if busy {
                Outcome::Blocked
            } else {
                Outcome::Done
            };
        };
        let mut lock: Vec<Uuid> = j
            .alive
            .iter()
            .filter(|&&n| n != victim)
            .map(|&n| self.uuid(n).clone())
            .collect();
        lock.sort();
        lock.truncate(eff.keep as usize);
        if lock.len() < eff.keep as usize {
            return Outcome::Done;
        }
        self.nodes[victim as usize].src += 1;
        let action = Action::Drop {
            key: (*self.keys[k as usize].key).clone(),
            from: self.uuid(victim).clone(),
            lock,
        };
        self.launch(k, Kind::Drop { from: victim }, 0, action, out);
        Outcome::Done
    }
}

impl Planner {
    /// A transfer finished: `Ok` if the copy is verified on the target (or
    /// the drop done), `Err(message)` otherwise. The index is updated at once
    /// (the location-log change that follows is then a no-op); a failure
    /// retries the key after the backoff. Returns false for an unknown id.
    pub fn on_transfer_done(&mut self, id: u64, result: Result<(), String>, now: u64) -> bool {
        let Some(f) = self.flights.remove(&id) else {
            return false;
        };
        let e = &mut self.keys[f.key as usize];
        e.in_flight = e.in_flight.saturating_sub(1);
        let (node, present) = match f.kind {
            Kind::Copy { from, to } => {
                let src = &mut self.nodes[from as usize];
                src.src = src.src.saturating_sub(1);
                let dst = &mut self.nodes[to as usize];
                dst.dst = dst.dst.saturating_sub(1);
                dst.reserved = dst.reserved.saturating_sub(f.size);
                (to, true)
            }
            Kind::Drop { from } => {
                let src = &mut self.nodes[from as usize];
                src.src = src.src.saturating_sub(1);
                (from, false)
            }
        };
        match result {
            Ok(()) => {
                let key = self.keys[f.key as usize].key.clone();
                let uuid = self.nodes[node as usize].uuid.clone();
                self.on_presence(&key, &uuid, present);
                let e = &mut self.keys[f.key as usize];
                e.attempts = 0;
                e.clear_error();
                self.dirty.insert(f.key);
            }
            Err(msg) => self.fail(f.key, Some(node), &msg, now),
        }
        true
    }

    fn reset(&mut self, k: KeyId) {
        let e = &mut self.keys[k as usize];
        if e.not_before > 0 {
            self.deferred.remove(&(e.not_before, k));
            e.not_before = 0;
        }
        e.attempts = 0;
        e.clear_error();
        e.clear_found();
        self.dirty.insert(k);
    }

    /// Retries `key` now, forgetting its errors and backoff (ipfs-cluster's
    /// `recover`). Returns false for an unknown key.
    pub fn recover(&mut self, key: &Key) -> bool {
        let Some(&k) = self.key_ids.get(key) else {
            return false;
        };
        self.reset(k);
        true
    }

    /// [`Planner::recover`] for every key with an error or a backoff;
    /// returns how many.
    pub fn recover_all(&mut self) -> usize {
        let ks: BTreeSet<KeyId> = self
            .deferred
            .iter()
            .map(|(_, k)| *k)
            .chain(
                self.keys
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        e.attempts > 0
                            || e.trouble
                                .as_ref()
                                .is_some_and(|t| t.error.is_some() || t.found.is_some())
                    })
                    .map(|(k, _)| k as KeyId),
            )
            .collect();
        for &k in &ks {
            self.reset(k);
        }
        ks.len()
    }
}

impl Planner {
    fn node_status(&self, k: KeyId, n: NodeId) -> Option<NodeStatus> {
        let e = &self.keys[k as usize];
        let flight = self
            .flights
            .values()
            .filter(|f| f.key == k)
            .find_map(|f| match f.kind {
                Kind::Copy { to, .. } if to == n => Some(NodeState::Transferring),
                Kind::Drop { from } if from == n => Some(NodeState::Dropping),
                _ => None,
            });
        let error = match e.shown_error() {
            Some((Some(m), msg)) if m == n => Some(NodeState::Error(msg.to_string())),
            _ => None,
        };
        let state = if e.in_flight > 0 && flight.is_some() {
            flight?
        } else if e.missing(n) {
            NodeState::Missing
        } else if e.holders.binary_search(&n).is_ok() {
            NodeState::Present
        } else {
            error?
        };
        let node = &self.nodes[n as usize];
        Some(NodeStatus {
            node: node.uuid.clone(),
            state,
            liveness: node.liveness,
        })
    }

    fn key_status(&self, k: KeyId, env: &Env<'_>, needs: &mut Needs) -> KeyStatus {
        let j = self.judge(k, env, needs);
        let eff = j.effective;
        let e = &self.keys[k as usize];
        let nodes = self
            .members
            .iter()
            .filter_map(|&n| self.node_status(k, n))
            .collect();
        KeyStatus {
            key: (*e.key).clone(),
            nodes,
            copies: j.live,
            min: eff.min,
            max: eff.max,
            under_replicated: j.live < eff.min,
            queued: e.queued.is_some(),
            error: e.shown_error().map(|(_, m)| m.to_owned()),
            attempts: e.attempts,
            retry_at: (e.not_before > 0).then_some(e.not_before),
        }
    }

    /// `key`'s status; `None` if the cluster does not hold it.
    pub fn status(&self, key: &Key, env: &Env<'_>) -> Option<KeyStatus> {
        let &k = self.key_ids.get(key)?;
        if !self.held(k) {
            return None;
        }
        Some(self.key_status(k, env, &mut Needs::default()))
    }

    /// Every key's status that `filter` selects, in key order, computed one
    /// at a time as the iterator is read (nothing is collected).
    pub fn statuses<'a>(
        &'a self,
        env: &'a Env<'a>,
        filter: &'a Filter,
    ) -> impl Iterator<Item = KeyStatus> + 'a {
        let mut needs = Needs::default();
        self.key_ids
            .values()
            .filter(move |&&k| self.held(k))
            .map(move |&k| self.key_status(k, env, &mut needs))
            .filter(move |s| filter.matches(s))
    }

    /// Counts over every key.
    pub fn summary(&self, env: &Env<'_>) -> Summary {
        let mut s = Summary::default();
        for st in self.statuses(env, &Filter::default()) {
            s.add(&st);
        }
        s
    }
}

#[cfg(test)]
pub(crate) mod tests;
