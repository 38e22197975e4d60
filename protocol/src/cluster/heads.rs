//! The git branches of a cluster's gateways, kept in step over the mesh.
//!
//! git-annex documents the limit this lifts: "a branch pushed to one gateway
//! will not be able to be pulled from another". Each gateway states its
//! branch heads in `annexmesh/heads.log` (a uuid-based log: one line per
//! gateway, `<uuid> <ref>:<sha> … timestamp=<clock>`), gossiped like every
//! log; a gateway that sees another gateway of its cluster at a head it
//! lacks fetches it from that gateway over the mesh and moves its own
//! branch forward when that is a fast-forward ([`decide`]). Branches never
//! move backwards and never lose commits: a branch that diverged is left as
//! it is (the other's head stays fetched beside it for a person to merge).
//!
//! Only `refs/heads/` is synced, less the `git-annex` branch (merged as a
//! CRDT by gossip) and the adjusted branches (a repository's local views).
//! A branch deleted on one gateway is not deleted on the others.

use std::collections::{BTreeMap, BTreeSet};

use crate::Uuid;
use crate::logs::uuid_based;

/// The log of every gateway's heads.
pub const HEADS_LOG: &str = "annexmesh/heads.log";

/// The most branches a gateway's line may state; the rest are not synced.
pub const MAX_HEADS: usize = 1024;

/// A repository's branch heads: full ref name → commit id (hex).
pub type Heads = BTreeMap<String, String>;

/// Whether branch `name` (a full ref name) is synced between gateways.
pub fn synced(name: &str) -> bool {
    let Some(short) = name.strip_prefix("refs/heads/") else {
        return false;
    };
    !short.is_empty()
        && short != "git-annex"
        && short != "synced/git-annex"
        && !short.starts_with("adjusted/")
        && legal_ref(name)
}

/// A ref name as git accepts it (the parts that matter here: no space,
/// control character, `:` or `..`, and no empty component), so a head
/// read from a peer's line can be given to git as it is.
fn legal_ref(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && !name.contains("..")
        && !name.contains("//")
        && !name.ends_with('/')
        && !name.ends_with(".lock")
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b > b' ' && b != 0x7f && !b":~^?*[\\".contains(&b))
}

/// Whether `sha` is a full object id in hex (SHA-1 or SHA-256).
fn legal_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `heads` as a log value: `<ref>:<sha>` separated by spaces, synced
/// branches only, at most [`MAX_HEADS`].
pub fn value(heads: &Heads) -> String {
    heads
        .iter()
        .filter(|(r, s)| synced(r) && legal_sha(s))
        .take(MAX_HEADS)
        .map(|(r, s)| format!("{r}:{}", s.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A log value read back; malformed items are skipped.
pub fn parse_value(value: &str) -> Heads {
    value
        .split(' ')
        .filter_map(|item| item.rsplit_once(':'))
        .filter(|(r, s)| synced(r) && legal_sha(s))
        .take(MAX_HEADS)
        .map(|(r, s)| (r.to_owned(), s.to_ascii_lowercase()))
        .collect()
}

/// Every gateway's newest line.
pub fn read(content: &[u8]) -> BTreeMap<Uuid, Heads> {
    uuid_based::compact(content)
        .into_values()
        .filter_map(|l| Some((Uuid::parse(&l.uuid).ok()?, parse_value(&l.value))))
        .collect()
}

/// The log after `gateway` states `heads` at wall-clock second `now`.
pub fn record(content: &[u8], gateway: &Uuid, heads: &Heads, now: i64) -> Vec<u8> {
    uuid_based::record(content, gateway.as_str(), &value(heads), now)
}

/// A head another gateway has and this one lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub branch: String,
    pub sha: String,
    /// The gateways stating it, in the order to fetch from.
    pub from: Vec<Uuid>,
}

/// What this gateway lacks, given its heads (`mine`) and the heads of the
/// other gateways of its clusters (`peers`; others' lines are ignored). One
/// want per (branch, head), fetched from the first of the gateways that
/// state it: lowest uuid first, so that all gateways agree.
pub fn wants(mine: &Heads, lines: &BTreeMap<Uuid, Heads>, peers: &BTreeSet<Uuid>) -> Vec<Want> {
    let mut wants: BTreeMap<(String, String), Vec<Uuid>> = BTreeMap::new();
    for (gateway, heads) in lines.iter().filter(|(g, _)| peers.contains(g)) {
        for (branch, sha) in heads {
            if mine.get(branch) != Some(sha) {
                wants
                    .entry((branch.clone(), sha.clone()))
                    .or_default()
                    .push(gateway.clone());
            }
        }
    }
    wants
        .into_iter()
        .map(|((branch, sha), from)| Want { branch, sha, from })
        .collect()
}

/// How this gateway's branch stands to a head another gateway has, once
/// that head's commit is here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ancestry {
    /// The branch does not exist here.
    Absent,
    /// The other head contains ours: ours can move forward.
    Behind,
    /// Ours contains the other head: the other gateway will catch up.
    Ahead,
    /// Neither contains the other.
    Diverged,
}

/// What to do with a branch, given how it stands and whether it is the
/// branch checked out in a work tree (never moved under a person's feet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create the branch at the other head.
    Create,
    /// Move the branch forward to the other head.
    FastForward,
    /// Nothing to do.
    Keep,
    /// Leave it: a person must merge (the other head stays fetched).
    Conflict,
}

pub fn decide(ancestry: Ancestry, checked_out: bool) -> Action {
    match ancestry {
        Ancestry::Ahead => Action::Keep,
        _ if checked_out => Action::Conflict,
        Ancestry::Absent => Action::Create,
        Ancestry::Behind => Action::FastForward,
        Ancestry::Diverged => Action::Conflict,
    }
}

/// Where the other gateway's head is kept once fetched:
/// `refs/annexmesh/gateways/<uuid>/<branch without refs/heads/>`.
pub fn fetched_ref(gateway: &Uuid, branch: &str) -> String {
    let short = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    format!("refs/annexmesh/gateways/{gateway}/{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u8) -> Uuid {
        Uuid::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
    }

    fn sha(c: char) -> String {
        std::iter::repeat_n(c, 40).collect()
    }

    fn heads(items: &[(&str, char)]) -> Heads {
        items
            .iter()
            .map(|(r, c)| ((*r).to_owned(), sha(*c)))
            .collect()
    }

    #[test]
    fn which_branches_are_synced() {
        assert!(synced("refs/heads/master"));
        assert!(synced("refs/heads/synced/master"));
        assert!(synced("refs/heads/feature/x"));
        assert!(!synced("refs/heads/git-annex"));
        assert!(!synced("refs/heads/synced/git-annex"));
        assert!(!synced("refs/heads/adjusted/master(unlocked)"));
        assert!(!synced("refs/tags/v1"));
        assert!(!synced("refs/heads/"));
        assert!(!synced("refs/heads/a..b"));
        assert!(!synced("refs/heads/a b"));
        assert!(!synced("refs/heads/a:b"));
        assert!(!synced("refs/heads/x.lock"));
    }

    #[test]
    fn values_round_trip_and_drop_garbage() {
        let h = heads(&[
            ("refs/heads/master", 'a'),
            ("refs/heads/synced/master", 'b'),
        ]);
        assert_eq!(parse_value(&value(&h)), h);
        let mut bad = h.clone();
        bad.insert("refs/heads/git-annex".into(), sha('c'));
        bad.insert("refs/heads/short".into(), "abc".into());
        assert_eq!(parse_value(&value(&bad)), h);
        assert_eq!(
            parse_value("refs/heads/x:zz refs/heads/y nonsense refs/heads/z:"),
            Heads::new()
        );
        let upper = format!("refs/heads/m:{}", sha('A'));
        assert_eq!(parse_value(&upper)["refs/heads/m"], sha('a'));
    }

    #[test]
    fn the_log_keeps_each_gateways_newest_line() {
        let one = heads(&[("refs/heads/master", 'a')]);
        let two = heads(&[("refs/heads/master", 'b')]);
        let log = record(b"", &u(1), &one, 100);
        let log = record(&log, &u(2), &one, 100);
        let log = record(&log, &u(1), &two, 101);
        let read = read(&log);
        assert_eq!(read[&u(1)], two);
        assert_eq!(read[&u(2)], one);
    }

    #[test]
    fn wants_only_what_peers_have_and_we_lack_once() {
        let mine = heads(&[("refs/heads/master", 'a'), ("refs/heads/dev", 'd')]);
        let mut lines = BTreeMap::new();
        lines.insert(u(3), heads(&[("refs/heads/master", 'b')]));
        lines.insert(
            u(2),
            heads(&[("refs/heads/master", 'b'), ("refs/heads/dev", 'd')]),
        );
        lines.insert(u(9), heads(&[("refs/heads/other", 'e')]));
        let peers: BTreeSet<Uuid> = [u(2), u(3)].into();
        let w = wants(&mine, &lines, &peers);
        assert_eq!(
            w,
            vec![Want {
                branch: "refs/heads/master".into(),
                sha: sha('b'),
                from: vec![u(2), u(3)],
            }]
        );
        assert!(wants(&mine, &lines, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn branches_only_move_forward() {
        assert_eq!(decide(Ancestry::Absent, false), Action::Create);
        assert_eq!(decide(Ancestry::Behind, false), Action::FastForward);
        assert_eq!(decide(Ancestry::Ahead, false), Action::Keep);
        assert_eq!(decide(Ancestry::Diverged, false), Action::Conflict);
        assert_eq!(decide(Ancestry::Behind, true), Action::Conflict);
        assert_eq!(decide(Ancestry::Ahead, true), Action::Keep);
    }

    #[test]
    fn fetched_heads_are_kept_per_gateway() {
        assert_eq!(
            fetched_ref(&u(1), "refs/heads/synced/master"),
            "refs/annexmesh/gateways/00000001-0000-4000-8000-000000000000/synced/master"
        );
    }
}
