//! The cluster topology learned from gossip: `annexmesh/topology.log`, and the
//! cheapest path from one gateway to every node of a cluster.
//!
//! # The log
//!
//! `annexmesh/topology.log` is ours (stock git-annex ignores it). It is a
//! uuid-based log like git-annex's `uuid.log` (`Logs/UUIDBased.hs`, see
//! [`crate::logs::uuid_based`]): the newest line per gateway uuid wins. Each
//! gateway writes one line, about itself:
//!
//! ```text
//! <gw> cluster=<cu>[,<cu>…] nodes=<uuid>:<cost>[:<name>][,…] gateways=<uuid>:<cost>[:<name>][,…] timestamp=<secs>s
//! ```
//!
//! * `cluster=`: the clusters the gateway serves.
//! * `nodes=`: the nodes it reaches directly, each with the cost of that link
//!   and optionally the name it gives the node (its git remote name, as in its
//!   `proxy.log` line).
//! * `gateways=`: the gateways it links to, same shape; the name is its git
//!   remote name for that gateway.
//! * Costs are git-annex costs (`annex-cost`, e.g. `100`, `200.1`), kept as
//!   integer hundredths ([`Cost`]) so that sums are exact and every gateway
//!   compares paths identically. More than two decimals are refused.
//! * Fields may come in any order; unknown `key=value` fields are ignored (for
//!   later versions); a word without `=`, a malformed entry, an illegal name,
//!   or a field longer than [`MAX_ENTRIES`] rejects the whole line.
//!
//! # Routes
//!
//! git-annex has no hop-aware routing: a node behind a second gateway costs
//! the same as a direct one (annex-spec §4.3, §10.1 #1). Here a route's cost is
//! the sum of its links' costs; paths are found by Dijkstra over the alive
//! gateways' links, then one gateway→node link. Ties go to the fewest hops,
//! then to the lexicographically smallest gateway-uuid sequence, so every
//! gateway computes the same routes from the same facts, and a route's tail is
//! the route its next hop computes (the exactly-once rule of
//! [`super::plan`] relies on that).
//!
//! Stock git-annex gateways (a `proxy.log` line but no topology line) cannot be
//! told which nodes to serve: they honour `BYPASS` only for gateways and put
//! to all their own nodes. So a stock gateway is a *leaf*: routes end at it and
//! never cross it, and a node it reaches directly is reached only through it.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;

use crate::logs::{Clock, lines, uuid_based};
use crate::routing;
use crate::uuid::Uuid;

/// The branch file holding every gateway's topology line.
pub const TOPOLOGY_LOG: &str = "annexmesh/topology.log";

/// The most entries one field of a line may list.
pub const MAX_ENTRIES: usize = 4096;

/// The longest line accepted (a field of [`MAX_ENTRIES`] entries fits).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The largest cost accepted: about 10¹² in git-annex units.
const MAX_COST_HUNDREDTHS: u64 = 100_000_000_000_000;

/// A git-annex cost in integer hundredths (`200.1` is `Cost(20010)`). Sums
/// saturate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cost(u64);

impl Cost {
    pub const ZERO: Cost = Cost(0);

    pub fn from_hundredths(h: u64) -> Cost {
        Cost(h.min(MAX_COST_HUNDREDTHS))
    }

    pub fn hundredths(self) -> u64 {
        self.0
    }

    /// A float cost as git-annex keeps it, rounded to hundredths; `None` if
    /// negative or not finite.
    pub fn from_f64(c: f64) -> Option<Cost> {
        if !c.is_finite() || c < 0.0 {
            return None;
        }
        let h = (c * 100.0).round();
        if h >= MAX_COST_HUNDREDTHS as f64 {
            return Some(Cost(MAX_COST_HUNDREDTHS));
        }
        // In range and non-negative: the conversion is exact.
        Some(Cost(h as u64))
    }

    pub fn to_f64(self) -> f64 {
        self.0 as f64 / 100.0
    }

    pub fn saturating_add(self, other: Cost) -> Cost {
        Cost::from_hundredths(self.0.saturating_add(other.0))
    }

    /// `100`, `200.1`, `0.05`; at most two decimals, no sign, no exponent.
    pub fn parse(s: &str) -> Option<Cost> {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty() || whole.len() > 15 || frac.len() > 2 {
            return None;
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if s.contains('.') && frac.is_empty() {
            return None;
        }
        let w: u64 = whole.parse().ok()?;
        let f: u64 = match frac.len() {
            0 => 0,
            1 => frac.parse::<u64>().ok()? * 10,
            _ => frac.parse().ok()?,
        };
        let h = w.checked_mul(100)?.checked_add(f)?;
        (h <= MAX_COST_HUNDREDTHS).then_some(Cost(h))
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (w, h) = (self.0 / 100, self.0 % 100);
        match h {
            0 => write!(f, "{w}"),
            h if h % 10 == 0 => write!(f, "{w}.{}", h / 10),
            h => write!(f, "{w}.{h:02}"),
        }
    }
}

/// One link of a gateway: to a node or to another gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub to: Uuid,
    pub cost: Cost,
    /// The gateway's git remote name for it, if it states one.
    pub name: Option<String>,
}

/// One gateway's line: what it serves and what it links to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub clusters: Vec<Uuid>,
    pub nodes: Vec<Link>,
    pub gateways: Vec<Link>,
}

/// Why a topology line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("line too long")]
    TooLong,
    #[error("no gateway uuid or timestamp")]
    Shape,
    #[error("not a key=value field: {0:.40}")]
    NotAField(String),
    #[error("malformed entry: {0:.80}")]
    Entry(String),
    #[error("more than {MAX_ENTRIES} entries in one field")]
    TooMany,
}

/// Legal git remote names, as git-annex requires of `proxy.log` names.
pub fn legal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '/', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A uuid that can appear in a list field without ambiguity.
fn list_uuid(s: &str) -> Option<Uuid> {
    if s.contains([',', ':', '=']) {
        return None;
    }
    Uuid::parse(s).ok()
}

fn parse_list<T>(
    value: &str,
    item: impl Fn(&str) -> Option<T>,
    key: impl Fn(&T) -> &Uuid,
) -> Result<Vec<T>, TopologyError> {
    let mut out: Vec<T> = Vec::new();
    let mut seen: BTreeSet<Uuid> = BTreeSet::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        if out.len() >= MAX_ENTRIES {
            return Err(TopologyError::TooMany);
        }
        let t = item(part).ok_or_else(|| TopologyError::Entry(part.to_owned()))?;
        // A uuid listed twice: the first entry stands.
        if seen.insert(key(&t).clone()) {
            out.push(t);
        }
    }
    Ok(out)
}

fn parse_link(s: &str) -> Option<Link> {
    let mut it = s.splitn(3, ':');
    let to = list_uuid(it.next()?)?;
    let cost = Cost::parse(it.next()?)?;
    let name = match it.next() {
        None => None,
        Some(n) if legal_name(n) => Some(n.to_owned()),
        Some(_) => return None,
    };
    Some(Link { to, cost, name })
}

impl Entry {
    /// Parses the value of a line (between the gateway uuid and `timestamp=`).
    pub fn parse_value(value: &str) -> Result<Entry, TopologyError> {
        if value.len() > MAX_LINE_BYTES {
            return Err(TopologyError::TooLong);
        }
        let mut e = Entry::default();
        for word in value.split(' ').filter(|w| !w.is_empty()) {
            let Some((k, v)) = word.split_once('=') else {
                return Err(TopologyError::NotAField(word.to_owned()));
            };
            match k {
                "cluster" => e.clusters = parse_list(v, list_uuid, |u| u)?,
                "nodes" => e.nodes = parse_list(v, parse_link, |l| &l.to)?,
                "gateways" => e.gateways = parse_list(v, parse_link, |l| &l.to)?,
                _ => {}
            }
        }
        Ok(e)
    }

    /// Parses a whole line: the gateway, its entry and the line's clock.
    pub fn parse_line(line: &str) -> Result<(Uuid, Entry, Clock), TopologyError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(TopologyError::TooLong);
        }
        let l = uuid_based::Line::parse(line).ok_or(TopologyError::Shape)?;
        if !line.contains("timestamp=") {
            return Err(TopologyError::Shape);
        }
        let gw = list_uuid(&l.uuid).ok_or(TopologyError::Shape)?;
        Ok((gw, Entry::parse_value(&l.value)?, l.clock))
    }

    /// The value as written: `cluster=… nodes=… gateways=…`. Entries whose uuid
    /// would be ambiguous in a list (`,` `:` `=`) are left out, and so are
    /// illegal names (the link is kept without a name); lists are cut at
    /// [`MAX_ENTRIES`]. What is written parses back to what is kept.
    pub fn value(&self) -> String {
        let uuids = |us: &[Uuid]| -> String {
            us.iter()
                .filter(|u| list_uuid(u.as_str()).is_some())
                .take(MAX_ENTRIES)
                .map(Uuid::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        let links = |ls: &[Link]| -> String {
            ls.iter()
                .filter(|l| list_uuid(l.to.as_str()).is_some())
                .take(MAX_ENTRIES)
                .map(|l| match l.name.as_deref().filter(|n| legal_name(n)) {
                    Some(n) => format!("{}:{}:{n}", l.to, l.cost),
                    None => format!("{}:{}", l.to, l.cost),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "cluster={} nodes={} gateways={}",
            uuids(&self.clusters),
            links(&self.nodes),
            links(&self.gateways)
        )
    }
}

/// Every gateway's newest line. A gateway whose newest line does not parse
/// is left out (its older lines are stale facts, not a fallback).
pub fn read(content: &[u8]) -> BTreeMap<Uuid, Entry> {
    let mut newest: BTreeMap<Uuid, (Clock, Option<Entry>)> = BTreeMap::new();
    for line in lines(content) {
        // A newer garbage line must not let an older valid one win: compare
        // clocks of every line that has one.
        let Some(l) = uuid_based::Line::parse(line) else {
            continue;
        };
        let Some(gw) = list_uuid(&l.uuid) else {
            continue;
        };
        let parsed = Entry::parse_line(line).ok().map(|(_, e, _)| e);
        match newest.get(&gw) {
            Some((c, _)) if *c > l.clock => {}
            _ => {
                newest.insert(gw, (l.clock, parsed));
            }
        }
    }
    newest
        .into_iter()
        .filter_map(|(g, (_, e))| Some((g, e?)))
        .collect()
}

/// The log after `gateway` records `entry` at wall-clock second `now`.
pub fn record(content: &[u8], gateway: &Uuid, entry: &Entry, now: i64) -> Vec<u8> {
    uuid_based::record(content, gateway.as_str(), &entry.value(), now)
}

/// What is known of one gateway.
#[derive(Debug, Clone, Default)]
struct Gateway {
    clusters: BTreeSet<Uuid>,
    nodes: BTreeMap<Uuid, Cost>,
    links: BTreeMap<Uuid, Cost>,
    names: BTreeMap<Uuid, String>,
    stock: bool,
}

/// The graph of gateways and nodes.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    gateways: BTreeMap<Uuid, Gateway>,
    members: BTreeMap<Uuid, BTreeSet<Uuid>>,
    fallback_names: BTreeMap<Uuid, String>,
}

/// The single cheapest path from `me` to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub node: Uuid,
    /// The sum of the links' costs.
    pub cost: Cost,
    /// The gateways crossed, in order, without `me`; empty for a direct node.
    pub hops: Vec<Uuid>,
    /// git-annex's far-node name: `<next hop>-<…>-<node>`, each part being
    /// the previous gateway's name for the next (`me`'s `proxy.log` name).
    pub name: String,
}

impl Route {
    /// The gateway to hand the node to; `None` when `me` reaches it directly.
    pub fn next_hop(&self) -> Option<&Uuid> {
        self.hops.first()
    }

    /// The route as [`routing::rank`] takes it.
    pub fn ranked(&self, busy: u32) -> routing::Route {
        routing::Route {
            cost: self.cost.to_f64(),
            busy,
        }
    }
}

/// Every route from one gateway into one cluster.
#[derive(Debug, Clone)]
pub struct Routes {
    me: Uuid,
    routes: BTreeMap<Uuid, Route>,
    /// Every node and gateway of the cluster the topology knows, reachable or not.
    known: BTreeSet<Uuid>,
    stock: BTreeSet<Uuid>,
}

impl Routes {
    /// An empty route set (nothing reachable).
    pub fn none(me: Uuid) -> Routes {
        Routes {
            me,
            routes: BTreeMap::new(),
            known: BTreeSet::new(),
            stock: BTreeSet::new(),
        }
    }

    pub fn me(&self) -> &Uuid {
        &self.me
    }

    pub fn get(&self, node: &Uuid) -> Option<&Route> {
        self.routes.get(node)
    }

    /// The routes, by node uuid.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.values()
    }

    /// Every node reachable.
    pub fn reachable(&self) -> BTreeSet<Uuid> {
        self.routes.keys().cloned().collect()
    }

    /// Every node and gateway uuid known for the cluster, reachable or not.
    pub fn known(&self) -> &BTreeSet<Uuid> {
        &self.known
    }

    /// Whether `gateway` is a stock git-annex gateway (no topology line).
    pub fn is_stock(&self, gateway: &Uuid) -> bool {
        self.stock.contains(gateway)
    }

    /// `me`'s `proxy.log` entries for the nodes: `(uuid, name)`, by uuid.
    pub fn proxy_entries(&self) -> Vec<(Uuid, String)> {
        self.routes
            .values()
            .map(|r| (r.node.clone(), r.name.clone()))
            .collect()
    }

    /// The cluster's node set for `cluster.log`: every node reachable.
    pub fn cluster_nodes(&self) -> Vec<Uuid> {
        self.routes.keys().cloned().collect()
    }
}

/// Dijkstra's label: compared by cost, then hop count, then the sequence.
type Label = (Cost, usize, Vec<Uuid>);

impl Topology {
    pub fn new() -> Topology {
        Topology::default()
    }

    /// The topology from `annexmesh/topology.log` content.
    pub fn from_log(content: &[u8]) -> Topology {
        let mut t = Topology::new();
        for (gw, e) in read(content) {
            t.insert(gw, e);
        }
        t
    }

    /// Sets what `gateway` states about itself (replacing what was known).
    pub fn insert(&mut self, gateway: Uuid, entry: Entry) {
        let mut g = Gateway {
            clusters: entry.clusters.into_iter().collect(),
            ..Gateway::default()
        };
        for l in entry.nodes {
            if let Some(n) = l.name {
                g.names.insert(l.to.clone(), n);
            }
            g.nodes.insert(l.to, l.cost);
        }
        for l in entry.gateways {
            if let Some(n) = l.name {
                g.names.insert(l.to.clone(), n);
            }
            g.links.insert(l.to, l.cost);
        }
        g.links.remove(&gateway);
        self.gateways.insert(gateway, g);
    }

    /// Takes the link between gateways `a` and `b` out of the graph, both
    /// ways: one of them says it has lost its connection to the other, so
    /// no route goes over it until it is back.
    pub fn cut(&mut self, a: &Uuid, b: &Uuid) {
        for (from, to) in [(a, b), (b, a)] {
            if let Some(g) = self.gateways.get_mut(from) {
                g.links.remove(to);
            }
        }
    }

    /// Adds stock git-annex gateways from `proxy.log` and `cluster.log` as
    /// [`crate::logs::view::View::proxies`] and `clusters` read them: a
    /// gateway with a `proxy.log` line, serving a cluster (a cluster uuid in
    /// its line), and no topology line. Its entries that are members of that
    /// cluster are taken as its direct nodes, at git-annex's default cost for
    /// a far link ([`routing::FAR_LINK`]), named as it names them. It is linked
    /// from every gateway that lists it in `gateways=`, back at the same cost.
    pub fn add_stock_gateways(
        &mut self,
        proxies: &BTreeMap<String, Vec<(String, String)>>,
        clusters: &BTreeMap<String, Vec<String>>,
    ) {
        let far = Cost::from_f64(routing::FAR_LINK).unwrap_or(Cost::ZERO);
        for (gw, entries) in proxies {
            let Some(gw) = list_uuid(gw) else { continue };
            if self.gateways.contains_key(&gw) {
                continue;
            }
            let mut g = Gateway {
                stock: true,
                ..Gateway::default()
            };
            for (u, _) in entries {
                if clusters.contains_key(u)
                    && let Some(c) = list_uuid(u)
                {
                    g.clusters.insert(c);
                }
            }
            if g.clusters.is_empty() {
                continue;
            }
            for (u, name) in entries.iter().take(MAX_ENTRIES) {
                let Some(n) = list_uuid(u) else { continue };
                let member = g
                    .clusters
                    .iter()
                    .any(|c| clusters.get(c.as_str()).is_some_and(|m| m.contains(u)));
                if member && !n.is_cluster() {
                    g.nodes.insert(n.clone(), far);
                    g.names.insert(n, name.clone());
                }
            }
            for (other, o) in &self.gateways {
                if let Some(c) = o.links.get(&gw) {
                    g.links.insert(other.clone(), *c);
                }
            }
            self.gateways.insert(gw, g);
        }
    }

    /// Restricts a cluster's nodes to `members` (its `cluster.log` set, as
    /// [`crate::logs::view::View::clusters`] reads it, dead nodes removed).
    /// Without this, every node a gateway of the cluster lists belongs to it.
    pub fn set_members(&mut self, cluster: Uuid, members: impl IntoIterator<Item = Uuid>) {
        self.members.insert(cluster, members.into_iter().collect());
    }

    /// Names used when no gateway states one (e.g. `uuid.log` descriptions,
    /// or the names in `proxy.log`); the uuid itself is the last resort.
    pub fn set_fallback_name(&mut self, uuid: Uuid, name: String) {
        if legal_name(&name) {
            self.fallback_names.insert(uuid, name);
        }
    }

    /// Sets `from`'s name for `to` (e.g. this gateway's git remote names),
    /// over what the topology states; `from` must be a known gateway and
    /// the name legal.
    pub fn set_name(&mut self, from: &Uuid, to: Uuid, name: String) {
        if let Some(g) = self.gateways.get_mut(from)
            && legal_name(&name)
        {
            g.names.insert(to, name);
        }
    }

    /// Every gateway known, stock ones included.
    pub fn gateways(&self) -> impl Iterator<Item = &Uuid> {
        self.gateways.keys()
    }

    /// The nodes `gateway` reaches directly, with each link's cost.
    pub fn direct_nodes(&self, gateway: &Uuid) -> Vec<(Uuid, Cost)> {
        self.gateways
            .get(gateway)
            .map(|g| g.nodes.iter().map(|(n, c)| (n.clone(), *c)).collect())
            .unwrap_or_default()
    }

    /// The gateways `gateway` links to, with each link's cost.
    pub fn links(&self, gateway: &Uuid) -> Vec<(Uuid, Cost)> {
        self.gateways
            .get(gateway)
            .map(|g| g.links.iter().map(|(n, c)| (n.clone(), *c)).collect())
            .unwrap_or_default()
    }

    /// `from`'s name for `to` (a node or a gateway).
    pub fn name(&self, from: &Uuid, to: &Uuid) -> String {
        self.gateways
            .get(from)
            .and_then(|g| g.names.get(to))
            .or_else(|| self.fallback_names.get(to))
            .cloned()
            .unwrap_or_else(|| to.to_string())
    }

    fn serves(&self, gw: &Gateway, cluster: &Uuid) -> bool {
        gw.clusters.contains(cluster)
    }

    fn member(&self, cluster: &Uuid, node: &Uuid) -> bool {
        self.members.get(cluster).is_none_or(|m| m.contains(node))
    }

    /// The nodes an alive stock gateway of `cluster` reaches directly: reached
    /// only through it, since it puts to them whatever `BYPASS` says.
    fn owned_by_stock(&self, cluster: &Uuid, alive: &BTreeSet<Uuid>) -> BTreeMap<&Uuid, &Uuid> {
        let mut owned = BTreeMap::new();
        for (u, g) in &self.gateways {
            if g.stock && self.serves(g, cluster) && alive.contains(u) {
                for n in g.nodes.keys() {
                    owned.entry(n).or_insert(u);
                }
            }
        }
        owned
    }

    /// The cheapest path to every gateway of `cluster` from `me`, through
    /// gateways that are in `alive`, not in `bypass`, and serve the cluster.
    /// Stock gateways are entered but not crossed.
    fn gateway_paths(
        &self,
        me: &Uuid,
        cluster: &Uuid,
        usable: &dyn Fn(&Uuid) -> bool,
    ) -> BTreeMap<Uuid, Label> {
        let mut done: BTreeMap<Uuid, Label> = BTreeMap::new();
        let mut heap: BinaryHeap<std::cmp::Reverse<(Label, Uuid)>> = BinaryHeap::new();
        heap.push(std::cmp::Reverse(((Cost::ZERO, 0, Vec::new()), me.clone())));
        while let Some(std::cmp::Reverse((label, at))) = heap.pop() {
            if done.contains_key(&at) {
                continue;
            }
            done.insert(at.clone(), label.clone());
            let Some(g) = self.gateways.get(&at) else {
                continue;
            };
            if g.stock && at != *me {
                continue;
            }
            for (to, c) in &g.links {
                if done.contains_key(to) || to == me || !usable(to) {
                    continue;
                }
                let Some(tg) = self.gateways.get(to) else {
                    continue;
                };
                if !self.serves(tg, cluster) {
                    continue;
                }
                let mut path = label.2.clone();
                path.push(to.clone());
                let next = (label.0.saturating_add(*c), label.1 + 1, path);
                heap.push(std::cmp::Reverse((next, to.clone())));
            }
        }
        done
    }

    /// The cheapest route from `me` to every node of `cluster` (see the module
    /// docs), through gateways in `alive` and not in `bypass` (`me` is always
    /// usable). Nodes in `bypass` are still routed: the planner skips them.
    pub fn routes(
        &self,
        me: &Uuid,
        cluster: &Uuid,
        alive: &BTreeSet<Uuid>,
        bypass: &BTreeSet<Uuid>,
    ) -> Routes {
        let usable = |g: &Uuid| alive.contains(g) && !bypass.contains(g);
        let paths = self.gateway_paths(me, cluster, &usable);
        let owned = self.owned_by_stock(cluster, alive);
        let mut best: BTreeMap<Uuid, Label> = BTreeMap::new();
        for (gw, label) in &paths {
            let Some(g) = self.gateways.get(gw) else {
                continue;
            };
            for (n, c) in &g.nodes {
                if self.gateways.contains_key(n) || !self.member(cluster, n) || n == me {
                    continue;
                }
                if owned.get(n).is_some_and(|o| *o != gw) {
                    continue;
                }
                let cand = (label.0.saturating_add(*c), label.1, label.2.clone());
                if best.get(n).is_none_or(|b| cand < *b) {
                    best.insert(n.clone(), cand);
                }
            }
        }
        let routes = best
            .into_iter()
            .map(|(node, (cost, _, hops))| {
                let name = self.display_name(me, &hops, &node);
                let r = Route {
                    node: node.clone(),
                    cost,
                    hops,
                    name,
                };
                (node, r)
            })
            .collect();
        Routes {
            me: me.clone(),
            routes,
            known: self.known(cluster),
            stock: self
                .gateways
                .iter()
                .filter(|(_, g)| g.stock)
                .map(|(u, _)| u.clone())
                .collect(),
        }
    }

    /// Every node and gateway of `cluster` the topology names.
    fn known(&self, cluster: &Uuid) -> BTreeSet<Uuid> {
        let mut known = BTreeSet::new();
        for (u, g) in &self.gateways {
            if !self.serves(g, cluster) {
                continue;
            }
            known.insert(u.clone());
            known.extend(
                g.nodes
                    .keys()
                    .filter(|n| self.member(cluster, n) && !self.gateways.contains_key(*n))
                    .cloned(),
            );
        }
        known
    }

    fn display_name(&self, me: &Uuid, hops: &[Uuid], node: &Uuid) -> String {
        let mut parts = Vec::with_capacity(hops.len() + 1);
        let mut from = me;
        for h in hops {
            parts.push(self.name(from, h));
            from = h;
        }
        parts.push(self.name(from, node));
        parts.join("-")
    }
}

#[cfg(test)]
mod tests;
