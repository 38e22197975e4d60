//! Metadata at the sizes, printed (never asserted):
//!
//! * 50 peers on simulated links (1–20 ms): how long a change takes to reach
//!   every other peer (p50, p99);
//! * a peer cut off during 1 000 changes: time to converge after reconnecting;
//! * a brand-new peer catching up a 100 000-key catalog;
//! * memory per tracked location record (1 000 000 records).
//!
//! `cargo bench -p annexmesh-simnet --bench metadata`; `SIMNET_SEED` replays.

use std::time::{Duration, Instant};

use simnet::Sim;
use simnet::metadata::{MetaMesh, arrival, big_catalog, change, quantile, spread, start_meta};

const LIMIT: Duration = Duration::from_secs(120);

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn convergence(seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut sim = Sim::new(seed)?;
    let mesh = MetaMesh::build(&mut sim, 50, 3).await?;
    for (i, a) in mesh.names.iter().enumerate() {
        for b in &mesh.names[i + 1..] {
            sim.set_latency(a, b, ms(1)..=ms(20))?;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let times = spread(&mut sim, &mesh, 20, LIMIT).await?;
    println!(
        "50 peers, 20 changes ({} arrivals): p50 {:>8.1} ms   p99 {:>8.1} ms   max {:>8.1} ms   (goal: p99 < 2000 ms)",
        times.len(),
        quantile(&times, 0.5).as_secs_f64() * 1e3,
        quantile(&times, 0.99).as_secs_f64() * 1e3,
        quantile(&times, 1.0).as_secs_f64() * 1e3,
    );

    // One peer cut off during 1000 changes, then reconnected.
    let cut = "p49";
    for n in &mesh.names {
        if n != cut {
            sim.partition(cut, n)?;
        }
    }
    let others: Vec<String> = mesh.names.iter().filter(|n| *n != cut).cloned().collect();
    for i in 0..1000 {
        let who = &others[i % others.len()];
        let (path, line) = change(who, 100_000 + i);
        mesh.meta(who)
            .record_local(&path, format!("{line}\n").as_bytes());
    }
    let (path, line) = change(&others[999 % others.len()], 100_999);
    arrival(mesh.meta("p0"), &path, &line, LIMIT).await;
    for n in &others {
        sim.heal(cut, n)?;
    }
    let start = Instant::now();
    let addr = sim.addr("p0")?;
    sim.net(cut)?.dial(&addr).await?;
    // Converged: the cut-off peer holds all 1000 changes and agrees with p0.
    let total = mesh.meta("p0").len().max(1000);
    loop {
        let mine = mesh.meta(cut).catalog();
        if mine.len() >= total && mine == mesh.meta("p0").catalog() {
            break;
        }
        if start.elapsed() > LIMIT {
            return Err(format!(
                "the cut-off peer did not converge: {} of {total} files",
                mine.len()
            )
            .into());
        }
        tokio::time::sleep(ms(10)).await;
    }
    println!(
        "peer cut off during 1000 changes: converged {:>8.1} ms after reconnecting ({total} files)",
        start.elapsed().as_secs_f64() * 1e3,
    );
    Ok(())
}

async fn catch_up(seed: u64, keys: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut sim = Sim::new(seed)?;
    sim.add_peer("old").await?;
    let old = start_meta(&sim, "old", big_catalog(keys)).await?;
    sim.add_peer("new").await?;
    let new = start_meta(&sim, "new", Default::default()).await?;
    sim.set_latency("old", "new", ms(10)..=ms(30))?;
    let start = Instant::now();
    let addr = sim.addr("old")?;
    sim.net("new")?.dial(&addr).await?;
    while new.len() < keys {
        if start.elapsed() > LIMIT {
            return Err(format!("caught up only {} of {keys}", new.len()).into());
        }
        let _ = tokio::time::timeout(ms(20), new.changed()).await;
    }
    let took = start.elapsed();
    let same = new.catalog() == old.catalog();
    println!(
        "new peer catching up {keys} keys: {:>8.1} ms (identical: {same}; goal < 10000 ms)",
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

fn memory(records: usize) {
    let before = rss();
    let catalog = big_catalog(records);
    let after = rss();
    let bytes = after.saturating_sub(before);
    println!(
        "memory: {records} location records in {:.1} MiB, {:.0} bytes/record (goal < 200 MiB)",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / records as f64
    );
    drop(catalog);
}

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`: do nothing.
    if !std::env::args().any(|a| a == "--bench") {
        println!("metadata benchmark: run with `cargo bench -p annexmesh-simnet --bench metadata`");
        return;
    }
    let seed = simnet::seed_from_env();
    println!(
        "seed {seed} (SIMNET_SEED={seed} replays); {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    memory(1_000_000);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(convergence(seed)) {
        eprintln!("convergence: {e}");
        std::process::exit(1);
    }
    if let Err(e) = rt.block_on(catch_up(seed, 100_000)) {
        eprintln!("catch-up: {e}");
        std::process::exit(1);
    }
}
