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
    let out = annexmesh(args, cwd);
    assert!(
        out.status.success(),
        "annexmesh {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
