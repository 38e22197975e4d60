//! Transfers in flight per node, counted across every process serving a
//! gateway: each `p2pstdio` session is a process of its own (git-annex `-J8`
//! starts eight), and the daemon serves many sessions in one process.
//!
//! A transfer holds an exclusive lock (`flock`, per open file, so it also
//! excludes other transfers of the same process) on one slot file
//! `annex/annexmesh/busy/<uuid>.<n>`; a node's count is how many of its slots
//! are locked. Locks end with their process, so a crash never leaves a node
//! looking busy. Past [`SLOTS`] transfers a node counts as [`SLOTS`] busy.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use protocol::Uuid;

/// The most transfers counted per node.
pub const SLOTS: usize = 64;

/// Where a repository keeps its slot files.
pub fn dir(annex_dir: &Path) -> PathBuf {
    annex_dir.join("annexmesh").join("busy")
}

fn slot(dir: &Path, uuid: &Uuid, n: usize) -> PathBuf {
    dir.join(format!("{uuid}.{n}"))
}

/// One transfer in flight; the slot is free again when this is dropped.
#[derive(Debug)]
pub struct Busy {
    _slot: Option<File>,
}

/// Marks a transfer on `uuid` as in flight. Never fails: when no slot can be
/// had (all taken, or the directory is unwritable) the transfer just goes
/// uncounted.
pub fn start(dir: &Path, uuid: &Uuid) -> Busy {
    if std::fs::create_dir_all(dir).is_err() {
        return Busy { _slot: None };
    }
    for n in 0..SLOTS {
        let Ok(f) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(slot(dir, uuid, n))
        else {
            break;
        };
        if f.try_lock().is_ok() {
            return Busy { _slot: Some(f) };
        }
    }
    Busy { _slot: None }
}

/// How many transfers on `uuid` are in flight, in any process.
pub fn count(dir: &Path, uuid: &Uuid) -> usize {
    let mut busy = 0;
    for n in 0..SLOTS {
        // Slots are taken lowest first, so the files end where no transfer
        // ever went; a free slot below a taken one is probed like any other.
        let Ok(f) = File::open(slot(dir, uuid, n)) else {
            break;
        };
        if f.try_lock_shared().is_err() {
            busy += 1;
        }
    }
    busy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_transfers_until_they_end() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = dir(tmp.path());
        let a = Uuid::parse("11111111-1111-4111-8111-111111111111").expect("uuid");
        let b = Uuid::parse("22222222-2222-4222-8222-222222222222").expect("uuid");
        assert_eq!(count(&dir, &a), 0);
        let one = start(&dir, &a);
        let two = start(&dir, &a);
        let other = start(&dir, &b);
        assert_eq!(count(&dir, &a), 2);
        assert_eq!(count(&dir, &b), 1);
        drop(one);
        assert_eq!(count(&dir, &a), 1);
        // The freed slot is taken again before a new one is made.
        let three = start(&dir, &a);
        assert_eq!(count(&dir, &a), 2);
        drop((two, three, other));
        assert_eq!(count(&dir, &a), 0);
        assert_eq!(count(&dir, &b), 0);
    }

    #[test]
    fn a_transfer_in_another_process_counts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = dir(tmp.path());
        let a = Uuid::parse("11111111-1111-4111-8111-111111111111").expect("uuid");
        std::fs::create_dir_all(&dir).expect("mkdir");
        // flock(1) holds slot 0 as a separate process would (`-o`: only flock
        // itself holds it, not its `sleep`).
        let mut holder = std::process::Command::new("flock")
            .arg("-o")
            .arg(slot(&dir, &a, 0))
            .args(["sleep", "30"])
            .spawn()
            .expect("flock(1)");
        let mut seen = 0;
        for _ in 0..200 {
            seen = count(&dir, &a);
            if seen == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(seen, 1);
        assert_eq!(count(&dir, &a), 0);
    }
}
