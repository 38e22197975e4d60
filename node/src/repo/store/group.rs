//! Group commit: uploads and journal records that finish at the same time, in
//! any session and for any repository of this process on one file system,
//! share their `fdatasync`s and directory fsyncs.
//!
//! A caller hands its job to the file system's [`Committer`] and waits. If no
//! batch is being committed, the caller leads: it takes every queued job and
//! commits them together, then wakes the others; jobs that arrive meanwhile
//! form the next batch, led by one of their callers. There is no background
//! thread and no timer: a lone upload commits at once, and concurrent ones
//! batch by themselves while the disk is busy with the batch before.
//!
//! One batch, in order (each step only for the jobs the steps before left
//! standing):
//!  1. the temp files' bytes durable: one `syncfs` when there are several
//!     ([`sync_many`]; on ext4 without a journal, as on the VM this was
//!     measured on, each `fdatasync` is a disk cache flush of its own), an
//!     `fdatasync` for one;
//!  2. each file renamed into `annex/objects` (visible only now, with its
//!     bytes durable);
//!  3. the location-log records of those objects, and the batch's other
//!     journal changes, applied under one lock take per journal and written
//!     to temp files ([`journal::prepare_many`]);
//!  4. the objects' directories and those temp files durable, together;
//!  5. the journal files renamed into place and the journal directories
//!     durable ([`journal::Prepared::finish`]); "present" is thus written only
//!     for objects durably in place.
//!
//! A job's failure (its sync, its directories, its rename, its journal file)
//! fails that job and any that shared the failed step; the others land.
//! `syncfs` writes whatever else is dirty on the file system too, so a batch
//! costs more while a large write elsewhere is in flight; large uploads keep
//! their dirty pages few (`store::WRITEBACK_STEP`).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, IoContext, Result};
use crate::journal::{self, Change};

/// A verified upload ready to be made durable and visible.
#[derive(Debug)]
pub(crate) struct ObjectJob {
    /// The temp file, still open (and still holding the upload's lock).
    pub file: File,
    pub tmp: PathBuf,
    /// `annex/objects/<hashdirs>/<keyFile>/<keyFile>`.
    pub dest: PathBuf,
    /// The location-log record to write once the object is durable in place.
    pub record: Option<Change>,
}

#[derive(Debug)]
enum Job {
    Object(ObjectJob),
    Journal(Change),
}

/// What became of a job.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The object is durable in place (always `Ok` for a journal job).
    pub placed: Result<()>,
    /// The journal file's new content, if the job had a record and got to it.
    pub record: Option<Result<Vec<u8>>>,
}

impl Outcome {
    fn failed(e: Error) -> Outcome {
        Outcome {
            placed: Err(e),
            record: None,
        }
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    queue: Vec<(u64, Job)>,
    done: HashMap<u64, Outcome>,
    busy: bool,
    /// Tests hold batches back to see them form.
    held: bool,
    batches: u64,
    jobs: u64,
    #[cfg(test)]
    fail_sync: Option<String>,
}

/// The group committer of one file system (see the module doc).
#[derive(Default)]
pub(crate) struct Committer {
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Committer")
            .field("batches", &s.batches)
            .field("jobs", &s.jobs)
            .finish_non_exhaustive()
    }
}

/// The committer for the file system holding `path` (or its nearest existing
/// ancestor): one per file system per process.
pub(crate) fn for_path(path: &Path) -> Arc<Committer> {
    static ALL: OnceLock<Mutex<HashMap<u64, Arc<Committer>>>> = OnceLock::new();
    let dev = path
        .ancestors()
        .find_map(|p| fs::metadata(p).ok())
        .map_or(0, |m| m.dev());
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.entry(dev).or_default().clone()
}

impl Committer {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `job`'s object durable and visible, then writes its record.
    pub(crate) fn commit_object(&self, job: ObjectJob) -> Outcome {
        self.run(Job::Object(job))
    }

    /// Applies one journal change in the next batch; returns the new content.
    pub(crate) fn commit_change(&self, change: Change) -> Result<Vec<u8>> {
        self.run(Job::Journal(change))
            .record
            .unwrap_or_else(|| Err(Error::Protocol("journal change not applied".into())))
    }

    fn run(&self, job: Job) -> Outcome {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.queue.push((id, job));
        loop {
            if let Some(out) = st.done.remove(&id) {
                return out;
            }
            if !st.busy && !st.held && !st.queue.is_empty() {
                st.busy = true;
                let batch = std::mem::take(&mut st.queue);
                let ids: Vec<u64> = batch.iter().map(|(i, _)| *i).collect();
                #[cfg(test)]
                let fail_sync = st.fail_sync.clone();
                #[cfg(not(test))]
                let fail_sync: Option<String> = None;
                drop(st);
                let outs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    commit_batch(batch, fail_sync.as_deref())
                }))
                .unwrap_or_else(|_| {
                    ids.iter()
                        .map(|&i| {
                            let e = Error::Protocol("the group commit panicked".into());
                            (i, Outcome::failed(e))
                        })
                        .collect()
                });
                st = self.lock();
                st.busy = false;
                st.batches += 1;
                st.jobs += ids.len() as u64;
                st.done.extend(outs);
                self.wake.notify_all();
                continue;
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// (batches, jobs) committed so far.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> (u64, u64) {
        let s = self.lock();
        (s.batches, s.jobs)
    }

    /// Jobs waiting for a batch.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Holds batches back (`true`) or lets them go (`false`).
    #[cfg(test)]
    pub(crate) fn hold(&self, held: bool) {
        self.lock().held = held;
        self.wake.notify_all();
    }

    /// Makes the `fdatasync` of temp files whose name contains `needle` fail.
    #[cfg(test)]
    pub(crate) fn fail_sync_of(&self, needle: Option<&str>) {
        self.lock().fail_sync = needle.map(str::to_owned);
    }
}

fn commit_batch(batch: Vec<(u64, Job)>, fail_sync: Option<&str>) -> Vec<(u64, Outcome)> {
    let mut out: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut objects = Vec::new();
    let mut changes: Vec<(u64, Change)> = Vec::new();
    for (id, job) in batch {
        match job {
            Job::Object(o) => objects.push((id, o)),
            Job::Journal(c) => changes.push((id, c)),
        }
    }

    // 1. The bytes, durable.
    for (_, o) in &objects {
        crate::sys::start_writeback(&o.file, 0, 0);
    }
    let files: Vec<&File> = objects.iter().map(|(_, o)| &o.file).collect();
    let synced_all = sync_many(&files, false);
    let mut synced = Vec::new();
    for ((id, o), r) in objects.into_iter().zip(synced_all) {
        let injected = fail_sync.is_some_and(|n| o.tmp.to_string_lossy().contains(n));
        let r = if injected {
            Err(std::io::Error::other("injected fdatasync failure"))
        } else {
            r
        };
        match r.context(|| format!("fdatasync {}", o.tmp.display())) {
            Ok(()) => synced.push((id, o)),
            Err(e) => {
                drop(o.file);
                let _ = fs::remove_file(&o.tmp);
                out.insert(id, Outcome::failed(e));
            }
        }
    }

    // 2. Into place.
    let mut dirs: BTreeMap<PathBuf, Vec<u64>> = BTreeMap::new();
    let mut placed = Vec::new();
    for (id, o) in synced {
        match place(&o) {
            Ok(touched) => {
                for d in touched {
                    dirs.entry(d).or_default().push(id);
                }
                placed.push((id, o));
            }
            Err(e) => {
                out.insert(id, Outcome::failed(e));
            }
        }
    }

    // 3. The journal files written (not yet durable, not renamed): with one
    // lock take per journal.
    let mut change_ids = Vec::new();
    let mut batch_changes = Vec::new();
    for (id, c) in changes {
        change_ids.push(id);
        batch_changes.push(c);
    }
    let mut records = Vec::new();
    for (id, o) in placed {
        if let Some(key_dir) = o.dest.parent() {
            let _ = fs::set_permissions(key_dir, fs::Permissions::from_mode(0o555));
        }
        out.insert(
            id,
            Outcome {
                placed: Ok(()),
                record: None,
            },
        );
        if let Some(c) = o.record {
            records.push(id);
            change_ids.push(id);
            batch_changes.push(c);
        }
    }
    let mut prepared = journal::prepare_many(batch_changes);

    // 4. The objects' directories and the journal's temp files, durable
    // together.
    let handles: Vec<(&PathBuf, &Vec<u64>, std::io::Result<File>)> = dirs
        .iter()
        .map(|(d, ids)| (d, ids, File::open(d)))
        .collect();
    let mut to_sync: Vec<&File> = handles
        .iter()
        .filter_map(|(_, _, h)| h.as_ref().ok())
        .collect();
    let n_dirs = to_sync.len();
    to_sync.extend(prepared.temp_files());
    let synced = sync_many(&to_sync, true);
    let temps_durable = synced[n_dirs..].iter().all(Result::is_ok);
    let mut dir_results = synced.into_iter().take(n_dirs);
    let mut failed_ids: Vec<u64> = Vec::new();
    for (dir, ids, h) in &handles {
        let r = match h {
            Ok(_) => dir_results.next().unwrap_or(Ok(())),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        if let Err(e) = r {
            for id in ids.iter() {
                failed_ids.push(*id);
                out.insert(
                    *id,
                    Outcome::failed(Error::Io {
                        context: format!("fsync {}", dir.display()),
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    }),
                );
            }
        }
    }
    drop(handles);
    if !failed_ids.is_empty() {
        // Their objects are not known to be durable in place: no record.
        let idx: Vec<usize> = change_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| failed_ids.contains(id) && records.contains(id))
            .map(|(i, _)| i)
            .collect();
        prepared.abandon(&idx, "the object's directory is not durable");
    }

    // 5. The journal files renamed into place, their directories durable.
    for (id, r) in change_ids.into_iter().zip(prepared.finish(temps_durable)) {
        let o = out.entry(id).or_insert_with(|| Outcome {
            placed: Ok(()),
            record: None,
        });
        if o.placed.is_ok() {
            o.record = Some(r);
        }
    }
    out.into_iter().collect()
}

pub(crate) use crate::fs::sync_many;

/// Moves one durable temp file into place; returns the directories whose
/// entries changed (the key directory, and the parent of each one created).
fn place(o: &ObjectJob) -> Result<Vec<PathBuf>> {
    let key_dir = o
        .dest
        .parent()
        .ok_or_else(|| Error::Protocol(format!("{} has no directory", o.dest.display())))?;
    let mut touched = vec![key_dir.to_path_buf()];
    if key_dir.exists() {
        fs::set_permissions(key_dir, fs::Permissions::from_mode(0o755))
            .context(|| format!("chmod {}", key_dir.display()))?;
    } else {
        let mut d = key_dir;
        while !d.exists() {
            let Some(parent) = d.parent() else { break };
            touched.push(parent.to_path_buf());
            d = parent;
        }
        fs::create_dir_all(key_dir).context(|| format!("creating {}", key_dir.display()))?;
    }
    o.file
        .set_permissions(fs::Permissions::from_mode(0o444))
        .context(|| format!("chmod {}", o.tmp.display()))?;
    fs::rename(&o.tmp, &o.dest).context(|| format!("moving content to {}", o.dest.display()))?;
    Ok(touched)
}
