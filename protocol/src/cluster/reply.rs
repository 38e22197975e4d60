//! Shaping the gateway's replies from its targets' outcomes, and what it
//! records in its own location log.
//!
//! git-annex (`Annex/Cluster.hs`, annex-spec §4.6–4.8): after a `PUT` every
//! node answering `SUCCESS` contributes its uuid, `SUCCESS-PLUS us` its uuid
//! and `us`; nodes that had answered `ALREADY-HAVE` are neither listed nor
//! logged (so the gateway's log never learns they have the key: the fault the
//! cluster-11b transcript shows). Clients below v2 get plain `SUCCESS` /
//! `FAILURE` / `ALREADY-HAVE`. The list may contain the cluster uuid (a node
//! that is the cluster via another gateway); clients skip it.
//!
//! Here:
//! * the reply lists the union of every uuid reported (stored and already
//!   had, a node's own uuid and the lists of `-PLUS` answers), without
//!   cluster uuids; an empty list gives the plain message;
//! * the uuids to record are the same union: `ALREADY-HAVE` holders included,
//!   cluster uuids never;
//! * a next-hop gateway ([`Reporter::Hop`]) contributes only the uuids it
//!   lists, never its own (a gateway does not store for the cluster);
//! * a `PUT` that stored nothing but found holders answers `FAILURE-PLUS
//!   <holders>` at v2+ (the client learns where the content is).

use crate::message::{Message, Version};
use crate::uuid::Uuid;

/// Who answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reporter {
    /// A node: its own uuid counts when it stored or had the content.
    Node(Uuid),
    /// A next-hop gateway: only the uuids it lists count.
    Hop(Uuid),
}

/// A target's outcome for one `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `SUCCESS`, or `SUCCESS-PLUS` with these uuids. (For `DATA-PRESENT`,
    /// a node found holding the content.)
    Stored(Vec<Uuid>),
    /// `ALREADY-HAVE`, or `ALREADY-HAVE-PLUS` with these uuids.
    AlreadyHad(Vec<Uuid>),
    /// `FAILURE`, an error or a lost connection; `FAILURE-PLUS` lists the
    /// uuids that did store.
    Failed(Vec<Uuid>),
}

impl Outcome {
    /// A target's answer as an outcome. Any other message is a failure.
    pub fn from_message(m: &Message) -> Outcome {
        match m {
            Message::Success => Outcome::Stored(Vec::new()),
            Message::SuccessPlus(us) => Outcome::Stored(us.clone()),
            Message::AlreadyHave => Outcome::AlreadyHad(Vec::new()),
            Message::AlreadyHavePlus(us) => Outcome::AlreadyHad(us.clone()),
            Message::FailurePlus(us) => Outcome::Failed(us.clone()),
            _ => Outcome::Failed(Vec::new()),
        }
    }
}

/// One target's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub from: Reporter,
    pub outcome: Outcome,
}

impl Report {
    pub fn node(uuid: Uuid, outcome: Outcome) -> Report {
        Report {
            from: Reporter::Node(uuid),
            outcome,
        }
    }

    pub fn hop(uuid: Uuid, outcome: Outcome) -> Report {
        Report {
            from: Reporter::Hop(uuid),
            outcome,
        }
    }

    /// The uuids this report says hold the content.
    fn holders(&self) -> impl Iterator<Item = &Uuid> {
        let (itself, listed) = match &self.outcome {
            Outcome::Stored(us) | Outcome::AlreadyHad(us) => (true, us),
            Outcome::Failed(us) => (false, us),
        };
        let own = match &self.from {
            Reporter::Node(u) if itself => Some(u),
            _ => None,
        };
        own.into_iter().chain(listed.iter())
    }
}

/// A reply to the client and the uuids to record in the gateway's location
/// log (present for `PUT`, absent for `REMOVE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Message,
    pub record: Vec<Uuid>,
}

impl Reply {
    /// Whether the reply is `SUCCESS[-PLUS]` (a driver handing the outcome to
    /// `protocol::server::Server`, which shapes the message itself, passes
    /// this and [`Reply::record`]).
    pub fn ok(&self) -> bool {
        matches!(self.message, Message::Success | Message::SuccessPlus(_))
    }
}

/// `plain` (`SUCCESS`, `FAILURE` or `ALREADY-HAVE`) as its `-PLUS` form with
/// `uuids` for a v2+ client, when there are any.
pub fn plus_or(version: Version, plain: Message, uuids: Vec<Uuid>) -> Message {
    if version < 2 || uuids.is_empty() {
        return plain;
    }
    match plain {
        Message::Success => Message::SuccessPlus(uuids),
        Message::Failure => Message::FailurePlus(uuids),
        Message::AlreadyHave => Message::AlreadyHavePlus(uuids),
        other => other,
    }
}

/// The uuids in first-seen order, each once, without cluster uuids.
fn union<'a>(uuids: impl Iterator<Item = &'a Uuid>) -> Vec<Uuid> {
    let mut out: Vec<Uuid> = Vec::new();
    for u in uuids {
        if !u.is_cluster() && !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

/// How a `PUT` begins, once every target answered the `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// No target takes bytes and some node has the content: send this
    /// `ALREADY-HAVE[-PLUS]`, record `record`.
    AlreadyHave(Reply),
    /// Send `PUT-FROM offset` (the smallest of the targets' offsets).
    PutFrom(u64),
    /// No target and no holder (every node failed, or there are none).
    /// git-annex ends the session; the node gateway answers `PUT-FROM 0`,
    /// reads the bytes and answers `FAILURE`.
    NoTarget,
}

/// The start of a `PUT`: `holders` are the reports of nodes found holding the
/// key (checked before, or answering `ALREADY-HAVE`), `offsets` those of the
/// targets that will take bytes.
pub fn put_begin(version: Version, holders: &[Report], offsets: &[u64]) -> Begin {
    if let Some(min) = offsets.iter().min() {
        return Begin::PutFrom(*min);
    }
    let uuids = union(holders.iter().flat_map(Report::holders));
    if uuids.is_empty() {
        return Begin::NoTarget;
    }
    Begin::AlreadyHave(Reply {
        message: plus_or(version, Message::AlreadyHave, uuids.clone()),
        record: uuids,
    })
}

/// The end of a `PUT`: `SUCCESS[-PLUS]` if any target stored, else
/// `FAILURE[-PLUS]` (see the module docs). `reports` includes the holders.
pub fn put_reply(version: Version, reports: &[Report]) -> Reply {
    let uuids = union(reports.iter().flat_map(Report::holders));
    let stored = reports
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Stored(_)));
    let plain = if stored {
        Message::Success
    } else {
        Message::Failure
    };
    Reply {
        message: plus_or(version, plain, uuids.clone()),
        record: uuids,
    }
}

/// One target's answer to `REMOVE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveReport {
    pub from: Reporter,
    /// `SUCCESS`/`SUCCESS-PLUS` (else `FAILURE`, `FAILURE-PLUS`, an error).
    pub removed: bool,
    /// The uuids its `-PLUS` answer lists.
    pub also: Vec<Uuid>,
}

impl RemoveReport {
    pub fn from_message(from: Reporter, m: &Message) -> RemoveReport {
        let (removed, also) = match m {
            Message::Success => (true, Vec::new()),
            Message::SuccessPlus(us) => (true, us.clone()),
            Message::FailurePlus(us) => (false, us.clone()),
            _ => (false, Vec::new()),
        };
        RemoveReport {
            from,
            removed,
            also,
        }
    }
}

/// The reply to `REMOVE` (annex-spec §4.8): `SUCCESS[-PLUS]` when every
/// target removed, else `FAILURE[-PLUS]`; no target is `FAILURE`. `record`
/// lists the uuids to log as not present.
pub fn remove_reply(version: Version, reports: &[RemoveReport]) -> Reply {
    let removed = union(reports.iter().flat_map(|r| {
        let own = match &r.from {
            Reporter::Node(u) if r.removed => Some(u),
            _ => None,
        };
        own.into_iter().chain(r.also.iter())
    }));
    let all = !reports.is_empty() && reports.iter().all(|r| r.removed);
    let plain = if all {
        Message::Success
    } else {
        Message::Failure
    };
    Reply {
        message: plus_or(version, plain, removed.clone()),
        record: removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CU: &str = "acae2ff6-6c1e-8bec-b8b9-397a3755f397";

    fn u(s: &str) -> Uuid {
        Uuid::parse(s).unwrap()
    }

    fn us(v: &[&str]) -> Vec<Uuid> {
        v.iter().map(|s| u(s)).collect()
    }

    #[test]
    fn success_plus_unions_everything_but_clusters() {
        let reports = [
            Report::node(u("n1"), Outcome::Stored(vec![])),
            Report::node(u(CU), Outcome::Stored(us(&[CU, "n3", "n4"]))),
            Report::hop(u("gw2"), Outcome::Stored(us(&["n5", "n1"]))),
            Report::node(u("n2"), Outcome::AlreadyHad(us(&["n6"]))),
            Report::node(u("n7"), Outcome::Failed(vec![])),
        ];
        let r = put_reply(2, &reports);
        let want = us(&["n1", "n3", "n4", "n5", "n2", "n6"]);
        assert_eq!(r.message, Message::SuccessPlus(want.clone()));
        assert_eq!(
            r.record, want,
            "ALREADY-HAVE uuids recorded, clusters never"
        );
        let r = put_reply(1, &reports);
        assert_eq!(r.message, Message::Success);
        assert_eq!(r.record, want);
    }

    #[test]
    fn failure_lists_holders_at_v2() {
        let reports = [
            Report::node(u("n1"), Outcome::AlreadyHad(vec![])),
            Report::node(u("n2"), Outcome::Failed(vec![])),
        ];
        let r = put_reply(3, &reports);
        assert_eq!(r.message, Message::FailurePlus(us(&["n1"])));
        assert_eq!(r.record, us(&["n1"]));
        assert_eq!(put_reply(0, &reports).message, Message::Failure);
        let r = put_reply(2, &[Report::node(u("n2"), Outcome::Failed(vec![]))]);
        assert_eq!(r.message, Message::Failure);
        assert!(r.record.is_empty());
        assert_eq!(put_reply(4, &[]).message, Message::Failure);
        // A far gateway's FAILURE-PLUS lists nodes that did store.
        let r = put_reply(2, &[Report::hop(u("gw"), Outcome::Failed(us(&["n9", CU])))]);
        assert_eq!(r.message, Message::FailurePlus(us(&["n9"])));
        assert_eq!(r.record, us(&["n9"]));
    }

    #[test]
    fn ok_is_success() {
        let stored = put_reply(4, &[Report::node(u("n1"), Outcome::Stored(vec![]))]);
        assert!(stored.ok());
        assert_eq!(stored.record, us(&["n1"]));
        assert!(put_reply(1, &[Report::node(u("n1"), Outcome::Stored(vec![]))]).ok());
        assert!(!put_reply(4, &[Report::node(u("n1"), Outcome::AlreadyHad(vec![]))]).ok());
        assert!(!remove_reply(4, &[]).ok());
    }

    #[test]
    fn a_hop_never_counts_itself() {
        let r = put_reply(2, &[Report::hop(u("gw"), Outcome::Stored(vec![]))]);
        assert_eq!(r.message, Message::Success);
        assert!(r.record.is_empty());
    }

    #[test]
    fn begin_already_have_or_put_from() {
        let holders = [
            Report::node(u("n1"), Outcome::AlreadyHad(vec![])),
            Report::node(u(CU), Outcome::AlreadyHad(us(&["n3", CU]))),
        ];
        match put_begin(2, &holders, &[]) {
            Begin::AlreadyHave(r) => {
                assert_eq!(r.message, Message::AlreadyHavePlus(us(&["n1", "n3"])));
                assert_eq!(r.record, us(&["n1", "n3"]), "recorded (git-annex does not)");
            }
            other => panic!("{other:?}"),
        }
        match put_begin(1, &holders, &[]) {
            Begin::AlreadyHave(r) => assert_eq!(r.message, Message::AlreadyHave),
            other => panic!("{other:?}"),
        }
        assert_eq!(put_begin(2, &holders, &[7, 3, 9]), Begin::PutFrom(3));
        assert_eq!(put_begin(2, &[], &[]), Begin::NoTarget);
        let only_cluster = [Report::hop(u("gw"), Outcome::AlreadyHad(us(&[CU])))];
        assert_eq!(put_begin(2, &only_cluster, &[]), Begin::NoTarget);
    }

    #[test]
    fn outcomes_from_messages() {
        assert_eq!(
            Outcome::from_message(&Message::SuccessPlus(us(&["a"]))),
            Outcome::Stored(us(&["a"]))
        );
        assert_eq!(
            Outcome::from_message(&Message::AlreadyHave),
            Outcome::AlreadyHad(vec![])
        );
        assert_eq!(
            Outcome::from_message(&Message::Error("x".into())),
            Outcome::Failed(vec![])
        );
        assert_eq!(
            Outcome::from_message(&Message::FailurePlus(us(&["b"]))),
            Outcome::Failed(us(&["b"]))
        );
    }

    #[test]
    fn remove_replies() {
        let ok = |n: &str, m: Message| RemoveReport::from_message(Reporter::Node(u(n)), &m);
        let all = [
            ok("n1", Message::Success),
            ok(CU, Message::SuccessPlus(us(&["n3", CU]))),
        ];
        let r = remove_reply(2, &all);
        assert_eq!(r.message, Message::SuccessPlus(us(&["n1", "n3"])));
        assert_eq!(r.record, us(&["n1", "n3"]));
        let some = [
            ok("n1", Message::Success),
            ok("n2", Message::FailurePlus(us(&["n4"]))),
            ok("n5", Message::Error("no".into())),
        ];
        let r = remove_reply(2, &some);
        assert_eq!(r.message, Message::FailurePlus(us(&["n1", "n4"])));
        assert_eq!(remove_reply(1, &some).message, Message::Failure);
        assert_eq!(remove_reply(2, &[]).message, Message::Failure);
    }
}
