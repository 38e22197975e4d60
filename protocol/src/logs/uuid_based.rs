//! Old-style UUID-based logs (`uuid.log`, `trust.log`, `group.log`,
//! `preferred-content.log`, …): `<uuid> <value…> timestamp=<clock>`
//! (`Logs/UUIDBased.hs`). The value may contain spaces; an empty value leaves
//! two spaces. Newest clock per UUID wins; exact ties go to the later line.

use std::collections::BTreeMap;

use super::{Clock, lines};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Line {
    pub uuid: String,
    pub value: String,
    pub clock: Clock,
}

impl Line {
    /// A line without a `timestamp=` is a very old one: it counts as older than
    /// everything (clock 0) and is kept verbatim.
    pub fn parse(s: &str) -> Option<Line> {
        let (uuid, rest) = s.split_once(' ').unwrap_or((s, ""));
        if uuid.is_empty() {
            return None;
        }
        let (value, clock) = match rest.rsplit_once(" timestamp=") {
            Some((v, c)) => (v, Clock::parse(c)?),
            None => match rest.strip_prefix("timestamp=") {
                Some(c) => ("", Clock::parse(c)?),
                None => (rest, Clock::parse("0")?),
            },
        };
        Some(Line {
            uuid: uuid.to_owned(),
            value: value.to_owned(),
            clock,
        })
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} timestamp={}", self.uuid, self.value, self.clock)
    }
}

/// The newest line per UUID.
pub fn compact(content: &[u8]) -> BTreeMap<String, Line> {
    let mut newest: BTreeMap<String, Line> = BTreeMap::new();
    for l in lines(content).filter_map(Line::parse) {
        match newest.get(&l.uuid) {
            Some(cur) if cur.clock > l.clock => {}
            _ => {
                newest.insert(l.uuid.clone(), l);
            }
        }
    }
    newest
}

/// The log after setting `uuid`'s value at wall-clock second `now`.
pub fn record(content: &[u8], uuid: &str, value: &str, now: i64) -> Vec<u8> {
    let mut newest = compact(content);
    let clock = Clock::advance(now, newest.get(uuid).map(|l| &l.clock));
    newest.insert(
        uuid.to_owned(),
        Line {
            uuid: uuid.to_owned(),
            value: value.to_owned(),
            clock,
        },
    );
    let mut out = Vec::new();
    for line in newest.values() {
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let l =
            Line::parse("e605dca6-446a-11e0-8b2a-002170d25c55 laptop timestamp=1317929189.157237s")
                .unwrap();
        assert_eq!(l.value, "laptop");
        let l = Line::parse("u  timestamp=5s").unwrap();
        assert_eq!(l.value, "");
        assert_eq!(l.to_string(), "u  timestamp=5s");
        let l = Line::parse("u include=*.mp3 or balanced=nodes timestamp=7s").unwrap();
        assert_eq!(l.value, "include=*.mp3 or balanced=nodes");
        let old = Line::parse("u trusted").unwrap();
        assert_eq!(old.clock.seconds(), 0);
    }

    #[test]
    fn record_replaces_per_uuid() {
        let log = b"a one timestamp=10s\nb two timestamp=20s\na newer timestamp=15s\n";
        let out = record(log, "b", "three", 5);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a newer timestamp=15s\nb three timestamp=21s\n"
        );
    }
}
