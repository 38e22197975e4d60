//! The replication policy: how many copies a cluster keeps of each key.
//!
//! # The logs
//!
//! Both are ours (stock git-annex carries them in its branch and ignores
//! them), written in git-annex's own line formats so union merge and
//! "newest line per field" give the CRDT for free
//! ([`crate::logs::catalog`]).
//!
//! `annexmesh/replication.log`, a uuid-based log (like `trust.log` or
//! `group.log`), one line per **cluster uuid**:
//!
//! ```text
//! acae2ff6-6c1e-8bec-b8b9-397a3755f397 min=2 max=3 grace=300 timestamp=1700000000s
//! ```
//!
//! Per-key overrides (ipfs-cluster's per-pin `replication_factor_min/max`)
//! sit in a per-key map log next to the key's location log, like git-annex's
//! `.log.met` and `.log.rmt`: `<hashdir lower><keyFile>.log.rpl`, one line
//! per cluster uuid:
//!
//! ```text
//! 1700000000s acae2ff6-6c1e-8bec-b8b9-397a3755f397 min=3 max=5
//! 1700000100s acae2ff6-6c1e-8bec-b8b9-397a3755f397
//! ```
//!
//! (the second, with an empty value, removes the override: every field is
//! inherited again). A per-key file keeps a write to one key's override
//! from rewriting every other key's, and a key's rule is one lookup.
//!
//! Values are space-separated `name=value` fields:
//!
//! * `min=N`: copies repair restores (default: numcopies; at least 1);
//! * `max=N`: copies above which repair drops (default: the number of nodes
//!   whose preferred content wants the key, or every node if none does);
//! * `grace=S`: seconds a node may be silent past suspicion before its keys
//!   are re-replicated (default [`DEFAULT_GRACE`] = 300 s).
//!
//! Reading is lenient: unknown fields and words without `=` are ignored (for
//! later versions); a known field whose value is not a number in range is
//! ignored too (the default applies); the first of a repeated field stands;
//! values longer than [`MAX_VALUE_BYTES`] are ignored whole. Nothing panics.
//! An override's fields replace the cluster's one by one.

use std::collections::BTreeMap;

use crate::key::Key;
use crate::logs::catalog::{Catalog, LogFile, record_map};
use crate::logs::{presence, uuid_based};
use crate::preferred::{Context, Expr, Facts};
use crate::uuid::Uuid;

/// The per-cluster policy log.
pub const REPLICATION_LOG: &str = "annexmesh/replication.log";

/// What a key's override log path ends with.
pub const OVERRIDE_SUFFIX: &str = ".log.rpl";

/// The default grace, in seconds (after `suspect_after`).
pub const DEFAULT_GRACE: u64 = 300;

/// The largest `min`/`max` accepted.
pub const MAX_COPIES: u32 = 1024;

/// The largest `grace` accepted: 30 days.
pub const MAX_GRACE: u64 = 30 * 24 * 3600;

/// The longest value read.
pub const MAX_VALUE_BYTES: usize = 4096;

/// One line's settings; `None`: inherited (from the cluster, or the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rule {
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// Seconds.
    pub grace: Option<u64>,
}

impl Rule {
    /// Reads a value (see the module docs); never fails.
    pub fn parse(value: &str) -> Rule {
        let mut rule = Rule::default();
        if value.len() > MAX_VALUE_BYTES {
            return rule;
        }
        let number = |v: &str, max: u64| -> Option<u64> {
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            v.parse::<u64>().ok().filter(|n| *n <= max)
        };
        for word in value.split_whitespace() {
            let Some((name, v)) = word.split_once('=') else {
                continue;
            };
            let copies = || number(v, u64::from(MAX_COPIES)).and_then(|n| u32::try_from(n).ok());
            match name {
                "min" if rule.min.is_none() => rule.min = copies(),
                "max" if rule.max.is_none() => rule.max = copies(),
                "grace" if rule.grace.is_none() => rule.grace = number(v, MAX_GRACE),
                _ => {}
            }
        }
        rule
    }

    /// The value as written; empty when everything is inherited.
    pub fn value(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.min {
            parts.push(format!("min={n}"));
        }
        if let Some(n) = self.max {
            parts.push(format!("max={n}"));
        }
        if let Some(s) = self.grace {
            parts.push(format!("grace={s}"));
        }
        parts.join(" ")
    }

    /// `self`'s fields where set, `base`'s otherwise.
    pub fn over(self, base: Rule) -> Rule {
        Rule {
            min: self.min.or(base.min),
            max: self.max.or(base.max),
            grace: self.grace.or(base.grace),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Rule::default()
    }
}

/// What applies to one key in one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    /// Copies repair restores (≥ 1).
    pub min: u32,
    /// Copies above which repair drops (≥ `min`). Nodes whose required
    /// content matches get the key whatever `max` says.
    pub max: u32,
    /// Seconds past suspicion before a silent holder's copies are replaced.
    pub grace: u64,
    /// Copies a drop must leave, and lock first: `max(min, numcopies)`.
    pub keep: u32,
}

/// The resolver: `rule` (a key's override over its cluster's line, as
/// [`Policy::rule`] gives it) with the defaults filled in. `wanting` is
/// the number of nodes whose preferred content wants the key, or the number
/// of nodes when none does (as the gateway's `PUT` falls back to every node).
pub fn resolve(rule: Rule, numcopies: u32, wanting: u32) -> Effective {
    let min = rule.min.unwrap_or(numcopies).clamp(1, MAX_COPIES);
    let max = rule.max.unwrap_or(wanting).clamp(min, MAX_COPIES.max(min));
    Effective {
        min,
        max,
        grace: rule.grace.unwrap_or(DEFAULT_GRACE).min(MAX_GRACE),
        keep: min.max(numcopies.min(MAX_COPIES)),
    }
}

/// [`resolve`] for `key` in `cluster` under `policy`.
pub fn effective(
    policy: &Policy,
    cluster: &Uuid,
    key: &Key,
    numcopies: u32,
    wanting: u32,
) -> Effective {
    resolve(policy.rule(cluster, key), numcopies, wanting)
}

/// The branch path of `key`'s override log.
pub fn override_path(key: &Key) -> String {
    format!("{}.rpl", presence::location_log_path(key))
}

/// The key an override log path belongs to.
pub fn override_key(path: &str) -> Option<Key> {
    let name = path.rsplit('/').next()?.strip_suffix(OVERRIDE_SUFFIX)?;
    let key = Key::from_file(name).ok()?;
    (override_path(&key) == path).then_some(key)
}

/// Every cluster's rule from `annexmesh/replication.log` content: newest
/// line per cluster uuid (lines whose field is not a uuid are skipped).
pub fn read_clusters(content: &[u8]) -> BTreeMap<Uuid, Rule> {
    uuid_based::compact(content)
        .into_values()
        .filter_map(|l| Some((Uuid::parse(&l.uuid).ok()?, Rule::parse(&l.value))))
        .collect()
}

/// Every cluster's override from a key's `.log.rpl` lines (the winning
/// lines of a map log); empty overrides are left out.
pub fn read_overrides<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<Uuid, Rule> {
    let mut out = BTreeMap::new();
    for line in lines {
        let mut parts = line.splitn(3, ' ');
        let (Some(_clock), Some(field), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(cluster) = Uuid::parse(field) else {
            continue;
        };
        let rule = Rule::parse(value);
        if rule.is_empty() {
            out.remove(&cluster);
        } else {
            out.insert(cluster, rule);
        }
    }
    out
}

/// `annexmesh/replication.log` after setting `cluster`'s rule at second `now`.
pub fn record_cluster(content: &[u8], cluster: &Uuid, rule: &Rule, now: i64) -> Vec<u8> {
    uuid_based::record(content, cluster.as_str(), &rule.value(), now)
}

/// A key's `.log.rpl` after setting (or, with `None`, removing) `cluster`'s
/// override at second `now`.
pub fn record_override(content: &[u8], cluster: &Uuid, rule: Option<&Rule>, now: i64) -> Vec<u8> {
    let value = rule.map(Rule::value).unwrap_or_default();
    record_map(content, cluster.as_str(), &value, now)
}

/// What the policy and preferred content say of one key. `wanting[i]` and
/// `required[i]` are about `nodes[i]` of [`Placement::needs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub effective: Effective,
    pub wanting: Vec<bool>,
    pub required: Vec<bool>,
}

impl Default for Needs {
    fn default() -> Needs {
        Needs {
            effective: resolve(Default::default(), 1, 1),
            wanting: Vec::new(),
            required: Vec::new(),
        }
    }
}

impl Needs {
    /// Sized for `n` nodes, nobody wanting or requiring, the numbers of
    /// an empty rule with numcopies 1.
    pub fn reset(&mut self, n: usize) {
        self.effective = Needs::default().effective;
        self.wanting.clear();
        self.wanting.resize(n, false);
        self.required.clear();
        self.required.resize(n, false);
    }
}

/// The caller's knowledge of policy and preferred content
/// ([`PreferredPlacement`] reads them from the branch).
pub trait Placement {
    /// Fills `out` (already [`Needs::reset`] to `nodes.len()`) for `key`,
    /// which the location log says `holders` have.
    fn needs(&self, key: &Key, holders: &[&Uuid], nodes: &[Uuid], out: &mut Needs);
}

impl<F> Placement for F
where
    F: Fn(&Key, &[&Uuid], &[Uuid], &mut Needs),
{
    fn needs(&self, key: &Key, holders: &[&Uuid], nodes: &[Uuid], out: &mut Needs) {
        self(key, holders, nodes, out)
    }
}

/// The policy as read from the branch: clusters' rules and keys' overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    clusters: BTreeMap<Uuid, Rule>,
    overrides: BTreeMap<Key, BTreeMap<Uuid, Rule>>,
}

impl Policy {
    pub fn new() -> Policy {
        Policy::default()
    }

    /// Reads `annexmesh/replication.log` and every `.log.rpl` file (one
    /// pass over the catalog's paths; later changes go through
    /// [`Policy::apply_file`]).
    pub fn from_catalog(catalog: &Catalog) -> Policy {
        let mut p = Policy::new();
        for (path, file) in catalog.files() {
            p.apply_file(path, file);
        }
        p
    }

    /// Takes in a changed branch file; returns whether it is a policy file.
    pub fn apply_file(&mut self, path: &str, file: &LogFile) -> bool {
        if path == REPLICATION_LOG {
            self.clusters = read_clusters(&file.content());
            return true;
        }
        if !path.ends_with(OVERRIDE_SUFFIX) {
            return false;
        }
        let Some(key) = override_key(path) else {
            return false;
        };
        let lines: Vec<String> = file.lines().map(|l| l.into_owned()).collect();
        let rules = read_overrides(lines.iter().map(String::as_str));
        if rules.is_empty() {
            self.overrides.remove(&key);
        } else {
            self.overrides.insert(key, rules);
        }
        true
    }

    /// Sets a cluster's rule (as a recorded line would).
    pub fn set_cluster(&mut self, cluster: Uuid, rule: Rule) {
        self.clusters.insert(cluster, rule);
    }

    /// Sets or (with an empty rule) removes a key's override in a cluster.
    pub fn set_override(&mut self, key: Key, cluster: Uuid, rule: Rule) {
        if rule.is_empty() {
            if let Some(m) = self.overrides.get_mut(&key) {
                m.remove(&cluster);
                if m.is_empty() {
                    self.overrides.remove(&key);
                }
            }
        } else {
            self.overrides.entry(key).or_default().insert(cluster, rule);
        }
    }

    /// The cluster's own rule (empty if it has no line).
    pub fn cluster(&self, cluster: &Uuid) -> Rule {
        self.clusters.get(cluster).copied().unwrap_or_default()
    }

    /// `key`'s override in `cluster`, over the cluster's rule.
    pub fn rule(&self, cluster: &Uuid, key: &Key) -> Rule {
        let base = self.cluster(cluster);
        match self.overrides.get(key).and_then(|m| m.get(cluster)) {
            Some(o) => o.over(base),
            None => base,
        }
    }

    /// The cluster's grace in seconds (for the monitor).
    pub fn grace(&self, cluster: &Uuid) -> u64 {
        self.cluster(cluster).grace.unwrap_or(DEFAULT_GRACE)
    }

    /// How many keys have an override.
    pub fn override_count(&self) -> usize {
        self.overrides.len()
    }
}

/// A [`Placement`] read from the branch: each node's preferred content
/// (or'ed with its required content, as git-annex does) decides whether it
/// wants a key, its required content whether it must hold it, and the
/// policy of `cluster` the numbers. A node with no expression, or one that
/// does not parse, wants everything (as the gateway's `PUT` treats it);
/// when no node wants the key, `max` defaults to the number of nodes.
///
/// Keys are judged without their associated file or metadata (the planner
/// works from keys alone), so `include=`/`exclude=` globs see no file, as
/// `git annex find --want-get-by` does for a key that no file points to.
pub struct PreferredPlacement<'a> {
    ctx: &'a Context,
    policy: &'a Policy,
    cluster: Uuid,
    numcopies: u32,
    wanted: BTreeMap<Uuid, Expr>,
    unconditional: std::collections::BTreeSet<Uuid>,
    required: BTreeMap<Uuid, Expr>,
}

impl<'a> PreferredPlacement<'a> {
    /// Compiles the expressions of `nodes` once.
    pub fn new(ctx: &'a Context, policy: &'a Policy, cluster: Uuid, nodes: &[Uuid]) -> Self {
        let mut wanted = BTreeMap::new();
        let mut unconditional = std::collections::BTreeSet::new();
        let mut required = BTreeMap::new();
        for n in nodes {
            match ctx.expression(n.as_str()) {
                Some(Ok(e)) => {
                    wanted.insert(n.clone(), e);
                }
                None | Some(Err(_)) => {
                    unconditional.insert(n.clone());
                }
            }
            if let Some(text) = ctx.required.get(n.as_str())
                && let Ok(e) = ctx.compile(n.as_str(), text)
                && !e.is_empty()
            {
                required.insert(n.clone(), e);
            }
        }
        PreferredPlacement {
            ctx,
            policy,
            cluster,
            numcopies: u32::try_from(ctx.numcopies.max(0)).unwrap_or(MAX_COPIES),
            wanted,
            unconditional,
            required,
        }
    }
}

impl Placement for PreferredPlacement<'_> {
    fn needs(&self, key: &Key, holders: &[&Uuid], nodes: &[Uuid], out: &mut Needs) {
        let locations: std::collections::BTreeSet<String> =
            holders.iter().map(|u| u.as_str().to_owned()).collect();
        let facts = Facts {
            file: None,
            key,
            locations: &locations,
            metadata: None,
        };
        let mut wanting = 0u32;
        for (i, n) in nodes.iter().enumerate() {
            let wants = self.unconditional.contains(n)
                || self
                    .wanted
                    .get(n)
                    .is_some_and(|e| e.wants(self.ctx, n.as_str(), &facts));
            let required = self
                .required
                .get(n)
                .is_some_and(|e| e.wants(self.ctx, n.as_str(), &facts));
            if let Some(w) = out.wanting.get_mut(i) {
                *w = wants;
            }
            if let Some(r) = out.required.get_mut(i) {
                *r = required;
            }
            wanting += u32::from(wants);
        }
        if wanting == 0 {
            wanting = u32::try_from(nodes.len()).unwrap_or(MAX_COPIES);
        }
        out.effective = effective(self.policy, &self.cluster, key, self.numcopies, wanting);
    }
}

#[cfg(test)]
mod tests;
