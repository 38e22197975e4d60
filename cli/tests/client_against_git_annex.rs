//! The reverse direction: annexmesh's client session drives a real
//! `git-annex-shell p2pstdio` (from PyPI): put, get, checkpresent, lock, remove,
//! timestamps, and resumed transfers in both directions. Then the real
//! `git annex fsck` in the server repository checks what we stored.

mod support;

use std::path::{Path, PathBuf};

use node::process::ShellConnection;
use protocol::verify::Hash;
use protocol::{AssociatedFile, Key, Uuid};
use support::{command_in, run_ok};

const A: &str = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
const B: &str = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";

struct Lab {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    server: PathBuf,
    work: PathBuf,
}

fn lab() -> Lab {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let server = tmp.path().join("B");
    let work = tmp.path().join("work");
    for d in [&home, &server, &work] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    run_ok(command_in("git", &server, &home).args(["init", "-q"]));
    run_ok(command_in("git", &server, &home).args(["config", "annex.uuid", B]));
    run_ok(command_in("git-annex", &server, &home).args(["init", "-q", "B"]));
    Lab {
        _tmp: tmp,
        home,
        server,
        work,
    }
}

fn sha256_key(content: &[u8], ext: &str) -> Key {
    let mut h = Hash::Sha256.hasher();
    h.update(content);
    Key::from_hash("SHA256E", content.len() as u64, &h.finish_hex(), ext).expect("key")
}

fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn connect(lab: &Lab) -> ShellConnection {
    let shell = support::git_annex_bin_dir().join("git-annex-shell");
    let home = lab.home.to_string_lossy().into_owned();
    let path = support::path_with_git_annex()
        .to_string_lossy()
        .into_owned();
    let (mut conn, uuid) = ShellConnection::start(
        &shell,
        &lab.server,
        &Uuid::parse(A).expect("uuid"),
        Some(&Uuid::parse(B).expect("uuid")),
        &[
            ("HOME", home.as_str()),
            ("PATH", path.as_str()),
            ("GIT_AUTHOR_NAME", "annexmesh test"),
            ("GIT_AUTHOR_EMAIL", "test@annexmesh.invalid"),
            ("GIT_COMMITTER_NAME", "annexmesh test"),
            ("GIT_COMMITTER_EMAIL", "test@annexmesh.invalid"),
        ],
    )
    .await
    .expect("git-annex-shell p2pstdio starts");
    assert_eq!(uuid.as_str(), B);
    assert_eq!(conn.session.negotiate_version(4).await.expect("version"), 4);
    conn
}

fn server_has(lab: &Lab, key: &Key) -> bool {
    let out = command_in("git-annex", &lab.server, &lab.home)
        .args(["contentlocation", key.as_str()])
        .output()
        .expect("git-annex contentlocation runs");
    out.status.success()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_lock_remove_against_real_git_annex_shell() {
    let lab = lab();
    let data = content(3 * 1024 * 1024 + 17, 7);
    let key = sha256_key(&data, ".bin");
    let src = lab.work.join("src.bin");
    write(&src, &data);

    let mut conn = connect(&lab).await;
    let s = &mut conn.session;
    assert!(!s.check_present(&key).await.expect("checkpresent"));
    let mut last = 0;
    let outcome = s
        .put(&key, AssociatedFile::new("dir/src.bin"), &src, &mut |n| {
            last = n
        })
        .await
        .expect("put");
    assert!(outcome.stored && !outcome.already_had, "{outcome:?}");
    assert_eq!(last, data.len() as u64);
    assert!(s.check_present(&key).await.expect("checkpresent"));
    let again = s
        .put(&key, AssociatedFile::none(), &src, &mut |_| {})
        .await
        .expect("second put");
    assert!(again.already_had);

    // Download it back and compare.
    let partial = lab.work.join("partial");
    let dest = lab.work.join("dest.bin");
    assert!(
        s.get(&key, AssociatedFile::none(), &partial, &dest, &mut |_| {})
            .await
            .expect("get")
    );
    assert_eq!(std::fs::read(&dest).expect("read dest"), data);

    // A key the server lacks: DATA 0 + INVALID, and we answer FAILURE.
    let absent = sha256_key(b"not there", "");
    let dest2 = lab.work.join("absent");
    assert!(
        !s.get(
            &absent,
            AssociatedFile::none(),
            &lab.work.join("p2"),
            &dest2,
            &mut |_| {}
        )
        .await
        .expect("get of absent key is a clean failure")
    );
    assert!(!dest2.exists());

    // LOCKCONTENT on one connection makes a REMOVE on another fail.
    assert!(s.lock_content(&key).await.expect("lock"));
    let mut other = connect(&lab).await;
    let removed = other.session.remove(&key, None).await;
    // git-annex-shell dies on this (p2p-14); either way nothing is removed.
    assert!(!matches!(removed, Ok((true, _))), "{removed:?}");
    let _ = other.finish().await;
    assert!(server_has(&lab, &key));
    s.unlock_content().await.expect("unlock");

    // REMOVE-BEFORE with a past deadline fails, a future one succeeds.
    let ts = s.get_timestamp().await.expect("timestamp");
    let (ok, _) = s.remove(&key, Some(ts - 1)).await.expect("remove-before");
    assert!(!ok);
    assert!(server_has(&lab, &key));
    let (ok, _) = s.remove(&key, Some(ts + 60)).await.expect("remove-before");
    assert!(ok);
    assert!(!server_has(&lab, &key));
    let status = conn.finish().await.expect("finish");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_transfers_against_real_git_annex_shell() {
    let lab = lab();
    let data = content(1024 * 1024 + 5, 3);
    let key = sha256_key(&data, ".dat");
    let src = lab.work.join("src.dat");
    write(&src, &data);

    // An interrupted upload left 400 000 bytes in the server's temp file.
    let tmpdir = lab.server.join(".git/annex/tmp");
    std::fs::create_dir_all(&tmpdir).expect("mkdir tmp");
    write(&tmpdir.join(key.file()), &data[..400_000]);
    let mut conn = connect(&lab).await;
    let mut first = None;
    let outcome = conn
        .session
        .put(&key, AssociatedFile::none(), &src, &mut |n| {
            first.get_or_insert(n);
        })
        .await
        .expect("resumed put");
    assert!(outcome.stored);
    assert!(
        first.expect("progress") > 400_000,
        "upload resumed past the kept prefix"
    );
    assert!(server_has(&lab, &key));

    // An interrupted download: the first 123 456 bytes are already here.
    let partial = lab.work.join("partial.dat");
    write(&partial, &data[..123_456]);
    let dest = lab.work.join("dest.dat");
    let mut first = None;
    assert!(
        conn.session
            .get(&key, AssociatedFile::none(), &partial, &dest, &mut |n| {
                first.get_or_insert(n);
            })
            .await
            .expect("resumed get")
    );
    assert!(first.expect("progress") > 123_456);
    assert_eq!(std::fs::read(&dest).expect("read"), data);

    // A corrupt partial download is detected by the final hash check.
    let mut bad = data[..1000].to_vec();
    bad[10] ^= 0xff;
    write(&partial, &bad);
    assert!(
        !conn
            .session
            .get(
                &key,
                AssociatedFile::none(),
                &partial,
                &lab.work.join("bad"),
                &mut |_| {}
            )
            .await
            .expect("get")
    );
    assert!(!partial.exists(), "bad partial download removed");
    assert!(conn.finish().await.expect("finish").success());

    // The real git-annex agrees with what we stored.
    let fsck = command_in("git-annex", &lab.server, &lab.home)
        .args(["fsck", "--key", key.as_str()])
        .output()
        .expect("fsck runs");
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}
