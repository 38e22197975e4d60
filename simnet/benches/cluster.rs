//! The mesh's topology at the size, printed (never asserted): 10
//! gateways in a ring, 5 mesh nodes each, links of 1–20 ms.
//!
//! * node added → routable from every gateway (p50, p99 over every gateway
//!   and several additions);
//! * a gateway crashed (its swarm and services stopped) → every other
//!   gateway's routes avoid it (p50, p99 over gateways): its neighbours see
//!   the connection go, the others learn it from their heartbeats.
//!
//! `cargo bench -p annexmesh-simnet --bench cluster`; `SIMNET_SEED` replays.

use std::time::{Duration, Instant};

use simnet::Sim;
use simnet::cluster::{ClusterSim, Shape};
use simnet::metadata::quantile;

const LIMIT: Duration = Duration::from_secs(120);
const GATEWAYS: usize = 10;
const PER_GATEWAY: usize = 5;
const ADDITIONS: usize = 5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn run(seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut sim = Sim::new(seed)?;
    let build = Instant::now();
    let mut c = ClusterSim::build(&mut sim, Shape::Ring, GATEWAYS, PER_GATEWAY, LIMIT).await?;
    let names: Vec<String> = c.gateways.iter().cloned().chain(c.all_nodes()).collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            sim.set_latency(a, b, Duration::from_millis(1)..=Duration::from_millis(20))?;
        }
    }
    println!(
        "{GATEWAYS} gateways (ring), {} nodes: built and routed in {:.1} s",
        c.all_nodes().len(),
        build.elapsed().as_secs_f64()
    );

    let mut added = Vec::new();
    for i in 0..ADDITIONS {
        let g = c.gateways[(i * 3) % GATEWAYS].clone();
        let start = Instant::now();
        let node = c.add_node(&mut sim, &g, &format!("{g}x{i}")).await?;
        let mut pending: Vec<String> = c.gateways.clone();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for other in pending {
                if c.routes_to(&sim, &other, &node)? {
                    added.push(start.elapsed());
                } else {
                    still.push(other);
                }
            }
            pending = still;
            if start.elapsed() > LIMIT {
                return Err(format!("node {i} never routable everywhere").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    added.sort();
    println!(
        "node added -> routable from every gateway ({} samples): p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms",
        added.len(),
        ms(quantile(&added, 0.5)),
        ms(quantile(&added, 0.99)),
        ms(quantile(&added, 1.0)),
    );

    let gone = c.gateways[GATEWAYS / 2].clone();
    let gone_uuid = sim.uuid(&gone)?;
    let start = Instant::now();
    c.crash_gateway(&mut sim, &gone).await?;
    let mut around = Vec::new();
    let mut pending: Vec<String> = c.gateways.iter().filter(|g| **g != gone).cloned().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for g in pending {
            if c.routes_avoid(&sim, &g, &gone_uuid)? {
                around.push(start.elapsed());
            } else {
                still.push(g);
            }
        }
        pending = still;
        if start.elapsed() > LIMIT {
            return Err("never routed around the gateway".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    around.sort();
    println!(
        "gateway crashed -> routed around by every other ({} gateways): p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms",
        around.len(),
        ms(quantile(&around, 0.5)),
        ms(quantile(&around, 0.99)),
        ms(quantile(&around, 1.0)),
    );
    Ok(())
}

fn main() {
    simnet::bench_main("cluster", run);
}
