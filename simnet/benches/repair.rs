//! Repair under seeded random failures at scale (issue 10), printed, never
//! asserted: one gateway, five member nodes, keys at min = max = 2 seeded
//! straight into the nodes; nodes drawn from the seed crash one per round
//! (their keys copied back to two live nodes) and come back (their extra
//! copies trimmed). Per round: the keys the node held, the time until every
//! key is at min again (detection 3 s + grace 3 s + the copies), copies made
//! beyond those needed, the time to trim, the fewest copies seen meanwhile;
//! and the process's peak RSS (every node and the gateway run in it).
//!
//! `cargo bench -p annexmesh-simnet --bench repair`; knobs
//! `ANNEXMESH_SIM_KEYS` (default 100 000), `ANNEXMESH_SIM_ROUNDS` (3),
//! `ANNEXMESH_SIM_SIZE` (bytes per key, 1 024); `SIMNET_SEED` replays.

use std::time::Duration;

use simnet::Sim;
use simnet::repair::{Scenario, needless, run};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn bench(seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let s = Scenario {
        nodes: 5,
        keys: knob("ANNEXMESH_SIM_KEYS", 100_000),
        size: knob("ANNEXMESH_SIM_SIZE", 1024),
        copies: 2,
        rounds: knob("ANNEXMESH_SIM_ROUNDS", 3),
        limit: Duration::from_secs(4 * 3600),
    };
    let mut sim = Sim::new(seed)?;
    let report = run(&mut sim, s).await?;
    println!(
        "{} keys of {} B, min = max = 2 on 5 nodes: seeded in {:.1} s, known to the gateway {:.1} s later",
        s.keys,
        s.size,
        report.seeded_in.as_secs_f64(),
        (report.known_in - report.seeded_in).as_secs_f64()
    );
    let extra = needless(&report.rounds);
    for r in &report.rounds {
        println!(
            "{} crashed, held {:>6}: back at min in {:>7.1} s ({:>6.1} copies/s), needless copies {}, trimmed {:.1} s after its return, fewest copies meanwhile {}",
            r.node,
            r.held,
            r.back_at_min.as_secs_f64(),
            r.copies as f64 / r.back_at_min.as_secs_f64().max(1e-9),
            extra.get(&r.node).copied().unwrap_or(0).max(0),
            r.trimmed.as_secs_f64(),
            r.fewest_during_trim
        );
    }
    println!(
        "peak RSS of the whole simulation: {:.0} MiB",
        peak_rss_mib()
    );
    println!(
        "ipfs-cluster's defaults, for comparison: a peer noticed gone after ~45 s; repinning off"
    );
    Ok(())
}

fn main() {
    simnet::bench_main("repair", bench);
}
