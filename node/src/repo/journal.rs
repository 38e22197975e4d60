//! Records changes to git-annex branch files the way git-annex itself does:
//! through its journal (`annex/journal/<path with / as _>`), under its journal
//! lock (`annex/journal.lck`, a POSIX record lock, so git-annex processes and we
//! exclude each other). A journal file holds the file's whole new content;
//! git-annex commits the journal to the `git-annex` branch in batches.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use protocol::Key;
use protocol::logs::presence::{self, Status};

use crate::error::{Error, IoContext, Result};

/// fcntl locks do not exclude threads of one process from each other; this does.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// The repositories (git dirs) whose journal this process has written since
/// [`take_written`] last took them: what a session commits when it ends, as
/// git-annex-shell does ("recording state in git").
static WRITTEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Notes that `git_dir`'s journal has a change of this process's. Called with
/// the journal lock held and the file in place, so a commit that takes the
/// lock after [`take_written`] sees the change.
fn note_written(git_dir: &Path) {
    let mut set = WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    if !set.contains(git_dir) {
        set.insert(git_dir.to_path_buf());
    }
}

/// The repositories whose journal this process wrote since the last call, and
/// forgets them. A commit that fails puts its repository back ([`rewritten`]).
pub fn take_written() -> Vec<PathBuf> {
    let mut set = WRITTEN.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *set).into_iter().collect()
}

/// Whether this process has written a journal since [`take_written`] last ran.
pub fn any_written() -> bool {
    !WRITTEN.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
}

/// Puts a repository back among the written ones (its commit failed).
pub fn rewritten(git_dir: &Path) {
    note_written(git_dir);
}

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
        Ok(JournalLock {
            _file: lock_file(lock_path)?,
            _guard: guard,
        })
    }
}

/// Opens a journal lock file and takes git-annex's fcntl lock on it. The
/// caller holds [`IN_PROCESS`].
fn lock_file(lock_path: &Path) -> Result<std::fs::File> {
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
    Ok(file)
}

/// One change to a branch file, applied with others by [`modify_many`].
pub(crate) struct Change {
    pub journal: Journal,
    pub branch_path: String,
    pub change: ChangeFn,
}

/// What a [`Change`] does to a file's old content.
pub(crate) type ChangeFn = Box<dyn FnOnce(&[u8]) -> Vec<u8> + Send>;

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Change")
            .field("journal", &self.journal.dir)
            .field("branch_path", &self.branch_path)
            .finish_non_exhaustive()
    }
}

/// An error for every change that shared a failed step.
fn shared_error(context: &str, e: &io::Error) -> Error {
    Error::Io {
        context: context.to_owned(),
        source: io::Error::new(e.kind(), e.to_string()),
    }
}

/// Applies `changes`, in order, to the journals of one or several
/// repositories with one lock take per journal and one durable write per
/// changed file (see [`Prepared`]). Changes to the same file compose in
/// order. Returns each change's new file content, or its error; a failure
/// affects only the changes that share the failed journal or file.
#[cfg(test)]
pub(crate) fn modify_many(changes: Vec<Change>) -> Vec<Result<Vec<u8>>> {
    prepare_many(changes).finish(false)
}

/// A journal batch half done: its locks taken, its changes applied, the new
/// files written to temp files (their writeback started) but not yet
/// durable, nothing renamed. The caller may make the temp files durable
/// together with its own files ([`Prepared::temp_files`], then
/// `finish(true)`); [`Prepared::finish`] renames them into the journals and
/// makes the journal directories durable, then releases the locks.
pub(crate) struct Prepared {
    results: Vec<Option<Result<Vec<u8>>>>,
    written: Vec<Written>,
    // Field order is drop order: unlock the files, then the mutex.
    _locks: Vec<std::fs::File>,
    _guard: std::sync::MutexGuard<'static, ()>,
}

/// A journal file's new content, in its temp file.
struct Written {
    path: PathBuf,
    git_dir: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    file: std::fs::File,
    /// The changes (indexes) it holds.
    who: Vec<usize>,
}

/// Takes the locks, applies the changes and writes the temp files of a
/// journal batch (see [`Prepared`]).
pub(crate) fn prepare_many(changes: Vec<Change>) -> Prepared {
    let mut results: Vec<Option<Result<Vec<u8>>>> = changes.iter().map(|_| None).collect();
    let mut lock_paths: Vec<PathBuf> = changes.iter().map(|c| c.journal.lock.clone()).collect();
    lock_paths.sort();
    lock_paths.dedup();
    // As `JournalLock`: the in-process mutex once, then each journal's fcntl
    // lock in path order (git-annex takes one at a time, so no cycle).
    let guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let mut locks = Vec::new();
    let mut failed_locks: std::collections::BTreeMap<PathBuf, String> = Default::default();
    for path in lock_paths {
        match lock_file(&path) {
            Ok(f) => locks.push(f),
            Err(e) => {
                failed_locks.insert(path, e.to_string());
            }
        }
    }
    /// A journal file's new content and the changes that made it.
    struct Pending {
        git_dir: PathBuf,
        dir: PathBuf,
        tmp_dir: PathBuf,
        content: Vec<u8>,
        who: Vec<usize>,
    }
    let mut files: std::collections::BTreeMap<PathBuf, Pending> = Default::default();
    for (i, c) in changes.into_iter().enumerate() {
        if let Some(e) = failed_locks.get(&c.journal.lock) {
            results[i] = Some(Err(Error::Io {
                context: "locking the journal".into(),
                source: io::Error::other(e.clone()),
            }));
            continue;
        }
        let prepared = std::fs::create_dir_all(&c.journal.dir)
            .and_then(|()| std::fs::create_dir_all(&c.journal.tmp))
            .context(|| format!("creating {}", c.journal.dir.display()));
        if let Err(e) = prepared {
            results[i] = Some(Err(e));
            continue;
        }
        let file = c.journal.file_for(&c.branch_path);
        let old = match files.get(&file) {
            Some(p) => p.content.clone(),
            None => match c.journal.read(&c.branch_path) {
                Ok(old) => old,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            },
        };
        let new = (c.change)(&old);
        let pending = files.entry(file).or_insert_with(|| Pending {
            git_dir: c.journal.git_dir.clone(),
            dir: c.journal.dir.clone(),
            tmp_dir: c.journal.tmp.clone(),
            content: Vec::new(),
            who: Vec::new(),
        });
        pending.content.clone_from(&new);
        pending.who.push(i);
        results[i] = Some(Ok(new));
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut written = Vec::new();
    for (path, p) in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = p
            .tmp_dir
            .join(format!(".{name}.tmp{}-{n}", std::process::id()));
        let made = std::fs::File::create(&tmp).and_then(|mut f| {
            use std::io::Write;
            f.write_all(&p.content)?;
            crate::sys::start_writeback(&f, 0, 0);
            Ok(f)
        });
        match made {
            Ok(file) => written.push(Written {
                path,
                git_dir: p.git_dir,
                dir: p.dir,
                tmp,
                file,
                who: p.who,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                for &i in &p.who {
                    results[i] = Some(Err(shared_error(
                        &format!("writing {}", path.display()),
                        &e,
                    )));
                }
            }
        }
    }
    Prepared {
        results,
        written,
        _locks: locks,
        _guard: guard,
    }
}

impl Prepared {
    /// The temp files, for a caller that makes them durable with its own.
    pub(crate) fn temp_files(&self) -> impl Iterator<Item = &std::fs::File> {
        self.written.iter().map(|w| &w.file)
    }

    /// Drops the files holding any of the changes `failed` (with `why`):
    /// what they say must not be written after all.
    pub(crate) fn abandon(&mut self, failed: &[usize], why: &str) {
        let (drop, keep): (Vec<Written>, Vec<Written>) = std::mem::take(&mut self.written)
            .into_iter()
            .partition(|w| w.who.iter().any(|i| failed.contains(i)));
        self.written = keep;
        for w in drop {
            drop_file(w.file);
            let _ = std::fs::remove_file(&w.tmp);
            for i in w.who {
                self.results[i] = Some(Err(Error::Io {
                    context: format!("writing {}", w.path.display()),
                    source: io::Error::other(why.to_owned()),
                }));
            }
        }
    }

    /// Makes the temp files durable (unless `temps_durable`: the caller did),
    /// renames them into the journals, makes the journal directories durable
    /// and releases the locks. Returns each change's new content or error.
    pub(crate) fn finish(mut self, temps_durable: bool) -> Vec<Result<Vec<u8>>> {
        let written = std::mem::take(&mut self.written);
        let synced: Vec<io::Result<()>> = if temps_durable {
            written.iter().map(|_| Ok(())).collect()
        } else {
            let files: Vec<&std::fs::File> = written.iter().map(|w| &w.file).collect();
            crate::fs::sync_many(&files, false)
        };
        let mut dirs: std::collections::BTreeMap<PathBuf, Vec<usize>> = Default::default();
        for (w, synced) in written.into_iter().zip(synced) {
            let Written {
                path,
                git_dir,
                dir,
                tmp,
                file,
                who,
            } = w;
            drop_file(file);
            match synced.and_then(|()| std::fs::rename(&tmp, &path)) {
                Ok(()) => {
                    note_written(&git_dir);
                    dirs.entry(dir).or_default().extend(who);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    self.fail(&who, &format!("writing {}", path.display()), &e);
                }
            }
        }
        let handles: Vec<(PathBuf, Vec<usize>, io::Result<std::fs::File>)> = dirs
            .into_iter()
            .map(|(d, who)| {
                let h = std::fs::File::open(&d);
                (d, who, h)
            })
            .collect();
        let open: Vec<&std::fs::File> = handles
            .iter()
            .filter_map(|(_, _, h)| h.as_ref().ok())
            .collect();
        let mut synced = crate::fs::sync_many(&open, true).into_iter();
        for (dir, who, h) in &handles {
            let r = match h {
                Ok(_) => synced.next().unwrap_or(Ok(())),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            if let Err(e) = r {
                self.fail(who, &format!("fsync {}", dir.display()), &e);
            }
        }
        std::mem::take(&mut self.results)
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Protocol("change not applied".into()))))
            .collect()
    }

    fn fail(&mut self, who: &[usize], context: &str, e: &io::Error) {
        for &i in who {
            self.results[i] = Some(Err(shared_error(context, e)));
        }
    }
}

/// Closes a file now (a named step, for the reader).
fn drop_file(file: std::fs::File) {
    drop(file);
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

    /// The repository's git directory.
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// A change to `branch_path` for [`modify_many`].
    pub(crate) fn change(
        &self,
        branch_path: String,
        change: impl FnOnce(&[u8]) -> Vec<u8> + Send + 'static,
    ) -> Change {
        Change {
            journal: self.clone(),
            branch_path,
            change: Box::new(change),
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
        crate::fs::write_atomic_via(&self.tmp, &self.file_for(branch_path), &new)?;
        note_written(&self.git_dir);
        drop(lock);
        Ok(new)
    }

    /// The change that records that repository `uuid` now has (or lacks)
    /// `key`'s content (applied by the group committer, `store::group`).
    pub(crate) fn presence_change(
        &self,
        key: &Key,
        uuid: &protocol::Uuid,
        status: Status,
    ) -> Change {
        let now = log_clock_now();
        let uuid = uuid.clone();
        self.change(presence::location_log_path(key), move |old| {
            presence::record(old, uuid.as_str(), status, now)
        })
    }

    /// [`Journal::presence_change`] for several repositories in one write.
    pub(crate) fn presence_change_many(
        &self,
        key: &Key,
        uuids: &[protocol::Uuid],
        status: Status,
    ) -> Change {
        let now = log_clock_now();
        let uuids = uuids.to_vec();
        self.change(presence::location_log_path(key), move |old| {
            let mut content = old.to_vec();
            for u in &uuids {
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

/// Repositories kept open by [`read_branch_file`], at most this many per thread.
const OPEN_REPOS: usize = 64;

/// Opens a repository for reading, once per thread (gix handles here are
/// not `Send`): opening reads its config and more, which costs more than the
/// lookup itself, and a location log is read for every upload. The reference
/// and the objects are still looked up on disk each time (new packs are
/// found when an object is not).
fn open_cached(git_dir: &Path) -> Result<gix::Repository> {
    thread_local! {
        static OPEN: std::cell::RefCell<std::collections::HashMap<PathBuf, gix::Repository>> =
            Default::default();
    }
    if let Some(repo) = OPEN.with_borrow(|open| open.get(git_dir).cloned()) {
        return Ok(repo);
    }
    let repo = gix::open_opts(git_dir, gix::open::Options::isolated())
        .map_err(|e| Error::Git(format!("cannot open {}: {e}", git_dir.display())))?;
    OPEN.with_borrow_mut(|open| {
        if open.len() >= OPEN_REPOS {
            open.clear();
        }
        open.insert(git_dir.to_path_buf(), repo.clone());
    });
    Ok(repo)
}

/// Reads `refs/heads/git-annex:<path>`; `None` when the branch or file is absent.
pub fn read_branch_file(git_dir: &Path, path: &str) -> Result<Option<Vec<u8>>> {
    let repo = open_cached(git_dir)?;
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
