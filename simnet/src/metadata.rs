//! Metadata scenarios: a [`Meta`] (gossip + anti-entropy) on every peer of a
//! [`Sim`], and measurements of how fast changes spread. Shared by the tests
//! (small sizes) and the `metadata` benchmark (the sizes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::meta::{Allowed, Meta, MetaOptions};
use protocol::logs::catalog::Catalog;

use crate::{Result, Sim};

/// The simulation's peers with a metadata service each, by name.
pub struct MetaMesh {
    pub metas: HashMap<String, Arc<Meta>>,
    pub names: Vec<String>,
}

/// How often each peer runs anti-entropy in these scenarios.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);

impl MetaMesh {
    /// Adds `n` peers named `p0`…, starts a metadata service on each (all
    /// peers trusted, nothing persisted), and connects each to the next one
    /// (a ring) plus `extra` seeded random others.
    pub async fn build(sim: &mut Sim, n: usize, extra: usize) -> Result<MetaMesh> {
        let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        for name in &names {
            sim.add_peer(name).await?;
        }
        let mut metas = HashMap::new();
        for name in &names {
            metas.insert(name.clone(), start_meta(sim, name, Catalog::new()).await?);
        }
        for (i, name) in names.iter().enumerate() {
            let mut targets = vec![(i + 1) % n];
            for _ in 0..extra {
                targets.push(sim.rng().below(n as u64) as usize);
            }
            for t in targets {
                if t != i {
                    let addr = sim.addr(&names[t])?;
                    sim.net(name)?.dial(&addr).await?;
                }
            }
        }
        Ok(MetaMesh { metas, names })
    }

    pub fn meta(&self, name: &str) -> &Arc<Meta> {
        &self.metas[name]
    }
}

/// Starts a metadata service on a simulation peer's swarm.
pub async fn start_meta(sim: &Sim, name: &str, catalog: Catalog) -> Result<Arc<Meta>> {
    Ok(Meta::start(
        sim.net(name)?,
        catalog,
        MetaOptions {
            allowed: Allowed::Any,
            sync_interval: SYNC_INTERVAL,
            ..MetaOptions::default()
        },
        None,
    )
    .await?)
}

/// A location-log path and line for change number `i` made by `who`.
pub fn change(who: &str, i: usize) -> (String, String) {
    (
        format!(
            "{:03x}/{:03x}/SHA256E-s{i}--{who}{i:08}.log",
            i % 4096,
            (i / 7) % 4096
        ),
        format!("{}s 1 {who}-uuid", 1_700_000_000 + i),
    )
}

/// Waits until `meta` has `line` in `path`; returns how long it took.
pub async fn arrival(meta: &Meta, path: &str, line: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if meta.file_lines(path).iter().any(|l| l == line) {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), meta.changed()).await;
    }
}

/// The `q` quantile (0..=1) of durations.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Makes `changes` changes, each on a seeded random peer, and measures when
/// every other peer has each one. Returns the sorted arrival times.
pub async fn spread(
    sim: &mut Sim,
    mesh: &MetaMesh,
    changes: usize,
    limit: Duration,
) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for c in 0..changes {
        let from = mesh.names[sim.rng().below(mesh.names.len() as u64) as usize].clone();
        let (path, line) = change(&from, c);
        mesh.meta(&from)
            .record_local(&path, format!("{line}\n").as_bytes());
        let waits = mesh
            .names
            .iter()
            .filter(|n| **n != from)
            .map(|n| arrival(mesh.meta(n), &path, &line, limit));
        for t in futures::future::join_all(waits).await {
            match t {
                Some(t) => times.push(t),
                None => {
                    return Err(crate::Error::Timeout {
                        what: format!("change {c} from {from} reaching every peer"),
                        after: limit,
                    });
                }
            }
        }
    }
    times.sort();
    Ok(times)
}

/// A catalog of `keys` location logs with one line each (what a new peer must
/// catch up with).
pub fn big_catalog(keys: usize) -> Catalog {
    let mut c = Catalog::new();
    for i in 0..keys {
        let (path, line) = change("origin", i);
        c.insert_line(&path, &line);
    }
    c
}
