//! `GET /keys` over a large catalog (issue 12), measured, never judged: a
//! repository whose branch holds 1 000 000 location logs, its daemon, and
//! one listing read line by line through a plain HTTP/1.1 client. Prints
//! the time to the first line, lines per second, and the daemon's RSS
//! before, its peak while streaming (sampled from /proc every 10 000 lines)
//! and its high-water mark since start (`VmHWM`, the catalog's load included).
//!
//! ```text
//! cargo bench -p annexmesh-cli --bench api
//! ```
//!
//! Knobs: ANNEXMESH_BENCH_KEYS (default 1000000), ANNEXMESH_BENCH_DIR.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use common::env_number;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn ours() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_annexmesh"))
}

fn annexmesh(repo: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(ours())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "annexmesh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn run() -> Result<()> {
    let n = usize::try_from(env_number("ANNEXMESH_BENCH_KEYS", 1_000_000)?)?;
    let tmp = match std::env::var_os("ANNEXMESH_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let repo = tmp.path().join("r");
    annexmesh(&repo, &["init", "--description", "bench"])?;
    let git_dir = if repo.join(".git").exists() {
        repo.join(".git")
    } else {
        repo.clone()
    };
    let uuid = node::Repo::open(&repo)?.uuid.to_string();
    let made = Instant::now();
    let content = protocol::logs::presence::record(
        b"",
        &uuid,
        protocol::logs::presence::Status::Present,
        1_700_000_000,
    );
    // One commit (merging batches into a growing branch costs far more).
    let files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let key = protocol::Key::parse(&format!("SHA256E-s{i}--{i:064x}"))?;
            Ok((
                protocol::logs::presence::location_log_path(&key),
                content.clone(),
            ))
        })
        .collect::<Result<_>>()?;
    node::branch::commit_catalog_files(&git_dir, &files, "bench keys")?;
    drop(files);
    eprintln!(
        "{n} keys committed in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let mut child = Command::new(ours())
        .arg("--repo")
        .arg(&repo)
        .args([
            "daemon",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let stdout = child.stdout.take().context("stdout")?;
    let daemon = Daemon(child);
    let mut lines = BufReader::new(stdout).lines();
    let api = loop {
        let line = lines.next().context("the daemon ended")??;
        if let Some(a) = line.strip_prefix("api listening on http://") {
            break a.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    eprintln!("daemon up in {:.1} s", started.elapsed().as_secs_f64());
    let token = annexmesh(&repo, &["api", "token"])?.trim().to_owned();
    let pid = daemon.0.id();
    let before = proc_kib(pid, "VmRSS:")?;

    let asked = Instant::now();
    let mut s = TcpStream::connect(&api)?;
    write!(
        s,
        "GET /keys HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 16, s);
    let mut head = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        head.push_str(&h);
    }
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /keys: {head}");
    }
    let (mut count, mut bytes, mut peak) = (0usize, 0usize, before);
    let mut first = None;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let len = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        let mut chunk = vec![0u8; len + 2];
        r.read_exact(&mut chunk)?;
        if len == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..len]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            pending.drain(..=i);
            first.get_or_insert_with(|| asked.elapsed());
            count += 1;
            bytes += i + 1;
            if count % 10_000 == 0 {
                peak = peak.max(proc_kib(pid, "VmRSS:")?);
            }
        }
    }
    let took = asked.elapsed();
    let hwm = proc_kib(pid, "VmHWM:")?;
    if count != n {
        bail!("listed {count} keys of {n}");
    }
    println!(
        "GET /keys over {n} keys: first line after {:.1} ms, {:.0} lines/s ({:.1} MiB in {:.2} s)",
        first.unwrap_or_default().as_secs_f64() * 1000.0,
        count as f64 / took.as_secs_f64(),
        bytes as f64 / 1048576.0,
        took.as_secs_f64()
    );
    println!(
        "daemon RSS: {:.1} MiB before, peak {:.1} MiB while streaming (+{:.1} MiB), high-water mark {:.1} MiB",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(before) as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(daemon);
    Ok(())
}
