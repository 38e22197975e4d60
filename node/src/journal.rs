//! Records changes to git-annex branch files the way git-annex itself does:
//! through its journal (`annex/journal/<path with / as _>`), under its journal
//! lock (`annex/journal.lck`, a POSIX record lock, so git-annex processes and we
//! exclude each other). A journal file holds the file's whole new content;
//! git-annex commits the journal to the `git-annex` branch in batches.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protocol::Key;
use protocol::logs::presence::{self, Status};

use crate::error::{Error, IoContext, Result};

/// fcntl locks do not exclude threads of one process from each other; this does.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// The journal lock, held: the in-process mutex (fcntl locks do not exclude
/// threads of one process) and git-annex's fcntl lock on `annex/journal.lck`
/// (which excludes other processes). Every writer of the journal or of the
/// branch takes it through here; a second handle on the lock file would
/// release the fcntl lock for the whole process when closed.
pub struct JournalLock {
    // Field order is drop order: close the file (fcntl unlock), then the mutex.
    _file: std::fs::File,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl JournalLock {
    pub fn take(lock_path: &Path) -> Result<JournalLock> {
        let guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path)
            .context(|| format!("opening {}", lock_path.display()))?;
        crate::sys::lock_exclusive(&file).context(|| "locking the journal".into())?;
        Ok(JournalLock {
            _file: file,
            _guard: guard,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Journal {
    git_dir: PathBuf,
    dir: PathBuf,
    lock: PathBuf,
    tmp: PathBuf,
}

impl Journal {
    pub fn new(git_dir: &Path) -> Journal {
        let annex = git_dir.join("annex");
        Journal {
            git_dir: git_dir.to_path_buf(),
            dir: annex.join("journal"),
            lock: annex.join("journal.lck"),
            tmp: annex.join("othertmp"),
        }
    }

    /// The journal file for a branch path: `_` → `__`, then `/` → `_`
    /// (`journalFile` in git-annex), so `SHA3_256` keys stay unambiguous.
    pub fn file_for(&self, branch_path: &str) -> PathBuf {
        self.dir.join(journal_name(branch_path))
    }

    /// The current content of a branch file: the journal's if it has one, else
    /// the `git-annex` branch's.
    pub fn read(&self, branch_path: &str) -> Result<Vec<u8>> {
        match std::fs::read(self.file_for(branch_path)) {
            Ok(c) => Ok(c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(read_branch_file(&self.git_dir, branch_path)?.unwrap_or_default())
            }
            Err(e) => Err(Error::Io {
                context: format!("reading journal for {branch_path}"),
                source: e,
            }),
        }
    }

    /// Applies `change` to a branch file's content under the journal lock;
    /// returns the new content.
    pub fn modify(
        &self,
        branch_path: &str,
        change: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        std::fs::create_dir_all(&self.dir)
            .context(|| format!("creating {}", self.dir.display()))?;
        std::fs::create_dir_all(&self.tmp)
            .context(|| format!("creating {}", self.tmp.display()))?;
        let lock = JournalLock::take(&self.lock)?;
        let old = self.read(branch_path)?;
        let new = change(&old);
        crate::store::write_atomic_via(&self.tmp, &self.file_for(branch_path), &new)?;
        drop(lock);
        Ok(new)
    }

    /// Records that repository `uuid` now has (or lacks) `key`'s content.
    /// Returns the location log's new content.
    pub fn record_presence(
        &self,
        key: &Key,
        uuid: &protocol::Uuid,
        status: Status,
    ) -> Result<Vec<u8>> {
        let now = log_clock_now();
        self.modify(&presence::location_log_path(key), |old| {
            presence::record(old, uuid.as_str(), status, now)
        })
    }

    /// [`Journal::record_presence`] for several repositories in one write.
    pub fn record_presence_many(
        &self,
        key: &Key,
        uuids: &[protocol::Uuid],
        status: Status,
    ) -> Result<Vec<u8>> {
        let now = log_clock_now();
        self.modify(&presence::location_log_path(key), |old| {
            let mut content = old.to_vec();
            for u in uuids {
                content = presence::record(&content, u.as_str(), status, now);
            }
            content
        })
    }

    /// Repositories the location log says have `key`.
    pub fn locations(&self, key: &Key) -> Result<Vec<String>> {
        Ok(presence::present(
            &self.read(&presence::location_log_path(key))?,
        ))
    }
}

/// The journal's name for a branch path.
pub fn journal_name(branch_path: &str) -> String {
    branch_path.replace('_', "__").replace('/', "_")
}

/// Seconds for new log lines; `GIT_ANNEX_VECTOR_CLOCK` pins it, as in git-annex.
pub fn log_clock_now() -> i64 {
    if let Some(v) = std::env::var("GIT_ANNEX_VECTOR_CLOCK")
        .ok()
        .and_then(|v| v.trim_end_matches('s').parse::<i64>().ok())
    {
        return v;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Reads `refs/heads/git-annex:<path>`; `None` when the branch or file is absent.
pub fn read_branch_file(git_dir: &Path, path: &str) -> Result<Option<Vec<u8>>> {
    let repo = gix::open_opts(git_dir, gix::open::Options::isolated())
        .map_err(|e| Error::Git(format!("cannot open {}: {e}", git_dir.display())))?;
    let git = |e: &dyn std::fmt::Display| Error::Git(format!("reading git-annex:{path}: {e}"));
    let Some(mut reference) = repo
        .try_find_reference("refs/heads/git-annex")
        .map_err(|e| git(&e))?
    else {
        return Ok(None);
    };
    let commit_id = reference.peel_to_id().map_err(|e| git(&e))?.detach();
    let tree = repo
        .find_commit(commit_id)
        .map_err(|e| git(&e))?
        .tree()
        .map_err(|e| git(&e))?;
    let Some(entry) = tree.lookup_entry_by_path(path).map_err(|e| git(&e))? else {
        return Ok(None);
    };
    let blob = repo.find_blob(entry.object_id()).map_err(|e| git(&e))?;
    Ok(Some(blob.data.clone()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn journal_names_escape_underscores() {
        assert_eq!(
            super::journal_name("334/dc7/SHA3_256-s1--ab.log"),
            "334_dc7_SHA3__256-s1--ab.log"
        );
        assert_eq!(super::journal_name("uuid.log"), "uuid.log");
    }
}
