//! Cluster uploads through our gateway against one plain node and against
//! git-annex's own gateway (git-annex-modern.md §3–4).
//!
//! ```text
//! cargo bench -p annexmesh-cli --bench cluster
//! ```
//!
//! Knobs (environment):
//!   ANNEXMESH_BENCH_MIB       size of the big file in MiB (default 1024)
//!   ANNEXMESH_BENCH_FILES     number of 4 KiB files for (iii) (default 1000)
//!   ANNEXMESH_BENCH_SESSIONS  parallel sessions of our client in (iii) (default 8)
//!   ANNEXMESH_BENCH_STREAMS   parallel libp2p streams of our client in (iii) (default 32,
//!                             the daemon's per-peer limit)
//!   ANNEXMESH_BENCH_DIR       where the temp dir goes (default: system temp dir)
//!   ANNEXMESH_GIT_ANNEX_BIN   dir with git-annex, git-annex-shell
//!
//! What runs, in one temp dir:
//!   * G: our gateway (`annexmesh initcluster`/`updatecluster`) of local nodes
//!     N1..N3; G2: git-annex's own (`git annex initcluster`/`updatecluster`,
//!     `annex.jobs 3`) of M1..M3; P: a plain repository; C: a stock git-annex
//!     client with G, G2 and P as ssh remotes over testdata/tools/fake-ssh.
//!   * (i) `git annex copy --to G-mycluster` (our binary as git-annex-shell)
//!     against `git annex copy --to P` (our binary as git-annex-shell): the
//!     same client, the cost of fanning out to 3 nodes. Next to it, the disk's
//!     floor measured here: the same size written by this process to one file,
//!     and to three files on three threads at once, each fsynced, once as `dd
//!     conv=fsync` does (write all, then fsync) and once pipelined as the
//!     store writes (writeback started every 8 MiB), so the ratios can be read
//!     against the disk's own. The pipelined floor is the fairer one: our
//!     writes overlap the disk, so they can beat the `dd` pattern.
//!   * (ii) the same copy to `G2-mycluster`, with the real git-annex-shell.
//!   * (iii) small files to our cluster: our client (`ShellConnection` over
//!     `annexmesh annex-shell p2pstdio G … --uuid <cluster>`), several
//!     sessions in parallel, one gateway process each; stock `git annex copy
//!     -J8 --to G-mycluster`; and our client over libp2p (`node::remote::Endpoint`
//!     in this process) to an `annexmesh daemon` on G, many streams on one
//!     connection, all served by one gateway process (whose group commit then
//!     spans every session).
//!
//! This is a measurement, not a test: it prints, never judges timings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use common::{
    AUTHOR_EMAIL, AUTHOR_NAME, AnnexBin, MIB, env_number, make_file_seeded as make_file,
    make_writable, path_with_git_annex, run_ok,
};
use node::process::ShellConnection;
use protocol::{AssociatedFile, Key, Uuid};

fn main() -> ExitCode {
    if !std::env::args().skip(1).any(|a| a == "--bench") {
        println!(
            "cluster: a benchmark; run it with `cargo bench -p annexmesh-cli --bench cluster`"
        );
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl AnnexBin for Config {
    fn annex_bin(&self) -> &Path {
        &self.annex_bin
    }
}

struct Config {
    mib: u64,
    files: u64,
    sessions: u64,
    streams: u64,
    annex_bin: PathBuf,
    fake_ssh: PathBuf,
    ours: PathBuf,
    home: PathBuf,
    shim: PathBuf,
}

/// A command with a clean environment, fake-ssh as git's (and git-annex's) ssh.
/// With `ours`, fake-ssh runs our binary as git-annex-shell.
fn cmd(
    cfg: &Config,
    program: impl AsRef<std::ffi::OsStr>,
    cwd: &Path,
    ours: bool,
) -> Result<Command> {
    let mut c = Command::new(program);
    c.current_dir(cwd)
        .env("PATH", path_with_git_annex(cfg)?)
        .env("HOME", &cfg.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
        .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
        .env("GIT_COMMITTER_NAME", AUTHOR_NAME)
        .env("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL)
        .env("GIT_ANNEX_USE_GIT_SSH", "1")
        .env("GIT_SSH", &cfg.fake_ssh)
        .env_remove("GIT_SSH_COMMAND")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("FAKE_SSH_LOG")
        .env_remove("ANNEXMESH_LOG")
        .stdin(Stdio::null());
    if ours {
        c.env("FAKE_SSH_GIT_ANNEX_SHELL", &cfg.shim);
    } else {
        c.env_remove("FAKE_SSH_GIT_ANNEX_SHELL");
    }
    Ok(c)
}

fn git(cfg: &Config, dir: &Path, args: &[&str]) -> Result<String> {
    run_ok(cmd(cfg, "git", dir, false)?.args(args))
}

fn sync_disks() {
    let _ = Command::new("sync").status();
}

fn timed(c: &mut Command) -> Result<Duration> {
    sync_disks();
    let t = Instant::now();
    run_ok(c)?;
    Ok(t.elapsed())
}

fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn run() -> Result<()> {
    let mib = env_number("ANNEXMESH_BENCH_MIB", 1024)?;
    ensure!(mib > 0, "ANNEXMESH_BENCH_MIB must be at least 1");
    let files = env_number("ANNEXMESH_BENCH_FILES", 1000)?;
    let sessions = env_number("ANNEXMESH_BENCH_SESSIONS", 8)?.max(1);
    let streams = env_number("ANNEXMESH_BENCH_STREAMS", 32)?.max(1);
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
    ensure!(
        annex_bin.join("git-annex-shell").exists(),
        "stock git-annex not found in {}: run scripts/setup-git-annex",
        annex_bin.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix("annexmesh-cluster-bench-")
        .tempdir_in(&base)
        .context("temp dir")?;
    let dir = tmp.path().to_path_buf();
    let result = bench(&dir, mib, files, sessions, streams, annex_bin, root);
    make_writable(&dir);
    drop(tmp);
    result
}

fn bench(
    dir: &Path,
    mib: u64,
    files: u64,
    sessions: u64,
    streams: u64,
    annex_bin: PathBuf,
    root: PathBuf,
) -> Result<()> {
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    std::fs::write(
        home.join(".gitconfig"),
        "[init]\n\tdefaultBranch = master\n[annex]\n\tsshcaching = false\n",
    )?;
    let shim_dir = dir.join("shim");
    std::fs::create_dir_all(&shim_dir)?;
    let shim = shim_dir.join("git-annex-shell");
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_annexmesh"));
    std::os::unix::fs::symlink(&ours, &shim)?;
    let cfg = Config {
        mib,
        files,
        sessions,
        streams,
        annex_bin,
        fake_ssh: root.join("testdata/tools/fake-ssh"),
        ours,
        home,
        shim,
    };
    let version = git(&cfg, dir, &["annex", "version", "--raw"]).unwrap_or_default();
    println!(
        "cluster bench: {} MiB, {} × 4 KiB files, git-annex {}, {} cores, in {}",
        cfg.mib,
        cfg.files,
        version.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.display()
    );

    // Repositories.
    for name in ["G", "G2", "P", "C", "N1", "N2", "N3", "M1", "M2", "M3"] {
        git(&cfg, dir, &["init", "-q", name])?;
        git(&cfg, &dir.join(name), &["annex", "init", "-q", name])?;
    }
    let g = dir.join("G");
    let g2 = dir.join("G2");
    git(&cfg, &g, &["commit", "-q", "--allow-empty", "-m", "init"])?;
    git(&cfg, &g2, &["commit", "-q", "--allow-empty", "-m", "init"])?;
    run_ok(cmd(&cfg, &cfg.ours, &g, false)?.args(["initcluster", "mycluster"]))?;
    git(&cfg, &g2, &["annex", "initcluster", "mycluster"])?;
    for (gw, prefix) in [(&g, "N"), (&g2, "M")] {
        for i in 1..=3 {
            let name = format!("{prefix}{i}");
            git(&cfg, gw, &["remote", "add", &name, &format!("../{name}")])?;
            git(
                &cfg,
                gw,
                &[
                    "config",
                    &format!("remote.{name}.annex-cluster-node"),
                    "mycluster",
                ],
            )?;
        }
    }
    run_ok(cmd(&cfg, &cfg.ours, &g, false)?.arg("updatecluster"))?;
    git(&cfg, &g2, &["annex", "updatecluster"])?;
    git(&cfg, &g2, &["config", "annex.jobs", "3"])?;
    for r in [&g, &g2] {
        git(&cfg, r, &["annex", "wanted", ".", "nothing"])?;
    }
    let cluster_uuid = Uuid::parse(git(&cfg, &g, &["config", "annex.cluster.mycluster"])?.trim())
        .map_err(|e| anyhow!("cluster uuid: {e}"))?;

    let c = dir.join("C");
    for r in ["G", "G2", "P"] {
        git(
            &cfg,
            &c,
            &[
                "remote",
                "add",
                r,
                &format!("localhost:{}", dir.join(r).display()),
            ],
        )?;
        git(&cfg, &c, &["fetch", "-q", r])?;
    }
    let info = git(&cfg, &c, &["annex", "info", "G"])?;
    ensure!(
        info.contains("G-mycluster"),
        "C does not see our cluster:\n{info}"
    );
    let info = git(&cfg, &c, &["annex", "info", "G2"])?;
    ensure!(
        info.contains("G2-mycluster"),
        "C does not see git-annex's cluster:\n{info}"
    );

    // (i) and (ii): the big file.
    let size = cfg.mib * MIB;
    make_file(&c.join("big.bin"), size, 1)?;
    git(&cfg, &c, &["annex", "add", "-q", "big.bin"])?;
    git(&cfg, &c, &["commit", "-q", "-m", "big"])?;
    let copy = |to: &str, ours: bool| -> Result<Duration> {
        timed(cmd(&cfg, "git", &c, ours)?.args(["annex", "copy", "-q", "--to", to, "big.bin"]))
    };
    let (dd1, dd3) = disk_floor(dir, size, false)?;
    println!(
        "(i)  disk floor, `dd conv=fsync` style (write all, then fsync), {} MiB: one file {:.2} s, three files on three threads {:.2} s ({:.2}×)",
        cfg.mib,
        dd1.as_secs_f64(),
        dd3.as_secs_f64(),
        dd3.as_secs_f64() / dd1.as_secs_f64()
    );
    let (floor1, floor3) = disk_floor(dir, size, true)?;
    println!(
        "(i)  disk floor, pipelined as the store writes (writeback every 8 MiB), {} MiB: one file {:.2} s, three files {:.2} s ({:.2}×)",
        cfg.mib,
        floor1.as_secs_f64(),
        floor3.as_secs_f64(),
        floor3.as_secs_f64() / floor1.as_secs_f64()
    );
    let plain = copy("P", true)?;
    println!(
        "(i)  copy {} MiB to one plain node P (our git-annex-shell):   {:7.2} s  {:7.1} MiB/s",
        cfg.mib,
        plain.as_secs_f64(),
        mibs(size, plain)
    );
    let ours_t = copy("G-mycluster", true)?;
    println!(
        "(i)  copy {} MiB to our 3-node cluster G-mycluster:            {:7.2} s  {:7.1} MiB/s  ratio to plain {:.2}× (goal ≤ 1.3×)",
        cfg.mib,
        ours_t.as_secs_f64(),
        mibs(size, ours_t),
        ours_t.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "(i)  against the pipelined floor: plain {:.2}× one file, cluster {:.2}× three files; above the floor: plain {:+.2} s, cluster {:+.2} s",
        plain.as_secs_f64() / floor1.as_secs_f64(),
        ours_t.as_secs_f64() / floor3.as_secs_f64(),
        plain.as_secs_f64() - floor1.as_secs_f64(),
        ours_t.as_secs_f64() - floor3.as_secs_f64()
    );
    let theirs = copy("G2-mycluster", false)?;
    println!(
        "(ii) copy {} MiB to git-annex's 3-node cluster G2-mycluster:   {:7.2} s  {:7.1} MiB/s  ours is {:.2}× faster (goal ≥ 3×)",
        cfg.mib,
        theirs.as_secs_f64(),
        mibs(size, theirs),
        theirs.as_secs_f64() / ours_t.as_secs_f64()
    );
    // Free the disk before the small files.
    git(
        &cfg,
        &c,
        &[
            "annex",
            "drop",
            "-q",
            "--force",
            "--from",
            "G-mycluster",
            "big.bin",
        ],
    )?;
    git(
        &cfg,
        &c,
        &[
            "annex",
            "drop",
            "-q",
            "--force",
            "--from",
            "G2-mycluster",
            "big.bin",
        ],
    )?;
    git(
        &cfg,
        &c,
        &["annex", "drop", "-q", "--force", "--from", "P", "big.bin"],
    )?;

    // (iii) small files, our client, parallel sessions straight to the gateway.
    if cfg.files > 0 {
        let small = dir.join("small");
        std::fs::create_dir_all(&small)?;
        let mut keys = Vec::new();
        for i in 0..cfg.files {
            let p = small.join(format!("f{i}.bin"));
            let k = make_file(&p, 4096, 1000 + i)?;
            keys.push((k, p));
        }
        sync_disks();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let t = Instant::now();
        let stored = rt.block_on(put_parallel(&cfg, &g, &cluster_uuid, keys.clone()))?;
        let d = t.elapsed();
        ensure!(
            stored == cfg.files,
            "only {stored} of {} files stored",
            cfg.files
        );
        println!(
            "(iii) {} × 4 KiB to our cluster, our client, {} parallel sessions:   {:7.2} s  {:7.0} files/s (goal ≥ 1000)",
            cfg.files,
            cfg.sessions,
            d.as_secs_f64(),
            cfg.files as f64 / d.as_secs_f64()
        );
        // The same files with the stock client, -J8, over fake-ssh.
        let cs = dir.join("small-c");
        std::fs::create_dir_all(&cs)?;
        for i in 0..keys.len() {
            // Other bytes than above, so the cluster lacks them.
            make_file(&cs.join(format!("s{i}.bin")), 4096, 500_000 + i as u64)?;
        }
        let cs_rel = "small-c";
        std::fs::rename(&cs, c.join(cs_rel))?;
        git(&cfg, &c, &["annex", "add", "-q", cs_rel])?;
        git(&cfg, &c, &["commit", "-q", "-m", "small"])?;
        let d = timed(cmd(&cfg, "git", &c, true)?.args([
            "annex",
            "copy",
            "-q",
            "-J8",
            "--to",
            "G-mycluster",
            cs_rel,
        ]))?;
        println!(
            "(iii) {} × 4 KiB to our cluster, stock `git annex copy -J8`:         {:7.2} s  {:7.0} files/s",
            cfg.files,
            d.as_secs_f64(),
            cfg.files as f64 / d.as_secs_f64()
        );
        // Our client over libp2p: many streams to one daemon (one gateway
        // process for every session). Other bytes again.
        let sl = dir.join("small-libp2p");
        std::fs::create_dir_all(&sl)?;
        let mut keys = Vec::new();
        for i in 0..cfg.files {
            let p = sl.join(format!("l{i}.bin"));
            keys.push((make_file(&p, 4096, 2_000_000 + i)?, p));
        }
        let mut daemon = start_daemon(&cfg, &g)?;
        let target = node::net::PeerAddress {
            addr: daemon.addr.clone(),
            target: Some(cluster_uuid.clone()),
        };
        sync_disks();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let t = Instant::now();
        let stored = rt.block_on(common::put_streams(
            daemon.client_key.clone(),
            &target,
            keys,
            cfg.streams,
            None,
        ))?;
        let d = t.elapsed();
        daemon.stop()?;
        ensure!(
            stored == cfg.files,
            "only {stored} of {} files stored over libp2p",
            cfg.files
        );
        println!(
            "(iii) {} × 4 KiB to our cluster, our client over libp2p, {} streams:  {:7.2} s  {:7.0} files/s (goal ≥ 1000)",
            cfg.files,
            cfg.streams,
            d.as_secs_f64(),
            cfg.files as f64 / d.as_secs_f64()
        );
    }
    Ok(())
}

/// The disk's floor for (i): `size` bytes written in 1 MiB writes and
/// fsynced, to one file, then to three files on three threads at once (the
/// page cache and the disk doing what they must for one node and for three).
/// `pipelined`: with the store's writeback pattern (start every 8 MiB, wait
/// for the 8 MiB before), else all written first and fsynced at the end.
fn disk_floor(dir: &Path, size: u64, pipelined: bool) -> Result<(Duration, Duration)> {
    const STEP: u64 = 8 * MIB;
    let write_one = |path: &Path, size: u64| -> Result<()> {
        use std::io::Write;
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut state: u64 = 0x2545_F491_4F6C_DD1D ^ size;
        let mut buf = vec![0u8; usize::try_from(MIB)?];
        let mut left = size;
        let (mut flushed, mut waited) = (0u64, 0u64);
        while left > 0 {
            // Fresh bytes per MiB, so nothing can be deduplicated or skipped.
            for word in buf.chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            let n = usize::try_from(left.min(MIB))?;
            f.write_all(&buf[..n])?;
            left -= n as u64;
            let written = size - left;
            if pipelined && written - flushed >= STEP {
                if flushed > waited {
                    node::sys::wait_writeback(&f, waited, flushed - waited);
                    waited = flushed;
                }
                node::sys::start_writeback(&f, flushed, written - flushed);
                flushed = written;
            }
        }
        f.sync_all()?;
        Ok(())
    };
    let paths: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("floor{i}.bin"))).collect();
    sync_disks();
    let t = Instant::now();
    write_one(&paths[0], size)?;
    let one = t.elapsed();
    std::fs::remove_file(&paths[0])?;
    sync_disks();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .map(|p| s.spawn(move || write_one(p, size)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow!("floor writer panicked"))
                .and_then(|r| r)
        })
    })?;
    let three = t.elapsed();
    for p in &paths {
        std::fs::remove_file(p)?;
    }
    sync_disks();
    Ok((one, three))
}

/// A running `annexmesh daemon` on the gateway's repository; killed when
/// dropped.
struct Daemon {
    child: std::process::Child,
    addr: libp2p::Multiaddr,
    client_key: libp2p::identity::Keypair,
}

impl Daemon {
    /// SIGTERM through kill(1) (no unsafe code here), then wait; SIGKILL if
    /// it does not stop.
    fn stop(&mut self) -> Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(anyhow!("annexmesh daemon did not stop on SIGTERM"))
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

/// `annexmesh init` and `grant` on the gateway's repository, then its daemon
/// on loopback; returns once it listens.
fn start_daemon(cfg: &Config, g: &Path) -> Result<Daemon> {
    use std::io::BufRead;
    let client_key = libp2p::identity::Keypair::generate_ed25519();
    let peer = client_key.public().to_peer_id().to_string();
    let repo = g.to_str().ok_or_else(|| anyhow!("G is not UTF-8"))?;
    run_ok(cmd(cfg, &cfg.ours, g, false)?.args(["--repo", repo, "init"]))?;
    run_ok(cmd(cfg, &cfg.ours, g, false)?.args([
        "--repo",
        repo,
        "grant",
        &peer,
        "--mode",
        "read-write",
    ]))?;
    let mut child = cmd(cfg, &cfg.ours, g, false)?
        .args([
            "--repo",
            repo,
            "daemon",
            "--no-git",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting annexmesh daemon")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the daemon has no stdout"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            let status = child.wait()?;
            return Err(anyhow!("the daemon exited ({status}) before listening"));
        };
        let line = line?;
        if let Some(a) = line.strip_prefix("listening on ") {
            break a
                .trim()
                .parse::<libp2p::Multiaddr>()
                .with_context(|| format!("daemon address {a:?}"))?;
        }
    };
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Daemon {
        child,
        addr,
        client_key,
    })
}

/// PUTs every file to the cluster through `sessions` parallel
/// `annexmesh annex-shell p2pstdio G … --uuid <cluster>` sessions.
async fn put_parallel(
    cfg: &Config,
    g: &Path,
    cluster: &Uuid,
    keys: Vec<(Key, PathBuf)>,
) -> Result<u64> {
    let client =
        Uuid::parse("cccccccc-cccc-4ccc-8ccc-cccccccccccc").map_err(|e| anyhow!("uuid: {e}"))?;
    let home = cfg
        .home
        .to_str()
        .ok_or_else(|| anyhow!("home is not UTF-8"))?
        .to_owned();
    let n = usize::try_from(cfg.sessions)?;
    let mut shares: Vec<Vec<(Key, PathBuf)>> = vec![Vec::new(); n];
    for (i, kp) in keys.into_iter().enumerate() {
        shares[i % n].push(kp);
    }
    let mut tasks = Vec::new();
    for share in shares {
        let program = cfg.shim.clone();
        let g = g.to_path_buf();
        let client = client.clone();
        let cluster = cluster.clone();
        let home = home.clone();
        tasks.push(tokio::spawn(async move {
            let envs = [("HOME", home.as_str()), ("GIT_CONFIG_NOSYSTEM", "1")];
            let (mut conn, _) =
                ShellConnection::start(&program, &g, &client, Some(&cluster), &envs).await?;
            conn.session.negotiate_version(4).await?;
            let mut stored = 0u64;
            for (k, p) in share {
                let o = conn
                    .session
                    .put(&k, AssociatedFile::none(), &p, &mut |_| {})
                    .await?;
                if o.stored {
                    stored += 1;
                }
            }
            conn.finish().await?;
            Ok::<u64, node::Error>(stored)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.context("session task")?.context("session")?;
    }
    Ok(total)
}
