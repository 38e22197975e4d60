//! `annexmesh init`, `daemon`, `grant`, `add-peer`, `put`, `get`, `drop` and
//! `checkpresent`, as a user runs them: real processes on loopback TCP.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::annexmesh_bin;

/// A running `annexmesh daemon`, stopped (SIGTERM) when dropped.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(repo: &Path) -> Daemon {
        let mut child = Command::new(annexmesh_bin())
            .args(["--repo"])
            .arg(repo)
            .args(["daemon", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start daemon");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("daemon prints its address")
            .expect("read");
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected daemon output {first:?}"))
            .to_owned();
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Daemon { child, addr }
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let status = self.terminate();
        std::mem::forget(self);
        status
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn annexmesh(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(annexmesh_bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run annexmesh")
}

fn ok(args: &[&str], cwd: &Path) -> String {
    support::succeeded(annexmesh(args, cwd), &format!("annexmesh {args:?}"))
}

fn object_path(repo: &Path, key: &str) -> PathBuf {
    let key = protocol::Key::parse(key).expect("key");
    repo.join("annex/objects")
        .join(key.hash_dir_lower())
        .join(key.file())
        .join(key.file())
}

#[test]
fn put_get_drop_checkpresent_through_a_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = tmp.path().join("server");
    let client = tmp.path().join("client");
    let out = ok(
        &["--repo", server.to_str().expect("utf8"), "init"],
        tmp.path(),
    );
    assert!(out.starts_with("created"), "{out}");
    ok(
        &["--repo", client.to_str().expect("utf8"), "init"],
        tmp.path(),
    );
    // Let the client in by its PeerId (from its init line).
    let client_peer = ok(
        &["--repo", client.to_str().expect("utf8"), "init"],
        tmp.path(),
    );
    let client_peer = client_peer
        .rsplit("peer ")
        .next()
        .and_then(|s| s.strip_suffix(")\n"))
        .expect("peer id in init output")
        .to_owned();
    ok(
        &[
            "--repo",
            server.to_str().expect("utf8"),
            "grant",
            &client_peer,
        ],
        tmp.path(),
    );
    let daemon = Daemon::start(&server);
    ok(&["add-peer", "srv", &daemon.addr], &client);

    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = tmp.path().join("photo.jpg");
    std::fs::write(&file, &data).expect("write");
    let key = ok(
        &["put", file.to_str().expect("utf8"), "--to", "srv"],
        &client,
    );
    let key = key.trim();
    assert!(
        key.starts_with("SHA256E-s5000000--") && key.ends_with(".jpg"),
        "{key}"
    );
    assert_eq!(
        std::fs::read(object_path(&server, key)).expect("stored"),
        data
    );
    assert_eq!(
        ok(&["checkpresent", key, "--from", "srv"], &client).trim(),
        "present"
    );

    let dest = tmp.path().join("back.jpg");
    ok(
        &[
            "get",
            key,
            "--from",
            "srv",
            "-o",
            dest.to_str().expect("utf8"),
        ],
        &client,
    );
    assert_eq!(std::fs::read(&dest).expect("got"), data);

    // An interrupted download resumes: keep a prefix, and a wrong prefix is caught.
    let resumed = tmp.path().join("resumed.jpg");
    std::fs::write(
        tmp.path().join("resumed.jpg.annexmesh-partial"),
        &data[..1_000_000],
    )
    .expect("partial");
    ok(
        &[
            "get",
            key,
            "--from",
            "srv",
            "-o",
            resumed.to_str().expect("utf8"),
        ],
        &client,
    );
    assert_eq!(std::fs::read(&resumed).expect("got"), data);
    let mut bad = data[..1000].to_vec();
    bad[3] ^= 1;
    let broken = tmp.path().join("broken.jpg");
    std::fs::write(tmp.path().join("broken.jpg.annexmesh-partial"), &bad).expect("partial");
    let out = annexmesh(
        &[
            "get",
            key,
            "--from",
            "srv",
            "-o",
            broken.to_str().expect("utf8"),
        ],
        &client,
    );
    assert!(!out.status.success());
    assert!(!broken.exists());

    ok(&["drop", key, "--from", "srv"], &client);
    assert!(!object_path(&server, key).exists());
    let out = annexmesh(&["checkpresent", key, "--from", "srv"], &client);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "absent");

    // Bad input from the user: clear errors, nothing stored.
    let out = annexmesh(&["get", "not-a-key", "--from", "srv"], &client);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a git-annex key"));
    let out = annexmesh(&["put", "/nonexistent", "--to", "srv"], &client);
    assert!(!out.status.success());

    let status = daemon.stop();
    assert!(status.success(), "daemon exit {status:?}");
}

#[test]
fn strangers_are_refused_and_tokens_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = tmp.path().join("server");
    ok(
        &["--repo", server.to_str().expect("utf8"), "init"],
        tmp.path(),
    );
    let daemon = Daemon::start(&server);
    let file = tmp.path().join("f.txt");
    std::fs::write(&file, b"hello\n").expect("write");
    // Outside any repository: an ephemeral identity with no grant.
    let out = annexmesh(&["put", "f.txt", "--to", &daemon.addr], tmp.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused our authentication"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A token from `p2p --gen-addresses` lets it in.
    let line = ok(
        &[
            "--repo",
            server.to_str().expect("utf8"),
            "p2p",
            "--gen-addresses",
        ],
        tmp.path(),
    );
    let line = line.lines().next().expect("an address line");
    let (addr, token) = line
        .strip_prefix("p2p-annex::libp2p:")
        .and_then(|rest| rest.rsplit_once(':'))
        .expect("address:token");
    assert_eq!(addr, daemon.addr);
    let out = annexmesh(
        &["put", "f.txt", "--to", addr, "--token", token],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(daemon.stop().success());
}

fn peer_id_of(init_output: &str) -> String {
    init_output
        .rsplit("peer ")
        .next()
        .and_then(|s| s.strip_suffix(")\n"))
        .expect("peer id in init output")
        .to_owned()
}

/// Two daemons that trust each other: what one stores, the other learns by
/// gossip, persists in its git-annex branch, and shows in `whereis`/`info`.
/// Two repositories, alpha (A) and beta (B), granted to each other, with
/// daemons connected (B dialled A).
struct Pair {
    tmp: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    da: Daemon,
    db: Daemon,
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf8").to_owned()
}

fn connected_pair() -> Pair {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let peer_a = peer_id_of(&ok(
        &["--repo", &s(&a), "init", "--description", "alpha"],
        tmp.path(),
    ));
    let peer_b = peer_id_of(&ok(
        &["--repo", &s(&b), "init", "--description", "beta"],
        tmp.path(),
    ));
    ok(&["--repo", &s(&a), "grant", &peer_b], tmp.path());
    ok(&["--repo", &s(&b), "grant", &peer_a], tmp.path());
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    ok(&["--repo", &s(&a), "add-peer", "b", &db.addr], tmp.path());
    // B dials A so the two are connected; restart B with --peer.
    drop(db);
    let db = {
        let mut child = Command::new(annexmesh_bin())
            .args([
                "--repo",
                &s(&b),
                "daemon",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--peer",
                &da.addr,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("daemon b");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = lines
            .next()
            .expect("address")
            .expect("read")
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_owned();
        std::thread::spawn(move || for _ in lines {});
        Daemon { child, addr }
    };
    Pair { tmp, a, b, da, db }
}

fn wait_for_branch_line(repo: &Path, file: &str, text: &str) {
    support::wait_for_branch_line(repo, file, text, Duration::from_secs(30));
}

/// What other processes write into A's repository (a setup command's
/// journal, a commit by stock git-annex) reaches B's branch without a
/// restart (issue 9, item 2).
#[test]
fn changes_from_other_processes_spread() {
    let Pair { tmp, a, b, da, db } = connected_pair();
    // Another annexmesh process writes A's journal (and commits it).
    ok(&["--repo", &s(&a), "initcluster", "shared"], tmp.path());
    wait_for_branch_line(&b, "uuid.log", "cluster shared");
    // Stock git-annex changes A's branch: a group of its own.
    let mut ga = Command::new("git");
    ga.arg("--git-dir")
        .arg(&a)
        .args(["annex", "group", "here", "backup"])
        .env("PATH", support::path_with_git_annex());
    let out = ga.output().expect("git annex group");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_branch_line(&b, "group.log", "backup");
    assert!(db.stop().success());
    assert!(da.stop().success());
}

#[test]
fn metadata_spreads_between_daemons() {
    let Pair {
        tmp,
        a,
        b: _,
        da,
        db,
    } = connected_pair();
    let s = |p: &PathBuf| p.to_str().expect("utf8").to_owned();
    // A's client stores a file on B.
    let file = tmp.path().join("doc.txt");
    std::fs::write(&file, b"shared metadata\n").expect("write");
    let key = ok(
        &[
            "--repo",
            &s(&a),
            "put",
            file.to_str().expect("utf8"),
            "--to",
            &db.addr,
        ],
        tmp.path(),
    );
    let key = key.trim().to_owned();

    // B's location record reaches A and lands in A's branch.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = annexmesh(&["--repo", &s(&a), "whereis", &key, "--json"], tmp.path());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("\"beta\"") {
            assert!(text.contains("\"copies\":1"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never learned where {key} is: {text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let info = ok(&["--repo", &s(&a), "info", "beta"], tmp.path());
    assert!(info.contains("description: beta"), "{info}");
    assert!(info.contains("annexed keys: 1"), "{info}");
    assert!(info.contains(&format!("address: {}", db.addr)), "{info}");
    let json = ok(&["--repo", &s(&a), "info", "beta", "--json"], tmp.path());
    assert!(
        json.contains("\"keys\":1") && json.contains("\"bytes\":16"),
        "{json}"
    );
    assert!(db.stop().success());
    assert!(da.stop().success());
}
