//! The `PUT` plan: which nodes a gateway writes itself, which it hands to
//! which next-hop gateway, and the `BYPASS` each hop is sent.
//!
//! # What git-annex does
//!
//! `proxyPUT` (`Annex/Cluster.hs`, annex-spec §4.6): the targets are the nodes
//! its location log does not list as having the key and whose preferred
//! content wants it; if none wants it, every node lacking it. Another gateway
//! of the cluster counts as one node ("the cluster via G"), sent `BYPASS` =
//! the client's `BYPASS` ∪ {this gateway}, and a gateway skips every "cluster
//! via G" whose G is bypassed. That prevents cycles but not duplicate paths: a
//! node reachable through two gateways gets the `PUT` twice (§10.1 #5).
//!
//! # What this does
//!
//! Each target is reached by its single cheapest route ([`super::topology`]).
//! Targets whose route is direct are written here ([`Plan::local`]); the
//! others are grouped by next hop ([`Plan::hops`]). The exactly-once rule:
//!
//! * the `BYPASS` sent to hop `H` names every uuid this gateway knows of
//!   (every node and gateway of the cluster, the holders, the incoming
//!   `BYPASS`, this gateway) *except* the nodes assigned to `H` and the
//!   gateways on their routes. So `H`, and everything behind it, may only
//!   serve what was assigned to it, and never re-enters a gateway already on
//!   the path or serving another part of the tree;
//! * the receiving gateway runs this same planner with the `BYPASS` it got:
//!   its candidates are what is not bypassed, and its routes avoid bypassed
//!   gateways. Routes are prefix-closed (a route's tail is the route its next
//!   hop computes), so it splits its share the same way, and the shares of
//!   different hops stay disjoint all the way down;
//! * a stock git-annex gateway honours `BYPASS` for gateways only and puts to
//!   all its own nodes. [`super::topology`] therefore makes it a leaf that alone
//!   reaches its nodes, and its `BYPASS` names every other gateway, so it
//!   serves exactly its own nodes and forwards nowhere.
//!
//! Limits: the rule is exact when the gateways share the same facts (topology,
//! liveness, wanted, holders). A node one gateway does not know of cannot be
//! bypassed by it; a stock gateway that is the client's entry point and links
//! to two of ours sends both the same `BYPASS` (git-annex's own duplicate).

use std::collections::{BTreeMap, BTreeSet};

use super::topology::Routes;
use crate::message::MAX_LINE;
use crate::uuid::Uuid;
use crate::verify::{Validity, Verdict};

/// The facts a `PUT` is planned from. Preferred content is evaluated by the
/// caller (for every node it knows, as for a node lacking the key).
#[derive(Debug, Clone, Copy)]
pub struct PutFacts<'a> {
    /// Routes from this gateway, computed with the incoming `BYPASS`.
    pub routes: &'a Routes,
    /// Nodes whose preferred content wants the key.
    pub wanted: &'a BTreeSet<Uuid>,
    /// Nodes known to have the key already.
    pub have: &'a BTreeSet<Uuid>,
    /// The `BYPASS` the client (or previous gateway) sent.
    pub bypass: &'a BTreeSet<Uuid>,
    /// Where a direct node would resume (its partial upload's size), if known.
    pub offsets: &'a BTreeMap<Uuid, u64>,
}

/// A node this gateway writes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTarget {
    pub node: Uuid,
    /// Its resume offset (0 if unknown).
    pub offset: u64,
}

/// A next-hop gateway and what it must deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub gateway: Uuid,
    /// The nodes assigned to it, sorted.
    pub nodes: Vec<Uuid>,
    /// The `BYPASS` to send it (right after `VERSION`, v2+), sorted.
    pub bypass: Vec<Uuid>,
    /// A stock git-annex gateway (serves its own nodes whatever `BYPASS` says).
    pub stock: bool,
}

/// What to do with a `PUT`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub local: Vec<LocalTarget>,
    pub hops: Vec<Hop>,
    /// No candidate wanted the key: every candidate lacking it is a target
    /// (git-annex's fallback, §10.1 #12).
    pub fallback: bool,
    /// Hops left out because their `BYPASS` would not fit in one line.
    pub unsendable: Vec<Hop>,
}

impl Plan {
    /// No target at all: answer `ALREADY-HAVE` if some node has the key.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.hops.is_empty()
    }

    /// Every node the plan delivers to, directly or through a hop.
    pub fn targets(&self) -> BTreeSet<Uuid> {
        self.local
            .iter()
            .map(|t| t.node.clone())
            .chain(self.hops.iter().flat_map(|h| h.nodes.iter().cloned()))
            .collect()
    }
}

/// Whether a `BYPASS` line with these uuids fits in [`MAX_LINE`].
pub fn bypass_fits(uuids: &[Uuid]) -> bool {
    let len = uuids.iter().fold("BYPASS".len(), |n, u| {
        n.saturating_add(1 + u.as_str().len())
    });
    len <= MAX_LINE
}

/// Plans a `PUT` (see the module docs).
pub fn plan_put(f: &PutFacts<'_>) -> Plan {
    let me = f.routes.me();
    // A route crossing a bypassed gateway is unusable, whoever computed it.
    let usable = |n: &Uuid| {
        f.routes
            .get(n)
            .is_some_and(|r| !r.hops.iter().any(|h| f.bypass.contains(h) || h == me))
    };
    let candidates: BTreeSet<Uuid> = f
        .routes
        .reachable()
        .into_iter()
        .filter(|n| !f.bypass.contains(n) && !f.have.contains(n) && usable(n))
        .collect();
    let wanted: BTreeSet<Uuid> = candidates.intersection(f.wanted).cloned().collect();
    let fallback = wanted.is_empty();
    let targets = if fallback { candidates } else { wanted };

    let mut plan = Plan {
        fallback,
        ..Plan::default()
    };
    // Next hop → (nodes, gateways on their routes).
    let mut shares: BTreeMap<Uuid, (BTreeSet<Uuid>, BTreeSet<Uuid>)> = BTreeMap::new();
    for n in &targets {
        let Some(r) = f.routes.get(n) else { continue };
        match r.next_hop() {
            None => plan.local.push(LocalTarget {
                node: n.clone(),
                offset: f.offsets.get(n).copied().unwrap_or(0),
            }),
            Some(h) => {
                let share = shares.entry(h.clone()).or_default();
                share.0.insert(n.clone());
                share.1.extend(r.hops.iter().cloned());
            }
        }
    }
    let mut universe: BTreeSet<Uuid> = f.routes.known().clone();
    universe.extend(f.have.iter().cloned());
    universe.extend(f.wanted.iter().cloned());
    universe.extend(f.bypass.iter().cloned());
    universe.insert(me.clone());
    for (gateway, (nodes, gateways)) in shares {
        let bypass: Vec<Uuid> = universe
            .iter()
            .filter(|u| !nodes.contains(*u) && !gateways.contains(*u))
            .cloned()
            .collect();
        let hop = Hop {
            stock: f.routes.is_stock(&gateway),
            gateway,
            nodes: nodes.into_iter().collect(),
            bypass,
        };
        if bypass_fits(&hop.bypass) {
            plan.hops.push(hop);
        } else {
            plan.unsendable.push(hop);
        }
    }
    plan
}

/// The targets of a `PUT` without routes (the gateway's own nodes, each
/// "cluster via another gateway" counted as one node): of the candidates
/// lacking the key, those whose preferred content wants it (`wanted[i]`),
/// else every candidate (git-annex's `proxyPUT` fallback, annex-spec §4.6
/// step 1). Returns the chosen indices and whether it fell back.
pub fn direct_targets(wanted: &[bool]) -> (Vec<usize>, bool) {
    let chosen: Vec<usize> = (0..wanted.len()).filter(|&i| wanted[i]).collect();
    if chosen.is_empty() {
        ((0..wanted.len()).collect(), true)
    } else {
        (chosen, false)
    }
}

/// `PUT-FROM`: the smallest of the targets' offsets (local partials, remote
/// nodes' and hops' own `PUT-FROM`, 0 for targets written from the start);
/// 0 with no target.
pub fn put_from(offsets: impl IntoIterator<Item = u64>) -> u64 {
    offsets.into_iter().min().unwrap_or(0)
}

/// The `DATA` length a target resuming at `offset` is sent, when the client
/// sends content of `total` bytes in all (`PUT-FROM` + its `DATA` length).
pub fn data_len(total: u64, offset: u64) -> u64 {
    total.saturating_sub(offset)
}

/// What the gateway's own check of the incoming bytes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCheck {
    /// The gateway hashed the whole content: its verdict.
    Checked(Verdict),
    /// It should have (the stream started at 0) but hashing failed.
    Failed,
    /// The stream started past 0: the gateway never saw the prefix.
    FromOffset,
}

/// Whether remote nodes are sent `VALID` (else `INVALID`) after the bytes:
/// only if the gateway's check accepted them given the client's word; for a
/// stream it could not check, the client's word (the nodes check their own
/// prefix). Nodes below v1 are sent neither.
pub fn send_valid(check: &GatewayCheck, client: Validity) -> bool {
    match check {
        GatewayCheck::Checked(v) => v.accepted_given(client),
        GatewayCheck::Failed => false,
        GatewayCheck::FromOffset => client != Validity::Invalid,
    }
}

#[cfg(test)]
mod tests;
