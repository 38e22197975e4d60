//! What the benchmark binaries share: scratch directories git-annex can make
//! read-only, pseudo-random content with its key, and a clean environment for
//! running stock git and git-annex.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use protocol::Key;
use protocol::verify::Hash;

pub const MIB: u64 = 1024 * 1024;

/// The `annexmesh` binary under test.
pub fn ours() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_annexmesh"))
}

/// `annexmesh --repo REPO ARGS…`: its stdout, or why it failed.
pub fn annexmesh(repo: &Path, args: &[&str]) -> Result<String> {
    run_ok(Command::new(ours()).arg("--repo").arg(repo).args(args))
}
pub const AUTHOR_NAME: &str = "annexmesh bench";
pub const AUTHOR_EMAIL: &str = "bench@annexmesh.invalid";

/// A bench configuration that knows where stock git-annex is.
pub trait AnnexBin {
    fn annex_bin(&self) -> &Path;
}

pub fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{name}={v:?} is not a non-negative integer")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(anyhow!("{name}: {e}")),
    }
}

pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cli crate is not inside a workspace"))
}

/// The temp dir of one run. git-annex leaves read-only directories behind, so
/// it is made writable again before it is removed.
pub struct Scratch {
    pub dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    pub fn cleanup(&mut self) -> Result<()> {
        if let Some(d) = self.dir.take() {
            let path = d.path().to_path_buf();
            make_writable(&path);
            d.close()
                .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Gives the owner write permission on every directory under `path` (best effort).
pub fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perm = meta.permissions();
    if perm.mode() & 0o700 != 0o700 {
        perm.set_mode(perm.mode() | 0o700);
        let _ = std::fs::set_permissions(path, perm);
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Removes a directory tree that git-annex may have made read-only.
pub fn remove_tree(path: &Path) -> Result<()> {
    if path.exists() {
        make_writable(path);
        std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Writes `size` pseudo-random bytes (xorshift64* over u64 words) to `path` and
/// returns their SHA256E key with extension `.bin`.
pub fn make_file(path: &Path, size: u64) -> Result<Key> {
    make_file_seeded(path, size, 0)
}

/// [`make_file`] with a seed, for many different files.
pub fn make_file_seeded(path: &Path, size: u64, seed: u64) -> Result<Key> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Hash::Sha256.hasher();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x1000_0000_01B3);
    let mut buf = vec![0u8; (1 << 20).min(usize::try_from(size)?.max(8))];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = usize::try_from(left.min(buf.len() as u64))?;
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Key::from_hash("SHA256E", size, &hasher.finish_hex(), ".bin")
        .map_err(|e| anyhow!("building the key: {e}"))
}

/// PATH with the stock git-annex first.
pub fn path_with_git_annex(cfg: &impl AnnexBin) -> Result<OsString> {
    let mut parts = vec![cfg.annex_bin().to_path_buf()];
    if let Some(old) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(parts).context("building PATH")
}

/// A command with a clean environment for git and git-annex (like the tests'
/// `support::command_in`).
pub fn command_in(
    cfg: &impl AnnexBin,
    program: impl AsRef<std::ffi::OsStr>,
    cwd: &Path,
    home: &Path,
) -> Result<Command> {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env("PATH", path_with_git_annex(cfg)?)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
        .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
        .env("GIT_COMMITTER_NAME", AUTHOR_NAME)
        .env("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("FAKE_SSH_GIT_ANNEX_SHELL")
        .env_remove("FAKE_SSH_LOG")
        .stdin(Stdio::null());
    Ok(cmd)
}

/// Runs a command to completion; an error (with its output) unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and returns how long it took.
pub fn timed(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    run_ok(cmd)?;
    Ok(t.elapsed())
}

pub fn mib_per_s(size: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    size as f64 / MIB as f64 / secs
}

/// PUTs every file over `streams` libp2p streams of one client endpoint (one
/// connection) to `target`: each stream a session carrying its share of the
/// files, or a new session every `per_session` files (`Some(1)`: a session
/// per file, as many short-lived clients would). Returns how many were stored.
pub async fn put_streams(
    key: libp2p::identity::Keypair,
    target: &node::net::PeerAddress,
    keys: Vec<(Key, PathBuf)>,
    streams: u64,
    per_session: Option<usize>,
) -> Result<u64> {
    use protocol::{AssociatedFile, Uuid};
    let client =
        Uuid::parse("cccccccc-cccc-4ccc-8ccc-cccccccccccc").map_err(|e| anyhow!("uuid: {e}"))?;
    let token =
        protocol::AuthToken::parse("").ok_or_else(|| anyhow!("the empty token does not parse"))?;
    let transport = node::net::tcp_transport(&key).map_err(|e| anyhow!("transport: {e}"))?;
    let endpoint = std::sync::Arc::new(
        node::remote::Endpoint::new(key, transport).map_err(|e| anyhow!("endpoint: {e}"))?,
    );
    let n = usize::try_from(streams.max(1))?;
    let mut shares: Vec<Vec<(Key, PathBuf)>> = vec![Vec::new(); n];
    for (i, kp) in keys.into_iter().enumerate() {
        shares[i % n].push(kp);
    }
    let mut tasks = Vec::new();
    for share in shares {
        let (endpoint, target, client, token) = (
            endpoint.clone(),
            target.clone(),
            client.clone(),
            token.clone(),
        );
        let per = per_session.unwrap_or(share.len()).max(1);
        tasks.push(tokio::spawn(async move {
            let mut stored = 0u64;
            for batch in share.chunks(per) {
                let (mut session, _) = endpoint
                    .connect(&target, client.clone(), token.clone())
                    .await?;
                for (k, p) in batch {
                    let o = session
                        .put(k, AssociatedFile::none(), p, &mut |_| {})
                        .await?;
                    if o.stored {
                        stored += 1;
                    }
                }
                session.close().await?;
            }
            Ok::<u64, node::Error>(stored)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.context("stream task")?.context("stream session")?;
    }
    Ok(total)
}
