#![allow(clippy::unwrap_used)]
//! `branch::commit_written`: a session's journal writes are committed when it
//! ends, in this process's repositories only once each; a journal left by a
//! killed session is committed by the next. Its own binary, because the set
//! of written journals is per process.

use std::path::Path;

use node::Store;
use protocol::Key;
use protocol::logs::presence::{self, Status};
use protocol::server::Validity;
use protocol::verify::Hash;

fn store(dir: &Path, seed: u8) -> Store {
    let init = node::init::init(dir, "r", [seed; 16]).unwrap();
    Store::new(init.repo)
}

fn put(store: &Store, data: &[u8]) -> Key {
    let mut h = Hash::Sha256.hasher();
    h.update(data);
    let key = Key::from_hash("SHA256E", data.len() as u64, &h.finish_hex(), ".bin").unwrap();
    let mut upload = store.begin_upload(&key, 0).unwrap();
    upload.write(data).unwrap();
    store.commit(upload, Validity::Valid).unwrap();
    key
}

fn journal_is_empty(store: &Store) -> bool {
    std::fs::read_dir(store.repo().git_dir.join("annex/journal"))
        .map(|d| {
            d.filter_map(Result::ok)
                .all(|e| e.file_name().to_string_lossy().starts_with('.'))
        })
        .unwrap_or(true)
}

fn branch_file(store: &Store, path: &str) -> Option<Vec<u8>> {
    node::journal::read_branch_file(&store.repo().git_dir, path).unwrap()
}

#[test]
fn what_a_session_wrote_is_committed_once_and_left_overs_too() {
    let tmp = tempfile::tempdir().unwrap();
    let a = store(&tmp.path().join("a"), 1);
    let b = store(&tmp.path().join("b"), 2);
    // Nothing written yet: nothing to do.
    node::branch::commit_written("test").unwrap();

    let ka = put(&a, b"in a");
    let kb = put(&b, b"in b");
    assert!(!journal_is_empty(&a) && !journal_is_empty(&b));
    assert_eq!(node::branch::commit_written("test").unwrap(), 2);
    assert!(journal_is_empty(&a) && journal_is_empty(&b));
    let log = branch_file(&a, &presence::location_log_path(&ka)).unwrap();
    assert_eq!(presence::present(&log), vec![a.uuid().to_string()]);
    assert!(branch_file(&b, &presence::location_log_path(&kb)).is_some());
    // Taken: a second call commits nothing.
    assert_eq!(node::branch::commit_written("test").unwrap(), 0);

    // A killed session's journal line (written, never committed): the next
    // session that writes commits it with its own.
    let left = Key::parse(
        "SHA256E-s1--0000000000000000000000000000000000000000000000000000000000000000.bin",
    )
    .unwrap();
    let path = presence::location_log_path(&left);
    let line = presence::record(b"", a.uuid().as_str(), Status::Present, 1_700_000_000);
    std::fs::write(
        a.repo()
            .git_dir
            .join("annex/journal")
            .join(node::journal::journal_name(&path)),
        &line,
    )
    .unwrap();
    let kc = put(&a, b"later");
    assert_eq!(node::branch::commit_written("test").unwrap(), 1);
    assert!(journal_is_empty(&a));
    assert_eq!(branch_file(&a, &path).unwrap(), line);
    assert!(branch_file(&a, &presence::location_log_path(&kc)).is_some());
}
