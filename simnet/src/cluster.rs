//! Cluster scenarios: real gateways and mesh nodes of one cluster on the
//! simulated links, set up as `annexmesh` sets them up (git config of each
//! gateway: the cluster, one remote per node, one per linked gateway; then
//! `updatecluster`), their metadata shared by real [`Meta`] services that
//! persist into each repository's branch, so routes come from the gossiped
//! topology. Shared by the tests (small topologies) and the benchmark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::mesh::BranchPersist;
use node::meta::{Allowed, Meta, MetaOptions};
use protocol::Uuid;

use crate::{Error, Result, Sim};

/// The shape of the gateway graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Line,
    Ring,
    Star,
    FullMesh,
}

impl Shape {
    /// The undirected links between `n` gateways.
    pub fn links(self, n: usize) -> Vec<(usize, usize)> {
        match self {
            Shape::Line => (1..n).map(|i| (i - 1, i)).collect(),
            Shape::Ring if n > 2 => (0..n).map(|i| (i, (i + 1) % n)).collect(),
            Shape::Ring => Shape::Line.links(n),
            Shape::Star => (1..n).map(|i| (0, i)).collect(),
            Shape::FullMesh => (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .collect(),
        }
    }
}

/// A cluster on the simulation: gateways `g0…`, each with nodes `g<i>n<j>`.
pub struct ClusterSim {
    pub cluster: Uuid,
    pub gateways: Vec<String>,
    /// Each gateway's nodes.
    pub nodes: BTreeMap<String, Vec<String>>,
    pub metas: BTreeMap<String, Arc<Meta>>,
    /// Each gateway's health service (heartbeats, the links it has lost).
    health: BTreeMap<String, Arc<node::health::Health>>,
    members: BTreeMap<String, Arc<node::members::Members>>,
    /// The membership and addresses logs every gateway starts with.
    members_log: Vec<u8>,
    addresses_log: Vec<u8>,
}

fn git_config(dir: &std::path::Path, key: &str, value: &str) -> Result<()> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(dir)
        .args(["config", key, value])
        .output()?;
    if !out.status.success() {
        return Err(Error::Node(node::Error::Git(format!(
            "git config {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))));
    }
    Ok(())
}

impl ClusterSim {
    /// Builds `gateways` gateways linked as `shape`, `per_gateway` mesh nodes
    /// each, runs `updatecluster` on every gateway and waits until every
    /// gateway routes to every node (at most `limit`).
    pub async fn build(
        sim: &mut Sim,
        shape: Shape,
        gateways: usize,
        per_gateway: usize,
        limit: Duration,
    ) -> Result<ClusterSim> {
        let cluster = Uuid::new_cluster(sim.rng().bytes::<16>());
        let names: Vec<String> = (0..gateways).map(|i| format!("g{i}")).collect();
        let mut nodes = BTreeMap::new();
        for g in &names {
            sim.add_peer(g).await?;
            let mine: Vec<String> = (0..per_gateway).map(|j| format!("{g}n{j}")).collect();
            for n in &mine {
                sim.add_peer(n).await?;
            }
            nodes.insert(g.clone(), mine);
        }
        // Restarted once all exist, so that every peer grants every other
        // (a peer grants the nodes that exist when it starts), as mesh
        // members reach each other without a grant.
        for g in &names {
            for n in std::iter::once(g).chain(&nodes[g]) {
                sim.crash(n).await?;
                sim.restart(n).await?;
            }
        }
        let links = shape.links(gateways);
        for (i, g) in names.iter().enumerate() {
            let dir = sim.store(g)?.repo().git_dir.clone();
            git_config(&dir, "annex.cluster.c", cluster.as_str())?;
            let remote = |r: &str, addr: &libp2p::Multiaddr, uuid: &Uuid| -> Result<()> {
                git_config(
                    &dir,
                    &format!("remote.{r}.url"),
                    &format!("p2p-annex::libp2p:{addr}"),
                )?;
                git_config(&dir, &format!("remote.{r}.annex-uuid"), uuid.as_str())
            };
            for n in &nodes[g] {
                remote(n, &sim.addr(n)?, &sim.uuid(n)?)?;
                git_config(&dir, &format!("remote.{n}.annex-cluster-node"), "c")?;
            }
            for &(a, b) in &links {
                let other = match (a == i, b == i) {
                    (true, _) => b,
                    (_, true) => a,
                    _ => continue,
                };
                let o = &names[other];
                remote(o, &sim.addr(o)?, &sim.uuid(o)?)?;
                git_config(
                    &dir,
                    &format!("remote.{o}.annex-cluster-gateway"),
                    cluster.as_str(),
                )?;
            }
        }
        let (members_log, addresses_log) = membership(sim, &names)?;
        for &(a, b) in &links {
            let addr = sim.addr(&names[b])?;
            sim.net(&names[a])?.dial(&addr).await?;
        }
        let mut c = ClusterSim {
            cluster,
            gateways: names,
            nodes,
            metas: BTreeMap::new(),
            health: BTreeMap::new(),
            members: BTreeMap::new(),
            members_log,
            addresses_log,
        };
        for g in c.gateways.clone() {
            c.start_services(sim, &g).await?;
        }
        for g in &c.gateways {
            c.update(sim, g).await?;
        }
        c.wait_routed(sim, limit).await?;
        // Once more, now that every line is everywhere: far nodes in proxy.log.
        for g in &c.gateways {
            c.update(sim, g).await?;
        }
        Ok(c)
    }

    /// Starts gateway `g`'s services as its daemon runs them: `Meta`
    /// persisting into its branch, the journal watcher (what its sessions
    /// write is gossiped), the member keeper (the gateways are members of
    /// one mesh, kept connected; whom it reaches is what routing takes as
    /// liveness) and the health service (heartbeats naming the members it
    /// has lost, so the others route around a cut link).
    async fn start_services(&mut self, sim: &Sim, g: &str) -> Result<()> {
        use protocol::logs::members::MEMBERS_LOG;
        use protocol::logs::view::ADDRESSES_LOG;
        let store = sim.store(g)?;
        let git_dir = store.repo().git_dir.clone();
        for (path, content) in [
            (MEMBERS_LOG, &self.members_log),
            (ADDRESSES_LOG, &self.addresses_log),
        ] {
            store.journal().modify(path, |old| {
                node::branch::merge_file(path, &[old, content.as_slice()])
            })?;
        }
        let meta = Meta::start(
            sim.net(g)?,
            node::branch::read(&git_dir)?,
            MetaOptions {
                allowed: Allowed::Any,
                sync_interval: Duration::from_secs(2),
                persist_interval: Duration::from_millis(200),
            },
            Some(Arc::new(BranchPersist {
                git_dir: git_dir.clone(),
            })),
        )
        .await?;
        for path in [MEMBERS_LOG, ADDRESSES_LOG] {
            meta.record_local(path, &store.journal().read(path)?);
        }
        let watcher = node::watch::Watcher::new(&git_dir)?;
        tokio::spawn(node::mesh::watch(
            watcher,
            Arc::downgrade(&meta),
            Arc::new(tokio::sync::Notify::new()),
        ));
        let members = Arc::new(node::members::Members::new(
            sim.peer_id(g)?,
            Default::default(),
        ));
        let lines = String::from_utf8_lossy(&self.members_log).into_owned();
        members.update(lines.lines());
        tokio::spawn(node::keeper::keep(
            sim.net(g)?,
            members.clone(),
            Arc::downgrade(&meta),
            node::config::state_dir(store.repo()),
        ));
        let health = node::health::Health::start(
            sim.net(g)?,
            store,
            members.clone(),
            protocol::replication::MonitorConfig::default(),
        )
        .await?;
        self.metas.insert(g.to_owned(), meta);
        self.health.insert(g.to_owned(), health);
        self.members.insert(g.to_owned(), members);
        Ok(())
    }

    /// Makes the nodes members too, running a daemon's services as the
    /// gateways do, so that they publish heartbeats with their free space
    /// (what the repairer's allocator needs before it places a copy).
    pub async fn start_node_services(&mut self, sim: &Sim) -> Result<()> {
        use protocol::logs::members::MEMBERS_LOG;
        use protocol::logs::view::ADDRESSES_LOG;
        let everyone: Vec<String> = self
            .gateways
            .iter()
            .cloned()
            .chain(self.all_nodes())
            .collect();
        let (members_log, addresses_log) = membership(sim, &everyone)?;
        self.members_log = members_log;
        self.addresses_log = addresses_log;
        let lines = String::from_utf8_lossy(&self.members_log).into_owned();
        for g in &self.gateways {
            let store = sim.store(g)?;
            for (path, content) in [
                (MEMBERS_LOG, &self.members_log),
                (ADDRESSES_LOG, &self.addresses_log),
            ] {
                let merged = store.journal().modify(path, |old| {
                    node::branch::merge_file(path, &[old, content.as_slice()])
                })?;
                self.metas[g].record_local(path, &merged);
            }
            self.members[g].update(lines.lines());
        }
        for n in self.all_nodes() {
            self.start_services(sim, &n).await?;
        }
        Ok(())
    }

    /// Starts every gateway's repairer (`node::cluster::repair`), as a
    /// gateway daemon runs it.
    pub fn start_repairers(
        &self,
        sim: &Sim,
        config: protocol::replication::repair::RepairConfig,
    ) -> Result<()> {
        for g in &self.gateways {
            tokio::spawn(node::cluster::repair::run(
                sim.store(g)?,
                Arc::downgrade(&self.metas[g]),
                Arc::downgrade(&self.health[g]),
                config,
            ));
        }
        Ok(())
    }

    /// Sets the cluster's replication policy at gateway `g` (as `annexmesh
    /// replication` does there), gossiped from it.
    pub fn set_replication(
        &self,
        sim: &Sim,
        g: &str,
        rule: &protocol::replication::Rule,
    ) -> Result<()> {
        use protocol::replication::REPLICATION_LOG;
        use protocol::replication::policy::record_cluster;
        let store = sim.store(g)?;
        let content = store.journal().modify(REPLICATION_LOG, |old| {
            record_cluster(old, &self.cluster, rule, node::journal::log_clock_now())
        })?;
        self.metas[g].record_local(REPLICATION_LOG, &content);
        Ok(())
    }

    /// Crashes gateway `g` (its swarm, sessions and services end; its
    /// repository stays).
    pub async fn crash_gateway(&mut self, sim: &mut Sim, g: &str) -> Result<()> {
        self.metas.remove(g);
        self.health.remove(g);
        sim.crash(g).await?;
        Ok(())
    }

    /// Starts crashed gateway `g` again, at its address, with its services.
    pub async fn restart_gateway(&mut self, sim: &mut Sim, g: &str) -> Result<()> {
        sim.restart(g).await?;
        self.start_services(sim, g).await
    }

    /// Adds mesh node `name` to gateway `g` (a new peer, a remote of `g`) and
    /// runs `updatecluster` there.
    pub async fn add_node(&mut self, sim: &mut Sim, g: &str, name: &str) -> Result<Uuid> {
        sim.add_peer(name).await?;
        let dir = sim.store(g)?.repo().git_dir.clone();
        let addr = sim.addr(name)?;
        let uuid = sim.uuid(name)?;
        git_config(
            &dir,
            &format!("remote.{name}.url"),
            &format!("p2p-annex::libp2p:{addr}"),
        )?;
        git_config(&dir, &format!("remote.{name}.annex-uuid"), uuid.as_str())?;
        git_config(&dir, &format!("remote.{name}.annex-cluster-node"), "c")?;
        if let Some(list) = self.nodes.get_mut(g) {
            list.push(name.to_owned());
        }
        self.update(sim, g).await?;
        Ok(uuid)
    }

    /// Whether gateway `g` routes to `node` now.
    pub fn routes_to(&self, sim: &Sim, g: &str, node: &Uuid) -> Result<bool> {
        Ok(node::topology::routes(&sim.store(g)?, &self.cluster)?
            .is_some_and(|r| r.get(node).is_some()))
    }

    /// Whether gateway `g`'s routes avoid gateway `via` (and still reach
    /// something).
    pub fn routes_avoid(&self, sim: &Sim, g: &str, via: &Uuid) -> Result<bool> {
        Ok(node::topology::routes(&sim.store(g)?, &self.cluster)?
            .is_some_and(|r| r.iter().all(|route| !route.hops.contains(via))))
    }

    /// `updatecluster` on gateway `g`, and its changes gossiped.
    pub async fn update(&self, sim: &Sim, g: &str) -> Result<()> {
        let store = sim.store(g)?;
        let top = store.repo().top.clone();
        tokio::task::spawn_blocking(move || node::cluster::update_clusters(&top))
            .await
            .map_err(|e| Error::Node(node::Error::Protocol(e.to_string())))??;
        let meta = &self.metas[g];
        for path in [protocol::cluster::TOPOLOGY_LOG, "proxy.log", "cluster.log"] {
            meta.record_local(path, &store.journal().read(path)?);
        }
        Ok(())
    }

    /// Every node of the cluster.
    pub fn all_nodes(&self) -> Vec<String> {
        self.nodes.values().flatten().cloned().collect()
    }

    /// How many nodes gateway `g` routes to now.
    pub fn routed_from(&self, sim: &Sim, g: &str) -> Result<usize> {
        let store = sim.store(g)?;
        Ok(node::topology::routes(&store, &self.cluster)?.map_or(0, |r| r.reachable().len()))
    }

    /// Waits until every gateway routes to every node; returns how long.
    pub async fn wait_routed(&self, sim: &Sim, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let want = self.all_nodes().len();
        loop {
            let mut all = true;
            for g in &self.gateways {
                all &= self.routed_from(sim, g)? == want;
            }
            if all {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: "every gateway routing to every node".into(),
                    after: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uploads begun on each node so far.
    pub fn uploads(&self, sim: &Sim) -> Result<BTreeMap<String, u64>> {
        self.all_nodes()
            .into_iter()
            .map(|n| Ok((n.clone(), sim.store(&n)?.uploads_begun())))
            .collect()
    }
}

/// The gateways are members of one mesh, as daemons joined by invitations
/// are: the membership and addresses logs that list every gateway.
fn membership(sim: &Sim, names: &[String]) -> Result<(Vec<u8>, Vec<u8>)> {
    use protocol::logs::catalog::record_map;
    use protocol::logs::members::Entry;
    let mut members_log = Vec::new();
    let mut addresses_log = Vec::new();
    for g in names {
        let entry = Entry::Member {
            uuid: sim.uuid(g)?.to_string(),
            role: protocol::server::ServeMode::ReadWrite,
        };
        members_log = record_map(
            &members_log,
            &sim.peer_id(g)?.to_string(),
            &entry.value(),
            1,
        );
        addresses_log = record_map(
            &addresses_log,
            sim.uuid(g)?.as_str(),
            &sim.addr(g)?.to_string(),
            1,
        );
    }
    Ok((members_log, addresses_log))
}
