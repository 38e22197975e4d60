//! File-system helpers below every store and journal: atomic writes (temp
//! file, fsync, rename, fsync the directory) and syncing many files at once.

pub mod clock;
pub mod sys;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes a small file atomically: temp file in the same directory, fsync, rename,
/// fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_via(path.parent().unwrap_or(Path::new(".")), path, bytes)
}

/// Like [`write_atomic`], with the temp file in `tmp_dir` (same file system), for
/// directories whose every file means something (git-annex's journal).
pub fn write_atomic_via(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = tmp_dir.join(format!(".{name}.tmp{}-{n}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.context(|| format!("writing {}", path.display()))
}

/// Makes `files` durable (their data, and the metadata needed to read it;
/// all of it with `full`), each result in order. Several files on one file
/// system take one `syncfs` (one disk cache flush for all); a lone file, or a
/// failed `syncfs`, takes its own `fdatasync`/`fsync`, which also tells
/// which file failed.
pub(crate) fn sync_many(files: &[&File], full: bool) -> Vec<std::io::Result<()>> {
    let one = |f: &File| if full { f.sync_all() } else { f.sync_data() };
    if files.len() < 2 {
        return files.iter().map(|f| one(f)).collect();
    }
    let mut by_dev: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let dev = f.metadata().map_or(u64::MAX, |m| m.dev());
        by_dev.entry(dev).or_default().push(i);
    }
    let mut results: Vec<std::io::Result<()>> = files.iter().map(|_| Ok(())).collect();
    for idx in by_dev.values() {
        let whole = idx.len() >= 2 && crate::sys::syncfs(files[idx[0]]).is_ok();
        if !whole {
            for &i in idx {
                results[i] = one(files[i]);
            }
        }
    }
    results
}
