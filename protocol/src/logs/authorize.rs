//! Who may write which branch lines (issue 11, item 3). A pure rule: the
//! node gives it the author of a change (the peer a gossip message or an
//! anti-entropy exchange came from, with its membership role), the catalog as
//! it is now and a file's lines; it says which lines are taken.
//!
//! * Read-only members and peers that are not members write nothing.
//! * A location-log line (`<hashdir>/<key>.log`) about uuid `U` is taken only
//!   from `U` itself, from a gateway whose `proxy.log` line proxies `U`, or
//!   from a gateway that proxies a cluster `U` is a node of.
//! * `proxy.log` and `annexmesh/topology.log` lines only from the gateway they
//!   describe (the line's uuid field is the author); `cluster.log` lines from
//!   a gateway whose `proxy.log` line proxies that cluster (or whose uuid the
//!   field is).
//! * Every other file from read-write (and append-only) members, as before.
//!
//! Lines already in the catalog are neither taken nor refused (a relayed
//! copy of what we hold changes nothing).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::catalog::{Catalog, Family, LogFile};
use super::uuid_based;
use super::view::View;
use crate::cluster::TOPOLOGY_LOG;
use crate::server::ServeMode;

/// Who a change comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    /// This repository itself, or a mesh run without membership (tests,
    /// simulations, peers fixed by configuration with no membership line).
    Unrestricted,
    /// A member of the mesh: its repository uuid and role.
    Member { uuid: String, role: ServeMode },
    /// Anyone else (a client, a removed member): writes nothing.
    Outsider,
}

/// What the catalog says about who proxies whom, read once per merge.
#[derive(Debug, Clone, Default)]
pub struct Authority {
    /// Gateway uuid → the uuids its `proxy.log` line proxies.
    proxies: BTreeMap<String, BTreeSet<String>>,
    /// Cluster uuid → its nodes.
    clusters: BTreeMap<String, Vec<String>>,
}

impl Authority {
    pub fn from_catalog(catalog: &Catalog) -> Authority {
        let view = View::new(catalog);
        Authority {
            proxies: view
                .proxies()
                .into_iter()
                .map(|(gw, entries)| (gw, entries.into_iter().map(|(u, _)| u).collect()))
                .collect(),
            clusters: view.clusters(),
        }
    }

    fn proxies(&self, gateway: &str, uuid: &str) -> bool {
        self.proxies
            .get(gateway)
            .is_some_and(|set| set.contains(uuid))
    }

    /// Whether `gateway` may speak for `uuid`'s location: it is `uuid`, it
    /// proxies it, or it proxies a cluster `uuid` is a node of.
    fn speaks_for(&self, gateway: &str, uuid: &str) -> bool {
        gateway == uuid
            || self.proxies(gateway, uuid)
            || self.proxies.get(gateway).is_some_and(|set| {
                set.iter().any(|c| {
                    self.clusters
                        .get(c)
                        .is_some_and(|nodes| nodes.iter().any(|n| n == uuid))
                })
            })
    }
}

/// The second word of a map or presence line (`<clock> <field> …`).
fn second_word(line: &str) -> Option<&str> {
    let mut words = line.split(' ');
    words.next()?;
    words.next().filter(|w| !w.is_empty())
}

/// The third word of a presence line (`<clock> <status> <uuid>`).
fn presence_uuid(line: &str) -> Option<&str> {
    let mut words = line.split(' ');
    words.next()?;
    words.next()?;
    words.next().filter(|w| !w.is_empty())
}

fn is_location_log(path: &str) -> bool {
    Family::of(path) == Family::Presence && path.ends_with(".log")
}

/// Whether `author` may write `line` into `path`.
pub fn permits(author: &Author, authority: &Authority, path: &str, line: &str) -> bool {
    let uuid = match author {
        Author::Unrestricted => return true,
        Author::Outsider => return false,
        Author::Member {
            role: ServeMode::ReadOnly,
            ..
        } => return false,
        Author::Member { uuid, .. } => uuid.as_str(),
    };
    match path {
        "proxy.log" => second_word(line) == Some(uuid),
        "cluster.log" => second_word(line).is_some_and(|c| c == uuid || authority.proxies(uuid, c)),
        TOPOLOGY_LOG => uuid_based::Line::parse(line).is_some_and(|l| l.uuid == uuid),
        p if is_location_log(p) => {
            presence_uuid(line).is_some_and(|about| authority.speaks_for(uuid, about))
        }
        _ => true,
    }
}

/// Whether lines `author` writes into `path` need the [`Authority`] to judge.
pub fn needs_authority(author: &Author) -> bool {
    matches!(
        author,
        Author::Member {
            role: ServeMode::ReadWrite | ServeMode::AppendOnly,
            ..
        }
    )
}

/// A file's lines, sorted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub accepted: Vec<&'a str>,
    pub rejected: Vec<&'a str>,
}

/// Sorts `new` lines of `path` from `author`: lines already in `old` are
/// dropped (they change nothing), the rest taken or refused by [`permits`].
pub fn judge<'a>(
    author: &Author,
    authority: &Authority,
    path: &str,
    old: Option<&LogFile>,
    new: impl IntoIterator<Item = &'a str>,
) -> Verdict<'a> {
    let held: HashSet<String> = old
        .map(|f| f.lines().map(std::borrow::Cow::into_owned).collect())
        .unwrap_or_default();
    let mut v = Verdict::default();
    for line in new {
        if held.contains(line) {
            continue;
        }
        if permits(author, authority, path, line) {
            v.accepted.push(line);
        } else {
            v.rejected.push(line);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = "11111111-1111-1111-1111-111111111111";
    const NODE: &str = "22222222-2222-2222-2222-222222222222";
    const OTHER: &str = "33333333-3333-3333-3333-333333333333";
    const CLUSTER: &str = "ac000000-0000-8000-0000-000000000001";
    const LOC: &str = "fbd/530/SHA256E-s3--x.txt.log";

    fn rw(uuid: &str) -> Author {
        Author::Member {
            uuid: uuid.into(),
            role: ServeMode::ReadWrite,
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        c.insert_line("proxy.log", &format!("10s {GW} {NODE}:n1 {CLUSTER}:c"));
        c.insert_line("cluster.log", &format!("10s {CLUSTER} {OTHER}"));
        c
    }

    #[test]
    fn read_only_members_and_outsiders_write_nothing() {
        let a = Authority::from_catalog(&catalog());
        let ro = Author::Member {
            uuid: NODE.into(),
            role: ServeMode::ReadOnly,
        };
        for author in [ro, Author::Outsider] {
            assert!(!permits(&author, &a, LOC, &format!("20s 1 {NODE}")));
            assert!(!permits(&author, &a, "uuid.log", "u x timestamp=1s"));
            assert!(!permits(&author, &a, "proxy.log", &format!("20s {NODE} ")));
        }
        assert!(permits(&Author::Unrestricted, &a, LOC, "20s 1 anyone"));
    }

    #[test]
    fn location_lines_come_from_the_repository_or_its_gateway() {
        let a = Authority::from_catalog(&catalog());
        let line = |u: &str| format!("20s 1 {u}");
        // Itself.
        assert!(permits(&rw(NODE), &a, LOC, &line(NODE)));
        // Not another repository, unless it proxies it.
        assert!(!permits(&rw(NODE), &a, LOC, &line(OTHER)));
        assert!(!permits(&rw(OTHER), &a, LOC, &line(NODE)));
        // The gateway proxies NODE, and OTHER through the cluster.
        assert!(permits(&rw(GW), &a, LOC, &line(NODE)));
        assert!(permits(&rw(GW), &a, LOC, &line(OTHER)));
        // Garbage in a location log is refused.
        assert!(!permits(&rw(GW), &a, LOC, "20s"));
        // Web URLs and other files: read-write members as before.
        assert!(permits(&rw(NODE), &a, "fbd/530/K.log.web", "1s 1 http://x"));
        assert!(permits(&rw(NODE), &a, "uuid.log", "u x timestamp=1s"));
    }

    #[test]
    fn proxy_cluster_and_topology_lines_from_the_gateway_they_describe() {
        let a = Authority::from_catalog(&catalog());
        assert!(permits(
            &rw(GW),
            &a,
            "proxy.log",
            &format!("30s {GW} {NODE}:n")
        ));
        assert!(!permits(
            &rw(NODE),
            &a,
            "proxy.log",
            &format!("30s {GW} {NODE}:n")
        ));
        assert!(permits(
            &rw(GW),
            &a,
            "cluster.log",
            &format!("30s {CLUSTER} {NODE}")
        ));
        assert!(!permits(
            &rw(NODE),
            &a,
            "cluster.log",
            &format!("30s {CLUSTER} {NODE}")
        ));
        let topo = format!("{GW} whatever timestamp=5s");
        assert!(permits(&rw(GW), &a, TOPOLOGY_LOG, &topo));
        assert!(!permits(&rw(NODE), &a, TOPOLOGY_LOG, &topo));
    }

    #[test]
    fn held_lines_are_neither_taken_nor_refused() {
        let c = catalog();
        let a = Authority::from_catalog(&c);
        let held = format!("10s {GW} {NODE}:n1 {CLUSTER}:c");
        let forged = format!("40s {GW} {OTHER}:evil");
        let v = judge(
            &rw(NODE),
            &a,
            "proxy.log",
            c.file("proxy.log"),
            [held.as_str(), forged.as_str()],
        );
        assert_eq!(v.accepted, Vec::<&str>::new());
        assert_eq!(v.rejected, vec![forged.as_str()]);
    }
}
