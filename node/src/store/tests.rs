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
