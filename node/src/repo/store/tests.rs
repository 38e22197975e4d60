use std::collections::BTreeMap;

use protocol::Key;
use protocol::server::Validity;
use protocol::verify::Hash;

use super::*;

/// A bare repository with only what the store needs (`annex.uuid` in config).
fn bare_repo(dir: &Path) -> Store {
    fs::create_dir_all(dir.join("objects")).unwrap();
    fs::create_dir_all(dir.join("refs")).unwrap();
    fs::write(dir.join("HEAD"), "ref: refs/heads/master\n").unwrap();
    fs::write(
        dir.join("config"),
        "[core]\n\trepositoryformatversion = 0\n\tbare = true\n[annex]\n\tuuid = bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb\n\tversion = 10\n",
    )
    .unwrap();
    Store::open(dir).unwrap()
}

fn key_for(content: &[u8]) -> Key {
    let mut h = Hash::Sha256.hasher();
    h.update(content);
    Key::from_hash("SHA256E", content.len() as u64, &h.finish_hex(), ".bin").unwrap()
}

fn put(store: &Store, content: &[u8]) -> Stored {
    let key = key_for(content);
    let mut up = store.begin_upload(&key, 0).unwrap();
    up.write(content).unwrap();
    store.commit(up, Validity::Valid).unwrap()
}

#[test]
fn bare_layout_uses_lower_case_hash_dirs_and_freezes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    assert_eq!(put(&store, b"foo"), Stored::Stored);
    let key = key_for(b"foo");
    let path = store.content_path(&key).unwrap();
    assert!(
        path.starts_with(
            tmp.path()
                .canonicalize()
                .unwrap()
                .join("annex/objects")
                .join(key.hash_dir_lower())
        )
    );
    assert_eq!(fs::read(&path).unwrap(), b"foo");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert!(!store.partial_path(&key).exists());
}

#[test]
fn bad_content_is_never_visible_and_partial_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    let key = key_for(b"good");
    let mut up = store.begin_upload(&key, 0).unwrap();
    up.write(b"evil").unwrap();
    assert!(matches!(
        store.commit(up, Validity::Valid).unwrap(),
        Stored::Rejected(_)
    ));
    assert!(!store.contains(&key));
    assert_eq!(store.partial_size(&key), 0);
}

#[test]
fn resume_rehashes_the_kept_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    let content = b"0123456789abcdef";
    let key = key_for(content);
    let mut up = store.begin_upload(&key, 0).unwrap();
    up.write(&content[..7]).unwrap();
    drop(up);
    assert_eq!(store.partial_size(&key), 7);
    let mut up = store.begin_upload(&key, 7).unwrap();
    up.write(&content[7..]).unwrap();
    assert_eq!(store.commit(up, Validity::Valid).unwrap(), Stored::Stored);
    // A corrupted prefix is caught even though only the tail was sent.
    let content2 = b"the second object";
    let key2 = key_for(content2);
    let mut up = store.begin_upload(&key2, 0).unwrap();
    up.write(b"THE SECOND").unwrap();
    drop(up);
    let mut up = store.begin_upload(&key2, 10).unwrap();
    up.write(&content2[10..]).unwrap();
    assert!(matches!(
        store.commit(up, Validity::Valid).unwrap(),
        Stored::Rejected(_)
    ));
}

#[test]
fn locks_block_removal_across_handles() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    put(&store, b"locked");
    let key = key_for(b"locked");
    let lock = store.lock_shared(&key).unwrap().unwrap();
    // A second store over the same repository stands for another connection.
    let other = Store::open(tmp.path()).unwrap();
    assert!(!other.remove(&key, None).unwrap());
    assert!(other.contains(&key));
    assert!(
        other.lock_shared(&key).unwrap().is_some(),
        "shared locks coexist"
    );
    drop(lock);
    assert!(other.remove(&key, None).unwrap());
    assert!(!store.contains(&key));
    assert!(store.lock_shared(&key).unwrap().is_none());
    assert!(
        store.remove(&key, None).unwrap(),
        "absent content counts as removed"
    );
}

#[test]
fn retained_lock_and_remove_before() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    put(&store, b"kept");
    let key = key_for(b"kept");
    store.retain_lock(&key).unwrap();
    assert!(!store.remove(&key, None).unwrap());
    fs::remove_dir_all(tmp.path().join("annex/annexmesh/lock-retention")).unwrap();
    let now = crate::clock::monotonic_seconds();
    assert!(!store.remove(&key, Some(now)).unwrap());
    assert!(store.remove(&key, Some(now + 60)).unwrap());
}

#[test]
fn unverifiable_keys_need_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    let key = Key::parse("WORM-s3-m1--foo").unwrap();
    let mut up = store.begin_upload(&key, 0).unwrap();
    up.write(b"abc").unwrap();
    assert_eq!(
        store.commit(up, Validity::Invalid).unwrap(),
        Stored::Unverifiable
    );
    let mut up = store.begin_upload(&key, 0).unwrap();
    up.write(b"abc").unwrap();
    assert_eq!(store.commit(up, Validity::Valid).unwrap(), Stored::Stored);
}

/// Model-based: random puts, removes, partial uploads and reopenings, checked
/// against a map after every step.
#[test]
fn model_based_random_operations() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = bare_repo(tmp.path());
    let contents: Vec<Vec<u8>> = (0..6u8)
        .map(|i| vec![i; 1 + 1000 * usize::from(i)])
        .collect();
    let mut model: BTreeMap<usize, bool> = BTreeMap::new();
    let mut state: u64 = 42;
    for _ in 0..400 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let which = (state % contents.len() as u64) as usize;
        let key = key_for(&contents[which]);
        match (state >> 8) % 5 {
            0 | 1 => {
                assert_eq!(put(&store, &contents[which]), Stored::Stored);
                model.insert(which, true);
            }
            2 => {
                assert!(store.remove(&key, None).unwrap());
                model.insert(which, false);
            }
            3 => {
                let cut = contents[which].len() / 2;
                let mut up = store.begin_upload(&key, store.partial_size(&key)).unwrap();
                let have = up.len() as usize;
                if have < cut {
                    up.write(&contents[which][have..cut]).unwrap();
                }
            }
            _ => store = Store::open(tmp.path()).unwrap(),
        }
        for (i, c) in contents.iter().enumerate() {
            let present = model.get(&i).copied().unwrap_or(false);
            let k = key_for(c);
            assert_eq!(store.contains(&k), present, "object {i}");
            if present {
                assert_eq!(&fs::read(store.content_path(&k).unwrap()).unwrap(), c);
            }
        }
    }
}

#[test]
fn large_uploads_hash_on_a_thread_and_still_catch_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    let content: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 253) as u8).collect();
    let key = key_for(&content);
    let mut up = store.begin_upload(&key, 0).unwrap();
    assert!(matches!(up.hasher, Hasher::Thread { .. }));
    for chunk in content.chunks(1 << 20) {
        up.write(chunk).unwrap();
    }
    assert_eq!(up.len(), content.len() as u64);
    assert_eq!(store.commit(up, Validity::Valid).unwrap(), Stored::Stored);
    assert_eq!(
        fs::read(store.content_path(&key).unwrap()).unwrap(),
        content
    );

    let mut bad = content.clone();
    bad[5 << 20] ^= 1;
    let mut evil = content.clone();
    evil.reverse();
    let key2 = key_for(&evil);
    let mut up = store.begin_upload(&key2, 0).unwrap();
    for chunk in bad.chunks(1 << 20) {
        up.write(chunk).unwrap();
    }
    assert!(matches!(
        store.commit(up, Validity::Valid).unwrap(),
        Stored::Rejected(_)
    ));
    assert!(!store.contains(&key2));
}

#[test]
fn one_upload_per_key_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    let key = key_for(b"contended");
    let mut first = store.begin_upload(&key, 0).unwrap();
    first.write(b"conte").unwrap();
    let other = Store::open(tmp.path()).unwrap();
    let err = other.begin_upload(&key, 5).unwrap_err();
    assert!(err.to_string().contains("in progress"), "{err}");
    first.write(b"nded").unwrap();
    assert_eq!(
        store.commit(first, Validity::Valid).unwrap(),
        Stored::Stored
    );
}

#[test]
fn unhashed_uploads_commit_only_with_their_callers_check() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    let content = b"checked once by the caller";
    let key = key_for(content);
    // A plain commit of an unhashed upload is refused, and nothing is visible.
    let mut up = store.begin_unhashed_upload(&key).unwrap();
    up.write(content).unwrap();
    assert!(store.commit(up, Validity::Valid).is_err());
    assert!(!store.contains(&key));
    // A check that saw other bytes rejects it.
    let mut check = StreamCheck::new(&key);
    check.update(b"something else entirely!!!").unwrap();
    let bad = check.finish().unwrap();
    let mut up = store.begin_unhashed_upload(&key).unwrap();
    up.write(content).unwrap();
    assert!(matches!(
        store.commit_checked(up, &bad, Validity::Valid).unwrap(),
        Stored::Rejected(_)
    ));
    assert!(!store.contains(&key));
    assert_eq!(store.partial_size(&key), 0);
    // A check of another length than the upload is an error.
    let mut check = StreamCheck::new(&key);
    check.update(content).unwrap();
    let good = check.finish().unwrap();
    assert_eq!(good.verdict(), &Verdict::Good);
    let mut up = store.begin_unhashed_upload(&key).unwrap();
    up.write(&content[..5]).unwrap();
    assert!(store.commit_checked(up, &good, Validity::Valid).is_err());
    assert!(!store.contains(&key));
    // A kept partial file is discarded: the check starts at 0.
    let mut up = store.begin_upload(&key, 0).unwrap();
    up.write(b"XXXX").unwrap();
    drop(up);
    let mut up = store.begin_unhashed_upload(&key).unwrap();
    assert_eq!(up.len(), 0);
    up.write(content).unwrap();
    assert_eq!(
        store.commit_checked(up, &good, Validity::Valid).unwrap(),
        Stored::Stored
    );
    assert_eq!(
        fs::read(store.content_path(&key).unwrap()).unwrap(),
        content
    );
    // A hashed upload cannot borrow a caller's check.
    let c2 = b"another";
    let k2 = key_for(c2);
    let mut check = StreamCheck::new(&k2);
    check.update(c2).unwrap();
    let ok2 = check.finish().unwrap();
    let mut up = store.begin_upload(&k2, 0).unwrap();
    up.write(c2).unwrap();
    assert!(store.commit_checked(up, &ok2, Validity::Valid).is_err());
}

/// Waits (without any deadline: the test fails by hanging, never by timing)
/// until `n` jobs are queued behind a held committer.
fn wait_queued(c: &group::Committer, n: usize) {
    while c.queued() < n {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn located(store: &Store, key: &Key) -> bool {
    store
        .journal()
        .locations(key)
        .unwrap()
        .iter()
        .any(|u| u == store.uuid().as_str())
}

fn tmp_files(store: &Store) -> Vec<PathBuf> {
    fs::read_dir(&store.tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn concurrent_commits_share_one_batch_and_all_land() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = bare_repo(tmp.path());
    let committer = store.isolate_committer();
    committer.hold(true);
    let contents: Vec<Vec<u8>> = (0..24u32)
        .map(|i| format!("object number {i}").into_bytes())
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = contents
            .iter()
            .map(|c| {
                let store = store.clone();
                s.spawn(move || put(&store, c))
            })
            .collect();
        // A bad upload meanwhile is refused on its own, without a batch.
        let key = key_for(b"the real bytes");
        let mut up = store.begin_upload(&key, 0).unwrap();
        up.write(b"other bytes!!!").unwrap();
        assert!(matches!(
            store.commit(up, Validity::Valid).unwrap(),
            Stored::Rejected(_)
        ));
        assert!(!store.contains(&key));
        wait_queued(&committer, contents.len());
        // Nothing is visible or recorded before its batch is committed.
        assert!(contents.iter().all(|c| !store.contains(&key_for(c))));
        committer.hold(false);
        for h in handles {
            assert_eq!(h.join().unwrap(), Stored::Stored);
        }
    });
    assert_eq!(committer.stats(), (1, contents.len() as u64));
    for c in &contents {
        let key = key_for(c);
        assert_eq!(&fs::read(store.content_path(&key).unwrap()).unwrap(), c);
        assert!(located(&store, &key), "{key} not in the location log");
    }
    assert!(tmp_files(&store).is_empty(), "{:?}", tmp_files(&store));
    // A second store over the same repository (a new process) sees them all.
    let again = Store::open(tmp.path()).unwrap();
    assert!(contents.iter().all(|c| again.contains(&key_for(c))));
}

#[test]
fn failures_in_a_batch_fail_only_their_own_uploads() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = bare_repo(tmp.path());
    let committer = store.isolate_committer();
    let contents: Vec<Vec<u8>> = (0..8u32)
        .map(|i| format!("batch member {i}").into_bytes())
        .collect();
    // Upload 2's fdatasync fails (injected); upload 5 cannot get its key
    // directory, because a file is in the way (a real failure).
    let synced_bad = key_for(&contents[2]);
    committer.fail_sync_of(Some(&synced_bad.file()));
    let placed_bad = key_for(&contents[5]);
    let [dest, _] = store.object_paths(&placed_bad);
    let key_dir = dest.parent().unwrap();
    fs::create_dir_all(key_dir.parent().unwrap()).unwrap();
    fs::write(key_dir, b"in the way").unwrap();
    committer.hold(true);
    let results: Vec<Result<Stored>> = std::thread::scope(|s| {
        let handles: Vec<_> = contents
            .iter()
            .map(|c| {
                let store = store.clone();
                s.spawn(move || {
                    let key = key_for(c);
                    let mut up = store.begin_upload(&key, 0).unwrap();
                    up.write(c).unwrap();
                    store.commit(up, Validity::Valid)
                })
            })
            .collect();
        wait_queued(&committer, contents.len());
        committer.hold(false);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(committer.stats(), (1, contents.len() as u64));
    for (i, (c, r)) in contents.iter().zip(&results).enumerate() {
        let key = key_for(c);
        if i == 2 || i == 5 {
            assert!(r.is_err(), "upload {i}: {r:?}");
            assert!(!store.contains(&key), "upload {i} is visible");
            assert!(!located(&store, &key), "upload {i} is recorded");
        } else {
            assert_eq!(r.as_ref().unwrap(), &Stored::Stored, "upload {i}");
            assert_eq!(&fs::read(store.content_path(&key).unwrap()).unwrap(), c);
            assert!(located(&store, &key), "upload {i} is not recorded");
        }
    }
    assert!(
        r_contains(&results[2], "injected"),
        "{:?}",
        results[2].as_ref().err()
    );
    // The failed fdatasync dropped its temp file; the other failure keeps its
    // verified partial file for a retry, which lands once the way is clear.
    assert_eq!(store.partial_size(&synced_bad), 0);
    committer.fail_sync_of(None);
    fs::remove_file(key_dir).unwrap();
    assert_eq!(put(&store, &contents[5]), Stored::Stored);
    assert!(located(&store, &placed_bad));
    assert_eq!(put(&store, &contents[2]), Stored::Stored);
    assert!(located(&store, &synced_bad));
}

fn r_contains(r: &Result<Stored>, text: &str) -> bool {
    r.as_ref()
        .err()
        .is_some_and(|e| e.to_string().contains(text))
}

#[test]
fn journal_batches_compose_and_fail_per_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let a = bare_repo(&tmp.path().join("a"));
    fs::create_dir_all(tmp.path().join("b")).unwrap();
    let b = bare_repo(&tmp.path().join("b"));
    fs::create_dir_all(tmp.path().join("c")).unwrap();
    let c = bare_repo(&tmp.path().join("c"));
    // c's journal directory cannot be made: a file is in the way.
    fs::create_dir_all(tmp.path().join("c/annex")).unwrap();
    fs::write(tmp.path().join("c/annex/journal"), b"").unwrap();
    let append = |j: &Journal, line: &'static str| {
        j.change("x.log".into(), move |old| {
            let mut v = old.to_vec();
            v.extend_from_slice(line.as_bytes());
            v
        })
    };
    let results = crate::journal::modify_many(vec![
        append(a.journal(), "a1\n"),
        append(b.journal(), "b1\n"),
        append(c.journal(), "c1\n"),
        append(a.journal(), "a2\n"),
    ]);
    assert_eq!(results[0].as_ref().unwrap(), b"a1\n");
    assert_eq!(results[1].as_ref().unwrap(), b"b1\n");
    assert!(results[2].is_err());
    assert_eq!(results[3].as_ref().unwrap(), b"a1\na2\n");
    assert_eq!(a.journal().read("x.log").unwrap(), b"a1\na2\n");
    assert_eq!(b.journal().read("x.log").unwrap(), b"b1\n");
    // No temp file is left in the journals or their temp directories.
    for r in [&a, &b] {
        let names: Vec<_> = fs::read_dir(r.journal().file_for("x.log").parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("x.log")]);
    }
}

#[test]
fn many_threads_many_stores_one_file_system() {
    // Three repositories (a gateway's local nodes) and many concurrent
    // uploads to each: everything lands, recorded, through the shared committer.
    let tmp = tempfile::tempdir().unwrap();
    let stores: Vec<Store> = (0..3)
        .map(|i| {
            let dir = tmp.path().join(format!("n{i}"));
            fs::create_dir_all(&dir).unwrap();
            bare_repo(&dir)
        })
        .collect();
    let contents: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("shared {i}").into_bytes())
        .collect();
    std::thread::scope(|s| {
        for store in &stores {
            for chunk in contents.chunks(10) {
                s.spawn(move || {
                    for c in chunk {
                        assert_eq!(put(store, c), Stored::Stored);
                    }
                });
            }
        }
    });
    for store in &stores {
        for c in &contents {
            let key = key_for(c);
            assert_eq!(&fs::read(store.content_path(&key).unwrap()).unwrap(), c);
            assert!(located(store, &key));
        }
        assert!(tmp_files(store).is_empty());
    }
}

#[test]
fn bad_content_is_moved_aside_not_while_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = bare_repo(tmp.path());
    put(&store, b"soon bad");
    let key = key_for(b"soon bad");
    assert!(located(&store, &key));
    let lock = store.lock_shared(&key).unwrap().unwrap();
    let other = Store::open(tmp.path()).unwrap();
    assert!(other.move_aside(&key).is_err(), "locked: not moved");
    assert!(store.contains(&key));
    drop(lock);
    let to = store.move_aside(&key).unwrap().expect("moved");
    assert_eq!(to, tmp.path().join("annex/bad").join(key.file()));
    assert_eq!(fs::read(&to).unwrap(), b"soon bad", "the bytes are kept");
    assert!(!store.contains(&key));
    assert!(!located(&store, &key), "recorded absent");
    assert_eq!(
        store.move_aside(&key).unwrap(),
        None,
        "nothing left to move"
    );
}
