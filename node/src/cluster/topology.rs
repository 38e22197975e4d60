//! The cluster topology on the mesh: this gateway's own line in
//! `annexmesh/topology.log` (what it serves, the nodes it reaches directly
//! and the gateways it links to, each with its cost and its name there),
//! written by `updatecluster` and gossiped like every log; and the routes a
//! gateway computes from everyone's lines ([`protocol::cluster::topology`]),
//! stock git-annex gateways included through their `proxy.log` lines.
//!
//! Liveness is per link: no route crosses the link from this gateway to a
//! member gateway its daemon sees disconnected (its `peers-seen` file), nor
//! a link between two gateways that one of them says, in its heartbeats, it
//! has lost (the `links` file, [`crate::health`]). So a gateway that
//! crashed is routed around once its neighbours say so, and one cut off
//! from one gateway only is still reached through the others.

use std::collections::BTreeSet;

use protocol::Uuid;
use protocol::cluster::topology::{self, Cost, Entry, Link, TOPOLOGY_LOG, Topology};
use protocol::logs::catalog::Catalog;
use protocol::logs::members::{Entry as Member, MEMBERS_LOG};

use crate::cluster::Cluster;
use crate::error::Result;
use crate::journal::{Journal, log_clock_now};
use crate::store::Store;

/// The files routes are computed from.
const FILES: [&str; 5] = [
    TOPOLOGY_LOG,
    "proxy.log",
    "cluster.log",
    "uuid.log",
    MEMBERS_LOG,
];

fn link(uuid: &Uuid, cost: crate::cluster::Cost, name: &str) -> Link {
    Link {
        to: uuid.clone(),
        cost: Cost::from_f64(cost.0).unwrap_or(Cost::ZERO),
        name: topology::legal_name(name).then(|| name.to_owned()),
    }
}

/// This gateway's line, from its configured clusters.
pub fn own_entry(clusters: &[Cluster]) -> Entry {
    let mut entry = Entry::default();
    for c in clusters {
        entry.clusters.push(c.uuid.clone());
        for n in &c.nodes {
            if !entry.nodes.iter().any(|l| l.to == n.uuid) {
                entry.nodes.push(link(&n.uuid, n.cost, &n.remote));
            }
        }
        for g in &c.gateways {
            if !entry.gateways.iter().any(|l| l.to == g.uuid) {
                entry.gateways.push(link(&g.uuid, g.cost, &g.remote));
            }
        }
    }
    entry.clusters.sort();
    entry.nodes.sort_by(|a, b| a.to.cmp(&b.to));
    entry.gateways.sort_by(|a, b| a.to.cmp(&b.to));
    entry
}

/// Records `entry` as `gateway`'s line unless the log already says exactly
/// that. Returns whether it wrote.
pub fn record_own(journal: &Journal, gateway: &Uuid, entry: &Entry) -> Result<bool> {
    let now = journal.read(TOPOLOGY_LOG)?;
    if topology::read(&now).get(gateway) == Some(entry) {
        return Ok(false);
    }
    journal.modify(TOPOLOGY_LOG, |old| {
        topology::record(old, gateway, entry, log_clock_now())
    })?;
    Ok(true)
}

/// Gateways that are mesh members this repository's daemon sees disconnected.
fn disconnected_members(store: &Store, catalog: &Catalog) -> BTreeSet<Uuid> {
    let seen = crate::keeper::read_seen(&crate::config::state_dir(store.repo()));
    let lines: Vec<String> = catalog
        .file(MEMBERS_LOG)
        .map(|f| f.lines().map(std::borrow::Cow::into_owned).collect())
        .unwrap_or_default();
    protocol::logs::members::entries(lines.iter().map(String::as_str))
        .into_iter()
        .filter_map(|(peer, e)| match e {
            Member::Member { uuid, .. } if seen.get(&peer).is_some_and(|s| !s.connected) => {
                Uuid::parse(&uuid).ok()
            }
            _ => None,
        })
        .collect()
}

/// The topology as this gateway knows it now.
pub fn topology(store: &Store) -> Result<(Topology, Catalog)> {
    let catalog = crate::branch::read_files(&store.repo().git_dir, &FILES)?;
    let content = catalog
        .file(TOPOLOGY_LOG)
        .map(|f| f.content())
        .unwrap_or_default();
    let mut topo = Topology::from_log(&content);
    let view = protocol::logs::view::View::new(&catalog);
    let clusters = view.clusters();
    topo.add_stock_gateways(&view.proxies(), &clusters);
    // A cluster's nodes: what cluster.log lists (its newest line, written by
    // whichever gateway updated last), and every node a gateway serving the
    // cluster states in its topology line, so one gateway's update does not
    // hide another's nodes until that one updates again.
    let lines = topology::read(&content);
    for (c, members) in &clusters {
        let Ok(c) = Uuid::parse(c) else { continue };
        let mut all: BTreeSet<Uuid> = members.iter().filter_map(|m| Uuid::parse(m).ok()).collect();
        for entry in lines.values().filter(|e| e.clusters.contains(&c)) {
            all.extend(entry.nodes.iter().map(|l| l.to.clone()));
        }
        topo.set_members(c, all);
    }
    for (u, d) in view.descriptions() {
        if let Ok(u) = Uuid::parse(&u) {
            topo.set_fallback_name(u, d);
        }
    }
    Ok((topo, catalog))
}

/// The routes from this gateway into `cluster`, routed around the links its
/// daemon knows are cut. `None` when the topology has no line of this gateway
/// (it has not run `updatecluster` since topology lines exist).
pub fn routes(store: &Store, cluster: &Uuid) -> Result<Option<topology::Routes>> {
    let (mut topo, catalog) = topology(store)?;
    let me = store.uuid().clone();
    for (a, b) in crate::health::read_cut_links(&crate::config::state_dir(store.repo())) {
        topo.cut(&a, &b);
    }
    if !topo.gateways().any(|g| *g == me) {
        return Ok(None);
    }
    for g in disconnected_members(store, &catalog) {
        topo.cut(&me, &g);
    }
    let alive: BTreeSet<Uuid> = topo.gateways().cloned().collect();
    Ok(Some(topo.routes(&me, cluster, &alive, &BTreeSet::new())))
}

#[cfg(test)]
mod tests;
