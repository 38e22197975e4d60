//! Load (issue 11), measured, never judged: one gateway daemon serving a
//! cluster of three mesh node daemons (the gateway setup of the `mesh` and
//! `repair` benches), and clients in this process, each with its own
//! libp2p identity and connection, doing `PUT`s of new content and `GET`s
//! of stored content (64 KiB–1 MiB, at random), one after the other:
//!
//! 1. idle: one client alone, N `PUT`s and N `GET`s;
//! 2. load without kills: 100 clients for a bounded time;
//! 3. the same load, 30 % of transfers killed in the middle of their `DATA`
//!    (half by resetting the stream, half by dropping the connection, as a
//!    killed client process would); the other 70 % complete.
//!
//! Printed: p50/p99 of the completed transfers' latencies (request to
//! outcome) in each; completed, killed and failed counts; the gateway's
//! file descriptors, threads, RSS, and its `/metrics` gauges (sessions
//! open, streams pending, sessions authenticated, runtime tasks) before, at
//! the peak and after each load settles, with the time it took to settle.
//!
//! The ≤ 2× goal is judged on **p99 of the transfers not killed in run 3 /
//! p99 of run 2**: the same 100 clients doing the same work, with and
//! without 30 % of transfers dying around them, so the ratio says what the
//! kills cost the others. p99 of run 3 / the idle p99 is printed too, but
//! it is not the goal's measure: 100 clients sharing the machine's cores
//! (2 here, with the four daemons and the clients on them) must wait on
//! one another, so that ratio grows with the client count whatever the
//! kills do.
//!
//! ```text
//! cargo bench -p annexmesh-cli --bench load --profile dev
//! ```
//!
//! Knobs: ANNEXMESH_BENCH_CLIENTS (100), ANNEXMESH_BENCH_SECS (30, each
//! load), ANNEXMESH_BENCH_IDLE (N, 40), ANNEXMESH_BENCH_KILL_PCT (30),
//! ANNEXMESH_BENCH_ROUNDS (1: how many times run 3 is done, to see whether
//! the gateway's memory after each settles keeps growing),
//! ANNEXMESH_BENCH_DIR (where the temp dir goes), ANNEXMESH_BENCH_DEBUG
//! (daemons' logs to stderr).

mod common;
#[path = "common/load.rs"]
mod load;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use common::{annexmesh, env_number, ours, run_ok};
use load::{End, Held, Object, Op, Record};

const MIN_SIZE: usize = 64 * 1024;
const MAX_SIZE: usize = 1024 * 1024;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Daemon {
    child: Child,
    addr: String,
    api: String,
    token: String,
    /// Lines of its log saying a stream or an `AUTH` was refused.
    refusals: Arc<AtomicU64>,
    /// Lines of its log saying a node missed a deadline (no reply in time,
    /// a stalled transfer).
    missed: Arc<AtomicU64>,
}

impl Daemon {
    fn held(&self) -> Held {
        Held::sample(self.child.id(), &self.api, &self.token)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn daemon(repo: &Path) -> Result<Daemon> {
    let mut cmd = Command::new(ours());
    cmd.arg("--repo")
        .arg(repo)
        .args(["daemon", "--no-git", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .env(
            "ANNEXMESH_LOG",
            std::env::var("ANNEXMESH_LOG").unwrap_or_else(|_| "annexmesh=warn,node=info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting a daemon")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let refusals = Arc::new(AtomicU64::new(0));
    let seen = refusals.clone();
    let missed = Arc::new(AtomicU64::new(0));
    let late = missed.clone();
    let echo = std::env::var_os("ANNEXMESH_BENCH_DEBUG").is_some();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("{line}");
            }
            if line.contains("refusing") {
                seen.fetch_add(1, Ordering::Relaxed);
            }
            if line.contains("no reply within") || line.contains("stalled: ") {
                late.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut lines = std::io::BufReader::new(stdout).lines();
    let (mut addr, mut api) = (None, None);
    while addr.is_none() || api.is_none() {
        let Some(line) = lines.next() else {
            bail!("a daemon exited before listening");
        };
        let line = line?;
        if let Some(a) = line.strip_prefix("listening on ") {
            addr = Some(a.trim().to_owned());
        }
        if let Some(a) = line.strip_prefix("api listening on ") {
            api = Some(a.trim().to_owned());
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let token = annexmesh(repo, &["api", "token"])?.trim().to_owned();
    Ok(Daemon {
        child,
        addr: addr.unwrap_or_default(),
        api: api.unwrap_or_default(),
        token,
        refusals,
        missed,
    })
}

/// Waits (at most `limit`) until `check` holds; how long it took.
fn await_true(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check()? {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("gave up waiting for {what}")
}

/// The gateway and its three nodes, `clients` identities granted on it;
/// the daemons and the cluster's address.
fn cluster(root: &Path, clients: &[libp2p::identity::Keypair]) -> Result<(Vec<Daemon>, String)> {
    let g = root.join("G");
    annexmesh(&g, &["init", "--description", "G"])?;
    for k in clients {
        annexmesh(&g, &["grant", &k.public().to_peer_id().to_string()])?;
    }
    let mut daemons = vec![daemon(&g)?];
    for i in 1..=3 {
        let m = root.join(format!("M{i}"));
        annexmesh(&m, &["init", "--description", &format!("M{i}")])?;
        daemons.push(daemon(&m)?);
        let invite = annexmesh(&g, &["invite"])?;
        annexmesh(&m, &["join", invite.trim()])?;
    }
    annexmesh(&g, &["initcluster", "c"])?;
    for i in 1..=3 {
        let name = format!("M{i}");
        // `peers` (from the daemon) can list a member before the journal
        // that `cluster add-node` reads does: retried until it takes it.
        await_true(&format!("G to add {name}"), Duration::from_secs(60), || {
            Ok(annexmesh(&g, &["cluster", "add-node", &name, &name]).is_ok())
        })?;
    }
    annexmesh(&g, &["updatecluster"])?;
    let uuid = run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&g)
            .args(["config", "annex.cluster.c"]),
    )?;
    let target = format!("{}/annex-uuid/{}", daemons[0].addr, uuid.trim());
    Ok((daemons, target))
}

/// The gateway's figures at the peak of a run, sampled every 500 ms.
struct Peak {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<Held>>,
    thread: std::thread::JoinHandle<()>,
}

impl Peak {
    fn start(pid: u32, api: &str, token: &str) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(Held::default()));
        let (s, m, api, token) = (stop.clone(), max.clone(), api.to_owned(), token.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let h = Held::sample(pid, &api, &token);
                if let Ok(mut g) = m.lock() {
                    *g = g.max(h);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Peak { stop, max, thread }
    }

    fn finish(self) -> Held {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.max.lock().map(|g| *g).unwrap_or_default()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 and p99 (ms) of the completed transfers of `records`.
fn p50_p99(records: &[Record], op: Option<Op>) -> (f64, f64) {
    let mut v = load::completed(records, op);
    (
        ms(load::quantile(&mut v, 0.5)),
        ms(load::quantile(&mut v, 0.99)),
    )
}

fn count(records: &[Record], f: impl Fn(&Record) -> bool) -> usize {
    records.iter().filter(|r| f(r)).count()
}

/// One line of a run's figures.
fn report(label: &str, out: &load::Outcome, secs: f64) {
    let r = &out.records;
    let done = count(r, |r| r.end == End::Done);
    let killed = |op| count(r, |r| r.op == op && matches!(r.end, End::Killed(_)));
    let failed = count(r, |r| matches!(r.end, End::Failed(_)));
    let bytes: u64 = r
        .iter()
        .filter(|r| r.end == End::Done)
        .map(|r| r.key.size().unwrap_or(0))
        .sum();
    let (p50, p99) = p50_p99(r, None);
    let (_, put99) = p50_p99(r, Some(Op::Put));
    let (_, get99) = p50_p99(r, Some(Op::Get));
    println!(
        "  {label:<34} p50 {p50:>8.1} ms  p99 {p99:>8.1} ms  (PUT p99 {put99:.1}, GET p99 {get99:.1})"
    );
    println!(
        "  {:<34} {done} completed ({:.1}/s, {:.1} MiB/s), {} killed ({} PUT, {} GET: {:.0} % of {}), {failed} failed, {} connects ({} failed)",
        "",
        done as f64 / secs,
        bytes as f64 / common::MIB as f64 / secs,
        killed(Op::Put) + killed(Op::Get),
        killed(Op::Put),
        killed(Op::Get),
        100.0 * (killed(Op::Put) + killed(Op::Get)) as f64 / r.len().max(1) as f64,
        r.len(),
        out.connects,
        out.connect_failures.len(),
    );
    for f in r
        .iter()
        .filter_map(|r| match &r.end {
            End::Failed(why) => Some(why.as_str()),
            _ => None,
        })
        .chain(out.connect_failures.iter().map(String::as_str))
        .take(3)
    {
        println!("  {:<34} e.g. {f}", "");
    }
}

fn run() -> Result<()> {
    let clients = usize::try_from(env_number("ANNEXMESH_BENCH_CLIENTS", 100)?)?;
    let secs = env_number("ANNEXMESH_BENCH_SECS", 30)?;
    let idle_n = usize::try_from(env_number("ANNEXMESH_BENCH_IDLE", 40)?)?;
    let kill_pct = env_number("ANNEXMESH_BENCH_KILL_PCT", 30)?;
    let rounds = env_number("ANNEXMESH_BENCH_ROUNDS", 1)?;
    let tmp = match std::env::var_os("ANNEXMESH_BENCH_DIR") {
        Some(d) => tempfile::Builder::new()
            .prefix("annexmesh-load-bench-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("annexmesh-load-bench-")
            .tempdir()?,
    };
    // Clients 0..n, then one for storing the GETs' content.
    let identities: Vec<_> = (0..=clients)
        .map(|_| libp2p::identity::Keypair::generate_ed25519())
        .collect();
    let (daemons, target) = cluster(tmp.path(), &identities)?;
    let g = &daemons[0];
    let target = node::net::PeerAddress::parse(&target).map_err(|e| anyhow!("address: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stored: Vec<Object> = (0..32)
        .map(|i| load::object(1_000_000 + i, MIN_SIZE + (i as usize * 31_337) % MAX_SIZE))
        .collect();
    let ends = rt.block_on(load::store_all(
        &target,
        identities[clients].clone(),
        &stored,
    ));
    if let Some(bad) = ends.iter().find(|e| **e != End::Done) {
        bail!("storing the GETs' content: {bad:?}");
    }
    let stored = Arc::new(stored);
    let plan = |identities: &[libp2p::identity::Keypair], kill: f64, seed: u64| load::Plan {
        target: target.clone(),
        identities: identities.to_vec(),
        duration: Duration::from_secs(secs),
        kill_share: kill,
        sizes: (MIN_SIZE, MAX_SIZE),
        stored: stored.clone(),
        seed,
        max_per_client: None,
        keep: false,
    };
    println!(
        "a gateway daemon and 3 mesh node daemons; transfers of 64 KiB–1 MiB, each client its own identity and connection"
    );

    // 1. Idle.
    let idle_start = Instant::now();
    let idle = rt.block_on(load::run(load::Plan {
        duration: Duration::from_secs(600),
        max_per_client: Some(2 * idle_n),
        ..plan(&identities[..1], 0.0, 1)
    }));
    let (idle50, idle99) = p50_p99(&idle.records, None);
    report(
        &format!("idle, 1 client, {idle_n} PUT + {idle_n} GET"),
        &idle,
        idle_start.elapsed().as_secs_f64(),
    );

    // 2. and 3. The loads.
    let mut runs = Vec::new();
    let mut loads = vec![(format!("{clients} clients {secs} s, no kills"), 0.0, 2)];
    for round in 0..rounds.max(1) {
        let again = if round == 0 { "" } else { ", again" };
        loads.push((
            format!("{clients} clients {secs} s, {kill_pct} % killed{again}"),
            kill_pct as f64 / 100.0,
            3 + round,
        ));
    }
    for (label, kill, seed) in loads {
        let before = g.held();
        let refused = g.refusals.load(Ordering::Relaxed);
        let missed = g.missed.load(Ordering::Relaxed);
        let node_refused: u64 = daemons[1..]
            .iter()
            .map(|d| d.refusals.load(Ordering::Relaxed))
            .sum();
        let peak = Peak::start(g.child.id(), &g.api, &g.token);
        let start = Instant::now();
        let out = rt.block_on(load::run(plan(&identities[..clients], kill, seed)));
        let took = start.elapsed().as_secs_f64();
        let at_end = g.held();
        let peak = peak.finish().max(at_end);
        let settled = await_true("the gateway to settle", Duration::from_secs(300), || {
            Ok(daemons.iter().all(|d| d.held().idle()))
        })?;
        let after = g.held();
        report(&label, &out, took);
        println!("  {:<34} gateway before  {before}", "");
        println!("  {:<34} gateway at peak {peak}", "");
        println!(
            "  {:<34} gateway after   {after}   (every daemon idle {:.1} s after the clients ended)",
            "",
            settled.as_secs_f64()
        );
        println!(
            "  {:<34} refusals logged: gateway {}, nodes {}",
            "",
            g.refusals.load(Ordering::Relaxed) - refused,
            daemons[1..]
                .iter()
                .map(|d| d.refusals.load(Ordering::Relaxed))
                .sum::<u64>()
                - node_refused
        );
        println!(
            "  {:<34} node deadlines missed, logged by the gateway: {}",
            "",
            g.missed.load(Ordering::Relaxed) - missed
        );
        runs.push(out);
    }
    let (_, calm99) = p50_p99(&runs[0].records, None);
    let (_, hit99) = p50_p99(&runs[1].records, None);
    println!(
        "  p99 of the transfers not killed / p99 without kills (the goal, <= 2x): {:.2}x",
        hit99 / calm99.max(0.001)
    );
    println!(
        "  p99 of the transfers not killed / idle p99 ({idle99:.1} ms, p50 {idle50:.1} ms; grows with the client count): {:.2}x",
        hit99 / idle99.max(0.001)
    );
    println!(
        "  p99 without kills / idle p99: {:.2}x",
        calm99 / idle99.max(0.001)
    );
    drop(daemons);
    Ok(())
}
