//! annexmesh's membership log, `annexmesh/members.log`: which libp2p peers
//! belong to the mesh, with what role. A map log (git-annex's
//! `<clock> <field> <value>`, newest line per field wins), keyed by PeerId:
//!
//! ```text
//! 1700000000s 12D3KooW… member <uuid> read-write
//! 1700000100s 12D3KooW… removed
//! ```
//!
//! Members trust each other's metadata and reach each other's repositories
//! with their role's access; a removed peer's later writes are refused by
//! every member. Lines this version cannot read are kept (the catalog keeps
//! them) and ignored here.

use std::collections::BTreeMap;

use crate::server::ServeMode;

/// The branch file.
pub const MEMBERS_LOG: &str = "annexmesh/members.log";

/// What the newest line says of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Member { uuid: String, role: ServeMode },
    Removed,
}

/// A role's name in the log (and in grants).
pub fn role_name(role: ServeMode) -> &'static str {
    match role {
        ServeMode::ReadWrite => "read-write",
        ServeMode::AppendOnly => "append-only",
        ServeMode::ReadOnly => "read-only",
    }
}

/// A role from its name.
pub fn parse_role(s: &str) -> Option<ServeMode> {
    match s {
        "read-write" => Some(ServeMode::ReadWrite),
        "append-only" => Some(ServeMode::AppendOnly),
        "read-only" => Some(ServeMode::ReadOnly),
        _ => None,
    }
}

impl Entry {
    /// The value written after the PeerId.
    pub fn value(&self) -> String {
        match self {
            Entry::Member { uuid, role } => format!("member {uuid} {}", role_name(*role)),
            Entry::Removed => "removed".to_owned(),
        }
    }

    /// Reads a value; `None` for anything else (a newer format, garbage).
    pub fn parse(value: &str) -> Option<Entry> {
        let mut words = value.split_whitespace();
        match words.next()? {
            "member" => {
                let uuid = words.next()?;
                let role = words
                    .next()
                    .map_or(Some(ServeMode::ReadWrite), parse_role)?;
                if uuid.len() > 64 || !uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return None;
                }
                Some(Entry::Member {
                    uuid: uuid.to_owned(),
                    role,
                })
            }
            "removed" => Some(Entry::Removed),
            _ => None,
        }
    }
}

/// The newest entry per peer, from the winning lines of the file
/// (`LogFile::lines`). A peer whose newest line cannot be read is left out.
pub fn entries<'a>(lines: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for line in lines {
        let mut parts = line.splitn(3, ' ');
        let (Some(_clock), Some(peer), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(e) = Entry::parse(value) {
            out.insert(peer.to_owned(), e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::catalog::{Family, LogFile, record_map};

    #[test]
    fn newest_line_per_peer_wins() {
        assert_eq!(Family::of(MEMBERS_LOG), Family::Map);
        let a = Entry::Member {
            uuid: "u-a".into(),
            role: ServeMode::ReadWrite,
        };
        let log = record_map(b"", "PA", &a.value(), 100);
        let log = record_map(
            &log,
            "PB",
            &Entry::Member {
                uuid: "u-b".into(),
                role: ServeMode::ReadOnly,
            }
            .value(),
            100,
        );
        let later = record_map(&log, "PB", &Entry::Removed.value(), 200);
        // Merged in either order, the removal (newer) wins.
        let mut f = LogFile::new(Family::Map);
        f.insert_content(&later);
        f.insert_content(&log);
        let lines: Vec<String> = f.lines().map(|l| l.into_owned()).collect();
        let got = entries(lines.iter().map(String::as_str));
        assert_eq!(got.get("PA"), Some(&a));
        assert_eq!(got.get("PB"), Some(&Entry::Removed));
    }

    #[test]
    fn unreadable_values_are_ignored() {
        assert_eq!(Entry::parse("member"), None);
        assert_eq!(Entry::parse("member u bogus-role"), None);
        assert_eq!(Entry::parse("member u/../x read-write"), None);
        assert_eq!(Entry::parse("frobnicated"), None);
        assert_eq!(
            Entry::parse("member u"),
            Some(Entry::Member {
                uuid: "u".into(),
                role: ServeMode::ReadWrite
            })
        );
        let got = entries(["100s PA", "x", "100s PB member u read-only"]);
        assert_eq!(got.len(), 1);
    }
}
