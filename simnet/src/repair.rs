//! Repair under seeded random failures (issue 10), shared by the test (a
//! few hundred keys) and the benchmark (100 000): one gateway and its mesh
//! nodes, all members running a daemon's services, the gateway's repairer
//! keeping a `min` = `max` replication. Keys are seeded straight into the
//! nodes' stores (as if `PUT` earlier), `min` copies each on nodes drawn
//! from the simulation's seed, and their location logs reach the gateway by
//! the nodes' own gossip. Then, round after round, a node drawn from the
//! seed crashes: the repairer must bring every key it held back to `min` on
//! the live nodes; the node then comes back (its copies now over `max`) and
//! the repairer must trim them, never below `min`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::Key;
use protocol::replication::{RepairConfig, Rule};

use crate::cluster::{ClusterSim, Shape};
use crate::{Error, Result, Sim};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub nodes: usize,
    pub keys: usize,
    /// Each key's size in bytes.
    pub size: usize,
    /// `min` = `max`.
    pub copies: u32,
    pub rounds: usize,
    /// The bound on each wait (back at min, trimmed).
    pub limit: Duration,
}

/// One failure and its repair.
#[derive(Debug, Clone)]
pub struct Round {
    pub node: String,
    /// Keys the crashed node held.
    pub held: usize,
    /// Crash until every key is at `min` on live nodes.
    pub back_at_min: Duration,
    /// Uploads begun on the nodes meanwhile (the copies made).
    pub copies: u64,
    /// The node back until no key is over `max`.
    pub trimmed: Duration,
    /// The fewest copies of any key seen on disk, live nodes or not,
    /// while the trims ran.
    pub fewest_during_trim: usize,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Report {
    pub seeded_in: Duration,
    /// Seeded until the gateway's branch knows every key's holders.
    pub known_in: Duration,
    pub rounds: Vec<Round>,
}

/// A key for `data` (SHA256E, as git-annex makes them).
fn key_of(data: &[u8]) -> Result<Key> {
    let mut h = protocol::verify::Hash::Sha256.hasher();
    h.update(data);
    Key::from_hash("SHA256E", data.len() as u64, &h.finish_hex(), "")
        .map_err(|e| Error::Node(node::Error::Protocol(e.to_string())))
}

/// How many of `nodes` hold each key.
fn copies(sim: &Sim, nodes: &[String], keys: &[Key]) -> Result<Vec<usize>> {
    let stores = nodes
        .iter()
        .map(|n| sim.store(n))
        .collect::<Result<Vec<_>>>()?;
    Ok(keys
        .iter()
        .map(|k| stores.iter().filter(|s| s.contains(k)).count())
        .collect())
}

fn uploads(sim: &Sim, nodes: &[String]) -> Result<u64> {
    nodes
        .iter()
        .map(|n| Ok(sim.store(n)?.uploads_begun()))
        .sum()
}

/// Waits (at most `limit`) until `done` holds, polling every 200 ms.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > limit {
            return Err(Error::Timeout {
                what: what.into(),
                after: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Stores `keys` keys straight into the nodes (object files, and one
/// commit of their location logs to each node's branch, as a `PUT` long
/// ago would have left them), `copies` each on distinct nodes drawn from
/// the seed. Before the nodes' services start: their metadata
/// service then reads the branch and spreads it.
fn seed(sim: &mut Sim, nodes: &[String], s: &Scenario) -> Result<Vec<Key>> {
    let stores = nodes
        .iter()
        .map(|n| sim.store(n))
        .collect::<Result<Vec<_>>>()?;
    let mut logs: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); nodes.len()];
    let mut keys = Vec::with_capacity(s.keys);
    for i in 0..s.keys {
        let mut data = sim.rng().vec(s.size.max(16));
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let key = key_of(&data)?;
        let mut holders: Vec<usize> = Vec::new();
        while holders.len() < (s.copies as usize).min(nodes.len()) {
            let n = sim.rng().below(nodes.len() as u64) as usize;
            if !holders.contains(&n) {
                holders.push(n);
            }
        }
        for n in holders {
            let [path, _] = stores[n].object_paths(&key);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, &data)?;
            let line = format!("1700000000s 1 {}\n", stores[n].uuid());
            logs[n].push((
                protocol::logs::presence::location_log_path(&key),
                line.into_bytes(),
            ));
        }
        keys.push(key);
    }
    for (store, files) in stores.iter().zip(&logs) {
        node::branch::commit_catalog_files(&store.repo().git_dir, files, "seeded")?;
    }
    Ok(keys)
}

/// Whether the gateway's metadata says every key has `copies` holders.
fn known(c: &ClusterSim, g: &str, keys: &[Key], copies: usize) -> bool {
    let Some(meta) = c.metas.get(g) else {
        return false;
    };
    keys.iter().all(|k| {
        let lines = meta.file_lines(&protocol::logs::presence::location_log_path(k));
        let present = lines
            .iter()
            .filter(|l| l.split_whitespace().nth(1) == Some("1"))
            .count();
        present >= copies
    })
}

/// Runs the scenario on `sim`.
pub async fn run(sim: &mut Sim, s: Scenario) -> Result<Report> {
    let mut c = ClusterSim::build(sim, Shape::Line, 1, s.nodes, s.limit).await?;
    let g = c.gateways[0].clone();
    let nodes = c.all_nodes();
    let start = Instant::now();
    let keys = seed(sim, &nodes, &s)?;
    let seeded_in = start.elapsed();
    c.start_node_services(sim).await?;
    let rule = Rule {
        min: Some(s.copies),
        max: Some(s.copies),
        grace: Some(3),
    };
    c.set_replication(sim, &g, &rule)?;
    let want = s.copies as usize;
    until("the gateway to know every key", s.limit, || {
        Ok(known(&c, &g, &keys, want))
    })
    .await?;
    let known_in = start.elapsed();
    c.start_repairers(
        sim,
        RepairConfig {
            suspect_after_ms: 3_000,
            retry_base_ms: 500,
            retry_max_ms: 2_000,
            settle_ms: 1_000,
            ..Default::default()
        },
    )?;
    let mut rounds = Vec::new();
    for _ in 0..s.rounds {
        rounds.push(round(sim, &mut c, &nodes, &keys, &s).await?);
    }
    Ok(Report {
        seeded_in,
        known_in,
        rounds,
    })
}

async fn round(
    sim: &mut Sim,
    c: &mut ClusterSim,
    nodes: &[String],
    keys: &[Key],
    s: &Scenario,
) -> Result<Round> {
    let want = s.copies as usize;
    let victim = nodes[sim.rng().below(nodes.len() as u64) as usize].clone();
    let live: Vec<String> = nodes.iter().filter(|n| **n != victim).cloned().collect();
    let store = sim.store(&victim)?;
    let held = keys.iter().filter(|k| store.contains(k)).count();
    let before = uploads(sim, &live)?;
    let crashed = Instant::now();
    c.crash_gateway(sim, &victim).await?;
    until("every key back at min on the live nodes", s.limit, || {
        Ok(copies(sim, &live, keys)?.iter().all(|&n| n >= want))
    })
    .await?;
    let back_at_min = crashed.elapsed();
    let made = uploads(sim, &live)? - before;
    c.restart_gateway(sim, &victim).await?;
    let back = Instant::now();
    let mut fewest = usize::MAX;
    until("the copies over max trimmed", s.limit, || {
        let now = copies(sim, nodes, keys)?;
        fewest = fewest.min(now.iter().copied().min().unwrap_or(0));
        Ok(now.iter().all(|&n| n <= want))
    })
    .await?;
    Ok(Round {
        node: victim,
        held,
        back_at_min,
        copies: made,
        trimmed: back.elapsed(),
        fewest_during_trim: fewest,
    })
}

/// Copies made per round beyond the keys the crashed node held (each
/// needed exactly one), for the report.
pub fn needless(rounds: &[Round]) -> BTreeMap<String, i64> {
    rounds
        .iter()
        .map(|r| (r.node.clone(), r.copies as i64 - r.held as i64))
        .collect()
}
