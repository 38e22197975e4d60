//! Throughput of `annexmesh` as `git-annex-shell p2pstdio` against the stock
//! `git-annex-shell p2pstdio` (git-annex from PyPI, see `scripts/setup-git-annex`).
//!
//! ```text
//! cargo bench -p annexmesh-cli --bench p2pstdio
//! ```
//!
//! Knobs (environment):
//!   ANNEXMESH_BENCH_MIB          size of the test file in MiB (default 1024)
//!   ANNEXMESH_BENCH_RUNS         protocol-client runs of PUT and GET (default 3)
//!   ANNEXMESH_BENCH_CLIENT_RUNS  stock-client copy/get runs (default 1; 0 skips)
//!   ANNEXMESH_BENCH_DIR          where the temp dir goes (default: system temp dir)
//!   ANNEXMESH_GIT_ANNEX_BIN      dir with git-annex, git-annex-shell
//!                                (default <workspace>/.cache/annex-bin)
//!
//! Two clients drive each server, in a fresh server repository made by the real
//! git-annex:
//!   * our client session (`node::process::ShellConnection`), identical for both
//!     servers: PUT is timed from sending `PUT` to `SUCCESS`, GET from sending
//!     `GET` to the verified (SHA-256) file renamed into place;
//!   * the stock git-annex client end to end over `testdata/tools/fake-ssh`:
//!     `git annex copy --to B` and `git annex get --from B`.
//!
//! This is a measurement, not a test: it never judges timings. Any failure of
//! the setup or of a transfer is an error and a non-zero exit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use common::{
    AUTHOR_EMAIL, AUTHOR_NAME, AnnexBin, MIB, Scratch, command_in, env_number, make_file,
    mib_per_s, path_with_git_annex, remove_tree, run_ok, timed, workspace_root,
};
use node::process::ShellConnection;
use protocol::{AssociatedFile, Key, Uuid};

const CLIENT_UUID: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const SERVER_UUID: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
const FILE_NAME: &str = "big.bin";

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`)
    // runs this binary without it: then do nothing, this is not a test.
    if !std::env::args().skip(1).any(|a| a == "--bench") {
        println!(
            "p2pstdio: a benchmark; run it with `cargo bench -p annexmesh-cli --bench p2pstdio`"
        );
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pstdio bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Settings read from the environment.
struct Config {
    mib: u64,
    runs: usize,
    client_runs: usize,
    base: PathBuf,
    annex_bin: PathBuf,
    fake_ssh: PathBuf,
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
        let client_runs = usize::try_from(env_number("ANNEXMESH_BENCH_CLIENT_RUNS", 1)?)?;
        let base = std::env::var_os("ANNEXMESH_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let root = workspace_root()?;
        let annex_bin = std::env::var_os("ANNEXMESH_GIT_ANNEX_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".cache/annex-bin"));
        for exe in ["git-annex", "git-annex-shell"] {
            let p = annex_bin.join(exe);
            ensure!(
                p.exists(),
                "stock {exe} not found at {}: run scripts/setup-git-annex first \
                 (or set ANNEXMESH_GIT_ANNEX_BIN)",
                p.display()
            );
        }
        let fake_ssh = root.join("testdata/tools/fake-ssh");
        ensure!(
            fake_ssh.exists(),
            "fake-ssh not found at {}",
            fake_ssh.display()
        );
        let ours = PathBuf::from(env!("CARGO_BIN_EXE_annexmesh"));
        ensure!(
            ours.exists(),
            "annexmesh binary not found at {}",
            ours.display()
        );
        Ok(Config {
            mib,
            runs,
            client_runs,
            base,
            annex_bin,
            fake_ssh,
            ours,
        })
    }

    fn size(&self) -> u64 {
        self.mib * MIB
    }
}

/// Which p2pstdio server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Ours,
    Stock,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Ours => "annexmesh",
            Server::Stock => "git-annex",
        }
    }
}

/// Timings of one operation against one server.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().map(Duration::as_secs_f64).collect();
        v.sort_by(f64::total_cmp);
        v
    }
    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

/// All timings, per operation (rows) and server (ours, stock).
struct Results {
    rows: Vec<(&'static str, Samples, Samples)>,
}

impl Results {
    fn new() -> Results {
        Results {
            rows: [
                "PUT  protocol client",
                "GET  protocol client",
                "copy --to  git-annex client",
                "get --from git-annex client",
                DROP_ROW_NAME,
            ]
            .into_iter()
            .map(|n| (n, Samples::default(), Samples::default()))
            .collect(),
        }
    }
    fn add(&mut self, row: usize, server: Server, d: Duration) {
        let (_, ours, stock) = &mut self.rows[row];
        match server {
            Server::Ours => ours.0.push(d),
            Server::Stock => stock.0.push(d),
        }
    }
}

const DROP_ROW_NAME: &str = "drop (local) git-annex client";
const ROW_PUT: usize = 0;
const ROW_GET: usize = 1;
const ROW_COPY: usize = 2;
const ROW_CLIENT_GET: usize = 3;
const ROW_DROP: usize = 4;

fn run() -> Result<()> {
    let cfg = Config::from_env()?;
    std::fs::create_dir_all(&cfg.base)
        .with_context(|| format!("creating {}", cfg.base.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("annexmesh-bench-")
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

fn bench(cfg: &Config, tmp: &Path) -> Result<Results> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("p2pstdio benchmark: annexmesh vs git-annex-shell p2pstdio");
    println!("  cores (available parallelism): {cores}");
    println!(
        "  file: {} MiB ({} bytes), protocol runs: {}, git-annex client runs: {}",
        cfg.mib,
        cfg.size(),
        cfg.runs,
        cfg.client_runs
    );
    println!("  annexmesh: {}", cfg.ours.display());
    println!(
        "  git-annex: {} ({})",
        cfg.annex_bin.join("git-annex-shell").display(),
        git_annex_version(cfg, tmp)
    );
    println!("  scratch:   {}", tmp.display());

    let home = tmp.join("home");
    let data_dir = tmp.join("data");
    let shim_dir = tmp.join("ourbin");
    for d in [&home, &data_dir, &shim_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let shim = shim_dir.join("git-annex-shell");
    std::os::unix::fs::symlink(&cfg.ours, &shim)
        .with_context(|| format!("linking {} to {}", shim.display(), cfg.ours.display()))?;

    let src = data_dir.join(FILE_NAME);
    let t = Instant::now();
    let key = make_file(&src, cfg.size())?;
    println!(
        "  generated {} in {:.2} s, key {key}",
        src.display(),
        t.elapsed().as_secs_f64()
    );
    println!();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;

    let mut results = Results::new();
    for server in [Server::Ours, Server::Stock] {
        let program = match server {
            Server::Ours => shim.clone(),
            Server::Stock => cfg.annex_bin.join("git-annex-shell"),
        };
        let repo = tmp.join(format!("B-{}", server.label()));
        make_server_repo(cfg, &repo, &home)?;
        rt.block_on(protocol_runs(
            cfg,
            server,
            &program,
            &repo,
            &home,
            &key,
            &src,
            tmp,
            &mut results,
        ))
        .with_context(|| format!("protocol client against {}", server.label()))?;
        remove_tree(&repo)?;

        if cfg.client_runs > 0 {
            client_runs(cfg, server, &shim, &home, &src, &key, tmp, &mut results)
                .with_context(|| format!("git-annex client against {}", server.label()))?;
        }
    }
    Ok(results)
}

fn git_annex_version(cfg: &Config, tmp: &Path) -> String {
    let Ok(mut cmd) = command_in(cfg, cfg.annex_bin.join("git-annex"), tmp, tmp) else {
        return "version unknown".into();
    };
    match run_ok(cmd.arg("version").arg("--raw")) {
        Ok(v) => format!("version {}", v.trim()),
        Err(_) => "version unknown".into(),
    }
}

/// A fresh server repository made by the real git-annex, with the fixed UUID.
fn make_server_repo(cfg: &Config, repo: &Path, home: &Path) -> Result<()> {
    std::fs::create_dir_all(repo).with_context(|| format!("creating {}", repo.display()))?;
    run_ok(command_in(cfg, "git", repo, home)?.args(["init", "-q"]))?;
    run_ok(command_in(cfg, "git", repo, home)?.args(["config", "annex.uuid", SERVER_UUID]))?;
    run_ok(command_in(cfg, "git", repo, home)?.args(["annex", "init", "-q", "B"]))?;
    Ok(())
}

fn check_exit(status: std::process::ExitStatus, what: &str) -> Result<()> {
    ensure!(status.success(), "{what} exited with {status}");
    Ok(())
}

/// PUT and GET with our client session, `cfg.runs` times each, on one connection.
#[allow(clippy::too_many_arguments)]
async fn protocol_runs(
    cfg: &Config,
    server: Server,
    program: &Path,
    repo: &Path,
    home: &Path,
    key: &Key,
    src: &Path,
    tmp: &Path,
    results: &mut Results,
) -> Result<()> {
    let client = Uuid::parse(CLIENT_UUID).map_err(|e| anyhow!("client uuid: {e}"))?;
    let expected = Uuid::parse(SERVER_UUID).map_err(|e| anyhow!("server uuid: {e}"))?;
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
    let (mut conn, uuid) = ShellConnection::start(program, repo, &client, Some(&expected), &envs)
        .await
        .with_context(|| format!("starting {} p2pstdio {}", program.display(), repo.display()))?;
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

    let size = cfg.size();
    let s = &mut conn.session;
    for run in 0..cfg.runs {
        if run > 0 {
            let (removed, _) = s
                .remove(key, None)
                .await
                .context("REMOVE between PUT runs")?;
            ensure!(removed, "server did not REMOVE {key} between PUT runs");
        }
        let t = Instant::now();
        let outcome = s
            .put(key, AssociatedFile::none(), src, &mut |_| {})
            .await
            .with_context(|| format!("PUT run {}", run + 1))?;
        let d = t.elapsed();
        ensure!(
            outcome.stored && !outcome.already_had,
            "PUT run {}: server did not store the content ({outcome:?})",
            run + 1
        );
        report("PUT", server, run, size, d);
        results.add(ROW_PUT, server, d);
    }

    let partial = tmp.join("download.partial");
    let dest = tmp.join("download.bin");
    for run in 0..cfg.runs {
        for p in [&partial, &dest] {
            if p.exists() {
                std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        let t = Instant::now();
        let ok = s
            .get(key, AssociatedFile::none(), &partial, &dest, &mut |_| {})
            .await
            .with_context(|| format!("GET run {}", run + 1))?;
        let d = t.elapsed();
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
        report("GET", server, run, size, d);
        results.add(ROW_GET, server, d);
    }

    let (removed, _) = s.remove(key, None).await.context("final REMOVE")?;
    ensure!(removed, "server did not REMOVE {key} at the end");
    let status = conn.finish().await.context("closing the session")?;
    check_exit(status, &format!("{} p2pstdio", program.display()))?;
    Ok(())
}

fn report(op: &str, server: Server, run: usize, size: u64, d: Duration) {
    let secs = d.as_secs_f64();
    println!(
        "  {op:<5} {:<10} run {}: {secs:>7.3} s  {:>8.1} MiB/s",
        server.label(),
        run + 1,
        mib_per_s(size, secs)
    );
}

/// The stock git-annex client end to end through fake-ssh: `copy --to B`,
/// `drop`, `get --from B`, `cfg.client_runs` times.
#[allow(clippy::too_many_arguments)]
fn client_runs(
    cfg: &Config,
    server: Server,
    shim: &Path,
    home: &Path,
    src: &Path,
    key: &Key,
    tmp: &Path,
    results: &mut Results,
) -> Result<()> {
    let server_repo = tmp.join(format!("B-client-{}", server.label()));
    let client_repo = tmp.join(format!("A-client-{}", server.label()));
    make_server_repo(cfg, &server_repo, home)?;
    std::fs::create_dir_all(&client_repo)
        .with_context(|| format!("creating {}", client_repo.display()))?;

    let cmd = |program: &str| -> Result<Command> {
        let mut c = command_in(cfg, program, &client_repo, home)?;
        c.env("GIT_ANNEX_USE_GIT_SSH", "1")
            .env("GIT_SSH", &cfg.fake_ssh)
            .env_remove("GIT_SSH_COMMAND");
        if server == Server::Ours {
            c.env("FAKE_SSH_GIT_ANNEX_SHELL", shim);
        }
        Ok(c)
    };
    let git = |args: &[&str]| -> Result<String> { run_ok(cmd("git")?.args(args)) };

    git(&["init", "-q"])?;
    git(&["annex", "init", "-q", "A"])?;
    let file = client_repo.join(FILE_NAME);
    std::fs::copy(src, &file)
        .with_context(|| format!("copying {} to {}", src.display(), file.display()))?;
    git(&["annex", "add", "-q", FILE_NAME])?;
    git(&["commit", "-q", "-m", "add big file"])?;
    let found = git(&["annex", "lookupkey", FILE_NAME])?;
    ensure!(
        found.trim() == key.as_str(),
        "git annex add made key {} but the bench computed {key}",
        found.trim()
    );
    let url = format!("localhost:{}", server_repo.display());
    git(&["remote", "add", "B", &url])?;
    // Learn B's uuid (configlist through fake-ssh) and its git-annex branch.
    git(&["annex", "sync", "-q", "--no-content", "B"])?;
    let remote_uuid = git(&["config", "remote.B.annex-uuid"])?;
    ensure!(
        remote_uuid.trim() == SERVER_UUID,
        "client learned uuid {:?} for B, expected {SERVER_UUID}",
        remote_uuid.trim()
    );

    let size = cfg.size();
    for run in 0..cfg.client_runs {
        if run > 0 {
            // B must not have it for the next copy to transfer again.
            git(&["annex", "drop", "-q", "--from", "B", FILE_NAME])?;
        }
        let d = timed(cmd("git")?.args(["annex", "copy", "-q", "--to", "B", FILE_NAME]))
            .with_context(|| format!("git annex copy run {}", run + 1))?;
        ensure!(
            server_has(cfg, &server_repo, home, key)?,
            "after git annex copy, B does not have {key}"
        );
        report("copy", server, run, size, d);
        results.add(ROW_COPY, server, d);

        let d = timed(cmd("git")?.args(["annex", "drop", "-q", FILE_NAME]))
            .with_context(|| format!("git annex drop run {}", run + 1))?;
        ensure!(
            std::fs::metadata(&file).is_err(),
            "after git annex drop, {} still has content",
            file.display()
        );
        results.add(ROW_DROP, server, d);
        println!(
            "  drop  {:<10} run {}: {:>7.3} s",
            server.label(),
            run + 1,
            d.as_secs_f64()
        );

        let d = timed(cmd("git")?.args(["annex", "get", "-q", "--from", "B", FILE_NAME]))
            .with_context(|| format!("git annex get run {}", run + 1))?;
        let got = std::fs::metadata(&file)
            .with_context(|| format!("after git annex get, stat {}", file.display()))?
            .len();
        ensure!(
            got == size,
            "after git annex get, {} has {got} bytes, expected {size}",
            file.display()
        );
        report("get", server, run, size, d);
        results.add(ROW_CLIENT_GET, server, d);
    }

    remove_tree(&client_repo)?;
    remove_tree(&server_repo)?;
    Ok(())
}

/// Whether the server repository has the key's content (`git annex contentlocation`).
fn server_has(cfg: &Config, repo: &Path, home: &Path, key: &Key) -> Result<bool> {
    let out = command_in(cfg, "git", repo, home)?
        .args(["annex", "contentlocation", key.as_str()])
        .output()
        .context("running git annex contentlocation")?;
    Ok(out.status.success())
}

fn print_table(cfg: &Config, results: &Results) {
    let size = cfg.size();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Results: {} MiB file, {cores} cores; MiB/s = file size / time; \
         ratio = annexmesh throughput / git-annex throughput (>1: annexmesh faster)",
        cfg.mib
    );
    println!(
        "{:<31} {:<10} {:>4} {:>9} {:>9} {:>10} {:>10}",
        "operation", "server", "runs", "min s", "median s", "MiB/s@min", "MiB/s@med"
    );
    for (name, ours, stock) in &results.rows {
        for (server, samples) in [(Server::Ours, ours), (Server::Stock, stock)] {
            if samples.0.is_empty() {
                continue;
            }
            let (min, med) = (samples.min(), samples.median());
            let (rate_min, rate_med) = if *name == DROP_ROW_NAME {
                ("-".to_owned(), "-".to_owned())
            } else {
                (
                    format!("{:.1}", mib_per_s(size, min)),
                    format!("{:.1}", mib_per_s(size, med)),
                )
            };
            println!(
                "{name:<31} {:<10} {:>4} {min:>9.3} {med:>9.3} {rate_min:>10} {rate_med:>10}",
                server.label(),
                samples.0.len(),
            );
        }
        if !ours.0.is_empty() && !stock.0.is_empty() {
            println!(
                "{:<31} ratio annexmesh/git-annex: min {:.2}x, median {:.2}x",
                "",
                stock.min() / ours.min(),
                stock.median() / ours.median()
            );
        }
    }
    println!();
    println!("Summary (medians):");
    for (name, ours, stock) in &results.rows {
        if ours.0.is_empty() || stock.0.is_empty() {
            continue;
        }
        let (o, g) = (ours.median(), stock.median());
        if *name == DROP_ROW_NAME {
            println!(
                "{name:<31} annexmesh {o:>7.2} s {:>13} | git-annex {g:>7.2} s {:>13} | ratio {:.2}x",
                "",
                "",
                g / o
            );
            continue;
        }
        println!(
            "{name:<31} annexmesh {o:>7.2} s {:>7.0} MiB/s | git-annex {g:>7.2} s {:>7.0} MiB/s | ratio {:.2}x",
            mib_per_s(size, o),
            mib_per_s(size, g),
            g / o
        );
    }
    println!(
        "(drop moves no content: its ratio is git-annex time / annexmesh time; \
         it includes the server's LOCKCONTENT)"
    );
}
