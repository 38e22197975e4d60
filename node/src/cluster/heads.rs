//! A gateway daemon keeps its git branches in step with the other gateways
//! of its clusters ([`protocol::cluster::heads`]): it states its own heads
//! in `annexmesh/heads.log`, and fetches a head another gateway states and
//! it lacks from that gateway over the mesh (`git fetch` through
//! `annexmesh git-connect`, a `CONNECT git-upload-pack` on the daemon's own
//! connection), then moves its branch forward when that is a fast-forward.
//! A branch pushed to one gateway can so be pulled from every other.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::Uuid;
use protocol::cluster::heads::{self, Action, Ancestry, HEADS_LOG, Heads};
use protocol::cluster::topology::{self, TOPOLOGY_LOG};
use protocol::logs::view::ADDRESSES_LOG;

use crate::error::{Error, Result};
use crate::journal::log_clock_now;
use crate::meta::Meta;
use crate::store::Store;

/// How often the branches are looked at.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How long a gateway that could not be fetched from is left alone.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long one fetch may take.
const FETCH_DEADLINE: Duration = Duration::from_secs(120);

/// The program `git fetch` runs to reach another gateway: it is given
/// `git-connect --git-dir <dir> <service> <address>` (the `annexmesh`
/// binary).
#[derive(Debug, Clone)]
pub struct Helper(pub PathBuf);

/// The sync's memory between rounds.
struct State {
    /// The heads last stated in the log.
    stated: Option<Heads>,
    /// Gateways not to fetch from before the instant.
    resting: HashMap<Uuid, Instant>,
    /// Heads looked at and left as they are (branch, ours, theirs): not
    /// looked at again until one of them moves.
    settled: HashSet<(String, String, String)>,
}

/// Runs the sync for `store`'s repository until `meta` is gone.
pub async fn run(store: Store, meta: std::sync::Weak<Meta>, helper: Helper) {
    let state = Arc::new(std::sync::Mutex::new(State {
        stated: None,
        resting: HashMap::new(),
        settled: HashSet::new(),
    }));
    let mut every = tokio::time::interval(INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(m) = meta.upgrade() else { return };
        let (store, helper, state) = (store.clone(), helper.clone(), state.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            round(&store, &m, &helper, &mut state)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("syncing branches with the other gateways: {e}"),
            Err(e) => tracing::warn!("syncing branches with the other gateways: {e}"),
        }
    }
}

fn round(store: &Store, meta: &Meta, helper: &Helper, state: &mut State) -> Result<()> {
    let git_dir = store.repo().git_dir.clone();
    let me = store.uuid().clone();
    let peers = cluster_peers(&meta.file_lines(TOPOLOGY_LOG), &me);
    if peers.is_empty() {
        return Ok(());
    }
    let mine = own_heads(&git_dir)?;
    if state.stated.as_ref() != Some(&mine) {
        let content = store.journal().modify(HEADS_LOG, |old| {
            heads::record(old, &me, &mine, log_clock_now())
        })?;
        meta.record_local(HEADS_LOG, &content);
        state.stated = Some(mine.clone());
    }
    let lines = heads::read(meta.file_lines(HEADS_LOG).join("\n").as_bytes());
    let addresses = addresses(&meta.file_lines(ADDRESSES_LOG));
    let now = Instant::now();
    state.resting.retain(|_, until| *until > now);
    state
        .settled
        .retain(|(b, ours, _)| mine.get(b) == Some(ours));
    for want in heads::wants(&mine, &lines, &peers) {
        let ours = mine.get(&want.branch).cloned().unwrap_or_default();
        if state
            .settled
            .contains(&(want.branch.clone(), ours, want.sha.clone()))
        {
            continue;
        }
        if let Err(e) = catch_up(&git_dir, &want, &addresses, helper, state) {
            tracing::info!("branch {} at {}: {e}", want.branch, want.sha);
        }
    }
    Ok(())
}

/// Fetches `want` from the first gateway that answers and applies it.
fn catch_up(
    git_dir: &Path,
    want: &heads::Want,
    addresses: &BTreeMap<Uuid, Vec<String>>,
    helper: &Helper,
    state: &mut State,
) -> Result<()> {
    for gateway in &want.from {
        let fetched = heads::fetched_ref(gateway, &want.branch);
        let have = rev(git_dir, &fetched)?.is_some_and(|s| s == want.sha)
            || has_commit(git_dir, &want.sha);
        if !have {
            if state.resting.contains_key(gateway) {
                continue;
            }
            let Some(addr) = addresses.get(gateway).and_then(|a| a.first()) else {
                continue;
            };
            if let Err(e) = fetch(git_dir, helper, addr, &want.branch, &fetched) {
                tracing::info!("fetching {} from gateway {gateway}: {e}", want.branch);
                state
                    .resting
                    .insert(gateway.clone(), Instant::now() + RETRY_AFTER);
                continue;
            }
            if !has_commit(git_dir, &want.sha) {
                continue; // it moved on meanwhile: its next line says where
            }
        }
        return apply(git_dir, &want.branch, &want.sha, gateway, state);
    }
    Ok(())
}

/// Moves `branch` to `sha` when that is a fast-forward (or creates it).
fn apply(git_dir: &Path, branch: &str, sha: &str, from: &Uuid, state: &mut State) -> Result<()> {
    let current = rev(git_dir, branch)?;
    let ancestry = match &current {
        None => Ancestry::Absent,
        Some(c) if is_ancestor(git_dir, c, sha)? => Ancestry::Behind,
        Some(c) if is_ancestor(git_dir, sha, c)? => Ancestry::Ahead,
        Some(_) => Ancestry::Diverged,
    };
    let message = format!("annexmesh: {branch} from gateway {from}");
    let settle = |state: &mut State| {
        let ours = current.clone().unwrap_or_default();
        state
            .settled
            .insert((branch.to_owned(), ours, sha.to_owned()))
    };
    match heads::decide(ancestry, checked_out(git_dir, branch)?) {
        Action::Keep => {
            settle(state);
            Ok(())
        }
        Action::Create => git_ok(git_dir, &["update-ref", "-m", &message, branch, sha, ""]),
        Action::FastForward => {
            let old = current.unwrap_or_default();
            git_ok(git_dir, &["update-ref", "-m", &message, branch, sha, &old])?;
            tracing::info!("{branch} moved to {sha} as on gateway {from}");
            Ok(())
        }
        Action::Conflict => {
            if settle(state) {
                tracing::warn!(
                    "{branch} here and on gateway {from} ({sha}) have diverged, or it is checked \
                     out here; theirs is at {}: merge it to bring them together",
                    heads::fetched_ref(from, branch)
                );
            }
            Ok(())
        }
    }
}

/// The gateways that serve a cluster this one serves, by their topology
/// lines.
fn cluster_peers(lines: &[String], me: &Uuid) -> BTreeSet<Uuid> {
    let entries = topology::read(lines.join("\n").as_bytes());
    let Some(mine) = entries.get(me) else {
        return BTreeSet::new();
    };
    entries
        .iter()
        .filter(|(g, e)| *g != me && e.clusters.iter().any(|c| mine.clusters.contains(c)))
        .map(|(g, _)| g.clone())
        .collect()
}

/// Each repository's announced addresses (each ends in `/p2p/<PeerId>`).
fn addresses(lines: &[String]) -> BTreeMap<Uuid, Vec<String>> {
    let mut catalog = protocol::logs::catalog::Catalog::new();
    for l in lines {
        catalog.insert_line(ADDRESSES_LOG, l);
    }
    let view = protocol::logs::view::View::new(&catalog);
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|u| Uuid::parse(u).ok())
        .map(|u| {
            let addrs = view
                .addresses(u.as_str())
                .into_iter()
                .filter(|a| crate::net::PeerAddress::parse(a).is_ok())
                .collect();
            (u, addrs)
        })
        .collect()
}

/// This repository's synced branches.
pub fn own_heads(git_dir: &Path) -> Result<Heads> {
    let out = git(
        git_dir,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads/",
        ],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, r)| heads::synced(r))
        .take(heads::MAX_HEADS)
        .map(|(s, r)| (r.to_owned(), s.to_owned()))
        .collect())
}

fn fetch(git_dir: &Path, helper: &Helper, addr: &str, branch: &str, into: &str) -> Result<()> {
    let escape = |s: &str| s.replace('%', "%%").replace(' ', "% ");
    let url = format!(
        "ext::{} git-connect --git-dir {} %S {}",
        escape(&helper.0.to_string_lossy()),
        escape(&git_dir.to_string_lossy()),
        escape(addr)
    );
    let refspec = format!("+{branch}:{into}");
    let mut child = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args([
            "-c",
            "protocol.ext.allow=always",
            "fetch",
            "--quiet",
            "--no-tags",
        ])
        .args(["--no-write-fetch-head", &url, &refspec])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Git(format!("git fetch: {e}")))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(_)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.by_ref().take(4096).read_to_string(&mut err);
                }
                return Err(Error::Git(format!("git fetch: {}", err.trim())));
            }
            Ok(None) if started.elapsed() > FETCH_DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Git("git fetch took too long".into()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Error::Git(format!("git fetch: {e}"))),
        }
    }
}

fn rev(git_dir: &Path, name: &str) -> Result<Option<String>> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "-q", "--verify", &format!("{name}^{{commit}}")])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| Error::Git(format!("git rev-parse: {e}")))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

fn has_commit(git_dir: &Path, sha: &str) -> bool {
    rev(git_dir, sha).ok().flatten().is_some()
}

fn is_ancestor(git_dir: &Path, a: &str, b: &str) -> Result<bool> {
    let status = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["merge-base", "--is-ancestor", a, b])
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Error::Git(format!("git merge-base: {e}")))?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(Error::Git(format!(
            "git merge-base --is-ancestor {a} {b} failed"
        ))),
    }
}

/// Whether `branch` is checked out in the repository's work tree.
fn checked_out(git_dir: &Path, branch: &str) -> Result<bool> {
    if git(git_dir, &["rev-parse", "--is-bare-repository"])?.trim() == "true" {
        return Ok(false);
    }
    let head = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["symbolic-ref", "-q", "HEAD"])
        .output()
        .map_err(|e| Error::Git(format!("git symbolic-ref: {e}")))?;
    Ok(String::from_utf8_lossy(&head.stdout).trim() == branch)
}

fn git(git_dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .output()
        .map_err(|e| Error::Git(format!("git {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(Error::Git(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git_ok(git_dir: &Path, args: &[&str]) -> Result<()> {
    git(git_dir, args).map(|_| ())
}
