//! A repository's git config, read and written with `git config` itself:
//! simple, and exactly git's own rules for quoting, includes and case.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

pub(crate) fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir);
    c
}

/// `git config --get-regexp RE`: (key, value) pairs; none when nothing matches.
pub fn config_regexp(dir: &Path, re: &str) -> Result<Vec<(String, String)>> {
    let out = git(dir)
        .args(["config", "--null", "--get-regexp", re])
        .output()
        .map_err(|e| Error::Git(format!("running git config: {e}")))?;
    if !out.status.success() {
        // Exit 1: no match.
        if out.status.code() == Some(1) {
            return Ok(Vec::new());
        }
        return Err(Error::Git(format!(
            "git config --get-regexp {re}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out
        .stdout
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let s = String::from_utf8_lossy(e);
            match s.split_once('\n') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s.into_owned(), String::new()),
            }
        })
        .collect())
}

/// A repository's whole git config, read once (`git config -z --list`, so
/// with git's own includes, quoting and case rules) and looked up as `git
/// config --get` would answer.
#[derive(Debug, Clone, Default)]
pub struct ConfigSnapshot {
    /// Canonical keys (section and variable lower-cased, the subsection as
    /// written) with their values, in git's order.
    entries: Vec<(String, String)>,
}

impl ConfigSnapshot {
    /// Reads the config of the repository at `dir`.
    pub fn read(dir: &Path) -> Result<ConfigSnapshot> {
        let out = git(dir)
            .args(["config", "-z", "--list"])
            .output()
            .map_err(|e| Error::Git(format!("running git config: {e}")))?;
        if !out.status.success() {
            return Err(Error::Git(format!(
                "git config --list: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(ConfigSnapshot::parse(&out.stdout))
    }

    /// Parses `git config -z --list` output: `key\nvalue\0`, or `key\0`
    /// for a key without a value.
    pub fn parse(out: &[u8]) -> ConfigSnapshot {
        let entries = out
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let s = String::from_utf8_lossy(e);
                match s.split_once('\n') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (s.into_owned(), String::new()),
                }
            })
            .collect();
        ConfigSnapshot { entries }
    }

    /// `git config --get KEY`: the last value, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        let key = canonical_key(key);
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every (key, value) whose canonical key starts with `prefix` and ends
    /// with `suffix` (as `git config --get-regexp '^PREFIX.*SUFFIX$'`).
    pub fn matching(&self, prefix: &str, suffix: &str) -> Vec<(String, String)> {
        self.entries
            .iter()
            .filter(|(k, _)| {
                k.len() >= prefix.len() + suffix.len()
                    && k.starts_with(prefix)
                    && k.ends_with(suffix)
            })
            .cloned()
            .collect()
    }
}

/// A key as git prints it: section and variable lower-cased, the
/// subsection (between them) as written.
fn canonical_key(key: &str) -> String {
    match (key.find('.'), key.rfind('.')) {
        (Some(first), Some(last)) if first < last => format!(
            "{}{}{}",
            key[..first].to_ascii_lowercase(),
            &key[first..last],
            key[last..].to_ascii_lowercase()
        ),
        _ => key.to_ascii_lowercase(),
    }
}

/// `git config KEY`, if set.
pub fn config_get(dir: &Path, key: &str) -> Result<Option<String>> {
    let out = git(dir)
        .args(["config", "--get", key])
        .output()
        .map_err(|e| Error::Git(format!("running git config: {e}")))?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_owned(),
    ))
}

/// `git config KEY VALUE`.
pub fn config_set(dir: &Path, key: &str, value: &str) -> Result<()> {
    let out = git(dir)
        .args(["config", key, value])
        .output()
        .map_err(|e| Error::Git(format!("running git config: {e}")))?;
    if !out.status.success() {
        return Err(Error::Git(format!(
            "git config {key}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
