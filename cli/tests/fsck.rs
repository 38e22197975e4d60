//! `annexmesh fsck --cluster` (issue 10, item 6) with real daemons on
//! loopback: a gateway G and mesh nodes M1, M2 each holding the keys. A
//! clean cluster is all good; a corrupted object is found bad, removed and
//! replaced by a good copy (its bytes right again on disk); a deleted object
//! is reported missing and the location log fixed; bad copies with no good
//! one are kept and the key is shown in error by `annexmesh status`.
//!
//! A second test has a local node (a git-annex repository the gateway
//! writes directly) beside a mesh node: its bad copy is hashed in place and
//! moved aside into `annex/bad/`, never lost.
//!
//! Run: `cargo test -p annexmesh-cli --test fsck`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::mesh::{Mesh, TIMEOUT, cluster_of, git_config, object_path, upload, wait_copies};
use support::{command_in, run_ok};

/// `annexmesh fsck --cluster c --wait --json` at G: whether it exited 0,
/// and the finished job.
fn fsck(m: &Mesh) -> (bool, serde_json::Value) {
    let out = m.run("G", &["fsck", "--cluster", "c", "--wait", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let job = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "fsck printed no job ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), job)
}

fn n(job: &serde_json::Value, k: &str) -> u64 {
    job[k].as_u64().unwrap_or_else(|| panic!("{k} in {job}"))
}

/// Makes a frozen git-annex object writable (its directory and itself).
fn thaw(object: &Path) {
    let dir = object.parent().expect("key directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(object, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// The uuids `whereis` at G lists for `key`.
fn whereis(m: &Mesh, key: &str) -> String {
    m.ok("G", &["whereis", key, "--json"])
}

#[test]
fn fsck_finds_and_repairs_bad_and_missing_copies() {
    let quick = ["--suspect-after", "3s"];
    // min 1: a copy recorded absent leaves the key at its replication, so
    // the repairer adds nothing of its own while fsck's effects are checked.
    let (m, daemons, target) = cluster_of(&["M1", "M2"], &quick, &["--min", "1", "--max", "2"]);
    let keys = upload(&m, &target, 3);
    let nodes = ["M1", "M2"];
    wait_copies(&m, &daemons["G"], &keys, &nodes, 2, "placed on both");
    let (u1, u2) = (
        git_config(&m.repo("M1"), "annex.uuid"),
        git_config(&m.repo("M2"), "annex.uuid"),
    );
    let original = |i: usize| std::fs::read(m.root.join(format!("f{i}.bin"))).expect("original");
    let sizes: u64 = (0..3).map(|i| original(i).len() as u64).sum();

    // Nothing has run yet; a cluster G does not serve is refused.
    let none = m.ok("G", &["fsck", "--cluster", "c", "--status"]);
    assert!(none.contains("no fsck job has run"), "{none}");
    let out = m.run("G", &["fsck", "--cluster", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves no cluster \"nope\""), "{err}");

    // A clean cluster: every copy read and good, once the daemon's catalog
    // has both holders of each key (its journal watcher takes the PUTs'
    // records within half a second).
    let deadline = Instant::now() + TIMEOUT;
    let (ok, job) = loop {
        let (ok, job) = fsck(&m);
        if n(&job, "copies") == 6 {
            break (ok, job);
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never knew both copies: {job}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ok, "{job}");
    assert_eq!(
        (
            n(&job, "keys_total"),
            n(&job, "keys_checked"),
            n(&job, "copies")
        ),
        (3, 3, 6),
        "{job}"
    );
    assert_eq!(n(&job, "good"), 6, "{job}");
    assert_eq!(n(&job, "bytes"), 2 * sizes, "{job}");
    assert_eq!(job["findings"].as_array().map(Vec::len), Some(0), "{job}");

    // A corrupted copy on M1: same size, other bytes.
    let bad = object_path(&m.repo("M1"), &keys[0]);
    thaw(&bad);
    let mut bytes = original(0);
    bytes[100] ^= 0xff;
    std::fs::write(&bad, &bytes).expect("corrupt");
    let (ok, job) = fsck(&m);
    assert!(!ok, "found something wrong: exits 1 as git-annex's fsck");
    assert_eq!(
        (n(&job, "bad"), n(&job, "repaired"), n(&job, "missing")),
        (1, 1, 0),
        "{job}"
    );
    let finding = &job["findings"][0];
    assert_eq!(finding["key"], keys[0].as_str(), "{job}");
    assert_eq!(finding["node"], u1.as_str(), "{job}");
    assert_eq!(finding["found"], "bad", "{job}");
    assert!(
        finding["action"]
            .as_str()
            .is_some_and(|a| a.contains("removed") && a.contains("repaired from")),
        "{job}"
    );
    assert_eq!(
        std::fs::read(&bad).expect("M1's copy is back"),
        original(0),
        "the replaced copy hashes right"
    );
    let w = whereis(&m, &keys[0]);
    assert!(w.contains(&u1) && w.contains(&u2), "{w}");

    // A deleted copy on M2: missing, and the log says so afterwards.
    let gone = object_path(&m.repo("M2"), &keys[1]);
    thaw(&gone);
    std::fs::remove_file(&gone).expect("delete");
    let (ok, job) = fsck(&m);
    assert!(!ok);
    assert_eq!(
        (n(&job, "missing"), n(&job, "bad"), n(&job, "repaired")),
        (1, 0, 0),
        "{job}"
    );
    let finding = &job["findings"][0];
    assert_eq!(
        (&finding["key"], &finding["node"], &finding["found"]),
        (
            &keys[1].as_str().into(),
            &u2.as_str().into(),
            &"missing".into()
        ),
        "{job}"
    );
    assert_eq!(finding["action"], "recorded absent", "{job}");
    let w = whereis(&m, &keys[1]);
    assert!(w.contains(&u1) && !w.contains(&u2), "{w}");

    // Clean again: the repaired copy is good, the missing one no longer
    // listed.
    let (ok, job) = fsck(&m);
    assert!(ok, "{job}");
    assert_eq!((n(&job, "copies"), n(&job, "good")), (5, 5), "{job}");

    // Both copies of a key bad: nothing is dropped, the key is in error.
    for node in nodes {
        let p = object_path(&m.repo(node), &keys[2]);
        thaw(&p);
        let mut bytes = original(2);
        bytes[0] ^= 0x01;
        std::fs::write(&p, &bytes).expect("corrupt");
    }
    let (ok, job) = fsck(&m);
    assert!(!ok);
    assert_eq!((n(&job, "bad"), n(&job, "repaired")), (2, 0), "{job}");
    for node in nodes {
        let p = object_path(&m.repo(node), &keys[2]);
        assert!(p.exists(), "{node}'s bad copy is kept: {job}");
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = m.ok("G", &["status", &keys[2]]);
        if status.contains("error: fsck:") && status.contains("no good copy") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed it: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = m.ok("G", &["fsck", "--cluster", "c", "--status"]);
    assert!(status.contains("2 bad"), "{status}");
    let status = m.ok("G", &["status"]);
    assert!(status.contains("fsck job"), "{status}");
    // Counted in the metrics too (one bad copy repaired, one missing, two
    // kept).
    let api = std::fs::read_to_string(m.repo("G").join("annex/annexmesh/api")).expect("api file");
    let token = m.ok("G", &["api", "token"]);
    let metrics = http_get(api.trim(), "/metrics", token.trim());
    for line in [
        "annexmesh_fsck_bad_total 3",
        "annexmesh_fsck_missing_total 1",
        "annexmesh_fsck_repaired_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    drop(daemons);
}

/// A `GET` of the daemon's API at `url` (`http://host:port`).
fn http_get(url: &str, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let host = url.strip_prefix("http://").expect("an http URL");
    let mut s = std::net::TcpStream::connect(host).expect("connect to the API");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer");
    out
}

/// A local git-annex repository `name` as a node of G's cluster `c`.
fn add_local_node(m: &Mesh, name: &str) -> std::path::PathBuf {
    let dir = m.root.join(name);
    let home = m.root.join("home");
    std::fs::create_dir_all(&home).expect("home");
    run_ok(command_in("git", &m.root, &home).args(["init", "-q", name]));
    run_ok(command_in("git", &dir, &home).args(["annex", "init", name]));
    let g = m.repo("G");
    let url = dir.to_str().expect("utf-8");
    run_ok(command_in("git", &g, &home).args(["--git-dir", ".", "remote", "add", name, url]));
    run_ok(command_in("git", &g, &home).args([
        "--git-dir",
        ".",
        "config",
        &format!("remote.{name}.annex-cluster-node"),
        "c",
    ]));
    m.ok("G", &["updatecluster"]);
    dir
}

/// A non-bare repository's object path.
fn local_object(dir: &Path, key: &str) -> std::path::PathBuf {
    let key = protocol::Key::parse(key).expect("key");
    dir.join(".git/annex/objects")
        .join(key.hash_dir_mixed())
        .join(key.file())
        .join(key.file())
}

#[test]
fn a_local_nodes_bad_copy_is_moved_aside_and_replaced() {
    let quick = ["--suspect-after", "3s"];
    let (m, daemons, target) = cluster_of(&["M1"], &quick, &["--min", "1", "--max", "2"]);
    let n1 = add_local_node(&m, "N1");
    let u1 = git_config(&m.repo("M1"), "annex.uuid");
    let un = git_config(&n1.join(".git"), "annex.uuid");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let c = m.ok("G", &["info", "--json"]);
        if c.contains(&un) {
            break;
        }
        assert!(Instant::now() < deadline, "G never listed N1: {c}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let keys = upload(&m, &target, 2);
    let on_n1 = |k: &str| local_object(&n1, k);
    for k in &keys {
        assert!(on_n1(k).exists(), "the PUT reached the local node N1");
        assert!(object_path(&m.repo("M1"), k).exists());
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, job) = fsck(&m);
        if n(&job, "copies") == 4 {
            assert_eq!(n(&job, "good"), 4, "{job}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never knew both copies: {job}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let original = std::fs::read(m.root.join("f0.bin")).expect("original");

    // N1's copy corrupted: hashed in place, moved aside, replaced.
    let bad = on_n1(&keys[0]);
    thaw(&bad);
    std::fs::write(&bad, b"not the content").expect("corrupt");
    let (ok, job) = fsck(&m);
    assert!(!ok);
    assert_eq!((n(&job, "bad"), n(&job, "repaired")), (1, 1), "{job}");
    let action = job["findings"][0]["action"].as_str().unwrap_or_default();
    assert!(action.contains("moved aside"), "{job}");
    assert_eq!(job["findings"][0]["node"], un.as_str(), "{job}");
    assert!(
        job["findings"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("wrong size")
    );
    assert_eq!(std::fs::read(&bad).expect("N1's copy is back"), original);
    let kept = n1
        .join(".git/annex/bad")
        .join(protocol::Key::parse(&keys[0]).expect("key").file());
    assert_eq!(
        std::fs::read(&kept).expect("kept aside"),
        b"not the content"
    );
    let w = whereis(&m, &keys[0]);
    assert!(w.contains(&un) && w.contains(&u1), "{w}");

    // Both copies of the other key bad: N1's is moved aside (its bytes
    // kept), M1's stays where it is; the key is in error.
    let other = std::fs::read(m.root.join("f1.bin")).expect("original");
    let mut wrong = other.clone();
    wrong[5] ^= 0x10;
    for p in [on_n1(&keys[1]), object_path(&m.repo("M1"), &keys[1])] {
        thaw(&p);
        std::fs::write(&p, &wrong).expect("corrupt");
    }
    let (ok, job) = fsck(&m);
    assert!(!ok);
    assert_eq!((n(&job, "bad"), n(&job, "repaired")), (2, 0), "{job}");
    assert!(job["errors"].as_u64().unwrap_or(0) > 0, "{job}");
    assert!(
        object_path(&m.repo("M1"), &keys[1]).exists(),
        "M1's copy kept"
    );
    let kept = n1
        .join(".git/annex/bad")
        .join(protocol::Key::parse(&keys[1]).expect("key").file());
    assert_eq!(std::fs::read(&kept).expect("N1's kept aside"), wrong);
    assert!(!on_n1(&keys[1]).exists());
    drop(daemons);
}
