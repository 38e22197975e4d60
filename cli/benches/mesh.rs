//! The mesh (issue 9), measured, never judged:
//!
//! * 1 000 files of 4 KiB uploaded to a cluster of three **mesh** nodes
//!   through a gateway daemon, over many libp2p streams of one client: the
//!   gateway dialling its nodes over its daemon's one swarm (one connection
//!   per node, a stream per session) against a new swarm per session, as
//!   before (`ANNEXMESH_NO_SWARM_REUSE=1` on the gateway daemon). Both in
//!   this run, on the same daemons, files/s and the ratio printed.
//!
//! ```text
//! cargo bench -p annexmesh-cli --bench mesh
//! ```
//!
//! Knobs: ANNEXMESH_BENCH_FILES (default 1000), ANNEXMESH_BENCH_STREAMS
//! (default 32), ANNEXMESH_BENCH_DIR (where the temp dir goes).

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use common::{annexmesh, env_number, make_file_seeded, ours, run_ok};

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Daemon {
    child: Child,
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn daemon(repo: &Path, env: &[(&str, &str)]) -> Result<Daemon> {
    let mut cmd = Command::new(ours());
    cmd.arg("--repo")
        .arg(repo)
        .args(["daemon", "--no-git", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdout(Stdio::piped())
        .stderr(if std::env::var_os("ANNEXMESH_BENCH_DEBUG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("starting a daemon")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            bail!("a daemon exited before listening");
        };
        if let Some(a) = line?.strip_prefix("listening on ") {
            break a.trim().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Daemon { child, addr })
}

/// Waits (at most a minute) until `check` holds.
fn await_true(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if check()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("gave up waiting for {what}")
}

fn run() -> Result<()> {
    let files = env_number("ANNEXMESH_BENCH_FILES", 1000)?;
    let streams = env_number("ANNEXMESH_BENCH_STREAMS", 32)?;
    let tmp = match std::env::var_os("ANNEXMESH_BENCH_DIR") {
        Some(d) => tempfile::Builder::new()
            .prefix("annexmesh-mesh-bench-")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("annexmesh-mesh-bench-")
            .tempdir()?,
    };
    let root = tmp.path();
    let g = root.join("G");
    annexmesh(&g, &["init", "--description", "G"])?;
    // The client is let in by a grant, read when the daemon starts.
    let client_key = libp2p::identity::Keypair::generate_ed25519();
    annexmesh(
        &g,
        &["grant", &client_key.public().to_peer_id().to_string()],
    )?;
    let mut nodes = Vec::new();
    let mut gd = daemon(&g, &[])?;
    for i in 1..=3 {
        let m = root.join(format!("M{i}"));
        annexmesh(&m, &["init", "--description", &format!("M{i}")])?;
        let d = daemon(&m, &[])?;
        let invite = annexmesh(&g, &["invite"])?;
        annexmesh(&m, &["join", invite.trim()])?;
        nodes.push((m, d));
    }
    annexmesh(&g, &["initcluster", "c"])?;
    for i in 1..=3 {
        let name = format!("M{i}");
        // `peers` (from the daemon) can list a member before the journal
        // that `cluster add-node` reads does: retried until it takes it.
        await_true(&format!("G to add {name}"), || {
            Ok(annexmesh(&g, &["cluster", "add-node", &name, &name]).is_ok())
        })?;
    }
    annexmesh(&g, &["updatecluster"])?;
    let cluster = run_ok(
        Command::new("git")
            .arg("--git-dir")
            .arg(&g)
            .args(["config", "annex.cluster.c"]),
    )?
    .trim()
    .to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{files} x 4 KiB to a cluster of 3 mesh nodes through a gateway daemon, {streams} streams of one client"
    );
    let mut results = Vec::new();
    for (label, reuse) in [
        ("one swarm per daemon (now)", true),
        ("a swarm per session (before)", false),
        ("one swarm per daemon (again)", true),
    ] {
        if !reuse || results.len() == 2 {
            drop(gd);
            let env: &[(&str, &str)] = if reuse {
                &[]
            } else {
                &[(node::remote::NO_SWARM_REUSE, "1")]
            };
            gd = daemon(&g, env)?;
        }
        let dir = root.join(format!("files-{}", results.len()));
        std::fs::create_dir_all(&dir)?;
        let mut keys = Vec::new();
        for i in 0..files {
            let p = dir.join(format!("f{i}"));
            let k = make_file_seeded(&p, 4096, 1_000_000 * results.len() as u64 + i)?;
            keys.push((k, p));
        }
        let target = node::net::PeerAddress::parse(&format!("{}/annex-uuid/{cluster}", gd.addr))
            .map_err(|e| anyhow!("address: {e}"))?;
        let start = Instant::now();
        let stored = rt.block_on(common::put_streams(
            client_key.clone(),
            &target,
            keys,
            streams,
            Some(1),
        ))?;
        let secs = start.elapsed().as_secs_f64();
        if stored != files {
            bail!("{label}: {stored} of {files} stored");
        }
        println!(
            "  {label:<30} {secs:>7.2} s   {:>7.0} files/s",
            files as f64 / secs
        );
        results.push(secs);
    }
    let now = (results[0] + results[2]) / 2.0;
    println!(
        "  ratio, a swarm per session / one swarm (mean of the two runs): {:.2}x",
        results[1] / now
    );
    drop(gd);
    drop(nodes);
    Ok(())
}
