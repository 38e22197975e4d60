//! Presence logs: the per-key location logs `<hashdirlower>/<keyFile>.log`
//! (`Logs/Presence/Pure.hs`). A line is `<clock> <status> <info>` with status
//! `1` present, `0` absent, `X` dead; info is a repository UUID.

use std::collections::BTreeMap;

use super::{Clock, lines};
use crate::key::Key;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Present,
    Absent,
    Dead,
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        match s {
            "1" => Some(Status::Present),
            "0" => Some(Status::Absent),
            "X" => Some(Status::Dead),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Present => "1",
            Status::Absent => "0",
            Status::Dead => "X",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Line {
    pub clock: Clock,
    pub status: Status,
    pub info: String,
}

impl Line {
    pub fn parse(s: &str) -> Option<Line> {
        let mut it = s.splitn(3, ' ');
        let clock = Clock::parse(it.next()?)?;
        let status = Status::parse(it.next()?)?;
        let info = it.next()?;
        if info.is_empty() {
            return None;
        }
        Some(Line {
            clock,
            status,
            info: info.to_owned(),
        })
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.clock, self.status.as_str(), self.info)
    }
}

/// The branch path of a key's location log.
pub fn location_log_path(key: &Key) -> String {
    format!("{}{}.log", key.hash_dir_lower(), key.file())
}

/// The newest line per info; exact clock ties go to the earlier line, as in
/// git-annex's presence logs. Unparsable lines are skipped.
pub fn compact(content: &[u8]) -> BTreeMap<String, Line> {
    let mut newest: BTreeMap<String, Line> = BTreeMap::new();
    for l in lines(content).filter_map(Line::parse) {
        match newest.get(&l.info) {
            Some(cur) if cur.clock >= l.clock => {}
            _ => {
                newest.insert(l.info.clone(), l);
            }
        }
    }
    newest
}

/// The log after recording `status` for `info` at wall-clock second `now`:
/// compacted to one line per info, the changed line with an advanced clock.
pub fn record(content: &[u8], info: &str, status: Status, now: i64) -> Vec<u8> {
    let mut newest = compact(content);
    let clock = Clock::advance(now, newest.get(info).map(|l| &l.clock));
    newest.insert(
        info.to_owned(),
        Line {
            clock,
            status,
            info: info.to_owned(),
        },
    );
    let mut out = Vec::new();
    for line in newest.values() {
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Infos whose newest status is present.
pub fn present(content: &[u8]) -> Vec<String> {
    compact(content)
        .into_values()
        .filter(|l| l.status == Status::Present)
        .map(|l| l.info)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_compacts_and_advances() {
        let log = b"1700000000s 1 aaaa\n1600000000s 1 bbbb\n1700000005s 0 bbbb\nnonsense\n";
        let out = record(log, "bbbb", Status::Present, 1700000001);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "1700000000s 1 aaaa\n1700000006s 1 bbbb\n"
        );
        assert_eq!(present(&out), vec!["aaaa".to_string(), "bbbb".to_string()]);
        let gone = record(&out, "aaaa", Status::Absent, 1800000000);
        assert_eq!(present(&gone), vec!["bbbb".to_string()]);
    }

    #[test]
    fn path_of_location_log() {
        let key = Key::parse(
            "SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt",
        )
        .unwrap();
        assert_eq!(
            location_log_path(&key),
            "fbd/530/SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt.log"
        );
    }
}
