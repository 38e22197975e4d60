//! The allocator: which nodes get a key's new copies.
//!
//! Used for a `PUT` whose `max` is below the number of wanting nodes (place
//! `max`, fail below `min`), and by the repair planner for every copy.
//!
//! 1. **Candidates**: nodes that want the key, are alive, do not hold it, are
//!    not at their transfer limit, and have room: fresh metrics
//!    ([`super::monitor::Metrics::room`], free space less `annex.diskreserve`
//!    less what transfers in flight reserve) of at least the key's size. A
//!    node without fresh metrics is skipped: its free space is unknown, and
//!    ipfs-cluster too allocates only to peers with valid metrics.
//! 2. **Spread**: greedily, each pick minimises, in order: how many chosen
//!    or existing copies share its *site* (the gateway it is behind, from
//!    the topology: the smallest gateway uuid listing it directly; a node
//!    no gateway lists is its own site), then how many share its *groups*
//!    (`group.log`; the sum over its groups), then prefers the most room.
//!    ipfs-cluster's `balanced` allocator does the same with `tag:group`
//!    then `freespace`.
//! 3. **Ties** go to uuid order, or, given a random `u64` from the caller,
//!    to an order hashed from it (so load spreads but the result is a pure
//!    function of the inputs).
//!
//! If fewer than `at_least` can be placed, the answer is a [`Shortfall`]
//! that says how many were placed and why each other node was skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::stable_hash;
use crate::cluster::topology::Topology;
use crate::logs::view::View;
use crate::uuid::Uuid;

/// Where nodes are: their site (gateway) and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    sites: BTreeMap<Uuid, Uuid>,
    groups: BTreeMap<Uuid, BTreeSet<String>>,
}

impl Layout {
    pub fn new() -> Layout {
        Layout::default()
    }

    /// Sites from the topology (the smallest gateway uuid that lists a node
    /// directly) and groups from `group.log`.
    pub fn from_branch(topology: &Topology, view: &View<'_>) -> Layout {
        let mut l = Layout::new();
        // `gateways()` is in uuid order, so the first listing wins.
        for gw in topology.gateways() {
            for (node, _) in topology.direct_nodes(gw) {
                l.sites.entry(node).or_insert_with(|| gw.clone());
            }
        }
        for (u, gs) in view.group_map() {
            if let Ok(u) = Uuid::parse(&u) {
                l.groups.insert(u, gs);
            }
        }
        l
    }

    pub fn set_site(&mut self, node: Uuid, gateway: Uuid) {
        self.sites.insert(node, gateway);
    }

    pub fn set_groups(&mut self, node: Uuid, groups: impl IntoIterator<Item = String>) {
        self.groups.insert(node, groups.into_iter().collect());
    }

    /// The node's site: its gateway, or the node itself.
    pub fn site<'a>(&'a self, node: &'a Uuid) -> &'a Uuid {
        self.sites.get(node).unwrap_or(node)
    }

    pub fn groups(&self, node: &Uuid) -> impl Iterator<Item = &String> {
        self.groups.get(node).into_iter().flatten()
    }
}

/// One node as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: Uuid,
    /// Its preferred content wants the key (or the caller treats every node
    /// as wanting it, when none does).
    pub wants: bool,
    /// Alive (not suspected, not down).
    pub alive: bool,
    /// Free bytes less reserved bytes; `None`: no fresh metrics.
    pub room: Option<u64>,
    /// Already holds the key, or a copy to it is under way.
    pub holds: bool,
    /// At its limit of transfers in flight.
    pub busy: bool,
}

/// What to place.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The key's size in bytes (0 if unknown).
    pub size: u64,
    /// How many new copies to place at most.
    pub want: usize,
    /// Fewer than this is a [`Shortfall`].
    pub at_least: usize,
    /// Nodes whose copies already count (for the spread).
    pub holders: &'a [Uuid],
    /// `None`: ties in uuid order; `Some(r)`: in an order hashed from `r`.
    pub tiebreak: Option<u64>,
}

/// Why a node was not chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotWanting,
    Down,
    /// No fresh metrics: free space unknown.
    NoMetrics,
    Full {
        room: u64,
    },
    Busy,
    /// Eligible, but enough copies were placed without it.
    NotNeeded,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotWanting => f.write_str("does not want it"),
            Skip::Down => f.write_str("not alive"),
            Skip::NoMetrics => f.write_str("no fresh metrics"),
            Skip::Full { room } => write!(f, "full ({room} bytes free)"),
            Skip::Busy => f.write_str("at its transfer limit"),
            Skip::NotNeeded => f.write_str("not needed"),
        }
    }
}

/// Fewer than `at_least` nodes could be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub needed: usize,
    /// What could be placed (a caller may still start these).
    pub placed: Vec<Uuid>,
    /// Every other candidate that does not hold the key, and why.
    pub skipped: Vec<(Uuid, Skip)>,
}

impl Shortfall {
    /// Whether some node was skipped only for its transfer limit (so waiting
    /// for transfers to finish can help).
    pub fn blocked_by_limits(&self) -> bool {
        self.skipped.iter().any(|(_, s)| *s == Skip::Busy)
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "placed {} of {} needed copies",
            self.placed.len(),
            self.needed
        )?;
        if self.skipped.is_empty() {
            return f.write_str(": no other node");
        }
        f.write_str(": ")?;
        for (i, (n, why)) in self.skipped.iter().take(16).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n} {why}")?;
        }
        if self.skipped.len() > 16 {
            write!(f, ", and {} more", self.skipped.len() - 16)?;
        }
        Ok(())
    }
}

impl std::error::Error for Shortfall {}

fn skip_reason(c: &Candidate, size: u64) -> Option<Skip> {
    if !c.wants {
        return Some(Skip::NotWanting);
    }
    if !c.alive {
        return Some(Skip::Down);
    }
    let room = match c.room {
        None => return Some(Skip::NoMetrics),
        Some(r) => r,
    };
    if room < size {
        return Some(Skip::Full { room });
    }
    c.busy.then_some(Skip::Busy)
}

/// Chooses up to `req.want` nodes among `candidates` (see the module docs).
/// Candidates that hold the key are ignored; the others are either chosen
/// or reported with a reason in a [`Shortfall`] when fewer than
/// `req.at_least` are chosen.
pub fn allocate(
    layout: &Layout,
    candidates: &[Candidate],
    req: &Request<'_>,
) -> Result<Vec<Uuid>, Shortfall> {
    let mut site_use: BTreeMap<&Uuid, usize> = BTreeMap::new();
    let mut group_use: BTreeMap<&String, usize> = BTreeMap::new();
    for h in req.holders {
        *site_use.entry(layout.site(h)).or_default() += 1;
        for g in layout.groups(h) {
            *group_use.entry(g).or_default() += 1;
        }
    }
    let mut skipped = Vec::new();
    let mut open: Vec<&Candidate> = Vec::new();
    for c in candidates.iter().filter(|c| !c.holds) {
        match skip_reason(c, req.size) {
            Some(s) => skipped.push((c.node.clone(), s)),
            None => open.push(c),
        }
    }
    let tie = |n: &Uuid| {
        req.tiebreak
            .map(|r| stable_hash(&[&r.to_be_bytes(), n.as_str().as_bytes()]))
    };
    let mut chosen: Vec<Uuid> = Vec::new();
    while chosen.len() < req.want {
        let score = |c: &Candidate| {
            let site = site_use.get(layout.site(&c.node)).copied().unwrap_or(0);
            let groups: usize = layout
                .groups(&c.node)
                .map(|g| group_use.get(g).copied().unwrap_or(0))
                .sum();
            let room = c.room.unwrap_or(0);
            (
                site,
                groups,
                std::cmp::Reverse(room),
                tie(&c.node),
                c.node.clone(),
            )
        };
        let Some((best, _)) = open
            .iter()
            .enumerate()
            .map(|(i, c)| (i, score(c)))
            .min_by(|a, b| a.1.cmp(&b.1))
        else {
            break;
        };
        let c = open.swap_remove(best);
        *site_use.entry(layout.site(&c.node)).or_default() += 1;
        for g in layout.groups(&c.node) {
            *group_use.entry(g).or_default() += 1;
        }
        chosen.push(c.node.clone());
    }
    if chosen.len() >= req.at_least {
        return Ok(chosen);
    }
    skipped.extend(open.iter().map(|c| (c.node.clone(), Skip::NotNeeded)));
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    Err(Shortfall {
        needed: req.at_least,
        placed: chosen,
        skipped,
    })
}

/// The targets of a `PUT` of a key of `size` bytes that `holders` already
/// have: up to `effective.max` copies in all, a [`Shortfall`] below
/// `effective.min`. Nodes whose required content matches should be passed
/// with `wants` set; the gateway adds any the allocator left out (required
/// content is honoured whatever `max` says).
pub fn put_targets(
    layout: &Layout,
    candidates: &[Candidate],
    size: u64,
    effective: &super::policy::Effective,
    holders: &[Uuid],
    tiebreak: Option<u64>,
) -> Result<Vec<Uuid>, Shortfall> {
    let have = holders.len();
    let req = Request {
        size,
        want: (effective.max as usize).saturating_sub(have),
        at_least: (effective.min as usize).saturating_sub(have),
        holders,
        tiebreak,
    };
    allocate(layout, candidates, &req)
}

/// One node a `PUT` planned to write, as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutNode {
    pub node: Uuid,
    /// Not suspected or down by the gateway's monitor (unknown: alive).
    pub alive: bool,
    /// Free bytes less reserved ones from its last heartbeat; `None`: not
    /// heard. A `PUT` assumes an unheard node has just room for the key
    /// (eligible, ranked below nodes known to have more), since the gateway
    /// was going to write it anyway.
    pub room: Option<u64>,
}

/// What the cluster's replication policy makes of a `PUT`'s targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutCap {
    /// The nodes to write (all of the planned ones unless capped).
    pub targets: Vec<Uuid>,
    /// The allocator chose (the policy's `max` was below the planned targets).
    pub capped: bool,
    /// Holders and targets together fall short of `min`.
    pub shortfall: Option<Shortfall>,
}

/// Applies the cluster's `rule` to a `PUT` of `key` (`size` bytes) that
/// `holders` already have and whose plan (wanted nodes, or every lacking
/// node when none wants it) is `planned`. With no `max` in the rule, or a
/// `max` that leaves room for every planned node, the plan stands. Else the
/// allocator ([`put_targets`]) picks up to `max` copies in all, spread over
/// sites and groups, ties broken by a hash of the key (so every gateway
/// picks the same). A [`Shortfall`] says when fewer than `min` copies
/// (holders included) can result, and why the others were skipped.
pub fn cap_put(
    layout: &Layout,
    rule: super::policy::Rule,
    numcopies: u32,
    key: &crate::key::Key,
    planned: &[PutNode],
    holders: &[Uuid],
) -> PutCap {
    let wanting = u32::try_from(planned.len().saturating_add(holders.len())).unwrap_or(u32::MAX);
    let eff = super::policy::resolve(rule, numcopies, wanting);
    let have = holders.len();
    let all: Vec<Uuid> = planned.iter().map(|n| n.node.clone()).collect();
    let room_left = (eff.max as usize).saturating_sub(have);
    if rule.max.is_none() || planned.len() <= room_left {
        let needed = (eff.min as usize).saturating_sub(have);
        let shortfall = (all.len() < needed).then(|| Shortfall {
            needed,
            placed: all.clone(),
            skipped: Vec::new(),
        });
        return PutCap {
            targets: all,
            capped: false,
            shortfall,
        };
    }
    let size = key.size().unwrap_or(0);
    let candidates: Vec<Candidate> = planned
        .iter()
        .map(|n| Candidate {
            node: n.node.clone(),
            wants: true,
            alive: n.alive,
            room: Some(n.room.unwrap_or(size)),
            holds: false,
            busy: false,
        })
        .collect();
    let tiebreak = super::stable_hash(&[b"put", key.as_str().as_bytes()]);
    match put_targets(layout, &candidates, size, &eff, holders, Some(tiebreak)) {
        Ok(targets) => PutCap {
            targets,
            capped: true,
            shortfall: None,
        },
        Err(s) => PutCap {
            targets: s.placed.clone(),
            capped: true,
            shortfall: Some(s),
        },
    }
}

#[cfg(test)]
mod tests;
