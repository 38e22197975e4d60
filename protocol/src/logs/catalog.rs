//! The git-annex branch as a CRDT.
//!
//! git-annex merges two versions of a branch file by the union of their lines,
//! and readers take the newest line per field. So each file is, semantically, a
//! map from field to its newest line: a last-writer-wins register per field,
//! ordered by clock (ties broken by the line's text, the way a sorted union then
//! reads: later line for map and UUID-based logs, earlier line for presence
//! logs). Keeping only the winner per field is a join-semilattice:
//!
//! * `merge(a, b) == merge(b, a)` (commutative),
//! * `merge(a, merge(b, c)) == merge(merge(a, b), c)` (associative),
//! * `merge(a, a) == a` (idempotent),
//!
//! so peers converge whatever order, duplication or loss their messages see
//! (property-tested below). Files whose format we do not interpret keep every
//! distinct line (a grow-only set), which is a semilattice too.
//!
//! Lines are carried verbatim, so a catalog can be written back as a
//! byte-identical git-annex branch.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use super::{Clock, lines, presence, uuid_based};

/// How a branch file's lines are read (annex-spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `<uuid> <value> timestamp=<clock>`; field = uuid; tie → later line.
    UuidBased,
    /// `<clock> <field> <value>`; tie → later line.
    Map,
    /// `<clock> <status> <info>`; field = info; tie → earlier line.
    Presence,
    /// `<clock> <value>`; one field; tie → later line.
    SingleValue,
    /// Anything else: every distinct line is kept.
    Opaque,
}

impl Family {
    pub fn of(path: &str) -> Family {
        match path {
            "uuid.log"
            | "remote.log"
            | "trust.log"
            | "group.log"
            | "preferred-content.log"
            | "required-content.log"
            | "schedule.log"
            | "activity.log"
            | "difference.log"
            | "multicast.log"
            | "annexmesh/topology.log"
            | "annexmesh/heads.log" => Family::UuidBased,
            "proxy.log"
            | "cluster.log"
            | "maxsize.log"
            | "export.log"
            | "config.log"
            | "group-preferred-content.log"
            | "annexmesh/members.log" => Family::Map,
            "annexmesh/replication.log" => Family::UuidBased,
            "numcopies.log" | "mincopies.log" => Family::SingleValue,
            p if p.ends_with(".log") && p.matches('/').count() == 2 => Family::Presence,
            p if p.ends_with(".log.web") || p.ends_with(".log.ek") => Family::Presence,
            // annexmesh's per-key replication overrides (`replication::policy`).
            p if p.ends_with(".log.rpl") => Family::Map,
            _ => Family::Opaque,
        }
    }
}

/// Interned repository UUIDs for compact presence lines. Bounded: past
/// [`MAX_INTERNED`] distinct UUIDs, new ones are simply stored as text, so a
/// hostile peer cannot grow it without limit.
mod intern {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};

    pub const MAX_INTERNED: usize = 1 << 16;

    #[derive(Default)]
    struct Table {
        ids: HashMap<&'static str, u32>,
        names: Vec<&'static str>,
    }

    fn table() -> &'static RwLock<Table> {
        static TABLE: OnceLock<RwLock<Table>> = OnceLock::new();
        TABLE.get_or_init(Default::default)
    }

    pub fn id(name: &str) -> Option<u32> {
        if let Some(id) = table()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .get(name)
        {
            return Some(*id);
        }
        let mut t = table().write().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = t.ids.get(name) {
            return Some(*id);
        }
        if t.names.len() >= MAX_INTERNED {
            return None;
        }
        // Bounded above: at most MAX_INTERNED short strings live for the process.
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let id = t.names.len() as u32;
        t.names.push(leaked);
        t.ids.insert(leaked, id);
        Some(id)
    }

    pub fn name(id: u32) -> &'static str {
        table()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .names
            .get(id as usize)
            .copied()
            .unwrap_or("")
    }
}

/// A line kept verbatim: its clock, text, and the field as a slice of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TextEntry {
    clock: Clock,
    text: Box<str>,
    field: (u32, u32),
}

/// One parsed line. Canonical presence lines (`<secs>s <status> <uuid>`, the
/// bulk of any branch) take 16 bytes; everything else keeps its text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Presence { secs: i64, uuid: u32, status: u8 },
    Text(Box<TextEntry>),
}

impl Entry {
    fn field(&self) -> &str {
        match self {
            Entry::Presence { uuid, .. } => intern::name(*uuid),
            Entry::Text(t) => &t.text[t.field.0 as usize..t.field.1 as usize],
        }
    }

    fn text(&self) -> Cow<'_, str> {
        match self {
            Entry::Presence { secs, uuid, status } => Cow::Owned(format!(
                "{secs}s {} {}",
                *status as char,
                intern::name(*uuid)
            )),
            Entry::Text(t) => Cow::Borrowed(&t.text),
        }
    }

    fn clock(&self) -> Cow<'_, Clock> {
        match self {
            Entry::Presence { secs, .. } => Cow::Owned(Clock::from_seconds(*secs)),
            Entry::Text(t) => Cow::Borrowed(&t.clock),
        }
    }
}

/// Byte range of `part` inside `whole` (`part` must be a sub-slice of it).
fn range_in(whole: &str, part: &str) -> (u32, u32) {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

/// Parses a line of `family`; `None` for unparsable lines, which git-annex skips too.
fn parse(family: Family, line: &str) -> Option<Entry> {
    if line.len() > u32::MAX as usize / 2 {
        return None;
    }
    let (field, clock) = match family {
        Family::UuidBased => {
            let l = uuid_based::Line::parse(line)?;
            let (uuid, _) = line.split_once(' ').unwrap_or((line, ""));
            (range_in(line, uuid), l.clock)
        }
        Family::Presence => {
            let l = presence::Line::parse(line)?;
            let status = line.split(' ').nth(1).and_then(|s| s.bytes().next());
            if let Some(status) = status
                && *line == *format!("{}s {} {}", l.clock.seconds(), status as char, l.info)
                && let Some(uuid) = intern::id(&l.info)
            {
                return Some(Entry::Presence {
                    secs: l.clock.seconds(),
                    uuid,
                    status,
                });
            }
            let info = &line[line.len() - l.info.len()..];
            (range_in(line, info), l.clock)
        }
        Family::Map => {
            let (clock, rest) = line.split_once(' ')?;
            let clock = Clock::parse(clock)?;
            // The space after the field is mandatory, even with an empty value.
            let (field, _value) = rest.split_once(' ')?;
            if field.is_empty() {
                return None;
            }
            (range_in(line, field), clock)
        }
        Family::SingleValue => {
            let (clock, _value) = line.split_once(' ')?;
            ((0, 0), Clock::parse(clock)?)
        }
        Family::Opaque => return None,
    };
    Some(Entry::Text(Box::new(TextEntry {
        clock,
        text: line.into(),
        field,
    })))
}

/// Whether `new` beats `old` for the same field.
fn wins(family: Family, new: &Entry, old: &Entry) -> bool {
    match new.clock().cmp(&old.clock()) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => match family {
            Family::Presence => new.text() < old.text(),
            _ => new.text() > old.text(),
        },
    }
}

/// The entries of one file: usually a single field (a key's one location), kept
/// inline; a vector sorted by field otherwise; every distinct line for opaque files.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entries {
    Empty,
    One(Entry),
    Many(Vec<Entry>),
    Opaque(BTreeSet<Box<str>>),
}

/// One branch file as a CRDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    family: Family,
    entries: Entries,
}

impl LogFile {
    pub fn new(family: Family) -> LogFile {
        LogFile {
            family,
            entries: if family == Family::Opaque {
                Entries::Opaque(BTreeSet::new())
            } else {
                Entries::Empty
            },
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    fn slice(&self) -> &[Entry] {
        match &self.entries {
            Entries::One(e) => std::slice::from_ref(e),
            Entries::Many(v) => v,
            Entries::Empty | Entries::Opaque(_) => &[],
        }
    }

    /// Adds one line; returns whether the state changed.
    pub fn insert_line(&mut self, line: &str) -> bool {
        if let Entries::Opaque(set) = &mut self.entries {
            return !line.is_empty() && set.insert(line.into());
        }
        let Some(entry) = parse(self.family, line) else {
            return false;
        };
        let family = self.family;
        match std::mem::replace(&mut self.entries, Entries::Empty) {
            Entries::Empty => {
                self.entries = Entries::One(entry);
                true
            }
            Entries::One(old) => match old.field().cmp(entry.field()) {
                std::cmp::Ordering::Equal => {
                    let won = wins(family, &entry, &old);
                    self.entries = Entries::One(if won { entry } else { old });
                    won
                }
                std::cmp::Ordering::Less => {
                    self.entries = Entries::Many(vec![old, entry]);
                    true
                }
                std::cmp::Ordering::Greater => {
                    self.entries = Entries::Many(vec![entry, old]);
                    true
                }
            },
            Entries::Many(mut v) => {
                let changed = match v.binary_search_by(|e| e.field().cmp(entry.field())) {
                    Ok(i) => {
                        if wins(family, &entry, &v[i]) {
                            v[i] = entry;
                            true
                        } else {
                            false
                        }
                    }
                    Err(i) => {
                        v.insert(i, entry);
                        v.shrink_to_fit();
                        true
                    }
                };
                self.entries = Entries::Many(v);
                changed
            }
            Entries::Opaque(set) => {
                self.entries = Entries::Opaque(set);
                false
            }
        }
    }

    /// Adds every line of a file's content; returns whether anything changed.
    pub fn insert_content(&mut self, content: &[u8]) -> bool {
        let mut changed = false;
        for l in lines(content) {
            changed |= self.insert_line(l);
        }
        changed
    }

    /// The CRDT join.
    pub fn merge(&mut self, other: &LogFile) -> bool {
        let mut changed = false;
        for l in other.lines() {
            changed |= self.insert_line(&l);
        }
        changed
    }

    /// The winning lines (every line for opaque files), sorted by field.
    pub fn lines(&self) -> impl Iterator<Item = Cow<'_, str>> {
        let opaque = match &self.entries {
            Entries::Opaque(set) => Some(set.iter().map(|l| Cow::Borrowed(&**l))),
            _ => None,
        };
        self.slice()
            .iter()
            .map(Entry::text)
            .chain(opaque.into_iter().flatten())
    }

    /// The file as git-annex would write it (one line per field, `\n`-ended).
    pub fn content(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for l in self.lines() {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// The newest line of one field.
    pub fn get(&self, field: &str) -> Option<Cow<'_, str>> {
        let s = self.slice();
        s.binary_search_by(|e| e.field().cmp(field))
            .ok()
            .map(|i| s[i].text())
    }

    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Opaque(set) => set.len(),
            _ => self.slice().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The content of a map log (`proxy.log`, `cluster.log`, …) after setting
/// `field` to `value` at wall-clock second `now`, compacted, with the clock
/// advanced past the field's newest entry (git-annex's writer rules).
pub fn record_map(content: &[u8], field: &str, value: &str, now: i64) -> Vec<u8> {
    let mut file = LogFile::new(Family::Map);
    file.insert_content(content);
    let newest = file
        .get(field)
        .and_then(|l| l.split_once(' ').and_then(|(c, _)| Clock::parse(c)));
    let clock = Clock::advance(now, newest.as_ref());
    file.insert_line(&format!("{clock} {field} {value}"));
    file.content()
}

/// A whole branch's worth of files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    files: BTreeMap<Box<str>, LogFile>,
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Adds a line to a file; returns whether the catalog changed.
    pub fn insert_line(&mut self, path: &str, line: &str) -> bool {
        self.file_mut(path).insert_line(line)
    }

    pub fn insert_content(&mut self, path: &str, content: &[u8]) -> bool {
        self.file_mut(path).insert_content(content)
    }

    fn file_mut(&mut self, path: &str) -> &mut LogFile {
        if !self.files.contains_key(path) {
            self.files
                .insert(path.into(), LogFile::new(Family::of(path)));
        }
        self.files.get_mut(path).expect("inserted just above")
    }

    /// The CRDT join; returns the paths that changed.
    pub fn merge(&mut self, other: &Catalog) -> Vec<String> {
        let mut changed = Vec::new();
        for (path, file) in &other.files {
            if self.file_mut(path).merge(file) {
                changed.push(path.to_string());
            }
        }
        changed
    }

    pub fn file(&self, path: &str) -> Option<&LogFile> {
        self.files.get(path)
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &LogFile)> {
        self.files.iter().map(|(p, f)| (&**p, f))
    }

    /// Files in path order after `after` (from the first without it): for
    /// paging through a large catalog a bounded page at a time.
    pub fn files_after<'a>(
        &'a self,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a LogFile)> + 'a {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.files
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(p, f)| (&**p, f))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn map_records_advance_past_skewed_clocks() {
        let out = record_map(b"100s gw a:A\n", "gw", "b:B", 50);
        assert_eq!(out, b"101s gw b:B\n");
        let out = record_map(&out, "other", "", 200);
        assert_eq!(out, b"101s gw b:B\n200s other \n");
    }

    #[test]
    fn compact_and_verbatim_presence_lines_mix() {
        let mut f = LogFile::new(Family::Presence);
        assert!(f.insert_line("1700000000s 1 aaaa"));
        assert!(f.insert_line("1317929189.157237s 1 bbbb"));
        assert!(f.insert_line("1700000001 0 aaaa"), "no `s`: kept verbatim");
        assert!(!f.insert_line("1700000000s 1 aaaa"));
        assert_eq!(
            f.content(),
            b"1700000001 0 aaaa\n1317929189.157237s 1 bbbb\n"
        );
        assert!(f.insert_line("1700000002s 1 aaaa"));
        assert_eq!(f.get("aaaa").as_deref(), Some("1700000002s 1 aaaa"));
    }

    #[test]
    fn families() {
        assert_eq!(Family::of("uuid.log"), Family::UuidBased);
        assert_eq!(Family::of("proxy.log"), Family::Map);
        assert_eq!(Family::of("numcopies.log"), Family::SingleValue);
        assert_eq!(
            Family::of("fbd/530/SHA256E-s3--x.txt.log"),
            Family::Presence
        );
        assert_eq!(
            Family::of("fbd/530/SHA256E-s3--x.txt.log.met"),
            Family::Opaque
        );
    }

    #[test]
    fn newest_per_field_with_git_annex_ties() {
        let mut f = LogFile::new(Family::Presence);
        assert!(f.insert_line("10s 1 aaaa"));
        assert!(!f.insert_line("9s 0 aaaa"));
        assert!(f.insert_line("11s 0 aaaa"));
        assert!(f.insert_line("10s 1 bbbb"));
        // Presence ties go to the earlier (smaller) line.
        assert!(f.insert_line("10s 0 bbbb"));
        assert!(!f.insert_line("10s 1 bbbb"));
        assert_eq!(f.content(), b"11s 0 aaaa\n10s 0 bbbb\n");
        let mut m = LogFile::new(Family::Map);
        m.insert_line("5s u n1:a");
        m.insert_line("5s u n2:b");
        assert_eq!(
            m.get("u").as_deref(),
            Some("5s u n2:b"),
            "map ties go to the later line"
        );
        assert!(
            !m.insert_line("5s garbage"),
            "the field's space is mandatory"
        );
        assert!(m.insert_line("6s v "), "empty value");
    }

    fn arb_line(family: Family) -> BoxedStrategy<String> {
        let clock = prop_oneof![
            (0i64..20).prop_map(|s| format!("{s}s")),
            (0i64..20, 0u32..3).prop_map(|(s, f)| format!("{s}.{f}s")),
        ];
        let field = prop::sample::select(vec!["aaaa", "bbbb", "cccc"]);
        match family {
            Family::Presence => (clock, prop::sample::select(vec!["0", "1", "X"]), field)
                .prop_map(|(c, s, f)| format!("{c} {s} {f}"))
                .boxed(),
            Family::Map => (clock, field, "[a-z:0-9 ]{0,8}")
                .prop_map(|(c, f, v)| format!("{c} {f} {v}"))
                .boxed(),
            Family::UuidBased => (clock, field, "[a-z=*. ]{0,8}")
                .prop_map(|(c, f, v)| format!("{f} {v} timestamp={c}"))
                .boxed(),
            Family::SingleValue => (clock, 0u8..5)
                .prop_map(|(c, v)| format!("{c} {v}"))
                .boxed(),
            Family::Opaque => "[a-z ]{1,6}".boxed(),
        }
    }

    fn arb_catalog() -> impl Strategy<Value = Catalog> {
        let paths = vec![
            "uuid.log",
            "proxy.log",
            "numcopies.log",
            "fbd/530/K.log",
            "fbd/530/K.log.met",
        ];
        prop::collection::vec(
            prop::sample::select(paths)
                .prop_flat_map(|p| arb_line(Family::of(p)).prop_map(move |l| (p.to_owned(), l))),
            0..24,
        )
        .prop_map(|entries| {
            let mut c = Catalog::new();
            for (p, l) in entries {
                c.insert_line(&p, &l);
            }
            c
        })
    }

    fn merged(a: &Catalog, b: &Catalog) -> Catalog {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_catalog(), b in arb_catalog()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_catalog(), b in arb_catalog(), c in arb_catalog()) {
            prop_assert_eq!(merged(&a, &merged(&b, &c)), merged(&merged(&a, &b), &c));
        }

        #[test]
        fn merge_is_idempotent(a in arb_catalog(), b in arb_catalog()) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
        }

        #[test]
        fn insertion_order_does_not_matter(
            lines in prop::collection::vec(arb_line(Family::Presence), 0..30),
            seed in any::<u64>(),
        ) {
            let mut forward = LogFile::new(Family::Presence);
            for l in &lines {
                forward.insert_line(l);
            }
            let mut shuffled = lines.clone();
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let mut backward = LogFile::new(Family::Presence);
            for l in &shuffled {
                backward.insert_line(l);
            }
            prop_assert_eq!(forward, backward);
        }

        /// Reading a sorted union of two files (git-annex's merge) gives the
        /// same winners as our merge.
        #[test]
        fn agrees_with_git_annex_union_merge(
            a in prop::collection::vec(arb_line(Family::Map), 0..10),
            b in prop::collection::vec(arb_line(Family::Map), 0..10),
        ) {
            let mut union: Vec<&String> = a.iter().chain(b.iter()).collect();
            union.sort();
            union.dedup();
            // git-annex's reader: newest per field, ties to the later line.
            let mut expect: BTreeMap<String, (Clock, String)> = BTreeMap::new();
            for l in union {
                let Some((clock, rest)) = l.split_once(' ') else { continue };
                let Some(clock) = Clock::parse(clock) else { continue };
                let Some((field, _)) = rest.split_once(' ') else { continue };
                match expect.get(field) {
                    Some((c, _)) if *c > clock => {}
                    _ => { expect.insert(field.to_owned(), (clock, l.clone())); }
                }
            }
            let mut ours = LogFile::new(Family::Map);
            for l in a.iter().chain(b.iter()) {
                ours.insert_line(l);
            }
            let want: Vec<&str> = expect.values().map(|(_, l)| l.as_str()).collect();
            let got: Vec<String> = ours.lines().map(|l| l.into_owned()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
