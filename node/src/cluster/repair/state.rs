//! The repairer's state as files, between the daemon and the command line.
//!
//! `annex/annexmesh/repair`, rewritten atomically by the daemon when it
//! changes, tab-separated:
//!
//! ```text
//! summary <cluster> <keys> <under-replicated> <queued> <transferring> <errors> <missing>
//! key <cluster> <key> <copies> <min> <max> <under 0|1> <queued 0|1> <error or -> <node>=<state>,…
//! ```
//!
//! One `key` line per key that is not simply at its replication (under
//! `min`, queued, transferring, in error, or missing somewhere), at most
//! [`MAX_KEY_LINES`]. `annexmesh recover` leaves one file per request in
//! `annex/annexmesh/recover/` (a key per line, or `*` for all), which the
//! daemon takes.

use std::path::{Path, PathBuf};

use protocol::Key;
use protocol::replication::repair::{Env, Planner};
use protocol::replication::status::{KeyStatus, NodeState, StateKind, Summary};

/// The most keys listed in the state file.
pub const MAX_KEY_LINES: usize = 100_000;
/// The most recover requests taken per look.
const MAX_REQUESTS: usize = 1024;

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("repair")
}

pub fn recover_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("recover")
}

/// One key's lines worth telling.
fn troubled(s: &KeyStatus) -> bool {
    s.under_replicated
        || s.queued
        || s.error.is_some()
        || s.has(StateKind::Transferring, None)
        || s.has(StateKind::Missing, None)
        || s.has(StateKind::Error, None)
}

pub fn state_name(s: &NodeState) -> &'static str {
    match s {
        NodeState::Present => "present",
        NodeState::Transferring => "transferring",
        NodeState::Dropping => "dropping",
        NodeState::Error(_) => "error",
        NodeState::Missing => "missing",
    }
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One cluster's lines.
pub fn render(cluster: &protocol::Uuid, planner: &Planner, env: &Env<'_>) -> String {
    let mut summary = Summary::default();
    let mut keys = String::new();
    let mut listed = 0;
    let filter = protocol::replication::status::Filter::default();
    for s in planner.statuses(env, &filter) {
        summary.add(&s);
        if listed < MAX_KEY_LINES && troubled(&s) {
            listed += 1;
            let nodes: Vec<String> = s
                .nodes
                .iter()
                .map(|n| format!("{}={}", n.node, state_name(&n.state)))
                .collect();
            keys.push_str(&format!(
                "key\t{cluster}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                s.key,
                s.copies,
                s.min,
                s.max,
                u8::from(s.under_replicated),
                u8::from(s.queued),
                s.error.as_deref().map_or("-".to_owned(), clean),
                nodes.join(",")
            ));
        }
    }
    format!(
        "summary\t{cluster}\t{}\t{}\t{}\t{}\t{}\t{}\n{keys}",
        summary.keys,
        summary.under_replicated,
        summary.queued,
        summary.transferring,
        summary.errors,
        summary.missing
    )
}

/// A cluster's counts, as the state file gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryLine {
    pub cluster: String,
    pub keys: u64,
    pub under_replicated: u64,
    pub queued: u64,
    pub transferring: u64,
    pub errors: u64,
    pub missing: u64,
}

/// A key's line, as the state file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    pub cluster: String,
    pub key: String,
    pub copies: u32,
    pub min: u32,
    pub max: u32,
    pub under_replicated: bool,
    pub queued: bool,
    pub error: Option<String>,
    /// (node uuid, state name).
    pub nodes: Vec<(String, String)>,
}

/// Reads the state file; `None` when there is none (no repairer ran).
pub fn read(state_dir: &Path) -> Option<(Vec<SummaryLine>, Vec<KeyLine>)> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    let mut summaries = Vec::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        match f.first() {
            Some(&"summary") if f.len() >= 8 => summaries.push(SummaryLine {
                cluster: f[1].to_owned(),
                keys: n(2),
                under_replicated: n(3),
                queued: n(4),
                transferring: n(5),
                errors: n(6),
                missing: n(7),
            }),
            Some(&"key") if f.len() >= 10 => keys.push(KeyLine {
                cluster: f[1].to_owned(),
                key: f[2].to_owned(),
                copies: u32::try_from(n(3)).unwrap_or(0),
                min: u32::try_from(n(4)).unwrap_or(0),
                max: u32::try_from(n(5)).unwrap_or(0),
                under_replicated: f[6] == "1",
                queued: f[7] == "1",
                error: (f[8] != "-").then(|| f[8].to_owned()),
                nodes: f[9]
                    .split(',')
                    .filter_map(|p| p.split_once('='))
                    .map(|(u, s)| (u.to_owned(), s.to_owned()))
                    .collect(),
            }),
            _ => {}
        }
    }
    Some((summaries, keys))
}

/// What `annexmesh recover` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recover {
    All,
    Key(Key),
}

/// Leaves a recover request for the daemon.
pub fn request_recover(state_dir: &Path, what: &[Recover]) -> crate::Result<()> {
    let dir = recover_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::Io {
        context: format!("creating {}", dir.display()),
        source: e,
    })?;
    let text: String = what
        .iter()
        .map(|r| match r {
            Recover::All => "*\n".to_owned(),
            Recover::Key(k) => format!("{k}\n"),
        })
        .collect();
    let name = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    crate::fs::write_atomic(&dir.join(name), text.as_bytes())
}

/// Takes (and removes) the requests left since the last look.
pub fn take_recover_requests(state_dir: &Path) -> Vec<Recover> {
    let Ok(entries) = std::fs::read_dir(recover_dir(state_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten().take(MAX_REQUESTS) {
        let p = e.path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue; // a write in progress
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let _ = std::fs::remove_file(&p);
        for line in text.lines().take(MAX_REQUESTS) {
            match line.trim() {
                "*" => out.push(Recover::All),
                k => {
                    if let Ok(k) = Key::parse(k) {
                        out.push(Recover::Key(k));
                    }
                }
            }
        }
    }
    out
}
