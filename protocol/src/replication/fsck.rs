//! `annexmesh fsck --cluster`: what to do with what a check of a key's
//! copies found, as `git annex fsck --from REMOTE` does for one remote.
//!
//! A gateway reads every copy the location logs say its cluster's nodes
//! hold and verifies it (its checksum, or only its size for backends
//! without one). Then, per key, [`plan`] decides from all the findings:
//!
//! * a good copy: nothing;
//! * a missing copy (the log says present, the node has not got it): the
//!   log is corrected ([`Step::RecordAbsent`]), as git-annex's fsck does;
//! * a bad copy (wrong checksum or size): moved aside on a local node
//!   ([`Step::MoveAside`], git-annex's `annex/bad/`, which keeps the
//!   bytes), dropped on a remote node ([`Step::Drop`]) only when a good
//!   copy exists elsewhere, recorded absent, and copied back onto that node
//!   from a verified-good holder ([`Step::Copy`]). With no good copy
//!   anywhere a remote node's bad copy is kept where it is
//!   ([`Step::KeepBad`]) and the key is reported in error: bytes are never
//!   lost on a guess;
//! * a node that could not be asked: nothing, it is counted as unchecked.
//!
//! [`Progress`] counts a job's findings.

use crate::uuid::Uuid;
use crate::verify::Verdict;

/// What checking one node's copy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The content hashes to the key (or, without a checksum, has its size).
    Good,
    /// The node says it has not got the content.
    Missing,
    /// The content is there but wrong.
    Bad(String),
    /// The node could not be asked, or failed midway.
    Unchecked(String),
}

impl Found {
    /// A finished verification's finding.
    pub fn of_verdict(v: &Verdict) -> Found {
        match v {
            Verdict::Good | Verdict::SizeOnly => Found::Good,
            Verdict::WrongSize { expected, got } => {
                Found::Bad(format!("wrong size: {got} bytes, the key says {expected}"))
            }
            Verdict::WrongHash => Found::Bad("checksum mismatch".to_owned()),
        }
    }
}

/// One node's copy of a key, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub node: Uuid,
    /// A local repository of the gateway (its bad content can be moved
    /// aside, keeping the bytes); otherwise only a `REMOVE` can take it.
    pub local: bool,
    pub found: Found,
}

/// One thing to do about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record in the location log that `node` lacks the key.
    RecordAbsent(Uuid),
    /// Move a local node's bad content aside (`annex/bad/`).
    MoveAside(Uuid),
    /// Remove a remote node's bad content (`REMOVE`), the good copy on
    /// `keep` locked meanwhile.
    Drop { node: Uuid, keep: Uuid },
    /// Copy the key from a verified-good holder onto `to`.
    Copy { from: Uuid, to: Uuid },
    /// A bad copy that stays where it is: no good one exists to replace it.
    KeepBad(Uuid),
}

/// What to do about one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In order: each node's removal and log record before its copy.
    pub steps: Vec<Step>,
    /// Said loudly: the key has bad copies and no good one.
    pub error: Option<String>,
}

/// The steps for one key from every holder's finding. `spread` picks among
/// several good sources (e.g. a hash of the key), so repairs do not all
/// read from one node.
pub fn plan(checks: &[Checked], spread: u64) -> Plan {
    let good: Vec<&Uuid> = checks
        .iter()
        .filter(|c| c.found == Found::Good)
        .map(|c| &c.node)
        .collect();
    let pick = |i: usize| good[(spread as usize).wrapping_add(i) % good.len()].clone();
    let mut out = Plan::default();
    let mut bad = 0usize;
    for (i, c) in checks.iter().enumerate() {
        match &c.found {
            Found::Good | Found::Unchecked(_) => {}
            Found::Missing => out.steps.push(Step::RecordAbsent(c.node.clone())),
            Found::Bad(_) => {
                bad += 1;
                if c.local {
                    out.steps.push(Step::MoveAside(c.node.clone()));
                } else if good.is_empty() {
                    out.steps.push(Step::KeepBad(c.node.clone()));
                    continue;
                } else {
                    out.steps.push(Step::Drop {
                        node: c.node.clone(),
                        keep: pick(i),
                    });
                }
                out.steps.push(Step::RecordAbsent(c.node.clone()));
                if !good.is_empty() {
                    out.steps.push(Step::Copy {
                        from: pick(i),
                        to: c.node.clone(),
                    });
                }
            }
        }
    }
    if bad > 0 && good.is_empty() {
        out.error = Some(format!(
            "{bad} bad cop{} and no good copy in the cluster: the bad content is kept \
             (moved aside on local nodes)",
            if bad == 1 { "y" } else { "ies" }
        ));
    }
    out
}

/// A job's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Keys to check (known once the listing is done; 0 until then).
    pub keys_total: u64,
    pub keys_checked: u64,
    /// Copies checked, and the bytes read to check them.
    pub copies: u64,
    pub bytes: u64,
    pub good: u64,
    pub bad: u64,
    pub missing: u64,
    /// Bad copies replaced by a good one, verified on arrival.
    pub repaired: u64,
    /// Copies that could not be checked, and steps that failed.
    pub unchecked: u64,
    pub errors: u64,
}

impl Progress {
    /// Counts one key's findings.
    pub fn add_key(&mut self, checks: &[Checked], bytes: u64) {
        self.keys_checked += 1;
        self.bytes += bytes;
        for c in checks {
            self.copies += 1;
            match c.found {
                Found::Good => self.good += 1,
                Found::Missing => self.missing += 1,
                Found::Bad(_) => self.bad += 1,
                Found::Unchecked(_) => self.unchecked += 1,
            }
        }
    }

    /// Whether anything was found wrong.
    pub fn clean(&self) -> bool {
        self.bad == 0 && self.missing == 0 && self.unchecked == 0 && self.errors == 0
    }
}

#[cfg(test)]
mod tests;
