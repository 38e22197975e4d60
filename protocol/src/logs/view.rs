//! Reading a catalog the way git-annex reads its branch: repository
//! descriptions, trust, groups, proxies, clusters, and where keys are.

use std::collections::{BTreeMap, BTreeSet};

use super::catalog::Catalog;
use super::{lines, presence, uuid_based};
use crate::key::Key;
use crate::uuid::Uuid;

/// annexmesh's own branch file: `<clock> <uuid> <multiaddr> …` (a map log), so
/// peers learn each other's libp2p addresses with the rest of the metadata.
pub const ADDRESSES_LOG: &str = "annexmesh/addresses.log";

/// Trust levels (`trust.log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    Trusted,
    SemiTrusted,
    Untrusted,
    Dead,
}

impl Trust {
    fn parse(value: &str) -> Trust {
        match value.trim() {
            "1" | "" => Trust::Trusted,
            "0" => Trust::Untrusted,
            "X" => Trust::Dead,
            _ => Trust::SemiTrusted,
        }
    }

    /// git-annex's `readTrustLevel`: the names `copies=LEVEL:N` accepts.
    pub fn from_name(name: &str) -> Option<Trust> {
        Some(match name {
            "trusted" => Trust::Trusted,
            "semitrusted" => Trust::SemiTrusted,
            "untrusted" => Trust::Untrusted,
            "dead" => Trust::Dead,
            _ => return None,
        })
    }

    /// The order of git-annex's `TrustLevel`: dead < untrusted < semitrusted < trusted.
    pub fn rank(self) -> u8 {
        match self {
            Trust::Dead => 0,
            Trust::Untrusted => 1,
            Trust::SemiTrusted => 2,
            Trust::Trusted => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Trusted => "trusted",
            Trust::SemiTrusted => "semitrusted",
            Trust::Untrusted => "untrusted",
            Trust::Dead => "dead",
        }
    }
}

/// A read-only view of a catalog.
pub struct View<'a> {
    catalog: &'a Catalog,
}

fn uuid_values(catalog: &Catalog, path: &str) -> BTreeMap<String, String> {
    catalog
        .file(path)
        .map(|f| {
            f.lines()
                .filter_map(|l| uuid_based::Line::parse(&l))
                .map(|l| (l.uuid, l.value))
                .collect()
        })
        .unwrap_or_default()
}

/// `<clock> <field> <value>` lines as field → value.
fn map_values(catalog: &Catalog, path: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(f) = catalog.file(path) {
        for l in f.lines() {
            let Some((_clock, rest)) = l.split_once(' ') else {
                continue;
            };
            if let Some((field, value)) = rest.split_once(' ') {
                out.insert(field.to_owned(), value.to_owned());
            }
        }
    }
    out
}

/// Decodes `remote.log`'s `&<decimal code>;` escapes (`Logs/Remote/Pure.hs`).
fn unescape_config(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let decoded = tail.split_once(';').and_then(|(code, after)| {
            let c = char::from_u32(code.parse().ok()?)?;
            Some((c, after))
        });
        match decoded {
            Some((c, after)) => {
                out.push(c);
                rest = after;
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Standard base64 with padding (`fromB64Maybe`); `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Some(out)
}

/// Legal git remote names, as git-annex requires of proxy.log names.
fn legal_remote_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['.', '/', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl<'a> View<'a> {
    pub fn new(catalog: &'a Catalog) -> View<'a> {
        View { catalog }
    }

    pub fn descriptions(&self) -> BTreeMap<String, String> {
        uuid_values(self.catalog, "uuid.log")
    }

    pub fn description(&self, uuid: &str) -> Option<String> {
        self.descriptions().remove(uuid)
    }

    pub fn trust(&self, uuid: &str) -> Trust {
        uuid_values(self.catalog, "trust.log")
            .get(uuid)
            .map_or(Trust::SemiTrusted, |v| Trust::parse(v))
    }

    /// Every repository's trust level that `trust.log` sets (others are
    /// semitrusted).
    pub fn trust_map(&self) -> BTreeMap<String, Trust> {
        uuid_values(self.catalog, "trust.log")
            .into_iter()
            .map(|(u, v)| (u, Trust::parse(&v)))
            .collect()
    }

    /// `group.log`: every repository's groups (repositories with none left out).
    pub fn group_map(&self) -> BTreeMap<String, BTreeSet<String>> {
        uuid_values(self.catalog, "group.log")
            .into_iter()
            .map(|(u, v)| (u, v.split_whitespace().map(str::to_owned).collect()))
            .filter(|(_, g): &(String, BTreeSet<String>)| !g.is_empty())
            .collect()
    }

    /// `group-preferred-content.log`: group → expression (`groupwanted`).
    pub fn group_preferred_content(&self) -> BTreeMap<String, String> {
        map_values(self.catalog, "group-preferred-content.log")
    }

    /// `preferred-content.log`: every repository's expression.
    pub fn preferred_contents(&self) -> BTreeMap<String, String> {
        uuid_values(self.catalog, "preferred-content.log")
    }

    /// `required-content.log`: every repository's expression.
    pub fn required_contents(&self) -> BTreeMap<String, String> {
        uuid_values(self.catalog, "required-content.log")
    }

    /// `maxsize.log`: every repository's advisory maximum size in bytes.
    pub fn maxsizes(&self) -> BTreeMap<String, u64> {
        map_values(self.catalog, "maxsize.log")
            .into_iter()
            .filter_map(|(u, v)| Some((u, v.trim().parse().ok()?)))
            .collect()
    }

    /// `remote.log`: `uuid`'s special remote configuration (`key=value`,
    /// with git-annex's `&<code>;` escapes decoded).
    pub fn remote_config(&self, uuid: &str) -> BTreeMap<String, String> {
        uuid_values(self.catalog, "remote.log")
            .get(uuid)
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (unescape_config(k), unescape_config(v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every repository's size as git-annex computes it from the location
    /// logs: the sum of the sizes (`-s`, 0 when absent) of the keys it holds.
    pub fn repo_sizes(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for (path, file) in self.catalog.files() {
            if !path.ends_with(".log") || path.matches('/').count() != 2 {
                continue;
            }
            let name = path.rsplit('/').next().unwrap_or("");
            let Some(key) = name
                .strip_suffix(".log")
                .and_then(|f| Key::from_file(f).ok())
            else {
                continue;
            };
            let size = key.size().unwrap_or(0);
            for u in presence::present(&file.content()) {
                let total = out.entry(u).or_insert(0);
                *total = total.saturating_add(size);
            }
        }
        out
    }

    pub fn groups(&self, uuid: &str) -> Vec<String> {
        uuid_values(self.catalog, "group.log")
            .get(uuid)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    pub fn preferred_content(&self, uuid: &str) -> Option<String> {
        uuid_values(self.catalog, "preferred-content.log").remove(uuid)
    }

    pub fn required_content(&self, uuid: &str) -> Option<String> {
        uuid_values(self.catalog, "required-content.log").remove(uuid)
    }

    pub fn numcopies(&self) -> Option<u32> {
        let f = self.catalog.file("numcopies.log")?;
        let line = f.lines().next()?;
        line.split_once(' ')
            .and_then(|(_, v)| v.trim().parse().ok())
    }

    pub fn maxsize(&self, uuid: &str) -> Option<u64> {
        map_values(self.catalog, "maxsize.log")
            .get(uuid)
            .and_then(|v| v.trim().parse().ok())
    }

    /// `proxy.log`: gateway uuid → what it proxies (uuid, its remote name).
    pub fn proxies(&self) -> BTreeMap<String, Vec<(String, String)>> {
        map_values(self.catalog, "proxy.log")
            .into_iter()
            .map(|(gw, value)| {
                let entries = value
                    .split_whitespace()
                    .filter_map(|e| e.split_once(':'))
                    .filter(|(_, name)| legal_remote_name(name))
                    .map(|(u, n)| (u.to_owned(), n.to_owned()))
                    .collect();
                (gw, entries)
            })
            .collect()
    }

    /// `cluster.log`: cluster uuid → node uuids (dead nodes removed); lines whose
    /// field is not a cluster uuid are ignored, as git-annex does.
    pub fn clusters(&self) -> BTreeMap<String, Vec<String>> {
        map_values(self.catalog, "cluster.log")
            .into_iter()
            .filter(|(c, _)| Uuid::parse(c).is_ok_and(|u| u.is_cluster()))
            .map(|(c, nodes)| {
                let nodes = nodes
                    .split_whitespace()
                    .filter(|n| self.trust(n) != Trust::Dead)
                    .map(str::to_owned)
                    .collect();
                (c, nodes)
            })
            .collect()
    }

    /// libp2p addresses peers announced for their repositories.
    pub fn addresses(&self, uuid: &str) -> Vec<String> {
        map_values(self.catalog, ADDRESSES_LOG)
            .get(uuid)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Repositories holding `key`: the location log's present uuids (cluster
    /// uuids never count, and are never logged), plus every cluster with a
    /// non-dead node among them, as git-annex synthesizes on read.
    pub fn whereis(&self, key: &Key) -> Whereis {
        let path = presence::location_log_path(key);
        let content = self
            .catalog
            .file(&path)
            .map(|f| f.content())
            .unwrap_or_default();
        let copies: BTreeSet<String> = presence::present(&content)
            .into_iter()
            .filter(|u| !Uuid::parse(u).is_ok_and(|u| u.is_cluster()))
            .collect();
        let clusters = self
            .clusters()
            .into_iter()
            .filter(|(_, nodes)| nodes.iter().any(|n| copies.contains(n)))
            .map(|(c, _)| c)
            .collect();
        Whereis {
            copies: copies.into_iter().collect(),
            clusters,
        }
    }

    /// `key`'s current metadata (`<hashdir>/<keyFile>.log.met`, as
    /// `Logs/MetaData.hs` reads it): field (lowercased: field names are
    /// case-insensitive) → values currently set. Entries are applied oldest
    /// first, so the newest setting or unsetting of a value wins. The
    /// synthesized `lastchanged` fields are not included.
    pub fn metadata(&self, key: &Key) -> BTreeMap<String, BTreeSet<String>> {
        let path = format!("{}.met", presence::location_log_path(key));
        let Some(file) = self.catalog.file(&path) else {
            return BTreeMap::new();
        };
        let mut entries: Vec<(super::Clock, String)> = file
            .lines()
            .filter_map(|l| {
                let (clock, rest) = l.split_once(' ')?;
                Some((super::Clock::parse(clock)?, rest.to_owned()))
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut state: BTreeMap<String, BTreeMap<String, bool>> = BTreeMap::new();
        for (_, rest) in &entries {
            let mut field: Option<String> = None;
            for word in rest.split_whitespace() {
                let (set, value) = match word.as_bytes().first() {
                    Some(b'+') => (true, &word[1..]),
                    Some(b'-') => (false, &word[1..]),
                    _ => {
                        field = Some(word.to_lowercase());
                        continue;
                    }
                };
                let Some(f) = &field else { continue };
                let value = match value.strip_prefix('!') {
                    Some(b64) => match base64_decode(b64).and_then(|v| String::from_utf8(v).ok()) {
                        Some(v) => v,
                        None => continue,
                    },
                    None => value.to_owned(),
                };
                state.entry(f.clone()).or_default().insert(value, set);
            }
        }
        state
            .into_iter()
            .map(|(f, vs)| {
                let set: BTreeSet<String> =
                    vs.into_iter().filter(|(_, s)| *s).map(|(v, _)| v).collect();
                (f, set)
            })
            .filter(|(_, vs)| !vs.is_empty())
            .collect()
    }

    /// How many keys, and how many bytes (from keys' sizes), `uuid` holds.
    pub fn holdings(&self, uuid: &str) -> (u64, u64) {
        let mut keys = 0;
        let mut bytes = 0;
        for (path, file) in self.catalog.files() {
            if !path.ends_with(".log") || path.matches('/').count() != 2 {
                continue;
            }
            let content = file.content();
            if !lines(&content)
                .filter_map(presence::Line::parse)
                .any(|l| l.info == uuid && l.status == presence::Status::Present)
            {
                continue;
            }
            keys += 1;
            let name = path.rsplit('/').next().unwrap_or("");
            if let Some(key) = name
                .strip_suffix(".log")
                .and_then(|f| Key::from_file(f).ok())
            {
                bytes += key.size().unwrap_or(0);
            }
        }
        (keys, bytes)
    }
}

/// Where a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whereis {
    /// Repositories with a copy (each counts toward numcopies).
    pub copies: Vec<String>,
    /// Clusters holding it through a node (never counted as copies).
    pub clusters: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whereis_adds_clusters_but_does_not_count_them() {
        let key = Key::parse(
            "SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt",
        )
        .unwrap();
        let cu = "acae2ff6-6c1e-8bec-b8b9-397a3755f397";
        let mut c = Catalog::new();
        c.insert_line("uuid.log", &format!("{cu} cluster mycluster timestamp=1s"));
        c.insert_line("uuid.log", "n1 node1 timestamp=1s");
        c.insert_line("cluster.log", &format!("5s {cu} n1 n2"));
        c.insert_line("cluster.log", "5s 5b070cc8-29b8-11ef-80e1-0fd524be241b n9");
        c.insert_line(
            "proxy.log",
            &format!("5s gw n1:N1 n2:N2 {cu}:mycluster x:-bad"),
        );
        let path = presence::location_log_path(&key);
        c.insert_line(&path, "10s 1 n1");
        c.insert_line(&path, &format!("10s 1 {cu}"));
        c.insert_line(&path, "10s 1 laptop");
        let v = View::new(&c);
        let w = v.whereis(&key);
        assert_eq!(w.copies, vec!["laptop".to_string(), "n1".to_string()]);
        assert_eq!(w.clusters, vec![cu.to_string()]);
        assert_eq!(v.clusters().len(), 1, "non-cluster uuid field ignored");
        assert_eq!(v.proxies()["gw"].len(), 3, "illegal remote name dropped");
        assert_eq!(v.holdings("n1"), (1, 3));
        assert_eq!(v.description("n1").as_deref(), Some("node1"));
        c.insert_line("trust.log", "n1 X timestamp=2s");
        let v = View::new(&c);
        assert!(
            v.whereis(&key).clusters.is_empty(),
            "dead nodes leave clusters"
        );
    }

    #[test]
    fn metadata_newest_wins() {
        let key = Key::parse(
            "SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt",
        )
        .unwrap();
        let path = format!("{}.met", presence::location_log_path(&key));
        let mut c = Catalog::new();
        // "hello world" is base64'd by git-annex: it contains a space.
        c.insert_line(&path, "20s author -joey +bob tag +x");
        c.insert_line(
            &path,
            "10s Author +joey year +2020 title +!aGVsbG8gd29ybGQ=",
        );
        c.insert_line(&path, "30s tag -x");
        let md = View::new(&c).metadata(&key);
        assert_eq!(
            md.get("author"),
            Some(&["bob".to_string()].into_iter().collect())
        );
        assert_eq!(
            md.get("year"),
            Some(&["2020".to_string()].into_iter().collect())
        );
        assert_eq!(
            md.get("title"),
            Some(&["hello world".to_string()].into_iter().collect())
        );
        assert!(!md.contains_key("tag"), "unset fields vanish");
        assert_eq!(base64_decode("YQ=="), Some(b"a".to_vec()));
        assert_eq!(base64_decode("YWI="), Some(b"ab".to_vec()));
        assert_eq!(base64_decode("YWJj"), Some(b"abc".to_vec()));
        assert_eq!(base64_decode("YQ="), None);
        assert_eq!(base64_decode("Y*=="), None);
    }
}
