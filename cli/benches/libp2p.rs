//! Throughput of annexmesh over libp2p (`/annex/p2p/1` on TCP+noise+yamux)
//! against two baselines measured in the same run: a raw libp2p stream on the
//! same transport stack (the ceiling), and stock `git-annex-shell p2pstdio`.
//!
//! ```text
//! cargo bench -p annexmesh-cli --bench libp2p
//! ```
//!
//! Knobs (environment):
//!   ANNEXMESH_BENCH_MIB      size of the test content in MiB (default 1024)
//!   ANNEXMESH_BENCH_RUNS     rounds; each round runs every transfer once (default 3)
//!   ANNEXMESH_BENCH_DIR      where the temp dir goes (default: system temp dir)
//!   ANNEXMESH_BENCH_ONLY     comma-separated subset of raw,daemon,inproc,stock
//!                            (default: all; a subset is for profiling one path)
//!   ANNEXMESH_BENCH_CLIENT   where the client side runs: `worker` (default), a
//!                            task spawned on the tokio runtime, or `main`, the
//!                            thread in `Runtime::block_on`, as `annexmesh
//!                            put/get` run their session today
//!   ANNEXMESH_GIT_ANNEX_BIN  dir with git-annex, git-annex-shell
//!                            (default <workspace>/.cache/annex-bin)
//!
//! What is measured, all on loopback (127.0.0.1), content pseudo-random:
//!   * raw libp2p stream: two swarms (`node::net::build_swarm` over
//!     `tcp_transport`) in this process. A stream of a throwaway protocol carries
//!     the content in 1 MiB writes (read from the page-cached file, as the
//!     protocol client does); the receiver reads and discards, no hashing. Timed
//!     until the receiver has every byte (client→server: it answers one byte at
//!     the end; server→client: the client has read the last byte). Both
//!     directions, as PUT and GET use them. This is the ceiling.
//!   * annexmesh daemon: the server is a separate `annexmesh daemon` process over
//!     a bare repository (`annexmesh init`, `annexmesh grant <our PeerId>`); the
//!     client is `node::remote::Endpoint` in this process. The headline.
//!   * annexmesh in-process: the same, with the server a `node::peer::Peer` in
//!     this process (one tokio runtime for both sides).
//!   * git-annex p2pstdio: stock `git-annex-shell p2pstdio` driven over its pipes
//!     by the same client session (`node::process::ShellConnection`), in a
//!     repository made by the real git-annex.
//!
//! PUT is timed from sending `PUT` to `SUCCESS` (the server has verified SHA-256,
//! fsynced and moved the content into place). GET is timed from sending `GET` to
//! the verified (SHA-256), fsynced file renamed into place. After each GET the
//! key is removed again (untimed).
//!
//! Every connection is set up first; then each round runs every transfer once,
//! so that a machine shared with other jobs disturbs all of them alike. The
//! client side of every transfer (raw included) runs the same way: by default
//! as a task on a runtime worker. In `block_on` on the main thread every wake-up
//! between the stream and its connection task crosses threads; that costs the
//! raw stream about 40% of its throughput (annexmesh much less), so the ratios
//! depend on it (ANNEXMESH_BENCH_CLIENT=main shows the CLI's arrangement).
//!
//! Each transfer also records the CPU time (user+system) of this process and of
//! its direct children (the daemon, git-annex-shell; not their children) from
//! /proc, at USER_HZ resolution: CPU seconds per transfer depend much less on
//! how busy the machine is than wall time does. Client and server share the
//! machine's cores, so on a small machine the ratios are bounded by the ratios
//! of CPU seconds.
//!
//! This is a measurement, not a test: it never judges timings (the goals are
//! printed next to the ratios for the reader). Any failure of the setup or of a
//! transfer is an error and a non-zero exit.

mod common;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use common::{
    AUTHOR_EMAIL, AUTHOR_NAME, AnnexBin, MIB, Scratch, command_in, env_number, make_file,
    mib_per_s, path_with_git_annex, remove_tree, run_ok,
};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, StreamProtocol};
use node::net::{Net, PeerAddress, build_swarm, tcp_transport};
use node::peer::{Limits, Peer, PeerOptions};
use node::process::ShellConnection;
use node::remote::{Endpoint, StreamSession};
use node::session::ClientSession;
use node::store::Store;
use protocol::server::ServeMode;
use protocol::{AssociatedFile, AuthToken, Key, Uuid};
use tokio::io::{AsyncRead, AsyncWrite};

const CLIENT_UUID: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const STOCK_UUID: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const CHUNK: usize = 1 << 20;
/// The throwaway protocol of the raw stream copy.
const RAW_PROTOCOL: StreamProtocol = StreamProtocol::new("/annexmesh-bench/raw/1");
/// How long the daemon may take to print its address.
const DAEMON_START: Duration = Duration::from_secs(60);
/// The parts of the benchmark, for ANNEXMESH_BENCH_ONLY.
const PARTS: [&str; 4] = ["raw", "daemon", "inproc", "stock"];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`)
    // runs this binary without it: then do nothing, this is not a test.
    if !std::env::args().skip(1).any(|a| a == "--bench") {
        println!("libp2p: a benchmark; run it with `cargo bench -p annexmesh-cli --bench libp2p`");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("libp2p bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Settings read from the environment.
struct Config {
    mib: u64,
    runs: usize,
    only: Vec<String>,
    /// Run the client side in `block_on` on the main thread (else on a worker).
    client_on_main: bool,
    base: PathBuf,
    annex_bin: PathBuf,
    ours: PathBuf,
}

impl AnnexBin for Config {
    fn annex_bin(&self) -> &Path {
        &self.annex_bin
    }
}

impl Config {
    fn from_env() -> Result<Config> {
        let mib = env_number("ANNEXMESH_BENCH_MIB", 1024)?;
        ensure!(mib > 0, "ANNEXMESH_BENCH_MIB must be at least 1");
        let runs = usize::try_from(env_number("ANNEXMESH_BENCH_RUNS", 3)?)?;
        ensure!(runs > 0, "ANNEXMESH_BENCH_RUNS must be at least 1");
        let only: Vec<String> = match std::env::var("ANNEXMESH_BENCH_ONLY") {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|p| p.trim().to_owned()).collect(),
            _ => PARTS.iter().map(|p| (*p).to_owned()).collect(),
        };
        for p in &only {
            ensure!(
                PARTS.contains(&p.as_str()),
                "ANNEXMESH_BENCH_ONLY: unknown part {p:?} (known: {})",
                PARTS.join(",")
            );
        }
        let client_on_main = match std::env::var("ANNEXMESH_BENCH_CLIENT") {
            Ok(v) if v.trim() == "main" => true,
            Ok(v) if v.trim() == "worker" || v.trim().is_empty() => false,
            Ok(v) => bail!("ANNEXMESH_BENCH_CLIENT={v:?}: expected `worker` or `main`"),
            Err(_) => false,
        };
        let base = std::env::var_os("ANNEXMESH_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow!("cli crate is not inside a workspace"))?;
        let annex_bin = std::env::var_os("ANNEXMESH_GIT_ANNEX_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".cache/annex-bin"));
        if only.iter().any(|p| p == "stock") {
            for exe in ["git-annex", "git-annex-shell"] {
                let p = annex_bin.join(exe);
                ensure!(
                    p.exists(),
                    "stock {exe} not found at {}: run scripts/setup-git-annex first \
                     (or set ANNEXMESH_GIT_ANNEX_BIN)",
                    p.display()
                );
            }
        }
        let ours = PathBuf::from(env!("CARGO_BIN_EXE_annexmesh"));
        ensure!(
            ours.exists(),
            "annexmesh binary not found at {}",
            ours.display()
        );
        Ok(Config {
            mib,
            runs,
            only,
            client_on_main,
            base,
            annex_bin,
            ours,
        })
    }

    fn size(&self) -> u64 {
        self.mib * MIB
    }

    fn wants(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc.

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// `(ppid, utime + stime in ticks)` from one /proc/<pid>/stat.
fn proc_stat(path: &Path) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may contain anything: fields
    // restart after the last ')': state ppid … utime(14) stime(15).
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU seconds used so far by this process (all its threads, dead ones
/// included) and by its live direct children.
fn cpu_seconds() -> f64 {
    let me = std::process::id();
    let mut ticks = proc_stat(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Some((ppid, t)) = proc_stat(&e.path().join("stat"))
                && ppid == me
            {
                ticks += t;
            }
        }
    }
    ticks as f64 / USER_HZ
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Wall time and CPU time of one transfer.
struct Meter {
    wall: Instant,
    cpu: f64,
}

impl Meter {
    fn start() -> Meter {
        Meter {
            cpu: cpu_seconds(),
            wall: Instant::now(),
        }
    }
    fn stop(self) -> (Duration, f64) {
        let wall = self.wall.elapsed();
        (wall, (cpu_seconds() - self.cpu).max(0.0))
    }
}

// ---------------------------------------------------------------------------
// Results.

/// Timings of one transfer.
#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn median(v: &[f64]) -> f64 {
    let v = sorted(v);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Samples {
    fn min(&self) -> f64 {
        sorted(&self.wall).first().copied().unwrap_or(f64::NAN)
    }
    fn median(&self) -> f64 {
        median(&self.wall)
    }
    fn cpu_median(&self) -> f64 {
        median(&self.cpu)
    }
}

/// The rows of the table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    RawUp,
    RawDown,
    DaemonPut,
    DaemonGet,
    InProcPut,
    InProcGet,
    StockPut,
    StockGet,
}

impl Row {
    const ALL: [Row; 8] = [
        Row::RawUp,
        Row::RawDown,
        Row::DaemonPut,
        Row::DaemonGet,
        Row::InProcPut,
        Row::InProcGet,
        Row::StockPut,
        Row::StockGet,
    ];

    fn label(self) -> &'static str {
        match self {
            Row::RawUp => "raw libp2p stream client→server",
            Row::RawDown => "raw libp2p stream server→client",
            Row::DaemonPut => "annexmesh daemon      PUT",
            Row::DaemonGet => "annexmesh daemon      GET",
            Row::InProcPut => "annexmesh in-process  PUT",
            Row::InProcGet => "annexmesh in-process  GET",
            Row::StockPut => "git-annex p2pstdio    PUT",
            Row::StockGet => "git-annex p2pstdio    GET",
        }
    }
}

struct Results {
    size: u64,
    samples: Vec<(Row, Samples)>,
}

impl Results {
    fn new(size: u64) -> Results {
        Results {
            size,
            samples: Row::ALL.iter().map(|&r| (r, Samples::default())).collect(),
        }
    }
    fn get(&self, row: Row) -> &Samples {
        &self
            .samples
            .iter()
            .find(|(r, _)| *r == row)
            .unwrap_or_else(|| unreachable!("every row is in the table"))
            .1
    }
    fn add(&mut self, row: Row, run: usize, (wall, cpu): (Duration, f64)) {
        let secs = wall.as_secs_f64();
        println!(
            "  {:<32} run {}: {secs:>7.3} s  {:>8.1} MiB/s  cpu {cpu:>6.2} s",
            row.label(),
            run + 1,
            mib_per_s(self.size, secs)
        );
        if let Some((_, s)) = self.samples.iter_mut().find(|(r, _)| *r == row) {
            s.wall.push(secs);
            s.cpu.push(cpu);
        }
    }
}

// ---------------------------------------------------------------------------
// The run.

fn run() -> Result<()> {
    let cfg = Config::from_env()?;
    std::fs::create_dir_all(&cfg.base)
        .with_context(|| format!("creating {}", cfg.base.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("annexmesh-bench-libp2p-")
        .tempdir_in(&cfg.base)
        .with_context(|| format!("creating a temp dir in {}", cfg.base.display()))?;
    let mut scratch = Scratch { dir: Some(dir) };
    let outcome = bench(&cfg, scratch.path());
    let cleaned = scratch.cleanup();
    let results = outcome?;
    cleaned?;
    print_table(&cfg, &results);
    Ok(())
}

/// Everything under test, connected and ready.
#[derive(Default)]
struct Subjects {
    raw: Option<RawLink>,
    daemon: Option<Remote>,
    inproc: Option<Remote>,
    stock: Option<ShellConnection>,
}

fn bench(cfg: &Config, tmp: &Path) -> Result<Results> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "libp2p benchmark: annexmesh over /annex/p2p/1 vs a raw libp2p stream vs git-annex p2pstdio"
    );
    println!(
        "  cores (available parallelism): {cores}, load average at start: {}",
        load_average()
    );
    println!(
        "  content: {} MiB ({} bytes), rounds: {}, parts: {}",
        cfg.mib,
        cfg.size(),
        cfg.runs,
        cfg.only.join(",")
    );
    println!("  annexmesh: {}", cfg.ours.display());
    if cfg.wants("stock") {
        println!(
            "  git-annex: {} ({})",
            cfg.annex_bin.join("git-annex-shell").display(),
            git_annex_version(cfg, tmp)
        );
    }
    println!("  transport: TCP 127.0.0.1 + noise + yamux (node::net::tcp_transport)");
    println!(
        "  client side runs {}",
        if cfg.client_on_main {
            "in Runtime::block_on on the main thread (ANNEXMESH_BENCH_CLIENT=main)"
        } else {
            "as a task on a runtime worker (ANNEXMESH_BENCH_CLIENT=worker)"
        }
    );
    println!("  scratch:   {}", tmp.display());

    let home = tmp.join("home");
    let data_dir = tmp.join("data");
    for d in [&home, &data_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let src = data_dir.join("big.bin");
    let t = Instant::now();
    let key = make_file(&src, cfg.size())?;
    println!(
        "  generated {} in {:.2} s, key {key}",
        src.display(),
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mut results = Results::new(cfg.size());
    let mut subjects = Subjects::default();
    let outcome = (|| -> Result<()> {
        if cfg.wants("raw") {
            subjects.raw = Some(
                rt.block_on(RawLink::start(&src))
                    .context("raw libp2p link")?,
            );
        }
        if cfg.wants("daemon") {
            subjects.daemon =
                Some(start_daemon(cfg, &rt, tmp, &home).context("annexmesh daemon process")?);
        }
        if cfg.wants("inproc") {
            subjects.inproc = Some(
                rt.block_on(start_in_process(tmp))
                    .context("annexmesh in-process peer")?,
            );
        }
        if cfg.wants("stock") {
            let repo = tmp.join("B-git-annex");
            make_stock_repo(cfg, &repo, &home)?;
            subjects.stock = Some(
                rt.block_on(start_stock(cfg, &repo, &home))
                    .context("git-annex-shell p2pstdio")?,
            );
        }
        println!();
        for run in 0..cfg.runs {
            let task = Round {
                subjects: std::mem::take(&mut subjects),
                results: std::mem::replace(&mut results, Results::new(cfg.size())),
                run,
                size: cfg.size(),
                key: key.clone(),
                src: src.clone(),
                tmp: tmp.to_path_buf(),
            };
            let (task, outcome) = if cfg.client_on_main {
                rt.block_on(task.run())
            } else {
                rt.block_on(rt.spawn(task.run()))
                    .map_err(|e| anyhow!("round {} died: {e}", run + 1))?
            };
            subjects = task.subjects;
            results = task.results;
            outcome?;
        }
        Ok(())
    })();
    // Tear down in every case; the first error wins.
    let closed = rt.block_on(close(subjects));
    outcome?;
    closed?;
    println!("  load average at the end: {}", load_average());
    Ok(results)
}

/// What one round needs, owned, so that it can run as a task on a worker.
struct Round {
    subjects: Subjects,
    results: Results,
    run: usize,
    size: u64,
    key: Key,
    src: PathBuf,
    tmp: PathBuf,
}

impl Round {
    /// Runs the round; hands everything back, whatever the outcome.
    async fn run(mut self) -> (Round, Result<()>) {
        let Round {
            subjects,
            results,
            run,
            size,
            key,
            src,
            tmp,
        } = &mut self;
        let outcome = round(subjects, *run, *size, key, src, tmp, results).await;
        (self, outcome)
    }
}

/// One round: every transfer once.
async fn round(
    subjects: &mut Subjects,
    run: usize,
    size: u64,
    key: &Key,
    src: &Path,
    tmp: &Path,
    results: &mut Results,
) -> Result<()> {
    if let Some(raw) = &subjects.raw {
        results.add(Row::RawUp, run, raw.up(src, size).await?);
        results.add(Row::RawDown, run, raw.down(size).await?);
    }
    if let Some(d) = &mut subjects.daemon {
        put_get_remove(
            &mut d.session,
            run,
            size,
            key,
            src,
            tmp,
            (Row::DaemonPut, Row::DaemonGet),
            results,
        )
        .await
        .context("annexmesh daemon")?;
    }
    if let Some(p) = &mut subjects.inproc {
        put_get_remove(
            &mut p.session,
            run,
            size,
            key,
            src,
            tmp,
            (Row::InProcPut, Row::InProcGet),
            results,
        )
        .await
        .context("annexmesh in-process")?;
    }
    if let Some(c) = &mut subjects.stock {
        put_get_remove(
            &mut c.session,
            run,
            size,
            key,
            src,
            tmp,
            (Row::StockPut, Row::StockGet),
            results,
        )
        .await
        .context("git-annex p2pstdio")?;
    }
    Ok(())
}

async fn close(subjects: Subjects) -> Result<()> {
    let Subjects {
        raw,
        daemon,
        inproc,
        stock,
    } = subjects;
    let mut first: Result<()> = Ok(());
    let mut keep = |r: Result<()>| {
        if first.is_ok() {
            first = r;
        }
    };
    if let Some(raw) = raw {
        raw.acceptor.abort();
    }
    if let Some(d) = daemon {
        keep(d.close().await.context("annexmesh daemon"));
    }
    if let Some(p) = inproc {
        keep(p.close().await.context("annexmesh in-process"));
    }
    if let Some(c) = stock {
        keep(
            async {
                let status = c.finish().await.context("closing the session")?;
                ensure!(
                    status.success(),
                    "git-annex-shell p2pstdio exited with {status}"
                );
                Ok(())
            }
            .await
            .context("git-annex p2pstdio"),
        );
    }
    first
}

// ---------------------------------------------------------------------------
// Raw libp2p stream copy: the ceiling.

/// The first byte of a raw stream: which way the content goes. Then the length
/// (u64, little-endian).
const UP: u8 = 0;
const DOWN: u8 = 1;

struct RawLink {
    /// The listening side; kept alive for the streams.
    _server: Net,
    client: Net,
    addr: Multiaddr,
    acceptor: tokio::task::JoinHandle<()>,
}

fn tcp_net(key: Keypair) -> Result<Net> {
    let transport = tcp_transport(&key).map_err(|e| anyhow!("tcp transport: {e}"))?;
    Ok(Net::spawn(
        build_swarm(key, transport).map_err(|e| anyhow!("swarm: {e}"))?,
    ))
}

/// Writes `len` bytes of `src` to `w` in [`CHUNK`] writes, reading the file as
/// the protocol client does.
async fn send_file<W: futures::AsyncWrite + Unpin>(w: &mut W, src: &Path, len: u64) -> Result<()> {
    let mut file =
        std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        file.read_exact(&mut buf[..n])
            .with_context(|| format!("reading {}", src.display()))?;
        w.write_all(&buf[..n]).await.context("raw stream write")?;
        left -= n as u64;
    }
    w.flush().await.context("raw stream flush")?;
    Ok(())
}

/// Reads and discards exactly `len` bytes.
async fn discard<R: futures::AsyncRead + Unpin>(r: &mut R, len: u64) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64))?;
        let got = r.read(&mut buf[..n]).await.context("raw stream read")?;
        ensure!(got > 0, "raw stream ended with {left} bytes to go");
        left -= got as u64;
    }
    Ok(())
}

/// The listening side of one raw stream.
async fn raw_serve(mut stream: libp2p::Stream, src: PathBuf) -> Result<()> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.context("raw header")?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[1..]);
    let len = u64::from_le_bytes(len);
    match head[0] {
        UP => {
            // Ready, then read everything, then one byte: "all here".
            stream.write_all(&[1]).await?;
            stream.flush().await?;
            discard(&mut stream, len).await?;
            stream.write_all(&[2]).await?;
            stream.flush().await?;
        }
        DOWN => send_file(&mut stream, &src, len).await?,
        other => bail!("raw stream: unknown direction {other}"),
    }
    // Wait for the client to close its side.
    let mut rest = [0u8; 1];
    let _ = stream.read(&mut rest).await;
    let _ = stream.close().await;
    Ok(())
}

impl RawLink {
    async fn start(src: &Path) -> Result<RawLink> {
        let server = tcp_net(Keypair::generate_ed25519())?;
        let client = tcp_net(Keypair::generate_ed25519())?;
        let mut incoming = server
            .control()
            .accept(RAW_PROTOCOL)
            .map_err(|e| anyhow!("registering {RAW_PROTOCOL}: {e}"))?;
        let src = src.to_path_buf();
        let acceptor = tokio::spawn(async move {
            while let Some((_, stream)) = incoming.next().await {
                let src = src.clone();
                tokio::spawn(async move {
                    if let Err(e) = raw_serve(stream, src).await {
                        eprintln!("raw stream server: {e:#}");
                    }
                });
            }
        });
        let addr = server
            .listen("/ip4/127.0.0.1/tcp/0".parse()?)
            .await
            .map_err(|e| anyhow!("listening: {e}"))?;
        client
            .dial(&addr)
            .await
            .map_err(|e| anyhow!("dialing {addr}: {e}"))?;
        println!("  raw stream listener at {addr}");
        Ok(RawLink {
            _server: server,
            client,
            addr,
            acceptor,
        })
    }

    async fn open(&self, dir: u8, size: u64) -> Result<libp2p::Stream> {
        let mut s = self
            .client
            .open(&self.addr, RAW_PROTOCOL)
            .await
            .map_err(|e| anyhow!("opening a raw stream: {e}"))?;
        let mut head = [dir; 9];
        head[1..].copy_from_slice(&size.to_le_bytes());
        s.write_all(&head).await?;
        s.flush().await?;
        Ok(s)
    }

    /// Client → server; timed from the first byte to the receiver's end byte.
    async fn up(&self, src: &Path, size: u64) -> Result<(Duration, f64)> {
        let mut s = self.open(UP, size).await?;
        let mut ready = [0u8; 1];
        s.read_exact(&mut ready)
            .await
            .context("raw stream: ready")?;
        let m = Meter::start();
        send_file(&mut s, src, size).await?;
        let mut done = [0u8; 1];
        s.read_exact(&mut done)
            .await
            .context("raw stream: receiver's end byte")?;
        let r = m.stop();
        ensure!(done == [2], "raw stream: bad end byte {done:?}");
        let _ = s.close().await;
        Ok(r)
    }

    /// Server → client; timed from the request to the last byte read.
    async fn down(&self, size: u64) -> Result<(Duration, f64)> {
        let m = Meter::start();
        let mut s = self.open(DOWN, size).await?;
        discard(&mut s, size).await?;
        let r = m.stop();
        let _ = s.close().await;
        Ok(r)
    }
}

// ---------------------------------------------------------------------------
// The protocol transfers, the same for every server.

/// PUT, then GET, then an untimed REMOVE, over one session.
#[allow(clippy::too_many_arguments)]
async fn put_get_remove<R, W>(
    s: &mut ClientSession<R, W>,
    run: usize,
    size: u64,
    key: &Key,
    src: &Path,
    tmp: &Path,
    (put_row, get_row): (Row, Row),
    results: &mut Results,
) -> Result<()>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let m = Meter::start();
    let outcome = s
        .put(key, AssociatedFile::none(), src, &mut |_| {})
        .await
        .with_context(|| format!("PUT run {}", run + 1))?;
    let r = m.stop();
    ensure!(
        outcome.stored && !outcome.already_had,
        "PUT run {}: server did not store the content ({outcome:?})",
        run + 1
    );
    results.add(put_row, run, r);

    let partial = tmp.join("download.partial");
    let dest = tmp.join("download.bin");
    for p in [&partial, &dest] {
        if p.exists() {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let m = Meter::start();
    let ok = s
        .get(key, AssociatedFile::none(), &partial, &dest, &mut |_| {})
        .await
        .with_context(|| format!("GET run {}", run + 1))?;
    let r = m.stop();
    ensure!(
        ok,
        "GET run {}: the download failed or did not verify",
        run + 1
    );
    let got = std::fs::metadata(&dest)
        .with_context(|| format!("stat {}", dest.display()))?
        .len();
    ensure!(
        got == size,
        "GET run {}: downloaded {got} bytes, expected {size}",
        run + 1
    );
    std::fs::remove_file(&dest).with_context(|| format!("removing {}", dest.display()))?;
    results.add(get_row, run, r);

    let (removed, _) = s
        .remove(key, None)
        .await
        .with_context(|| format!("REMOVE after run {}", run + 1))?;
    ensure!(removed, "server did not REMOVE {key} after run {}", run + 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// annexmesh over /annex/p2p/1.

/// A session with an annexmesh peer, and what keeps it alive.
struct Remote {
    session: StreamSession,
    /// The client swarm: the session's stream dies with it.
    _endpoint: Endpoint,
    server: Server,
    dir: PathBuf,
}

enum Server {
    Daemon(Daemon),
    InProcess(Box<Peer>),
}

impl Remote {
    async fn close(self) -> Result<()> {
        let Remote {
            session,
            _endpoint,
            server,
            dir,
        } = self;
        let closed = session
            .close()
            .await
            .map_err(|e| anyhow!("closing the session: {e}"));
        match server {
            Server::Daemon(mut d) => d.stop()?,
            Server::InProcess(p) => {
                p.shutdown().await;
            }
        }
        closed?;
        remove_tree(&dir)
    }
}

fn client_uuid() -> Result<Uuid> {
    Uuid::parse(CLIENT_UUID).map_err(|e| anyhow!("client uuid: {e}"))
}

/// Connects an `Endpoint` as `client_key`: AUTH with the empty token (the
/// server granted our PeerId), VERSION.
async fn connect(
    client_key: Keypair,
    addr: Multiaddr,
    expected: &Uuid,
) -> Result<(Endpoint, StreamSession)> {
    let transport = tcp_transport(&client_key).map_err(|e| anyhow!("tcp transport: {e}"))?;
    let endpoint =
        Endpoint::new(client_key, transport).map_err(|e| anyhow!("client endpoint: {e}"))?;
    let address = PeerAddress { addr, target: None };
    let token = AuthToken::parse("").ok_or_else(|| anyhow!("the empty token does not parse"))?;
    let (session, uuid) = endpoint
        .connect(&address, client_uuid()?, token)
        .await
        .map_err(|e| anyhow!("connecting to {address}: {e}"))?;
    ensure!(
        &uuid == expected,
        "server answered uuid {uuid}, expected {expected}"
    );
    Ok((endpoint, session))
}

async fn start_in_process(tmp: &Path) -> Result<Remote> {
    let dir = tmp.join("B-in-process");
    let init = node::init::init(&dir, "bench server", [7; 16])
        .map_err(|e| anyhow!("initializing {}: {e}", dir.display()))?;
    let client_key = Keypair::generate_ed25519();
    let server_key = Keypair::generate_ed25519();
    let peer = Peer::start(PeerOptions {
        store: Store::new(init.repo),
        transport: tcp_transport(&server_key).map_err(|e| anyhow!("tcp transport: {e}"))?,
        keypair: server_key,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        grants: vec![(client_key.public().to_peer_id(), ServeMode::ReadWrite)],
        limits: Limits::default(),
        serve_git: false,
        members: None,
    })
    .await
    .map_err(|e| anyhow!("starting the peer: {e}"))?;
    let addr = peer
        .addrs
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the peer listens nowhere"))?;
    println!("  in-process peer at {addr}");
    let expected = peer.store.uuid().clone();
    let (endpoint, session) = connect(client_key, addr, &expected).await?;
    Ok(Remote {
        session,
        _endpoint: endpoint,
        server: Server::InProcess(Box::new(peer)),
        dir,
    })
}

/// A running `annexmesh daemon`; killed when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// SIGTERM (through kill(1): no unsafe code here), then wait; SIGKILL if it
    /// does not stop.
    fn stop(&mut self) -> Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "annexmesh daemon exited with {status}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("annexmesh daemon did not stop on SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `annexmesh --repo <repo> …` with a clean git environment.
fn ours(cfg: &Config, repo: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(&cfg.ours);
    cmd.arg("--repo")
        .arg(repo)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null());
    cmd
}

fn start_daemon(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    home: &Path,
) -> Result<Remote> {
    let repo = tmp.join("B-daemon");
    let client_key = Keypair::generate_ed25519();
    let client_peer = client_key.public().to_peer_id().to_string();
    run_ok(ours(cfg, &repo, home).args(["init", "--description", "bench daemon"]))?;
    run_ok(ours(cfg, &repo, home).args(["grant", &client_peer, "--mode", "read-write"]))?;
    let expected = node::Repo::open(&repo)
        .map_err(|e| anyhow!("opening {}: {e}", repo.display()))?
        .uuid;

    let mut child = ours(cfg, &repo, home)
        .args(["daemon", "--no-git"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} daemon", cfg.ours.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the daemon has no stdout"))?;
    let mut daemon = Daemon { child };
    // Read its lines on a thread (and keep draining them) so that a silent
    // daemon cannot hang the bench.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let addr: Multiaddr = loop {
        let left = DAEMON_START.saturating_sub(started.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("the daemon printed no `listening on` line in {DAEMON_START:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = daemon.child.wait()?;
                bail!("the daemon exited ({status}) before listening")
            }
        };
        if let Some(a) = line.strip_prefix("listening on ") {
            let a: Multiaddr = a
                .trim()
                .parse()
                .with_context(|| format!("daemon address {a:?}"))?;
            // Loopback TCP (what `annexmesh init` configures).
            if a.to_string().starts_with("/ip4/127.0.0.1/tcp/") {
                break a;
            }
        }
    };
    println!("  daemon (pid {}) listening on {addr}", daemon.child.id());
    let (endpoint, session) = rt.block_on(connect(client_key, addr, &expected))?;
    Ok(Remote {
        session,
        _endpoint: endpoint,
        server: Server::Daemon(daemon),
        dir: repo,
    })
}

// ---------------------------------------------------------------------------
// Stock git-annex-shell p2pstdio.

fn git_annex_version(cfg: &Config, tmp: &Path) -> String {
    let Ok(mut cmd) = command_in(cfg, cfg.annex_bin.join("git-annex"), tmp, tmp) else {
        return "version unknown".into();
    };
    match run_ok(cmd.arg("version").arg("--raw")) {
        Ok(v) => format!("version {}", v.trim()),
        Err(_) => "version unknown".into(),
    }
}

fn make_stock_repo(cfg: &Config, repo: &Path, home: &Path) -> Result<()> {
    std::fs::create_dir_all(repo).with_context(|| format!("creating {}", repo.display()))?;
    run_ok(command_in(cfg, "git", repo, home)?.args(["init", "-q"]))?;
    run_ok(command_in(cfg, "git", repo, home)?.args(["config", "annex.uuid", STOCK_UUID]))?;
    run_ok(command_in(cfg, "git", repo, home)?.args(["annex", "init", "-q", "B"]))?;
    Ok(())
}

async fn start_stock(cfg: &Config, repo: &Path, home: &Path) -> Result<ShellConnection> {
    let expected = Uuid::parse(STOCK_UUID).map_err(|e| anyhow!("server uuid: {e}"))?;
    let home_s = home
        .to_str()
        .ok_or_else(|| anyhow!("temp dir path is not UTF-8"))?
        .to_owned();
    let path_s = path_with_git_annex(cfg)?
        .into_string()
        .map_err(|_| anyhow!("PATH is not UTF-8"))?;
    let envs = [
        ("HOME", home_s.as_str()),
        ("PATH", path_s.as_str()),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_AUTHOR_NAME", AUTHOR_NAME),
        ("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL),
        ("GIT_COMMITTER_NAME", AUTHOR_NAME),
        ("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL),
    ];
    let program = cfg.annex_bin.join("git-annex-shell");
    let (mut conn, uuid) =
        ShellConnection::start(&program, repo, &client_uuid()?, Some(&expected), &envs)
            .await
            .with_context(|| format!("starting {} p2pstdio", program.display()))?;
    ensure!(
        uuid == expected,
        "server answered uuid {uuid}, expected {expected}"
    );
    let v = conn
        .session
        .negotiate_version(4)
        .await
        .context("negotiating the protocol version")?;
    ensure!(v == 4, "server negotiated protocol version {v}, expected 4");
    println!("  git-annex-shell p2pstdio {}", repo.display());
    Ok(conn)
}

// ---------------------------------------------------------------------------
// The table.

fn print_table(cfg: &Config, results: &Results) {
    let size = cfg.size();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Results: {} MiB, {} round(s), {cores} cores, loopback; MiB/s = size / wall time;",
        cfg.mib, cfg.runs
    );
    println!(
        "cpu = median CPU seconds of this process and its children per transfer \
         (client + server, both ends); cores = cpu / median wall"
    );
    println!(
        "{:<34} {:>4} {:>8} {:>8} {:>9} {:>9} {:>7} {:>5}",
        "transfer", "runs", "min s", "median s", "MiB/s@min", "MiB/s@med", "cpu s", "cores"
    );
    for &row in &Row::ALL {
        let s = results.get(row);
        if s.wall.is_empty() {
            continue;
        }
        let (min, med, cpu) = (s.min(), s.median(), s.cpu_median());
        println!(
            "{:<34} {:>4} {min:>8.3} {med:>8.3} {:>9.1} {:>9.1} {cpu:>7.2} {:>5.2}",
            row.label(),
            s.wall.len(),
            mib_per_s(size, min),
            mib_per_s(size, med),
            cpu / med,
        );
    }

    // Throughput ratio a/b = time(b) / time(a).
    let ratio =
        |a: Row, b: Row, pick: fn(&Samples) -> f64| pick(results.get(b)) / pick(results.get(a));
    println!();
    println!("Throughput ratios (>1: the first is faster), from the best runs and the medians:");
    println!("{:<44} {:>7} {:>7} {:>8}", "", "min", "median", "goal");
    let lines: [(&str, Row, Row, f64); 8] = [
        (
            "daemon PUT / raw stream client→server",
            Row::DaemonPut,
            Row::RawUp,
            0.75,
        ),
        (
            "daemon GET / raw stream server→client",
            Row::DaemonGet,
            Row::RawDown,
            0.75,
        ),
        (
            "daemon PUT / git-annex p2pstdio PUT",
            Row::DaemonPut,
            Row::StockPut,
            2.0,
        ),
        (
            "daemon GET / git-annex p2pstdio GET",
            Row::DaemonGet,
            Row::StockGet,
            2.0,
        ),
        (
            "in-process PUT / raw stream client→server",
            Row::InProcPut,
            Row::RawUp,
            0.75,
        ),
        (
            "in-process GET / raw stream server→client",
            Row::InProcGet,
            Row::RawDown,
            0.75,
        ),
        (
            "in-process PUT / git-annex p2pstdio PUT",
            Row::InProcPut,
            Row::StockPut,
            2.0,
        ),
        (
            "in-process GET / git-annex p2pstdio GET",
            Row::InProcGet,
            Row::StockGet,
            2.0,
        ),
    ];
    for (name, a, b, goal) in lines {
        if results.get(a).wall.is_empty() || results.get(b).wall.is_empty() {
            continue;
        }
        println!(
            "{name:<44} {:>6.2}x {:>6.2}x {:>8}",
            ratio(a, b, Samples::min),
            ratio(a, b, Samples::median),
            format!("≥ {goal:.2}x")
        );
    }
    println!(
        "(goals are printed for the reader: this benchmark never judges timings. On a machine \
         shared with other jobs compare ratios within one run, and the cpu column.)"
    );
}
