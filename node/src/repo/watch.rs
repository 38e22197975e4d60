//! Notices every change to a repository's shared metadata, whoever made it:
//! journal files written by any process (annex-shell sessions, `initcluster`,
//! `updatecluster`, `cluster add-node`, stock git-annex) and commits to the
//! `git-annex` branch (stock git-annex's own, a `git fetch` merged, another
//! process of ours). The daemon polls it and hands what changed to gossip, so
//! every member hears of it within a poll interval, with no restart.
//!
//! A journal file is re-read when its size, modification time or inode
//! changes (journal files are replaced by rename, so a rewrite is a new
//! inode); the branch is diffed from the last head seen. Both are cheap when
//! nothing changed: one `readdir` with a `stat` per file, one ref read.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gix::ObjectId;

use crate::error::Result;

/// What identifies one version of a journal file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

/// The last state seen of one repository's journal and branch.
pub struct Watcher {
    git_dir: PathBuf,
    journal: HashMap<String, Signature>,
    head: Option<ObjectId>,
}

impl Watcher {
    /// Starts from the repository as it is now: only later changes are reported.
    pub fn new(git_dir: &Path) -> Result<Watcher> {
        let mut w = Watcher {
            git_dir: git_dir.to_path_buf(),
            journal: HashMap::new(),
            head: crate::branch::head(git_dir)?,
        };
        w.scan_journal()?;
        Ok(w)
    }

    /// The branch files (path, whole content) changed since the last call.
    pub fn changes(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = self.scan_journal()?;
        if let Some(head) = crate::branch::head(&self.git_dir)?
            && Some(head) != self.head
        {
            out.extend(crate::branch::files_changed(
                &self.git_dir,
                self.head,
                head,
            )?);
            self.head = Some(head);
        }
        Ok(out)
    }

    /// Journal files that are new or rewritten since the last scan.
    fn scan_journal(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.git_dir.join("annex/journal");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.journal.clear();
                return Ok(Vec::new());
            }
            Err(e) => {
                return Err(crate::error::Error::Io {
                    context: format!("reading {}", dir.display()),
                    source: e,
                });
            }
        };
        let mut seen = HashMap::with_capacity(self.journal.len());
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let path = crate::branch::branch_path(&name);
            if crate::journal::journal_name(&path) != name || !crate::branch::valid_path(&path) {
                continue;
            }
            // Gone between readdir and stat: committed meanwhile; the branch
            // diff reports it.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let sig = Signature {
                ino: meta.ino(),
                len: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            };
            if self.journal.get(&name) != Some(&sig)
                && let Ok(content) = std::fs::read(entry.path())
            {
                out.push((path, content));
            }
            seen.insert(name, sig);
        }
        self.journal = seen;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
