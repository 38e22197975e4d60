//! The object store of a repository, in git-annex's on-disk layout.
//!
//! * Content lives at `annex/objects/<hashdir>/<keyFile>/<keyFile>` (mixed-case
//!   hash directories first in non-bare repositories, lower-case first in bare
//!   ones), frozen read-only as git-annex freezes it.
//! * An upload goes to `annex/tmp/<keyFile>`; its size is the resume offset
//!   (`PUT-FROM`). Bytes are hashed as they arrive (the kept prefix is re-hashed
//!   first on a resume); only verified content is fsynced and renamed into place,
//!   so a partial or corrupt object is never visible. Bad content is deleted.
//! * `LOCKCONTENT` takes a shared `flock` on the key's directory; `REMOVE` needs
//!   the exclusive lock, so it fails while any connection, in this process or
//!   another, holds the content locked. A lock whose connection died is retained
//!   for [`LOCK_RETENTION`] through a small marker file, as git-annex does.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::Key;
use protocol::logs::presence::{self, Status};
use protocol::server::Validity;
use protocol::verify::{Verdict, Verifier};

use crate::error::{Error, IoContext, Result};

/// git-annex's default `annex.diskreserve`.
pub const DEFAULT_DISKRESERVE: u64 = 100_000_000;
use crate::journal::Journal;
use crate::repo::{Layout, Repo};

/// How long content stays locked after its locking connection is lost
/// (git-annex's `p2pDefaultLockContentRetentionDuration`).
pub const LOCK_RETENTION: Duration = Duration::from_secs(600);

/// Hears about branch-file changes a store makes.
pub trait StoreObserver: Send + Sync {
    /// `content` is the file's whole new content.
    fn changed(&self, path: &str, content: &[u8]);
}

impl std::fmt::Debug for dyn StoreObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreObserver")
    }
}

/// An object store over one repository.
#[derive(Debug, Clone)]
pub struct Store {
    repo: Repo,
    journal: Journal,
    observer: Option<std::sync::Arc<dyn StoreObserver>>,
    objects: PathBuf,
    tmp: PathBuf,
    retention: PathBuf,
    /// Commits this store's objects and records with the other writes of its
    /// file system (`group`).
    committer: std::sync::Arc<group::Committer>,
    /// Uploads begun through this handle and its clones (for metrics, and
    /// the simulations that count the PUTs each node receives).
    uploads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Result of storing content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Stored,
    Rejected(Verdict),
    /// `INVALID` was declared for a key whose content cannot be verified.
    Unverifiable,
}

impl Store {
    pub fn new(repo: Repo) -> Store {
        let annex = repo.annex_dir();
        Store {
            journal: Journal::new(&repo.git_dir),
            observer: None,
            objects: annex.join("objects"),
            tmp: annex.join("tmp"),
            retention: annex.join("annexmesh").join("lock-retention"),
            uploads: Default::default(),
            committer: group::for_path(&repo.git_dir),
            repo,
        }
    }

    /// How many uploads were begun through this store handle and its clones.
    pub fn uploads_begun(&self) -> u64 {
        self.uploads.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn open(path: &Path) -> Result<Store> {
        Ok(Store::new(Repo::open(path)?))
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    pub fn uuid(&self) -> &protocol::Uuid {
        &self.repo.uuid
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Every change to the store records its location-log line, as git-annex
    /// does. A failure to record is reported but loses no content.
    fn record(&self, key: &Key, status: Status) {
        match self.record_presence(key, &self.repo.uuid, status) {
            Ok(content) => {
                if let Some(observer) = &self.observer {
                    observer.changed(&presence::location_log_path(key), &content);
                }
            }
            Err(e) => tracing::warn!("cannot record location of {key}: {e}"),
        }
    }

    /// Gives this store (and its journal) a group committer of its own, so a
    /// test can hold and count its batches.
    #[cfg(test)]
    pub(crate) fn isolate_committer(&mut self) -> std::sync::Arc<group::Committer> {
        let c = std::sync::Arc::new(group::Committer::default());
        self.committer = c.clone();
        c
    }

    /// Records that repository `uuid` now has (or lacks) `key`'s content, in
    /// this store's journal. Returns the location log's new content.
    /// Concurrent records share their lock take and fsyncs (group commit).
    pub fn record_presence(
        &self,
        key: &Key,
        uuid: &protocol::Uuid,
        status: Status,
    ) -> Result<Vec<u8>> {
        self.committer
            .commit_change(self.journal.presence_change(key, uuid, status))
    }

    /// [`Store::record_presence`] for several repositories in one write.
    pub fn record_presence_many(
        &self,
        key: &Key,
        uuids: &[protocol::Uuid],
        status: Status,
    ) -> Result<Vec<u8>> {
        self.committer
            .commit_change(self.journal.presence_change_many(key, uuids, status))
    }

    /// Tells `observer` about every branch file this store changes (the mesh's
    /// metadata service gossips them).
    pub fn set_observer(&mut self, observer: std::sync::Arc<dyn StoreObserver>) {
        self.observer = Some(observer);
    }

    /// Candidate object paths in lookup order; new content goes to the first.
    pub fn object_paths(&self, key: &Key) -> [PathBuf; 2] {
        let file = key.file();
        let mixed = self
            .objects
            .join(key.hash_dir_mixed())
            .join(&file)
            .join(&file);
        let lower = self
            .objects
            .join(key.hash_dir_lower())
            .join(&file)
            .join(&file);
        match self.repo.layout {
            Layout::NonBare => [mixed, lower],
            Layout::Bare => [lower, mixed],
        }
    }

    /// The path of the content, if present.
    pub fn content_path(&self, key: &Key) -> Option<PathBuf> {
        self.object_paths(key)
            .into_iter()
            .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.content_path(key).is_some()
    }

    /// `DATA-PRESENT`: the content was stored out of band. Records it if it is here.
    pub fn confirm_present(&self, key: &Key) -> bool {
        let here = self.contains(key);
        if here {
            self.record(key, Status::Present);
        }
        here
    }

    /// Size of the content, if present.
    pub fn content_size(&self, key: &Key) -> Option<u64> {
        self.content_path(key)
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| m.len())
    }

    pub fn partial_path(&self, key: &Key) -> PathBuf {
        self.tmp.join(key.file())
    }

    /// Why this repository cannot take `bytes` more now, if it cannot:
    /// the filesystem's available bytes (statvfs) less `annex.diskreserve`
    /// (git-annex's default 100 MB) are fewer. Unknown free space takes it.
    pub fn lacks_room(&self, bytes: u64) -> Option<String> {
        let reserve = crate::repo::gitconfig::config_get(&self.repo.top, "annex.diskreserve")
            .ok()
            .flatten()
            .and_then(|v| protocol::preferred::parse_size(&v))
            .unwrap_or(DEFAULT_DISKRESERVE);
        // The git directory: always there, and on the annex's filesystem.
        let available = crate::sys::available_bytes(&self.repo.git_dir).ok()?;
        let room = available.saturating_sub(reserve);
        (room < bytes).then(|| {
            format!(
                "not enough free space: {bytes} bytes needed, {room} available beyond annex.diskreserve ({reserve})"
            )
        })
    }

    /// Bytes already received for an upload of `key` (the `PUT-FROM` offset).
    pub fn partial_size(&self, key: &Key) -> u64 {
        fs::metadata(self.partial_path(key)).map_or(0, |m| m.len())
    }

    /// Opens the partial file for appending at `offset`, re-hashing what is kept.
    pub fn begin_upload(&self, key: &Key, offset: u64) -> Result<Upload> {
        self.open_upload(key, offset, true)
    }

    fn open_upload(&self, key: &Key, offset: u64, hashed: bool) -> Result<Upload> {
        self.uploads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.partial_path(key);
        fs::create_dir_all(&self.tmp).context(|| format!("creating {}", self.tmp.display()))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        // One upload per key at a time, across connections and processes (as
        // git-annex's transfer lock): a second writer would interleave bytes.
        if file.try_lock().is_err() {
            return Err(Error::Protocol(format!(
                "another upload of {key} is in progress"
            )));
        }
        let have = file
            .metadata()
            .context(|| format!("stat {}", path.display()))?
            .len();
        let mut verifier = Verifier::new(key);
        // A partial file shorter than the offset we announced cannot happen unless
        // someone else truncated it; start over from what is really there.
        let keep = offset.min(have);
        file.set_len(keep)
            .context(|| format!("truncating {}", path.display()))?;
        if keep > 0 {
            let mut buf = vec![0u8; 1 << 20];
            let mut left = keep;
            file.seek(SeekFrom::Start(0))
                .context(|| "seeking partial file".into())?;
            while left > 0 {
                let n = (left.min(buf.len() as u64)) as usize;
                file.read_exact(&mut buf[..n])
                    .context(|| "re-reading partial file".into())?;
                verifier.update(&buf[..n]);
                left -= n as u64;
            }
        }
        file.seek(SeekFrom::Start(keep))
            .context(|| "seeking partial file".into())?;
        let left = key.size().map_or(u64::MAX, |s| s.saturating_sub(keep));
        let hasher = if hashed {
            Hasher::for_key(verifier, left)
        } else {
            Hasher::Caller
        };
        Ok(Upload {
            key: key.clone(),
            path,
            file,
            hasher,
            written: keep,
            flushed: keep,
            waited: keep,
        })
    }

    /// Opens the partial file for an upload from offset 0 that this store does
    /// not hash: the caller hashes the stream once with a [`StreamCheck`] (a
    /// cluster gateway writing the same bytes to several local nodes), and only
    /// [`Store::commit_checked`] with that check's [`Checked`] verdict can make
    /// it visible. A kept partial file is discarded: the caller cannot vouch for
    /// bytes it did not see.
    pub fn begin_unhashed_upload(&self, key: &Key) -> Result<Upload> {
        self.open_upload(key, 0, false)
    }

    /// Verifies a finished upload and, if good, moves it into place atomically.
    /// An upload from [`Store::begin_unhashed_upload`] is refused here.
    pub fn commit(&self, upload: Upload, validity: Validity) -> Result<Stored> {
        let verdict = upload.hasher.finish()?;
        self.finish_commit(upload.key, upload.path, upload.file, verdict, validity)
    }

    /// Commits an upload from [`Store::begin_unhashed_upload`] with the verdict
    /// of the caller's [`StreamCheck`], which must have seen exactly the bytes
    /// written to this upload (same key, same length, both from offset 0).
    pub fn commit_checked(
        &self,
        upload: Upload,
        checked: &Checked,
        validity: Validity,
    ) -> Result<Stored> {
        if !matches!(upload.hasher, Hasher::Caller) {
            return Err(Error::Protocol(
                "commit_checked needs an upload from begin_unhashed_upload".into(),
            ));
        }
        if checked.key != upload.key || checked.len != upload.written {
            let _ = fs::remove_file(&upload.path);
            return Err(Error::Protocol(format!(
                "the check of {} saw {} bytes, the upload has {}",
                checked.key, checked.len, upload.written
            )));
        }
        let verdict = checked.verdict.clone();
        self.finish_commit(upload.key, upload.path, upload.file, verdict, validity)
    }

    fn finish_commit(
        &self,
        key: Key,
        path: PathBuf,
        file: File,
        verdict: Verdict,
        validity: Validity,
    ) -> Result<Stored> {
        if !verdict.accepted_given(validity) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Ok(if verdict.accepted() {
                Stored::Unverifiable
            } else {
                Stored::Rejected(verdict)
            });
        }
        if self.contains(&key) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Ok(Stored::Stored);
        }
        // Durable, in place, then recorded: in one batch with whatever else
        // this file system is committing (`group`).
        let [dest, _] = self.object_paths(&key);
        let record = self
            .journal
            .presence_change(&key, &self.repo.uuid, Status::Present);
        let outcome = self.committer.commit_object(group::ObjectJob {
            file,
            tmp: path,
            dest,
            record: Some(record),
        });
        outcome.placed?;
        match outcome.record {
            Some(Ok(content)) => {
                if let Some(observer) = &self.observer {
                    observer.changed(&presence::location_log_path(&key), &content);
                }
            }
            Some(Err(e)) => tracing::warn!("cannot record location of {key}: {e}"),
            None => tracing::warn!("cannot record location of {key}"),
        }
        Ok(Stored::Stored)
    }

    /// Adds content from a local file (copying it; the source is left alone).
    pub fn add_file(&self, key: &Key, source: &Path) -> Result<Stored> {
        if self.contains(key) {
            return Ok(Stored::Stored);
        }
        let mut upload = self.begin_upload(key, 0)?;
        let mut src = File::open(source).context(|| format!("opening {}", source.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src
                .read(&mut buf)
                .context(|| format!("reading {}", source.display()))?;
            if n == 0 {
                break;
            }
            upload.write(&buf[..n])?;
        }
        self.commit(upload, Validity::Valid)
    }

    /// Takes a shared lock on present content; `None` if it is absent or being
    /// removed.
    pub fn lock_shared(&self, key: &Key) -> Result<Option<ContentLock>> {
        let Some(path) = self.content_path(key) else {
            return Ok(None);
        };
        let Some(dir) = path.parent() else {
            return Ok(None);
        };
        let Ok(handle) = File::open(dir) else {
            return Ok(None);
        };
        if handle.try_lock_shared().is_err() {
            return Ok(None);
        }
        // Removed between lookup and lock?
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(ContentLock {
            key: key.clone(),
            _handle: handle,
        }))
    }

    /// Keeps `key` locked against removal for [`LOCK_RETENTION`] from now.
    pub fn retain_lock(&self, key: &Key) -> Result<()> {
        let until = SystemTime::now() + LOCK_RETENTION;
        let secs = until.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        fs::create_dir_all(&self.retention)
            .context(|| format!("creating {}", self.retention.display()))?;
        write_atomic(
            &self.retention.join(key.file()),
            secs.to_string().as_bytes(),
        )
    }

    fn retained(&self, key: &Key) -> bool {
        let path = self.retention.join(key.file());
        let Ok(text) = fs::read_to_string(&path) else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match text.trim().parse::<u64>() {
            Ok(until) if until > now => true,
            _ => {
                let _ = fs::remove_file(&path);
                false
            }
        }
    }

    /// Removes content. Absent content counts as removed. Fails (returns false)
    /// while the content is locked, or when `before` (monotonic seconds) has passed.
    pub fn remove(&self, key: &Key, before: Option<i64>) -> Result<bool> {
        let Some(path) = self.content_path(key) else {
            return Ok(true);
        };
        let Some(key_dir) = path.parent().map(Path::to_path_buf) else {
            return Ok(false);
        };
        let handle = File::open(&key_dir).context(|| format!("opening {}", key_dir.display()))?;
        if handle.try_lock().is_err() || self.retained(key) {
            return Ok(false);
        }
        if let Some(deadline) = before
            && crate::clock::monotonic_seconds() >= deadline
        {
            return Ok(false);
        }
        set_mode(&key_dir, 0o755)?;
        fs::remove_file(&path).context(|| format!("removing {}", path.display()))?;
        let _ = fs::remove_dir(&key_dir);
        if let Some(hash2) = key_dir.parent() {
            let _ = sync_dir(hash2);
            if fs::remove_dir(hash2).is_ok()
                && let Some(hash1) = hash2.parent()
            {
                let _ = fs::remove_dir(hash1);
            }
        }
        self.record(key, Status::Absent);
        Ok(true)
    }

    /// Moves content found bad aside, into `annex/bad/<keyFile>` as
    /// git-annex's fsck does (the bytes are kept), and records it absent.
    /// `None` when it is not here. Locked content is not moved (an error),
    /// so nothing moves under a reader.
    pub fn move_aside(&self, key: &Key) -> Result<Option<PathBuf>> {
        let Some(path) = self.content_path(key) else {
            return Ok(None);
        };
        let Some(key_dir) = path.parent().map(Path::to_path_buf) else {
            return Err(Error::Protocol(format!(
                "{} has no directory",
                path.display()
            )));
        };
        let handle = File::open(&key_dir).context(|| format!("opening {}", key_dir.display()))?;
        if handle.try_lock().is_err() || self.retained(key) {
            return Err(Error::Protocol(format!("{key} is locked: not moved aside")));
        }
        let bad = self.repo.annex_dir().join("bad");
        fs::create_dir_all(&bad).context(|| format!("creating {}", bad.display()))?;
        let to = bad.join(key.file());
        set_mode(&key_dir, 0o755)?;
        fs::rename(&path, &to).context(|| format!("moving {} aside", path.display()))?;
        sync_dir(&bad)?;
        sync_dir(&key_dir)?;
        let _ = fs::remove_dir(&key_dir);
        self.record(key, Status::Absent);
        Ok(Some(to))
    }

    /// Opens present content for reading.
    pub fn open_content(&self, key: &Key) -> Result<Option<(File, u64)>> {
        let Some(path) = self.content_path(key) else {
            return Ok(None);
        };
        let file = File::open(&path).context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .context(|| format!("stat {}", path.display()))?
            .len();
        Ok(Some((file, len)))
    }
}

/// Uploads expected to be at least this large are hashed on their own thread,
/// so hashing overlaps with receiving and writing.
const HASH_THREAD_MIN: u64 = 8 << 20;

/// Chunks in flight to a hashing thread (each at most one read buffer).
const HASH_QUEUE: usize = 4;

/// An upload in progress: bytes go to the partial file and to the hash.
#[derive(Debug)]
pub struct Upload {
    key: Key,
    path: PathBuf,
    file: File,
    hasher: Hasher,
    written: u64,
    /// Bytes whose writeback has been started ([`WRITEBACK_STEP`]).
    flushed: u64,
    /// Bytes whose writeback has been waited for.
    waited: u64,
}

/// A large upload starts the writeback of every this many bytes as soon as
/// they are written, and waits for the writeback of the step before, so the
/// disk works while the rest arrives, at most two steps per upload are dirty
/// in the page cache, and the final `fdatasync` finds little left to do.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Where an upload's bytes are hashed.
#[derive(Debug)]
enum Hasher {
    /// The caller hashes the stream ([`StreamCheck`]); see [`Store::commit_checked`].
    Caller,
    Inline(Box<Verifier>),
    Thread {
        chunks: std::sync::mpsc::SyncSender<Vec<u8>>,
        spare: std::sync::mpsc::Receiver<Vec<u8>>,
        done: std::thread::JoinHandle<Verifier>,
    },
}

impl Hasher {
    fn spawn(mut verifier: Verifier) -> Hasher {
        let (chunks, incoming) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let (recycle, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let done = std::thread::spawn(move || {
            for chunk in incoming {
                verifier.update(&chunk);
                let _ = recycle.try_send(chunk);
            }
            verifier
        });
        Hasher::Thread {
            chunks,
            spare,
            done,
        }
    }

    fn for_key(verifier: Verifier, left: u64) -> Hasher {
        if left >= HASH_THREAD_MIN {
            Hasher::spawn(verifier)
        } else {
            Hasher::Inline(Box::new(verifier))
        }
    }

    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            Hasher::Caller => {}
            Hasher::Inline(v) => v.update(bytes),
            Hasher::Thread { chunks, spare, .. } => {
                let mut buf = spare.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(bytes);
                chunks
                    .send(buf)
                    .map_err(|_| Error::Protocol("the hashing thread died".into()))?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Verdict> {
        match self {
            Hasher::Caller => Err(Error::Protocol(
                "an unhashed upload can only be committed with its caller's check".into(),
            )),
            Hasher::Inline(v) => Ok(v.finish()),
            Hasher::Thread { chunks, done, .. } => {
                drop(chunks);
                done.join()
                    .map(Verifier::finish)
                    .map_err(|_| Error::Protocol("the hashing thread panicked".into()))
            }
        }
    }
}

/// Hashes one stream of a key's content from offset 0, once, for several
/// unhashed uploads (see [`Store::begin_unhashed_upload`]). Large content is
/// hashed on its own thread, as uploads are.
#[derive(Debug)]
pub struct StreamCheck {
    key: Key,
    hasher: Hasher,
    len: u64,
}

/// The verdict of a finished [`StreamCheck`]: only a check can make one.
#[derive(Debug, Clone)]
pub struct Checked {
    key: Key,
    len: u64,
    verdict: Verdict,
}

impl Checked {
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }
}

impl StreamCheck {
    pub fn new(key: &Key) -> StreamCheck {
        StreamCheck {
            key: key.clone(),
            hasher: Hasher::for_key(Verifier::new(key), key.size().unwrap_or(u64::MAX)),
            len: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> Result<Checked> {
        Ok(Checked {
            verdict: self.hasher.finish()?,
            key: self.key,
            len: self.len,
        })
    }
}

impl Upload {
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .context(|| format!("writing {}", self.path.display()))?;
        self.hasher.update(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.flushed >= WRITEBACK_STEP {
            if self.flushed > self.waited {
                crate::sys::wait_writeback(&self.file, self.waited, self.flushed - self.waited);
                self.waited = self.flushed;
            }
            crate::sys::start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Bytes in the partial file so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shared lock on content; dropping it unlocks.
#[derive(Debug)]
pub struct ContentLock {
    key: Key,
    _handle: File,
}

impl ContentLock {
    pub fn key(&self) -> &Key {
        &self.key
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .context(|| format!("chmod {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("fsync {}", dir.display()))
}

pub use crate::fs::{write_atomic, write_atomic_via};

pub(crate) mod group;

#[cfg(test)]
mod tests;
