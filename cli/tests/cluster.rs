//! Clusters (issue 5): a gateway G set up with `annexmesh initcluster` and
//! `annexmesh updatecluster`, three local nodes N1..N3, and STOCK git-annex as
//! the client C, cloned from G over fake-ssh, whose `git-annex-shell` is our
//! binary. C reaches the cluster as `G-mycluster` and each node as `G-N<i>`
//! (remotes git-annex derives from G's proxy.log and cluster.log).
//!
//! Content is checked on disk in each node and with the real `git annex fsck`
//! run in each node; the gateway's replies are checked on the wire (the
//! fake-ssh log) and, for a hand-driven session, line by line against
//! transcript `cluster-12-hand-driven-gateway.txt`.
//!
//! Run: `cargo test -p annexmesh-cli --test cluster`.

#[path = "cluster/publish.rs"]
mod publish;
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
const CLUSTER: &str = "mycluster";

struct Finished {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    wire: String,
    what: String,
}

impl Finished {
    fn report(&self) -> String {
        format!(
            "command: {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- wire ---\n{}",
            self.what, self.status, self.stdout, self.stderr, self.wire
        )
    }

    fn ok(&self) -> &Self {
        assert!(self.status.success(), "expected success\n{}", self.report());
        self
    }

    fn says(&self, text: &str) -> &Self {
        assert!(
            self.stdout.contains(text) || self.stderr.contains(text),
            "expected {text:?} in the output\n{}",
            self.report()
        );
        self
    }

    fn wire_has(&self, text: &str) -> &Self {
        assert!(
            self.wire.contains(text),
            "expected {text:?} on the wire\n{}",
            self.report()
        );
        self
    }

    /// The wire lines the server sent that start with `prefix`.
    fn server_lines(&self, prefix: &str) -> Vec<String> {
        self.wire
            .lines()
            .filter_map(|l| l.split_once("S->C | ").map(|(_, m)| m))
            .filter(|m| m.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }
}

struct Lab {
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    home: PathBuf,
    shim: PathBuf,
    log: PathBuf,
    g: PathBuf,
    c: PathBuf,
    nodes: Vec<PathBuf>,
    g_uuid: String,
    node_uuids: Vec<String>,
    cluster_uuid: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let Some(tmp) = self.tmp.take() else { return };
        if std::thread::panicking() && std::env::var_os("ANNEXMESH_KEEP_LAB").is_some() {
            eprintln!("(kept the lab: {})", tmp.keep().display());
            return;
        }
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(tmp.path())
            .status();
    }
}

impl Lab {
    /// G with nodes N1..N3 and a cluster; no client yet.
    fn gateway() -> Lab {
        support::git_annex_bin_dir();
        let tmp = tempfile::Builder::new()
            .prefix("cluster-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let home = root.join("home");
        std::fs::create_dir_all(&home).expect("cluster test step");
        std::fs::write(
            home.join(".gitconfig"),
            "[init]\n\tdefaultBranch = master\n[annex]\n\tsshcaching = false\n",
        )
        .expect("cluster test step");
        let shim_dir = root.join("shim");
        std::fs::create_dir_all(&shim_dir).expect("cluster test step");
        let shim = shim_dir.join("git-annex-shell");
        std::os::unix::fs::symlink(support::annexmesh_bin(), &shim).expect("cluster test step");
        let log = root.join("fake-ssh.log");
        std::fs::write(&log, "").expect("cluster test step");
        let mut lab = Lab {
            g: root.join("G"),
            c: root.join("C"),
            nodes: (1..=3).map(|i| root.join(format!("N{i}"))).collect(),
            tmp: Some(tmp),
            root,
            home,
            shim,
            log,
            g_uuid: String::new(),
            node_uuids: Vec::new(),
            cluster_uuid: String::new(),
        };
        for name in ["G", "N1", "N2", "N3"] {
            lab.run(&lab.root, "git", &["init", "-q", name]).ok();
            let dir = lab.root.join(name);
            lab.run(&dir, "git", &["annex", "init", name]).ok();
        }
        lab.g_uuid = lab.config(&lab.g, "annex.uuid");
        lab.node_uuids = lab
            .nodes
            .iter()
            .map(|n| lab.config(n, "annex.uuid"))
            .collect();
        let g = lab.g.clone();
        lab.run(&g, "git", &["commit", "-q", "--allow-empty", "-m", "init"])
            .ok();
        lab.annexmesh(&g, &["initcluster", CLUSTER])
            .ok()
            .says("initcluster mycluster ok");
        for i in 1..=3 {
            lab.run(
                &g,
                "git",
                &["remote", "add", &format!("N{i}"), &format!("../N{i}")],
            )
            .ok();
            lab.run(
                &g,
                "git",
                &[
                    "config",
                    &format!("remote.N{i}.annex-cluster-node"),
                    CLUSTER,
                ],
            )
            .ok();
        }
        lab.cluster_uuid = lab.config(&g, &format!("annex.cluster.{CLUSTER}"));
        lab
    }

    /// The gateway after `updatecluster`, and a client C cloned from it over
    /// fake-ssh, which has fetched G's git-annex branch.
    fn new() -> Lab {
        Lab::new_with(|_| {})
    }

    /// [`Lab::new`], with `extra` changing the gateway before `updatecluster`.
    fn new_with(extra: impl FnOnce(&mut Lab)) -> Lab {
        let mut lab = Lab::gateway();
        extra(&mut lab);
        lab.annexmesh(&lab.g, &["updatecluster"]).ok();
        lab.with_client()
    }

    /// C, cloned from G over fake-ssh, with two files added (G `wants` nothing).
    fn with_client(self) -> Lab {
        let lab = self;
        lab.run(&lab.g, "git", &["annex", "wanted", ".", "nothing"])
            .ok();
        let url = format!("localhost:{}", lab.g.display());
        lab.run(&lab.root, "git", &["clone", "-q", "-o", "G", &url, "C"])
            .ok();
        lab.run(&lab.c, "git", &["annex", "init", "C"]).ok();
        lab.run(&lab.c, "git", &["fetch", "-q", "G"]).ok();
        std::fs::write(lab.c.join("hello.txt"), "hello\n").expect("cluster test step");
        let meg: Vec<u8> = (0..1_048_576u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(lab.c.join("onemeg.bin"), meg).expect("cluster test step");
        lab.annex_c(&["add", "hello.txt", "onemeg.bin"]).ok();
        lab.run(&lab.c, "git", &["commit", "-q", "-m", "add"]).ok();
        lab
    }

    fn config(&self, dir: &Path, key: &str) -> String {
        let r = self.run(dir, "git", &["config", key]);
        r.ok();
        r.stdout.trim().to_owned()
    }

    fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut cmd = support::command_in(program, dir, &self.home);
        // Last on PATH: git-annex-remote-dummy, for external special remote nodes.
        let mut path = support::path_with_git_annex();
        path.push(":");
        path.push(support::tools_dir());
        cmd.env("PATH", path)
            .env("GIT_ANNEX_USE_GIT_SSH", "1")
            .env("GIT_SSH", support::tools_dir().join("fake-ssh"))
            .env("FAKE_SSH_LOG", &self.log)
            .env("FAKE_SSH_GIT_ANNEX_SHELL", &self.shim)
            .env_remove("FAKE_SSH_TAP_ONLY_P2P")
            .env_remove("GIT_SSH_COMMAND")
            .env_remove("GIT_ANNEX_SHELL_READONLY")
            .env_remove("GIT_ANNEX_SHELL_APPENDONLY")
            .env_remove("GIT_ANNEX_SHELL_DIRECTORY")
            .env_remove("ANNEXMESH_LOG");
        cmd
    }

    fn run_program(&self, dir: &Path, program: &Path, args: &[&str]) -> Finished {
        let before = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut cmd = self.command(program, dir);
        cmd.args(args);
        let fin = support::run_with_timeout(&mut cmd, TIMEOUT);
        let log = std::fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(before).unwrap_or(0).min(log.len());
        Finished {
            status: fin.status,
            stdout: fin.stdout,
            stderr: fin.stderr,
            wire: String::from_utf8_lossy(&log[start..]).into_owned(),
            what: format!(
                "(in {}) {} {}",
                dir.display(),
                program.display(),
                args.join(" ")
            ),
        }
    }

    fn run(&self, dir: &Path, program: &str, args: &[&str]) -> Finished {
        self.run_program(dir, Path::new(program), args)
    }

    fn annexmesh(&self, dir: &Path, args: &[&str]) -> Finished {
        self.run_program(dir, &support::annexmesh_bin(), args)
    }

    fn annex_c(&self, args: &[&str]) -> Finished {
        let mut full = vec!["annex"];
        full.extend_from_slice(args);
        self.run(&self.c, "git", &full)
    }

    /// The key git-annex gave a file in C.
    fn key_of(&self, file: &str) -> String {
        let r = self.annex_c(&["lookupkey", file]);
        r.ok();
        r.stdout.trim().to_owned()
    }

    /// Whether node `i` (0-based) has the key's object file, with `bytes`.
    fn node_has(&self, i: usize, key: &str, bytes: Option<&[u8]>) -> bool {
        let r = self.run(&self.nodes[i], "git", &["annex", "contentlocation", key]);
        if !r.status.success() {
            return false;
        }
        let path = self.nodes[i].join(r.stdout.trim());
        let got = std::fs::read(&path).expect("read object");
        if let Some(want) = bytes {
            assert_eq!(got, want, "wrong bytes in {}", path.display());
        }
        true
    }

    /// The real `git annex fsck` in each node that should hold `key`.
    fn fsck_nodes(&self, key: &str) {
        for n in &self.nodes {
            self.run(n, "git", &["annex", "fsck", "--key", key])
                .ok()
                .says("ok");
        }
    }

    /// G's daemon, started, and what a stock client needs to reach its
    /// cluster over libp2p: the `p2p-annex::libp2p:…/annex-uuid/<cluster>:<token>`
    /// address for `git annex p2p --link`, and a PATH with our helper first.
    fn cluster_over_p2p_annex(&self) -> (support::ProcessGuard, String, std::ffi::OsString) {
        self.annexmesh(&self.g, &["init"]).ok();
        let mut daemon_cmd = self.command(&support::annexmesh_bin(), &self.g);
        daemon_cmd.args(["daemon", "--listen", "/ip4/127.0.0.1/tcp/0"]);
        let mut daemon = support::ProcessGuard::spawn(&mut daemon_cmd);
        daemon.wait_for(TIMEOUT, |out| out.contains("listening on ").then_some(()));
        let line = self.annexmesh(&self.g, &["p2p", "--gen-addresses"]);
        line.ok();
        let line = line.stdout.lines().next().expect("an address").to_owned();
        let (address, token) = line.rsplit_once(':').expect("address:token");
        let with_target = format!("{address}/annex-uuid/{}:{token}", self.cluster_uuid);
        let helper = PathBuf::from(env!("CARGO_BIN_EXE_git-annex-p2p-libp2p"));
        let mut path = vec![helper.parent().expect("bin dir").to_path_buf()];
        path.extend(std::env::split_paths(&support::path_with_git_annex()));
        let path = std::env::join_paths(path).expect("PATH");
        (daemon, with_target, path)
    }

    /// Runs `args` in `dir` with `path` as PATH (our libp2p helper first)
    /// and `addr` as `$ADDR`; its stdout, or a panic with its output.
    fn run_p2p(&self, dir: &Path, args: &[&str], path: &std::ffi::OsStr, addr: &str) -> String {
        let mut c = self.command(Path::new(args[0]), dir);
        c.args(&args[1..]).env("PATH", path).env("ADDR", addr);
        let f = support::run_with_timeout(&mut c, TIMEOUT);
        assert!(
            f.status.success(),
            "{args:?} failed:\n{}\n{}",
            f.stdout,
            f.stderr
        );
        f.stdout
    }

    /// Runs our binary as `git-annex-shell p2pstdio G <client> --uuid <uuid>`
    /// with `input` on stdin (then EOF).
    fn p2pstdio(&self, uuid: &str, input: &[u8]) -> (std::process::ExitStatus, String, String) {
        self.p2pstdio_in_front(uuid, input, None)
    }

    /// [`Lab::p2pstdio`] with `first` in front of `PATH`.
    fn p2pstdio_in_front(
        &self,
        uuid: &str,
        input: &[u8],
        first: Option<&Path>,
    ) -> (std::process::ExitStatus, String, String) {
        let mut cmd = self.command(&self.shim, &self.root);
        if let Some(dir) = first {
            let mut path = dir.as_os_str().to_owned();
            path.push(":");
            path.push(
                cmd.get_envs()
                    .find(|(k, _)| *k == "PATH")
                    .and_then(|(_, v)| v)
                    .unwrap_or_default(),
            );
            cmd.env("PATH", path);
        }
        cmd.args([
            "p2pstdio",
            self.g.to_str().expect("cluster test step"),
            "cccccccc-cccc-4ccc-8ccc-cccccccccccc",
            "--uuid",
            uuid,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn git-annex-shell");
        let mut stdin = child.stdin.take().expect("cluster test step");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .expect("cluster test step")
            .read_to_end(&mut out)
            .expect("cluster test step");
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("cluster test step")
            .read_to_string(&mut err)
            .expect("cluster test step");
        writer.join().expect("cluster test step");
        let status = child.wait().expect("cluster test step");
        (status, String::from_utf8_lossy(&out).into_owned(), err)
    }
}

/// A cluster session reads the gateway's git config once, whatever the
/// number of nodes (it used to start a `git config` per key and node).
#[test]
fn a_cluster_session_runs_git_once() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let real = lab.run(&lab.root, "sh", &["-c", "command -v git"]);
    let real = real.stdout.trim().to_owned();
    let bin = lab.root.join("git-spy");
    std::fs::create_dir_all(&bin).expect("cluster test step");
    let log = lab.root.join("git-spy.log");
    let spy = bin.join("git");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{real}' \"$@\"\n",
            log.display()
        ),
    )
    .expect("cluster test step");
    std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o755))
        .expect("cluster test step");
    let known = "SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt";
    let (status, out, err) = lab.p2pstdio_in_front(
        &lab.cluster_uuid,
        format!("VERSION 4\nCHECKPRESENT {known}\n").as_bytes(),
        Some(&bin),
    );
    assert!(status.success(), "{out}\n{err}");
    assert_eq!(
        out,
        format!("AUTH-SUCCESS {}\nVERSION 4\nFAILURE\n", lab.cluster_uuid)
    );
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].contains("config -z --list"), "{runs:?}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The uuids of a `…-PLUS` line, sorted.
fn plus_uuids(line: &str) -> Vec<String> {
    sorted(line.split_whitespace().skip(1).map(str::to_owned).collect())
}

#[test]
fn setup_writes_logs_like_git_annex() {
    let lab = Lab::gateway();
    assert!(
        lab.cluster_uuid.starts_with("ac") && lab.cluster_uuid.as_bytes()[14] == b'8',
        "not a cluster uuid: {}",
        lab.cluster_uuid
    );
    let up = lab.annexmesh(&lab.g, &["updatecluster"]);
    up.ok();
    let expected: String = [
        "Added node N1 to cluster: mycluster",
        "Added node N2 to cluster: mycluster",
        "Added node N3 to cluster: mycluster",
        "Started proxying for N1",
        "Started proxying for N2",
        "Started proxying for N3",
        "Started proxying for mycluster",
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect();
    assert_eq!(up.stdout, expected, "{}", up.report());
    for (i, u) in lab.node_uuids.iter().enumerate() {
        assert_eq!(
            &lab.config(&lab.g, &format!("remote.N{}.annex-uuid", i + 1)),
            u
        );
    }

    // The branch, as git-annex itself reads it (the journal was committed).
    let show = |f: &str| {
        let r = lab.run(&lab.g, "git", &["show", &format!("git-annex:{f}")]);
        r.ok();
        r.stdout
    };
    let uuid_log = show("uuid.log");
    let cluster_line = uuid_log
        .lines()
        .find(|l| l.starts_with(&lab.cluster_uuid))
        .unwrap_or_else(|| panic!("no cluster in uuid.log:\n{uuid_log}"));
    let rest = cluster_line
        .strip_prefix(&format!(
            "{} cluster mycluster timestamp=",
            lab.cluster_uuid
        ))
        .unwrap_or_else(|| panic!("bad uuid.log line {cluster_line:?}"));
    assert!(rest.ends_with('s') && rest[..rest.len() - 1].parse::<u64>().is_ok());

    // proxy.log: `<ts>s <gw> <uuid>:<name> …`, sorted by uuid as git-annex writes.
    let proxy = show("proxy.log");
    let (ts, tail) = proxy.trim_end().split_once(' ').expect("cluster test step");
    assert!(ts.ends_with('s'), "{proxy}");
    let mut entries: Vec<(String, String)> = lab
        .node_uuids
        .iter()
        .enumerate()
        .map(|(i, u)| (u.clone(), format!("N{}", i + 1)))
        .collect();
    entries.push((lab.cluster_uuid.clone(), CLUSTER.to_owned()));
    entries.sort();
    let want: Vec<String> = std::iter::once(lab.g_uuid.clone())
        .chain(entries.iter().map(|(u, n)| format!("{u}:{n}")))
        .collect();
    assert_eq!(tail, want.join(" "), "proxy.log:\n{proxy}");

    // cluster.log: `<ts>s <cluster> <node uuids, sorted>`.
    let cluster = show("cluster.log");
    let (ts, tail) = cluster
        .trim_end()
        .split_once(' ')
        .expect("cluster test step");
    assert!(ts.ends_with('s'), "{cluster}");
    let want: Vec<String> = std::iter::once(lab.cluster_uuid.clone())
        .chain(sorted(lab.node_uuids.clone()))
        .collect();
    assert_eq!(tail, want.join(" "), "cluster.log:\n{cluster}");

    // Stock git-annex reads the result as it reads its own.
    lab.run(&lab.g, "git", &["annex", "info", &lab.cluster_uuid])
        .ok()
        .says("description: cluster mycluster");

    // Running it again changes nothing, and says so as git-annex does (cluster-14).
    let again = lab.annexmesh(&lab.g, &["updatecluster"]);
    again.ok();
    assert_eq!(
        again.stdout,
        "No cluster node changes for cluster: mycluster\nNo proxy changes to record.\n",
        "{}",
        again.report()
    );
    assert_eq!(show("proxy.log"), proxy);
    assert_eq!(show("cluster.log"), cluster);
}

#[test]
fn stock_client_copy_get_drop_through_cluster() {
    let lab = Lab::new();
    lab.annex_c(&["info", "G"])
        .ok()
        .says("gateway to cluster: G-mycluster")
        .says("proxying: ")
        .says("G-N1")
        .says("G-N2")
        .says("G-N3");

    let hello = lab.key_of("hello.txt");
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step");

    let copy = lab.annex_c(&["copy", "--to", "G-mycluster"]);
    copy.ok()
        .wire_has(&format!("S->C | AUTH-SUCCESS {}", lab.cluster_uuid))
        .wire_has("S->C | PUT-FROM 0");
    let plus = copy.server_lines("SUCCESS-PLUS");
    assert_eq!(plus.len(), 2, "{}", copy.report());
    for l in &plus {
        assert_eq!(
            plus_uuids(l),
            sorted(lab.node_uuids.clone()),
            "{}",
            copy.report()
        );
    }
    for i in 0..3 {
        assert!(
            lab.node_has(i, &hello, Some(b"hello\n")),
            "N{} lacks hello",
            i + 1
        );
        assert!(
            lab.node_has(i, &meg, Some(&meg_bytes)),
            "N{} lacks onemeg",
            i + 1
        );
    }
    lab.fsck_nodes(&hello);
    lab.fsck_nodes(&meg);
    // No ssh and no git-annex-shell per node: the gateway writes the nodes itself.
    assert_eq!(
        copy.wire.lines().filter(|l| l.contains(" run: ")).count(),
        1,
        "{}",
        copy.report()
    );

    let whereis = lab.annex_c(&["whereis", "hello.txt"]);
    whereis
        .ok()
        .says("(4 copies)")
        .says("cluster mycluster [G-mycluster]")
        .says("-- G-N1")
        .says("-- G-N2")
        .says("-- G-N3");

    // The gateway recorded the nodes (never the cluster) in its journal.
    let g_log = lab.run(&lab.g, "git", &["annex", "whereis", "--key", &hello]);
    for u in &lab.node_uuids {
        g_log.says(u);
    }

    // A second copy: the cluster already has it.
    lab.annex_c(&["copy", "--to", "G-mycluster", "--force", "hello.txt"])
        .ok();

    lab.annex_c(&["drop", "hello.txt", "onemeg.bin"]).ok();
    let get = lab.annex_c(&["get", "--from", "G-mycluster"]);
    get.ok()
        .wire_has("S->C | DATA 6")
        .wire_has("S->C | DATA 1048576")
        .wire_has("S->C | VALID");
    assert_eq!(
        std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step"),
        meg_bytes
    );
    assert_eq!(
        std::fs::read_to_string(lab.c.join("hello.txt")).expect("cluster test step"),
        "hello\n"
    );

    let drop = lab.annex_c(&["drop", "--from", "G-mycluster"]);
    drop.ok();
    let plus = drop.server_lines("SUCCESS-PLUS");
    assert_eq!(plus.len(), 2, "{}", drop.report());
    for l in &plus {
        assert_eq!(
            plus_uuids(l),
            sorted(lab.node_uuids.clone()),
            "{}",
            drop.report()
        );
    }
    for i in 0..3 {
        assert!(!lab.node_has(i, &hello, None));
        assert!(!lab.node_has(i, &meg, None));
    }
    lab.annex_c(&["whereis", "hello.txt"]).ok().says("(1 copy)");
}

#[test]
fn stock_client_through_single_node() {
    let lab = Lab::new();
    let hello = lab.key_of("hello.txt");
    let copy = lab.annex_c(&["copy", "--to", "G-N1", "hello.txt"]);
    copy.ok()
        .wire_has(&format!("S->C | AUTH-SUCCESS {}", lab.node_uuids[0]))
        .wire_has("S->C | SUCCESS");
    assert!(lab.node_has(0, &hello, Some(b"hello\n")));
    assert!(!lab.node_has(1, &hello, None));
    assert!(!lab.node_has(2, &hello, None));
    lab.run(&lab.nodes[0], "git", &["annex", "fsck", "--key", &hello])
        .ok();
    // The gateway recorded where the content went, as git-annex's does.
    lab.run(&lab.g, "git", &["annex", "whereis", "--key", &hello])
        .ok()
        .says(&lab.node_uuids[0]);
    lab.annex_c(&["whereis", "hello.txt"])
        .ok()
        .says("(2 copies)")
        .says("-- G-N1");

    // Dropping the local copy locks it on the node through the gateway.
    lab.annex_c(&["drop", "hello.txt"])
        .ok()
        .wire_has("C->S | LOCKCONTENT")
        .wire_has("C->S | UNLOCKCONTENT");
    lab.annex_c(&["get", "--from", "G-N1", "hello.txt"])
        .ok()
        .wire_has("S->C | DATA 6");
    lab.annex_c(&["drop", "--from", "G-N1", "hello.txt"]).ok();
    assert!(!lab.node_has(0, &hello, None));
    let whereis = lab.run(&lab.g, "git", &["annex", "whereis", "--key", &hello]);
    assert!(
        !whereis.stdout.contains(&lab.node_uuids[0]),
        "{}",
        whereis.report()
    );
}

/// The hand-driven session of transcript cluster-12, against our gateway.
#[test]
fn hand_driven_gateway_matches_transcript() {
    let lab = Lab::new();
    let known = "SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt";
    let new_key =
        "SHA256E-s36--7a1fd60c4df0d2a0f2d08aeab3d38b248dd55ee9e3993e8c5bbbe9f07a9a27a0.txt";
    let body = "new via hand-driven gateway session\n";
    let input = format!(
        "VERSION 4\nBYPASS 11111111-2222-4333-8444-555555555555\nCHECKPRESENT {known}\n\
         LOCKCONTENT {known}\nGET 0  {known}\nFAILURE\nGETTIMESTAMP\nPUT new.txt {new_key}\n\
         DATA 36\n{body}VALID\nPUT new.txt {new_key}\nCHECKPRESENT {new_key}\nNOTIFYCHANGE\n"
    );
    let (status, out, err) = lab.p2pstdio(&lab.cluster_uuid, input.as_bytes());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 12, "{out}\n{err}");
    assert_eq!(lines[0], format!("AUTH-SUCCESS {}", lab.cluster_uuid));
    assert_eq!(
        &lines[1..6],
        ["VERSION 4", "FAILURE", "FAILURE", "DATA 0", "INVALID"]
    );
    assert!(lines[6].starts_with("TIMESTAMP "), "{out}");
    assert_eq!(lines[7], "PUT-FROM 0");
    assert!(lines[8].starts_with("SUCCESS-PLUS "), "{out}");
    assert_eq!(plus_uuids(lines[8]), sorted(lab.node_uuids.clone()));
    assert!(lines[9].starts_with("ALREADY-HAVE-PLUS "), "{out}");
    assert_eq!(plus_uuids(lines[9]), sorted(lab.node_uuids.clone()));
    assert_eq!(lines[10], "SUCCESS");
    assert_eq!(lines[11], "ERROR protocol error");
    assert!(!status.success());
    for i in 0..3 {
        assert!(lab.node_has(i, new_key, Some(body.as_bytes())));
    }

    // v1: no -PLUS forms; REMOVE goes to every node.
    let input = format!(
        "VERSION 1\nREMOVE {new_key}\nPUT new.txt {new_key}\nDATA 36\n{body}VALID\n\
         PUT new.txt {new_key}\n"
    );
    let (status, out, err) = lab.p2pstdio(&lab.cluster_uuid, input.as_bytes());
    assert_eq!(
        out,
        format!(
            "AUTH-SUCCESS {}\nVERSION 1\nSUCCESS\nPUT-FROM 0\nSUCCESS\nALREADY-HAVE\n",
            lab.cluster_uuid
        ),
        "{err}"
    );
    assert!(status.success(), "{err}");
    assert_eq!(err, "");

    // No VERSION: served at v0.
    let (status, out, _) = lab.p2pstdio(
        &lab.cluster_uuid,
        format!("CHECKPRESENT {known}\n").as_bytes(),
    );
    assert_eq!(out, format!("AUTH-SUCCESS {}\nFAILURE\n", lab.cluster_uuid));
    assert!(status.success());

    // A uuid the gateway does not serve is refused as before.
    let (status, out, err) = lab.p2pstdio("12345678-1234-4234-8234-123456789abc", b"");
    assert!(!status.success());
    assert_eq!(out, "");
    assert!(err.contains("expected repository UUID"), "{err}");
}

/// A node holding a lock refuses REMOVE: the gateway answers FAILURE-PLUS with
/// the nodes that did remove (transcript cluster-10), and nothing leaks to stderr.
#[test]
fn locked_node_gives_failure_plus() {
    let lab = Lab::new();
    let key = "SHA256E-s36--7a1fd60c4df0d2a0f2d08aeab3d38b248dd55ee9e3993e8c5bbbe9f07a9a27a0.txt";
    let body = "new via hand-driven gateway session\n";
    let (_, out, _) = lab.p2pstdio(
        &lab.cluster_uuid,
        format!("VERSION 4\nPUT x {key}\nDATA 36\n{body}VALID\n").as_bytes(),
    );
    assert!(out.contains("SUCCESS-PLUS"), "{out}");

    // Hold LOCKCONTENT on N1 through the single-node proxy.
    let mut cmd = lab.command(&lab.shim, &lab.root);
    cmd.args([
        "p2pstdio",
        lab.g.to_str().expect("cluster test step"),
        "cccccccc-cccc-4ccc-8ccc-cccccccccccc",
        "--uuid",
        &lab.node_uuids[0],
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut locker = cmd.spawn().expect("cluster test step");
    let mut lin = locker.stdin.take().expect("cluster test step");
    let mut lout = std::io::BufReader::new(locker.stdout.take().expect("cluster test step"));
    lin.write_all(format!("VERSION 4\nLOCKCONTENT {key}\n").as_bytes())
        .expect("cluster test step");
    lin.flush().expect("cluster test step");
    let mut got = String::new();
    for _ in 0..3 {
        std::io::BufRead::read_line(&mut lout, &mut got).expect("cluster test step");
    }
    assert_eq!(
        got,
        format!("AUTH-SUCCESS {}\nVERSION 4\nSUCCESS\n", lab.node_uuids[0])
    );

    let (status, out, err) = lab.p2pstdio(
        &lab.cluster_uuid,
        format!("VERSION 4\nREMOVE {key}\n").as_bytes(),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[2].starts_with("FAILURE-PLUS "), "{out}");
    assert_eq!(
        plus_uuids(lines[2]),
        sorted(lab.node_uuids[1..].to_vec()),
        "{out}"
    );
    assert!(status.success());
    assert_eq!(err, "");
    assert!(lab.node_has(0, key, Some(body.as_bytes())));
    assert!(!lab.node_has(1, key, None));

    lin.write_all(b"UNLOCKCONTENT\n")
        .expect("cluster test step");
    drop(lin);
    let _ = locker.wait();

    // Unlocked: the last copy goes.
    let (_, out, _) = lab.p2pstdio(
        &lab.cluster_uuid,
        format!("VERSION 4\nREMOVE {key}\n").as_bytes(),
    );
    assert!(out.contains("SUCCESS-PLUS "), "{out}");
    assert!(!lab.node_has(0, key, None));
}

/// GET continues on another node when one node's copy is damaged.
#[test]
fn get_fails_over_to_another_node() {
    let lab = Lab::new();
    let key = "SHA256E-s36--7a1fd60c4df0d2a0f2d08aeab3d38b248dd55ee9e3993e8c5bbbe9f07a9a27a0.txt";
    let body = "new via hand-driven gateway session\n";
    lab.p2pstdio(
        &lab.cluster_uuid,
        format!("VERSION 4\nPUT x {key}\nDATA 36\n{body}VALID\n").as_bytes(),
    );
    // Damage every copy but N3's (truncate them).
    for n in &lab.nodes[..2] {
        let r = lab.run(n, "git", &["annex", "contentlocation", key]);
        r.ok();
        let path = n.join(r.stdout.trim());
        let dir = path.parent().expect("cluster test step");
        lab.run(
            n,
            "chmod",
            &[
                "u+w",
                dir.to_str().expect("cluster test step"),
                path.to_str().expect("cluster test step"),
            ],
        )
        .ok();
        std::fs::write(&path, "short").expect("cluster test step");
    }
    let (status, out, err) = lab.p2pstdio(
        &lab.cluster_uuid,
        format!("VERSION 4\nGET 0 x {key}\nSUCCESS\n").as_bytes(),
    );
    assert_eq!(
        out,
        format!(
            "AUTH-SUCCESS {}\nVERSION 4\nDATA 36\n{body}VALID\n",
            lab.cluster_uuid
        ),
        "{err}"
    );
    assert!(status.success(), "{err}");
}

/// Interrupted uploads resume: `PUT-FROM` is the smallest offset among the
/// nodes, and each node takes the stream from its own offset.
#[test]
fn put_resumes_from_each_nodes_offset() {
    let lab = Lab::new();
    let key = "SHA256E-s36--7a1fd60c4df0d2a0f2d08aeab3d38b248dd55ee9e3993e8c5bbbe9f07a9a27a0.txt";
    let body = "new via hand-driven gateway session\n";
    let partial = |i: usize, n: usize| {
        let dir = lab.nodes[i].join(".git/annex/tmp");
        std::fs::create_dir_all(&dir).expect("cluster test step");
        std::fs::write(dir.join(key), &body.as_bytes()[..n]).expect("cluster test step");
    };
    partial(0, 10);
    partial(1, 20);
    partial(2, 15);
    let input = format!("VERSION 4\nPUT x {key}\nDATA 26\n{}VALID\n", &body[10..]);
    let (status, out, err) = lab.p2pstdio(&lab.cluster_uuid, input.as_bytes());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.get(2).copied(), Some("PUT-FROM 10"), "{out}\n{err}");
    assert!(lines[3].starts_with("SUCCESS-PLUS "), "{out}\n{err}");
    assert_eq!(plus_uuids(lines[3]), sorted(lab.node_uuids.clone()));
    assert!(status.success(), "{err}");
    for i in 0..3 {
        assert!(lab.node_has(i, key, Some(body.as_bytes())));
    }
    lab.fsck_nodes(key);

    // One node with nothing: PUT-FROM 0, and the others skip what they have.
    let (_, out, _) = lab.p2pstdio(
        &lab.cluster_uuid,
        format!("VERSION 4\nREMOVE {key}\n").as_bytes(),
    );
    assert!(out.contains("SUCCESS-PLUS"), "{out}");
    partial(0, 30);
    partial(1, 5);
    let input = format!("VERSION 4\nPUT x {key}\nDATA 36\n{body}VALID\n");
    let (_, out, err) = lab.p2pstdio(&lab.cluster_uuid, input.as_bytes());
    assert!(out.contains("\nPUT-FROM 0\nSUCCESS-PLUS "), "{out}\n{err}");
    for i in 0..3 {
        assert!(lab.node_has(i, key, Some(body.as_bytes())));
    }
    lab.fsck_nodes(key);
}

/// Transcript cluster-09: with the only other copy on a plain remote P, git-annex
/// drops from the cluster with GETTIMESTAMP and REMOVE-BEFORE, which the gateway
/// passes to every node (local nodes share the gateway's monotonic clock).
#[test]
fn stock_client_drop_from_cluster_with_remove_before() {
    let lab = Lab::new();
    let p = lab.root.join("P");
    lab.run(&lab.root, "git", &["init", "-q", "P"]).ok();
    lab.run(&p, "git", &["annex", "init", "P"]).ok();
    let url = format!("localhost:{}", p.display());
    lab.run(&lab.c, "git", &["remote", "add", "P", &url]).ok();
    lab.run(&lab.c, "git", &["fetch", "-q", "P"]).ok();
    let hello = lab.key_of("hello.txt");
    lab.annex_c(&["copy", "--to", "G-mycluster", "hello.txt"])
        .ok();
    lab.annex_c(&["copy", "--to", "P", "hello.txt"]).ok();
    lab.annex_c(&["drop", "hello.txt"]).ok();
    let drop = lab.annex_c(&["drop", "--from", "G-mycluster", "hello.txt"]);
    drop.ok()
        .says("locking P")
        .wire_has("C->S | GETTIMESTAMP")
        .wire_has("C->S | REMOVE-BEFORE ");
    let plus = drop.server_lines("SUCCESS-PLUS");
    assert_eq!(plus.len(), 1, "{}", drop.report());
    assert_eq!(plus_uuids(&plus[0]), sorted(lab.node_uuids.clone()));
    for i in 0..3 {
        assert!(!lab.node_has(i, &hello, None));
    }
    lab.annex_c(&["whereis", "hello.txt"])
        .ok()
        .says("(1 copy)")
        .says("-- [P]");
}

/// A file big enough for the store's hashing threads, through the cluster and
/// back, checked by the real fsck in every node; nothing from the gateway
/// reaches the client's stderr.
#[test]
fn stock_client_large_file_through_cluster() {
    let lab = Lab::new();
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    std::fs::write(lab.c.join("big.bin"), &big).expect("write big.bin");
    lab.annex_c(&["add", "big.bin"]).ok();
    let key = lab.key_of("big.bin");
    let copy = lab.annex_c(&["copy", "--to", "G-mycluster", "big.bin"]);
    copy.ok();
    assert!(
        !copy.stderr.contains("annexmesh") && !copy.stderr.contains("WARN"),
        "{}",
        copy.report()
    );
    for i in 0..3 {
        assert!(lab.node_has(i, &key, Some(&big)));
    }
    lab.fsck_nodes(&key);
    lab.annex_c(&["drop", "big.bin"]).ok();
    lab.annex_c(&["get", "--from", "G-mycluster", "big.bin"])
        .ok();
    assert_eq!(std::fs::read(lab.c.join("big.bin")).expect("read"), big);
}

/// The same cluster reached over libp2p: an `annexmesh daemon` on the gateway
/// serves `/annex-uuid/<cluster>` addresses; annexmesh's client puts, checks,
/// gets and drops through it.
#[test]
fn cluster_over_libp2p() {
    let lab = Lab::gateway();
    lab.annexmesh(&lab.g, &["updatecluster"]).ok();
    lab.annexmesh(&lab.g, &["init"]).ok();
    let client = lab.root.join("X");
    let init = lab.annexmesh(
        &lab.root,
        &["--repo", client.to_str().expect("utf8"), "init"],
    );
    init.ok();
    let peer = init
        .stdout
        .rsplit("peer ")
        .next()
        .and_then(|s| s.trim().strip_suffix(')'))
        .expect("peer id")
        .to_owned();
    lab.annexmesh(&lab.g, &["grant", &peer]).ok();
    let mut cmd = lab.command(&support::annexmesh_bin(), &lab.g);
    cmd.args(["daemon", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let mut daemon = support::ProcessGuard::spawn(&mut cmd);
    let addr = daemon.wait_for(TIMEOUT, |out| {
        out.lines()
            .find_map(|l| l.strip_prefix("listening on "))
            .map(str::to_owned)
    });
    let target = format!("{addr}/annex-uuid/{}", lab.cluster_uuid);
    let file = lab.root.join("payload.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let x = client.to_str().expect("utf8");
    let put = lab.annexmesh(
        &lab.root,
        &[
            "--repo",
            x,
            "put",
            file.to_str().expect("utf8"),
            "--to",
            &target,
        ],
    );
    put.ok();
    let key = put.stdout.trim().to_owned();
    for n in &lab.nodes {
        let k = protocol::Key::parse(&key).expect("key");
        let path = n
            .join(".git/annex/objects")
            .join(k.hash_dir_mixed())
            .join(k.file())
            .join(k.file());
        assert_eq!(std::fs::read(&path).expect("on every node"), data);
    }
    lab.annexmesh(
        &lab.root,
        &["--repo", x, "checkpresent", &key, "--from", &target],
    )
    .ok();
    let back = lab.root.join("back.bin");
    lab.annexmesh(
        &lab.root,
        &[
            "--repo",
            x,
            "get",
            &key,
            "--from",
            &target,
            "-o",
            back.to_str().expect("utf8"),
        ],
    )
    .ok();
    assert_eq!(std::fs::read(&back).expect("got"), data);
    lab.annexmesh(&lab.root, &["--repo", x, "drop", &key, "--from", &target])
        .ok();
    let gone = lab.annexmesh(
        &lab.root,
        &["--repo", x, "checkpresent", &key, "--from", &target],
    );
    assert_eq!(gone.stdout.trim(), "absent");
    // A single node by its uuid, behind the same gateway.
    let node = format!("{addr}/annex-uuid/{}", lab.node_uuids[0]);
    lab.annexmesh(
        &lab.root,
        &[
            "--repo",
            x,
            "put",
            file.to_str().expect("utf8"),
            "--to",
            &node,
        ],
    )
    .ok();
    daemon.terminate(TIMEOUT);
}

/// Adds node `name` (a new git-annex repository) to the cluster with `url`,
/// its git-annex-shell the real one at `shell` (so fake-ssh runs it as is).
fn add_shell_node(lab: &mut Lab, name: &str, url: &str, shell: &Path) {
    lab.run(&lab.root, "git", &["init", "-q", name]).ok();
    let dir = lab.root.join(name);
    lab.run(&dir, "git", &["annex", "init", name]).ok();
    let uuid = lab.config(&dir, "annex.uuid");
    let g = lab.g.clone();
    lab.run(&g, "git", &["remote", "add", name, url]).ok();
    let shell = shell.to_str().expect("utf-8 path");
    lab.run(
        &g,
        "git",
        &["config", &format!("remote.{name}.annex-shell"), shell],
    )
    .ok();
    lab.run(
        &g,
        "git",
        &[
            "config",
            &format!("remote.{name}.annex-cluster-node"),
            CLUSTER,
        ],
    )
    .ok();
    lab.nodes.push(dir);
    lab.node_uuids.push(uuid);
}

/// Nodes that are existing git-annex repositories behind the REAL
/// git-annex-shell: N4 a local path with `annex-shell` set (run directly), N5
/// an ssh url (`localhost:/path`, through fake-ssh as git's ssh). Stock
/// git-annex copies to, gets from and drops from the cluster; every node gets
/// the content and the real `git annex fsck` passes in each.
#[test]
fn stock_client_with_shell_nodes() {
    let real_shell = support::git_annex_bin_dir().join("git-annex-shell");
    let lab = Lab::new_with(|lab| {
        add_shell_node(lab, "N4", "../N4", &real_shell);
        let n5 = lab.root.join("N5");
        add_shell_node(
            lab,
            "N5",
            &format!("localhost:{}", n5.display()),
            &real_shell,
        );
    });
    lab.annex_c(&["info", "G"]).ok().says("G-N4").says("G-N5");
    // updatecluster learnt N5's uuid over ssh (configlist).
    assert_eq!(
        lab.config(&lab.g, "remote.N5.annex-uuid"),
        lab.node_uuids[4]
    );

    // Remote nodes are streamed to and from: nothing is ever spooled.
    let spool = lock_spool_dir(&lab);
    let hello = lab.key_of("hello.txt");
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step");
    let copy = lab.annex_c(&["copy", "--to", "G-mycluster"]);
    copy.ok();
    let plus = copy.server_lines("SUCCESS-PLUS");
    assert_eq!(plus.len(), 2, "{}", copy.report());
    for l in &plus {
        assert_eq!(
            plus_uuids(l),
            sorted(lab.node_uuids.clone()),
            "{}",
            copy.report()
        );
    }
    for i in 0..5 {
        assert!(
            lab.node_has(i, &hello, Some(b"hello\n")),
            "N{} lacks hello",
            i + 1
        );
        assert!(
            lab.node_has(i, &meg, Some(&meg_bytes)),
            "N{} lacks onemeg",
            i + 1
        );
    }
    lab.fsck_nodes(&hello);
    lab.fsck_nodes(&meg);
    // N5 was reached through ssh with the real git-annex-shell.
    assert!(
        copy.wire.contains("p2pstdio") && copy.wire.contains(&lab.node_uuids[4]),
        "{}",
        copy.report()
    );

    // Only the shell nodes keep the content: GET is served through them.
    for n in &lab.nodes[..3] {
        lab.run(n, "git", &["annex", "dropkey", "--force", &hello, &meg])
            .ok();
    }
    for i in 0..3 {
        assert!(!lab.node_has(i, &meg, None), "N{} kept onemeg", i + 1);
    }
    lab.annex_c(&["drop", "--force", "hello.txt", "onemeg.bin"])
        .ok();
    let get = lab.annex_c(&["get", "--from", "G-mycluster"]);
    get.ok()
        .wire_has("S->C | DATA 6")
        .wire_has("S->C | DATA 1048576");
    assert_eq!(
        std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step"),
        meg_bytes
    );

    assert_spool_empty(&spool);

    let drop = lab.annex_c(&["drop", "--from", "G-mycluster"]);
    drop.ok();
    for i in 0..5 {
        assert!(!lab.node_has(i, &hello, None), "N{} kept hello", i + 1);
        assert!(!lab.node_has(i, &meg, None), "N{} kept onemeg", i + 1);
    }
}

/// Starts an annexmesh peer `name` (its own daemon, on loopback) that grants
/// G, and adds it to the cluster with `annexmesh cluster add-node`.
fn add_mesh_node(lab: &mut Lab, name: &str) -> support::ProcessGuard {
    let g = lab.g.clone();
    let g_peer = peer_of(lab.annexmesh(&g, &["init"]).ok());
    let m = lab.root.join(name);
    let ms = m.to_str().expect("utf8").to_owned();
    lab.annexmesh(&lab.root, &["--repo", &ms, "init"]).ok();
    lab.annexmesh(&lab.root, &["--repo", &ms, "grant", &g_peer])
        .ok();
    let mut cmd = lab.command(&support::annexmesh_bin(), &m);
    cmd.args(["daemon", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let mut d = support::ProcessGuard::spawn(&mut cmd);
    let addr = d.wait_for(TIMEOUT, |out| {
        out.lines()
            .find_map(|l| l.strip_prefix("listening on "))
            .map(str::to_owned)
    });
    lab.annexmesh(&g, &["cluster", "add-node", name, &addr])
        .ok()
        .says(&format!("added node {name} to cluster mycluster"));
    assert_eq!(
        lab.config(&g, &format!("remote.{name}.url")),
        format!("p2p-annex::libp2p:{addr}")
    );
    let uuid = lab.config(&m, "annex.uuid");
    lab.nodes.push(m);
    lab.node_uuids.push(uuid);
    d
}

/// D, a `directory` special remote, and E, an external special remote
/// (testdata/tools/git-annex-remote-dummy), made by stock `git annex
/// initremote` in G, as cluster nodes (their stores: `D-store`, `E-store`).
fn add_special_nodes(lab: &mut Lab) {
    let g = lab.g.clone();
    for (name, args) in [
        ("D", vec!["type=directory", "encryption=none"]),
        (
            "E",
            vec!["type=external", "externaltype=dummy", "encryption=none"],
        ),
    ] {
        let dir = lab.root.join(format!("{name}-store"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let directory = format!("directory={}", dir.display());
        let mut full = vec!["annex", "initremote", name, directory.as_str()];
        full.extend(args);
        lab.run(&g, "git", &full).ok();
        lab.run(
            &g,
            "git",
            &[
                "config",
                &format!("remote.{name}.annex-cluster-node"),
                CLUSTER,
            ],
        )
        .ok();
        let uuid = lab.config(&g, &format!("remote.{name}.annex-uuid"));
        lab.node_uuids.push(uuid);
    }
}

/// The peer id `annexmesh init` printed.
fn peer_of(init: &Finished) -> String {
    init.stdout
        .rsplit("peer ")
        .next()
        .and_then(|s| s.trim().strip_suffix(')'))
        .expect("peer id")
        .to_owned()
}

/// An annexmesh peer M (its own daemon, on loopback) as a cluster node, added
/// with `annexmesh cluster add-node`; `updatecluster` learns its uuid by
/// connecting. Stock git-annex copies to, gets from and drops from the
/// cluster; the gateway reaches M over libp2p with its own identity.
#[test]
fn stock_client_with_mesh_node() {
    let mut daemon = None;
    let lab = Lab::new_with(|lab| daemon = Some(add_mesh_node(lab, "M")));
    // updatecluster learnt M's uuid by connecting.
    assert_eq!(lab.config(&lab.g, "remote.M.annex-uuid"), lab.node_uuids[3]);
    lab.annex_c(&["info", "G"]).ok().says("G-M");

    let m_has = |key: &str| {
        let k = protocol::Key::parse(key).expect("key");
        let path = lab.nodes[3]
            .join("annex/objects")
            .join(k.hash_dir_lower())
            .join(k.file())
            .join(k.file());
        std::fs::read(path).ok()
    };
    // Remote nodes are streamed to and from: nothing is ever spooled.
    let spool = lock_spool_dir(&lab);
    let hello = lab.key_of("hello.txt");
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step");
    let copy = lab.annex_c(&["copy", "--to", "G-mycluster"]);
    copy.ok();
    let plus = copy.server_lines("SUCCESS-PLUS");
    assert_eq!(plus.len(), 2, "{}", copy.report());
    for l in &plus {
        assert_eq!(
            plus_uuids(l),
            sorted(lab.node_uuids.clone()),
            "{}",
            copy.report()
        );
    }
    assert_eq!(m_has(&hello).as_deref(), Some(&b"hello\n"[..]));
    assert_eq!(m_has(&meg), Some(meg_bytes.clone()));

    // Only M keeps the content: GET goes through it.
    for n in &lab.nodes[..3] {
        lab.run(n, "git", &["annex", "dropkey", "--force", &hello, &meg])
            .ok();
    }
    lab.annex_c(&["drop", "--force", "hello.txt", "onemeg.bin"])
        .ok();
    lab.annex_c(&["get", "--from", "G-mycluster"])
        .ok()
        .wire_has("S->C | DATA 1048576");
    assert_eq!(
        std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step"),
        meg_bytes
    );
    assert_spool_empty(&spool);
    lab.annex_c(&["drop", "--from", "G-mycluster"]).ok();
    assert_eq!(m_has(&hello), None);
    assert_eq!(m_has(&meg), None);
    if let Some(mut d) = daemon {
        d.terminate(TIMEOUT);
    }
}

/// Special remotes as nodes: D a `directory` special remote and E an external
/// special remote (testdata/tools/git-annex-remote-dummy), both set up with
/// stock `git annex initremote` in the gateway. Stock git-annex copies to,
/// gets from and drops from the cluster; the content lands in each remote's
/// own layout, where stock git-annex (in G) finds it with `fsck --from`.
#[test]
fn stock_client_with_special_remote_nodes() {
    let lab = Lab::new_with(add_special_nodes);
    lab.annex_c(&["info", "G"]).ok().says("G-D").says("G-E");
    let hello = lab.key_of("hello.txt");
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step");
    let k = protocol::Key::parse(&meg).expect("key");
    let d_path = lab
        .root
        .join("D-store")
        .join(k.hash_dir_lower())
        .join(k.file())
        .join(k.file());
    let e_path = lab
        .root
        .join("E-store")
        .join(k.hash_dir_lower())
        .join(k.file());

    let copy = lab.annex_c(&["copy", "--to", "G-mycluster"]);
    copy.ok();
    let plus = copy.server_lines("SUCCESS-PLUS");
    assert_eq!(plus.len(), 2, "{}", copy.report());
    for l in &plus {
        assert_eq!(
            plus_uuids(l),
            sorted(lab.node_uuids.clone()),
            "{}",
            copy.report()
        );
    }
    assert_eq!(std::fs::read(&d_path).expect("in D"), meg_bytes);
    assert_eq!(std::fs::read(&e_path).expect("in E"), meg_bytes);
    for r in ["D", "E"] {
        lab.run(
            &lab.g,
            "git",
            &["annex", "fsck", "--from", r, "--key", &meg],
        )
        .ok();
    }

    // Only the special remotes keep the content: GET goes through them.
    for n in &lab.nodes[..3] {
        lab.run(n, "git", &["annex", "dropkey", "--force", &hello, &meg])
            .ok();
    }
    lab.annex_c(&["drop", "--force", "hello.txt", "onemeg.bin"])
        .ok();
    lab.annex_c(&["get", "--from", "G-mycluster"])
        .ok()
        .wire_has("S->C | DATA 1048576");
    assert_eq!(
        std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step"),
        meg_bytes
    );
    // LOCKCONTENT is FAILURE, as git-annex answers for special remotes.
    let (_, out, _) = lab.p2pstdio(
        &lab.cluster_uuid,
        format!("VERSION 2\nLOCKCONTENT {meg}\n").as_bytes(),
    );
    assert!(out.ends_with("FAILURE\n"), "{out}");
    lab.annex_c(&["drop", "--from", "G-mycluster"]).ok();
    assert!(!d_path.exists());
    assert!(!e_path.exists());
}

/// Stock git-annex reaching the cluster through the libp2p helper: a
/// `p2p-annex::libp2p:<multiaddr>/annex-uuid/<cluster>` remote, linked with a
/// token from `annexmesh p2p --gen-addresses`, copies to and gets from all nodes.
#[test]
fn stock_client_over_libp2p_to_the_cluster() {
    let lab = Lab::gateway();
    lab.annexmesh(&lab.g, &["updatecluster"]).ok();
    let (mut daemon, with_target, path) = lab.cluster_over_p2p_annex();
    let client = lab.root.join("P");
    let run = |args: &[&str], dir: &Path| lab.run_p2p(dir, args, &path, &with_target);
    run(&["git", "init", "-q", "P"], &lab.root);
    run(&["git", "annex", "init", "-q", "P"], &client);
    run(
        &[
            "sh",
            "-c",
            r#"printf '%s\n' "$ADDR" | git annex p2p --link --name GC"#,
        ],
        &client,
    );
    let uuid = run(&["git", "config", "remote.GC.annex-uuid"], &client);
    assert_eq!(
        uuid.trim(),
        lab.cluster_uuid,
        "AUTH-SUCCESS named the cluster"
    );
    std::fs::write(client.join("f.bin"), vec![7u8; 200_000]).expect("write");
    run(&["git", "annex", "add", "-q", "f.bin"], &client);
    run(&["git", "annex", "copy", "--to", "GC", "f.bin"], &client);
    let key = run(&["git", "annex", "lookupkey", "f.bin"], &client);
    let key = protocol::Key::parse(key.trim()).expect("key");
    for n in &lab.nodes {
        let object = n
            .join(".git/annex/objects")
            .join(key.hash_dir_mixed())
            .join(key.file())
            .join(key.file());
        assert_eq!(
            std::fs::read(&object).expect("on every node").len(),
            200_000
        );
    }
    // CONNECT on the cluster's address reaches G's own repository (issue 9):
    // a fetch brings G's git-annex branch, and with it the cluster and what
    // G proxies (the nodes' uuids are named there as G names them).
    run(&["git", "fetch", "-q", "GC"], &client);
    let whereis = run(&["git", "annex", "whereis", "f.bin"], &client);
    assert!(whereis.contains("-- cluster mycluster"), "{whereis}");
    let proxy = run(&["git", "show", "git-annex:proxy.log"], &client);
    for (i, u) in lab.node_uuids.iter().enumerate() {
        assert!(proxy.contains(&format!("{u}:N{}", i + 1)), "{proxy}");
    }
    run(&["git", "annex", "drop", "--force", "f.bin"], &client);
    run(&["git", "annex", "get", "--from", "GC", "f.bin"], &client);
    run(
        &["git", "annex", "drop", "--from", "GC", "--force", "f.bin"],
        &client,
    );
    for n in &lab.nodes {
        let object = n
            .join(".git/annex/objects")
            .join(key.hash_dir_mixed())
            .join(key.file());
        assert!(
            !object.join(key.file()).exists(),
            "removed from {}",
            n.display()
        );
    }
    daemon.terminate(TIMEOUT);
}

/// PUT targets follow the nodes' preferred content, set with stock `git annex
/// wanted` in G (annex-spec §4.6 step 1): N1 wants `*.txt`, N2 wants big
/// files, N3 wants neither. A file no node wants goes to every node lacking it.
#[test]
fn put_targets_follow_node_preferred_content() {
    let lab = Lab::new_with(|lab| {
        let exprs = [
            "include=*.txt",
            "largerthan=100kb",
            "exclude=*.txt and exclude=*.bin and exclude=*.dat",
        ];
        for (u, expr) in lab.node_uuids.iter().zip(exprs) {
            lab.run(&lab.g, "git", &["annex", "wanted", u, expr]).ok();
        }
    });
    lab.run(&lab.g, "git", &["annex", "wanted", "N1"])
        .ok()
        .says("include=*.txt");
    std::fs::write(lab.c.join("tiny.dat"), "tiny\n").expect("cluster test step");
    std::fs::write(lab.c.join("small.dat"), "small\n").expect("cluster test step");
    lab.annex_c(&["add", "tiny.dat", "small.dat"]).ok();
    lab.run(&lab.c, "git", &["commit", "-q", "-m", "dat"]).ok();
    let hello = lab.key_of("hello.txt");
    let meg = lab.key_of("onemeg.bin");
    let tiny = lab.key_of("tiny.dat");
    let small = lab.key_of("small.dat");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step");

    let copy = lab.annex_c(&["copy", "--to", "G-mycluster", "hello.txt"]);
    copy.ok();
    assert_eq!(
        plus_uuids(&copy.server_lines("SUCCESS-PLUS")[0]),
        vec![lab.node_uuids[0].clone()],
        "{}",
        copy.report()
    );
    let copy = lab.annex_c(&["copy", "--to", "G-mycluster", "onemeg.bin"]);
    copy.ok();
    assert_eq!(
        plus_uuids(&copy.server_lines("SUCCESS-PLUS")[0]),
        vec![lab.node_uuids[1].clone()],
        "{}",
        copy.report()
    );
    assert!(lab.node_has(0, &hello, Some(b"hello\n")));
    assert!(!lab.node_has(1, &hello, None));
    assert!(!lab.node_has(2, &hello, None));
    assert!(!lab.node_has(0, &meg, None));
    assert!(lab.node_has(1, &meg, Some(&meg_bytes)));
    assert!(!lab.node_has(2, &meg, None));

    // Nobody wants tiny.dat: every node gets it.
    lab.annex_c(&["copy", "--to", "G-mycluster", "tiny.dat"])
        .ok();
    for i in 0..3 {
        assert!(
            lab.node_has(i, &tiny, Some(b"tiny\n")),
            "N{} lacks tiny",
            i + 1
        );
    }
    // Nobody wants small.dat and N3 has it already: N1 and N2 get it.
    // N3 gets it behind C's back (`--fast`: C trusts its log and sends PUT).
    std::fs::write(lab.nodes[2].join("small.dat"), "small\n").expect("cluster test step");
    lab.run(&lab.nodes[2], "git", &["annex", "add", "small.dat"])
        .ok();
    assert!(lab.node_has(2, &small, None));
    let copy = lab.annex_c(&["copy", "--fast", "--to", "G-mycluster", "small.dat"]);
    copy.ok();
    assert_eq!(
        plus_uuids(&copy.server_lines("SUCCESS-PLUS")[0]),
        sorted(lab.node_uuids.clone()),
        "{}",
        copy.report()
    );
    assert!(lab.node_has(0, &small, Some(b"small\n")));
    assert!(lab.node_has(1, &small, Some(b"small\n")));
    assert!(lab.node_has(2, &small, Some(b"small\n")));
    lab.fsck_nodes(&tiny);
    lab.fsck_nodes(&small);
}

/// Every kind of node reached on its own through the gateway (`G-<node>`, git-annex's
/// single-node proxy): N4 a git-annex repository behind the real git-annex-shell,
/// M an annexmesh peer, D a directory special remote, E an external one. Stock
/// git-annex copies to each, drops its own copy with the node's lock where a
/// node can lock, gets back and drops from it; the gateway's own location log
/// follows (git-annex's gateway records what passes through it).
#[test]
fn stock_client_through_single_nodes_of_every_kind() {
    let real_shell = support::git_annex_bin_dir().join("git-annex-shell");
    let mut daemon = None;
    let lab = Lab::new_with(|lab| {
        add_shell_node(lab, "N4", "../N4", &real_shell);
        daemon = Some(add_mesh_node(lab, "M"));
        add_special_nodes(lab);
    });
    lab.annex_c(&["info", "G"])
        .ok()
        .says("G-N4")
        .says("G-M")
        .says("G-D")
        .says("G-E");
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step");
    let k = protocol::Key::parse(&meg).expect("key");
    let lower = k.hash_dir_lower();
    let file = k.file();
    let held = |name: &str| -> Option<Vec<u8>> {
        let path = match name {
            "N4" => {
                let r = lab.run(&lab.nodes[3], "git", &["annex", "contentlocation", &meg]);
                if !r.status.success() {
                    return None;
                }
                lab.nodes[3].join(r.stdout.trim())
            }
            "M" => lab.nodes[4]
                .join("annex/objects")
                .join(&lower)
                .join(&file)
                .join(&file),
            "D" => lab
                .root
                .join("D-store")
                .join(&lower)
                .join(&file)
                .join(&file),
            _ => lab.root.join("E-store").join(&lower).join(&file),
        };
        std::fs::read(path).ok()
    };
    let gateway_knows = |uuid: &str| {
        let r = lab.run(&lab.g, "git", &["annex", "whereis", "--key", &meg]);
        r.stdout.contains(uuid)
    };
    for (name, u, lockable) in [
        ("N4", 3, true),
        ("M", 4, true),
        ("D", 5, false),
        ("E", 6, false),
    ] {
        let remote = format!("G-{name}");
        let uuid = lab.node_uuids[u].clone();
        lab.annex_c(&["copy", "--to", &remote, "onemeg.bin"])
            .ok()
            .wire_has(&format!("S->C | AUTH-SUCCESS {uuid}"));
        assert_eq!(held(name).as_deref(), Some(&meg_bytes[..]), "{name}");
        assert!(gateway_knows(&uuid), "G did not record {name}");
        if lockable {
            // The only other copy is on the node: the drop locks it there.
            lab.annex_c(&["drop", "onemeg.bin"])
                .ok()
                .wire_has(&format!("C->S | LOCKCONTENT {meg}"))
                .wire_has("C->S | UNLOCKCONTENT");
        } else {
            lab.annex_c(&["drop", "--force", "onemeg.bin"]).ok();
        }
        lab.annex_c(&["get", "--from", &remote, "onemeg.bin"])
            .ok()
            .wire_has("S->C | DATA 1048576");
        assert_eq!(
            std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step"),
            meg_bytes
        );
        lab.annex_c(&["drop", "--from", &remote, "onemeg.bin"]).ok();
        assert_eq!(held(name), None, "{name} kept it");
        assert!(!gateway_knows(&uuid), "G still lists {name}");
    }
    // A special remote cannot lock: LOCKCONTENT through G-D is FAILURE.
    lab.annex_c(&["copy", "--to", "G-D", "onemeg.bin"]).ok();
    let (_, out, _) = lab.p2pstdio(
        &lab.node_uuids[5],
        format!("VERSION 2\nLOCKCONTENT {meg}\n").as_bytes(),
    );
    assert!(out.ends_with("FAILURE\n"), "{out}");
    if let Some(mut d) = daemon {
        d.terminate(TIMEOUT);
    }
}

/// New git-annex repositories `names` (beside G) as cluster nodes of `gateway`.
fn add_local_nodes(lab: &mut Lab, gateway: &Path, names: &[&str]) {
    for name in names {
        lab.run(&lab.root, "git", &["init", "-q", name]).ok();
        let dir = lab.root.join(name);
        lab.run(&dir, "git", &["annex", "init", name]).ok();
        lab.run(
            gateway,
            "git",
            &["remote", "add", name, &format!("../{name}")],
        )
        .ok();
        lab.run(
            gateway,
            "git",
            &[
                "config",
                &format!("remote.{name}.annex-cluster-node"),
                CLUSTER,
            ],
        )
        .ok();
        lab.node_uuids.push(lab.config(&dir, "annex.uuid"));
        lab.nodes.push(dir);
    }
}

/// A second annexmesh gateway H of the same cluster, set up as git-annex's
/// clusters tip does (transcript cluster-14): H fetches G and runs
/// `extendcluster G mycluster`, adds nodes N4 and N5 and `updatecluster`; G
/// adds H, fetches it, `extendcluster H mycluster`. Returns the lab (C cloned
/// from G, after all that) and H's path.
fn two_gateways() -> (Lab, PathBuf) {
    let mut lab = Lab::gateway();
    lab.annexmesh(&lab.g, &["updatecluster"]).ok();
    let g = lab.g.clone();
    let h = lab.root.join("H");
    lab.run(&lab.root, "git", &["init", "-q", "H"]).ok();
    lab.run(&h, "git", &["annex", "init", "H"]).ok();
    lab.run(&h, "git", &["commit", "-q", "--allow-empty", "-m", "init"])
        .ok();
    let g_url = format!("localhost:{}", g.display());
    lab.run(&h, "git", &["remote", "add", "G", &g_url]).ok();
    lab.run(&h, "git", &["fetch", "-q", "G"]).ok();
    lab.annexmesh(&h, &["extendcluster", "G", CLUSTER])
        .ok()
        .says("extendcluster mycluster ok")
        .says("No cluster node changes for cluster: mycluster")
        .says("Started proxying for G-N1")
        .says("Started proxying for mycluster");
    add_local_nodes(&mut lab, &h, &["N4", "N5"]);
    lab.annexmesh(&h, &["updatecluster"])
        .ok()
        .says("Added node N4 to cluster: mycluster")
        .says("Started proxying for N5");
    lab.run(&h, "git", &["annex", "wanted", ".", "nothing"])
        .ok();
    let h_url = format!("localhost:{}", h.display());
    lab.run(&g, "git", &["remote", "add", "H", &h_url]).ok();
    lab.run(&g, "git", &["fetch", "-q", "H"]).ok();
    lab.annexmesh(&g, &["extendcluster", "H", CLUSTER])
        .ok()
        .says("extendcluster mycluster ok")
        .says("Started proxying for H-N4")
        .says("Started proxying for H-N5");
    lab.annexmesh(&g, &["updatecluster"])
        .ok()
        .says("No cluster node changes for cluster: mycluster")
        .says("No proxy changes to record.");
    assert_eq!(
        lab.config(&g, "remote.H.annex-cluster-gateway"),
        lab.cluster_uuid
    );
    assert_eq!(
        lab.config(&h, &format!("annex.cluster.{CLUSTER}")),
        lab.cluster_uuid
    );
    (lab.with_client(), h)
}

/// Two gateways: stock git-annex sees H's nodes through G (`G-H-N4`, as
/// git-annex names them), and uses a far node through both hops.
#[test]
fn stock_client_through_two_gateways_to_a_far_node() {
    let (lab, _h) = two_gateways();
    lab.annex_c(&["info", "G"])
        .ok()
        .says("gateway to cluster: G-mycluster")
        .says("G-N1")
        .says("G-H-N4")
        .says("G-H-N5");
    let hello = lab.key_of("hello.txt");
    lab.annex_c(&["copy", "--to", "G-H-N4", "hello.txt"])
        .ok()
        .wire_has(&format!("S->C | AUTH-SUCCESS {}", lab.node_uuids[3]));
    assert!(lab.node_has(3, &hello, Some(b"hello\n")));
    assert!(!lab.node_has(4, &hello, None));
    lab.annex_c(&["drop", "hello.txt"])
        .ok()
        .wire_has("C->S | LOCKCONTENT");
    lab.annex_c(&["get", "--from", "G-H-N4", "hello.txt"])
        .ok()
        .wire_has("S->C | DATA 6");
    lab.annex_c(&["drop", "--from", "G-H-N4", "hello.txt"]).ok();
    assert!(!lab.node_has(3, &hello, None));
}

/// Two gateways (transcript cluster-15): a PUT to `G-mycluster` reaches G's
/// nodes and, through H (sent `BYPASS <G>`, so H does not bounce it back), H's
/// nodes; the reply lists all five. `whereis`, `get` and `drop --from` the
/// cluster cover both gateways' nodes.
#[test]
fn stock_client_copies_through_two_gateways() {
    let (lab, _h) = two_gateways();
    let hello = lab.key_of("hello.txt");
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step");
    let copy = lab.annex_c(&["copy", "--to", "G-mycluster"]);
    copy.ok().wire_has(&format!("C->S | BYPASS {}", lab.g_uuid));
    let plus = copy.server_lines("SUCCESS-PLUS");
    // The client's two sessions with G, and G's two with H.
    assert_eq!(plus.len(), 4, "{}", copy.report());
    for l in &plus {
        let mut got = plus_uuids(l);
        got.retain(|u| u != &lab.cluster_uuid);
        let want: Vec<String> = if l.contains(&lab.node_uuids[0]) {
            sorted(lab.node_uuids.clone())
        } else {
            sorted(lab.node_uuids[3..].to_vec())
        };
        assert_eq!(got, want, "{}", copy.report());
    }
    for i in 0..5 {
        assert!(lab.node_has(i, &hello, Some(b"hello\n")), "N{}", i + 1);
        assert!(lab.node_has(i, &meg, Some(&meg_bytes)), "N{}", i + 1);
    }
    lab.annex_c(&["whereis", "onemeg.bin"])
        .ok()
        .says("G-H-N4")
        .says("G-N1");
    // Both gateways committed what their sessions recorded (issue 13): a
    // clone of G sees the copies on G's nodes and on H's.
    let d = lab.second_clone("D");
    lab.annex_in(&d, &["whereis", "--key", &hello])
        .ok()
        .says("G-N1")
        .says("G-N3")
        .says("G-H-N4")
        .says("G-H-N5");
    // Only H's nodes keep it: GET goes through H.
    for n in &lab.nodes[..3] {
        lab.run(n, "git", &["annex", "dropkey", "--force", &meg])
            .ok();
    }
    lab.annex_c(&["drop", "--force", "onemeg.bin"]).ok();
    lab.annex_c(&["get", "--from", "G-mycluster", "onemeg.bin"])
        .ok()
        .wire_has("S->C | DATA 1048576");
    assert_eq!(
        std::fs::read(lab.c.join("onemeg.bin")).expect("cluster test step"),
        meg_bytes
    );
    lab.annex_c(&["drop", "--from", "G-mycluster"]).ok();
    for i in 0..5 {
        assert!(!lab.node_has(i, &hello, None), "N{} kept hello", i + 1);
        assert!(!lab.node_has(i, &meg, None), "N{} kept onemeg", i + 1);
    }
}

/// How many connections from `peer` a daemon started by [`start_daemon`] has
/// logged.
fn connects_from(daemon: &support::ProcessGuard, peer: &str) -> usize {
    daemon
        .stderr()
        .lines()
        .filter(|l| l.contains(&format!("connection established with {peer}")))
        .count()
}

/// Starts `annexmesh daemon` in `dir`; returns it and its address.
fn start_daemon(lab: &Lab, dir: &Path) -> (support::ProcessGuard, String) {
    let mut cmd = lab.command(&support::annexmesh_bin(), dir);
    cmd.args(["daemon", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("ANNEXMESH_LOG", "node::net=debug");
    let mut d = support::ProcessGuard::spawn(&mut cmd);
    let addr = d.wait_for(TIMEOUT, |out| {
        out.lines()
            .find_map(|l| l.strip_prefix("listening on "))
            .map(str::to_owned)
    });
    (d, addr)
}

/// Two gateways that reach each other over the mesh (`p2p-annex::libp2p:`
/// remotes, each granting the other's peer id): annexmesh's client uploads to
/// the cluster through G and the content lands on G's and H's nodes; a far
/// node (`/annex-uuid/<N4>` on G) is relayed to H over libp2p; get and drop
/// go through both gateways.
#[test]
fn gateways_on_the_mesh() {
    let mut lab = Lab::gateway();
    let g = lab.g.clone();
    lab.annexmesh(&g, &["updatecluster"]).ok();
    let g_peer = peer_of(lab.annexmesh(&g, &["init"]).ok());
    let h = lab.root.join("H");
    lab.run(&lab.root, "git", &["init", "-q", "H"]).ok();
    lab.run(&h, "git", &["annex", "init", "H"]).ok();
    lab.run(&h, "git", &["commit", "-q", "--allow-empty", "-m", "init"])
        .ok();
    let h_peer = peer_of(lab.annexmesh(&h, &["init"]).ok());
    let x = lab.root.join("X");
    let xs = x.to_str().expect("utf8").to_owned();
    let x_peer = peer_of(lab.annexmesh(&lab.root, &["--repo", &xs, "init"]).ok());
    for (dir, peer) in [(&g, &h_peer), (&h, &g_peer), (&g, &x_peer)] {
        lab.annexmesh(dir, &["grant", peer]).ok();
    }
    let (mut g_daemon, g_addr) = start_daemon(&lab, &g);
    let (mut h_daemon, h_addr) = start_daemon(&lab, &h);

    // H: G's logs (fetched from its path), G as a mesh remote, extendcluster.
    lab.run(&h, "git", &["remote", "add", "Gfs", "../G"]).ok();
    lab.run(&h, "git", &["fetch", "-q", "Gfs"]).ok();
    let g_url = format!("p2p-annex::libp2p:{g_addr}");
    lab.run(&h, "git", &["config", "remote.G.url", &g_url]).ok();
    lab.annexmesh(&h, &["extendcluster", "G", CLUSTER])
        .ok()
        .says("Started proxying for G-N1");
    add_local_nodes(&mut lab, &h, &["N4", "N5"]);
    lab.annexmesh(&h, &["updatecluster"]).ok();
    // G: the same the other way.
    lab.run(&g, "git", &["remote", "add", "Hfs", "../H"]).ok();
    lab.run(&g, "git", &["fetch", "-q", "Hfs"]).ok();
    let h_url = format!("p2p-annex::libp2p:{h_addr}");
    lab.run(&g, "git", &["config", "remote.H.url", &h_url]).ok();
    lab.annexmesh(&g, &["extendcluster", "H", CLUSTER])
        .ok()
        .says("Started proxying for H-N4");
    assert_eq!(
        lab.config(&g, "remote.H.annex-uuid"),
        lab.config(&h, "annex.uuid")
    );

    let target = format!("{g_addr}/annex-uuid/{}", lab.cluster_uuid);
    let file = lab.root.join("payload.bin");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 239) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let fs = file.to_str().expect("utf8");
    // Connections G made while being set up (extendcluster, in its own process).
    let setup_connects = connects_from(&h_daemon, &g_peer);
    let put = lab.annexmesh(&lab.root, &["--repo", &xs, "put", fs, "--to", &target]);
    put.ok();
    let key = put.stdout.trim().to_owned();
    let k = protocol::Key::parse(&key).expect("key");
    let object = |n: &Path| {
        n.join(".git/annex/objects")
            .join(k.hash_dir_mixed())
            .join(k.file())
            .join(k.file())
    };
    for n in &lab.nodes {
        assert_eq!(
            std::fs::read(object(n)).ok().as_deref(),
            Some(&data[..]),
            "{} lacks it",
            n.display()
        );
    }
    // Only H's nodes keep it: the download comes through H.
    for n in &lab.nodes[..3] {
        lab.run(n, "git", &["annex", "dropkey", "--force", &key])
            .ok();
    }
    let back = lab.root.join("back.bin");
    let bs = back.to_str().expect("utf8");
    lab.annexmesh(
        &lab.root,
        &["--repo", &xs, "get", &key, "--from", &target, "-o", bs],
    )
    .ok();
    assert_eq!(std::fs::read(&back).expect("got"), data);
    lab.annexmesh(&lab.root, &["--repo", &xs, "drop", &key, "--from", &target])
        .ok();
    for n in &lab.nodes {
        assert!(!object(n).exists(), "{} kept it", n.display());
    }
    // A far node by its uuid on G: relayed to H over libp2p, then to N4.
    let far = format!("{g_addr}/annex-uuid/{}", lab.node_uuids[3]);
    lab.annexmesh(&lab.root, &["--repo", &xs, "put", fs, "--to", &far])
        .ok();
    assert_eq!(std::fs::read(object(&lab.nodes[3])).expect("on N4"), data);
    assert!(!object(&lab.nodes[4]).exists());
    // Stock git-annex over ssh: each copy is an annex-shell process on G's
    // host, which reaches H through G's daemon (its relay socket), not over
    // a swarm and connection of its own.
    let lab = lab.with_client();
    lab.annex_c(&["copy", "--to", &format!("G-{CLUSTER}")]).ok();
    for file in ["hello.txt", "onemeg.bin"] {
        let key = lab.key_of(file);
        assert!(
            lab.node_has(3, &key, None),
            "{file} did not reach H's node N4"
        );
    }
    // Every session G served, its daemon's and annex-shell's, reached H over
    // G's daemon's one connection (issue 9, item 4): H saw G connect once,
    // not once per session.
    assert_eq!(
        connects_from(&h_daemon, &g_peer) - setup_connects,
        1,
        "H's log:\n{}",
        h_daemon.stderr()
    );
    g_daemon.terminate(TIMEOUT);
    h_daemon.terminate(TIMEOUT);
}

/// Balanced preferred content (annex-spec §6), the way clusters are meant to
/// use it: the nodes are in group `nodes`, `groupwanted nodes balanced=nodes`
/// and each node `wanted groupwanted`. Each file goes to exactly the one node
/// stock git-annex (`find --want-get-by`, run in C before the copy) says
/// wants it.
#[test]
fn put_targets_follow_balanced_preferred_content() {
    let lab = Lab::new_with(|lab| {
        lab.run(
            &lab.g,
            "git",
            &["annex", "groupwanted", "nodes", "balanced=nodes"],
        )
        .ok();
        for i in 1..=3 {
            let node = format!("N{i}");
            lab.run(&lab.g, "git", &["annex", "group", &node, "nodes"])
                .ok();
            lab.run(&lab.g, "git", &["annex", "wanted", &node, "groupwanted"])
                .ok();
        }
    });
    let files: Vec<String> = (0..8).map(|i| format!("b{i}.dat")).collect();
    for f in &files {
        std::fs::write(lab.c.join(f), format!("balanced {f}\n")).expect("cluster test step");
    }
    let mut args = vec!["add"];
    args.extend(files.iter().map(String::as_str));
    lab.annex_c(&args).ok();
    lab.run(&lab.c, "git", &["commit", "-q", "-m", "balanced"])
        .ok();
    let wanted_by: Vec<Vec<String>> = (1..=3)
        .map(|i| {
            let by = format!("--want-get-by=G-N{i}");
            let r = lab.annex_c(&["find", &by, "--format=${file}\n"]);
            r.ok();
            r.stdout.lines().map(str::to_owned).collect()
        })
        .collect();
    for f in &files {
        let wanting: Vec<usize> = (0..3).filter(|&i| wanted_by[i].contains(f)).collect();
        assert_eq!(
            wanting.len(),
            1,
            "git-annex: exactly one node wants {f}: {wanted_by:?}"
        );
        lab.annex_c(&["copy", "--to", "G-mycluster", f]).ok();
        let key = lab.key_of(f);
        for i in 0..3 {
            assert_eq!(
                lab.node_has(i, &key, None),
                wanting.contains(&i),
                "{f} on N{}; git-annex says {wanted_by:?}",
                i + 1
            );
        }
    }
}

/// The gateway's spool directory, made read-only: a PUT or GET that tried to
/// spool content there would fail. Check it with [`assert_spool_empty`].
fn lock_spool_dir(lab: &Lab) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = lab.g.join(".git/annex/tmp/annexmesh-gateway");
    std::fs::create_dir_all(&dir).expect("spool dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    dir
}

fn assert_spool_empty(dir: &Path) {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .expect("spool dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(entries.is_empty(), "spooled: {entries:?}");
}

/// A wrapper around the real git-annex-shell for node `name`: it logs each
/// start as a line `name` in `<root>/spawned.log`, then runs the real shell.
/// With `cut_input`, the shell's input is cut after that many bytes (it then
/// sees EOF and exits); with `cut_output`, its output is (the wrapper then
/// exits, closing the connection, and the shell dies writing). `dd bs=1`
/// passes each byte on at once, which `head -c` (buffered output) does not.
fn shell_wrapper(
    lab: &Lab,
    name: &str,
    cut_input: Option<u64>,
    cut_output: Option<u64>,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let real = support::git_annex_bin_dir().join("git-annex-shell");
    let log = lab.root.join("spawned.log");
    let path = lab.root.join(format!("shell-{name}"));
    let mut script = format!("#!/bin/sh\necho '{name}' >> '{}'\n", log.display());
    let real = format!("'{}' \"$@\"", real.display());
    let run = match cut_input {
        Some(n) => format!("dd bs=1 count={n} status=none | {real}"),
        None => real,
    };
    match cut_output {
        // The shell writes into a fifo that the wrapper itself (exec'd as dd)
        // reads: when dd stops, nothing else holds the connection open.
        Some(n) => script.push_str(&format!(
            "fifo='{}.fifo'\nrm -f \"$fifo\"\nmkfifo \"$fifo\"\nexec 3<&0\n\
             {run} <&3 >\"$fifo\" &\nexec dd bs=1 count={n} status=none <\"$fifo\"\n",
            path.display()
        )),
        None => script.push_str(&format!("{run}\n")),
    }
    std::fs::write(&path, script).expect("wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The wrapped nodes started since the log was last cleared, and clears it.
fn take_spawned(lab: &Lab) -> Vec<String> {
    let log = lab.root.join("spawned.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::write(&log, "").expect("clear spawned.log");
    let mut v: Vec<String> = text.lines().map(str::to_owned).collect();
    v.sort();
    v.dedup();
    v
}

/// `PUT` of `bytes` as `key` to the cluster in one hand-driven session.
fn hand_put(lab: &Lab, key: &str, bytes: &[u8]) -> String {
    let mut input = format!("VERSION 4\nPUT x {key}\nDATA {}\n", bytes.len()).into_bytes();
    input.extend_from_slice(bytes);
    input.extend_from_slice(b"VALID\n");
    let (status, out, err) = lab.p2pstdio(&lab.cluster_uuid, &input);
    assert!(status.success(), "{out}\n{err}");
    out
}

/// `GET 0` of `key` from the cluster in one hand-driven session: the bytes
/// after `DATA n` and the line that follows them.
fn hand_get(lab: &Lab, key: &str) -> (Vec<u8>, String) {
    let mut cmd = lab.command(&lab.shim, &lab.root);
    cmd.args([
        "p2pstdio",
        lab.g.to_str().expect("utf-8"),
        "cccccccc-cccc-4ccc-8ccc-cccccccccccc",
        "--uuid",
        &lab.cluster_uuid,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn git-annex-shell");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("VERSION 4\nGET 0 x {key}\nSUCCESS\n").as_bytes())
        .expect("write");
    drop(stdin);
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{}", String::from_utf8_lossy(&out));
    split_data(&out)
}

/// Splits a gateway's output `AUTH-SUCCESS…\nVERSION 4\nDATA n\n<n bytes><line>\n`.
fn split_data(out: &[u8]) -> (Vec<u8>, String) {
    let mut rest = out;
    let mut header = String::new();
    for _ in 0..3 {
        let i = rest.iter().position(|&b| b == b'\n').expect("a line");
        header = String::from_utf8_lossy(&rest[..i]).into_owned();
        rest = &rest[i + 1..];
    }
    let n: usize = header
        .strip_prefix("DATA ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected DATA, got {header:?}"));
    assert!(rest.len() >= n, "short DATA: {} of {n}", rest.len());
    let (data, tail) = rest.split_at(n);
    (data.to_vec(), String::from_utf8_lossy(tail).into_owned())
}

/// Content of `len` bytes, and its SHA256E key.
fn content(lab: &Lab, name: &str, len: u32) -> (String, Vec<u8>) {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    std::fs::write(lab.c.join(name), &bytes).expect("write");
    lab.annex_c(&["add", name]).ok();
    (lab.key_of(name), bytes)
}

/// GET reads from the cheapest node holding the key (`remote.<r>.annex-cost`,
/// else git-annex's defaults): which node served is seen from which node's
/// git-annex-shell was started at all.
#[test]
fn get_picks_the_cheapest_node() {
    let lab = Lab::new_with(|lab| {
        let w4 = shell_wrapper(lab, "N4", None, None);
        let w5 = shell_wrapper(lab, "N5", None, None);
        add_shell_node(lab, "N4", "../N4", &w4);
        add_shell_node(lab, "N5", "../N5", &w5);
    });
    let (key, bytes) = content(&lab, "cost.bin", 200_000);
    let out = hand_put(&lab, &key, &bytes);
    assert!(out.contains("SUCCESS-PLUS"), "{out}");
    take_spawned(&lab);
    for i in 0..5 {
        assert!(lab.node_has(i, &key, Some(&bytes)));
    }
    let set_cost = |remote: &str, cost: &str| {
        lab.run(
            &lab.g,
            "git",
            &["config", &format!("remote.{remote}.annex-cost"), cost],
        )
        .ok();
    };
    // N4 cheaper than the local nodes (100): N4 serves, N5 is never started.
    set_cost("N4", "50");
    set_cost("N5", "300");
    let (got, tail) = hand_get(&lab, &key);
    assert_eq!(got, bytes);
    assert_eq!(tail, "VALID\n");
    assert_eq!(take_spawned(&lab), ["N4"]);
    // Local nodes cheapest: no shell node is started.
    set_cost("N4", "400");
    let (got, _) = hand_get(&lab, &key);
    assert_eq!(got, bytes);
    assert_eq!(take_spawned(&lab), Vec::<String>::new());
    // Only the shell nodes hold it: the cheaper one, N5, serves.
    for n in &lab.nodes[..3] {
        lab.run(n, "git", &["annex", "dropkey", "--force", &key])
            .ok();
    }
    let (got, tail) = hand_get(&lab, &key);
    assert_eq!(got, bytes);
    assert_eq!(tail, "VALID\n");
    assert_eq!(take_spawned(&lab), ["N5"]);
}

/// A remote node that dies in the middle of a GET (its git-annex-shell's
/// output is cut after 300000 bytes): the gateway continues with `GET pos` on
/// the next node, and stock git-annex gets correct content.
#[test]
fn get_fails_over_mid_transfer_from_a_remote_node() {
    let lab = Lab::new_with(|lab| {
        let cut = shell_wrapper(lab, "N4", None, Some(300_000));
        add_shell_node(lab, "N4", "../N4", &cut);
        lab.run(&lab.g, "git", &["config", "remote.N4.annex-cost", "50"])
            .ok();
    });
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("read");
    let copy = lab.annex_c(&["copy", "--to", "G-mycluster", "onemeg.bin"]);
    copy.ok();
    assert!(lab.node_has(3, &meg, Some(&meg_bytes)));
    take_spawned(&lab);
    // Hand-driven: the whole content and VALID, though N4 served first.
    let (got, tail) = hand_get(&lab, &meg);
    assert_eq!(got.len(), meg_bytes.len());
    assert!(got == meg_bytes, "wrong bytes after failover");
    assert_eq!(tail, "VALID\n");
    assert_eq!(take_spawned(&lab), ["N4"]);
    // Stock git-annex, likewise; and with only N4 and one local node left.
    for n in &lab.nodes[..2] {
        lab.run(n, "git", &["annex", "dropkey", "--force", &meg])
            .ok();
    }
    lab.annex_c(&["drop", "--force", "onemeg.bin"]).ok();
    lab.annex_c(&["get", "--from", "G-mycluster", "onemeg.bin"])
        .ok()
        .wire_has("S->C | DATA 1048576");
    assert_eq!(
        std::fs::read(lab.c.join("onemeg.bin")).expect("read"),
        meg_bytes
    );
    assert_eq!(take_spawned(&lab), ["N4"]);
    lab.annex_c(&["fsck", "onemeg.bin"]).ok();
}

/// A local node whose content file shrinks while the gateway reads it: the
/// rest comes from another node, from the same position.
#[test]
fn get_fails_over_mid_transfer_from_a_local_node() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    // Larger than the gateway's 1 MiB read buffer, so the shrink happens
    // between two reads.
    let (key, bytes) = content(&lab, "three.bin", 3 << 20);
    let out = hand_put(&lab, &key, &bytes);
    assert!(out.contains("SUCCESS-PLUS"), "{out}");
    lab.run(&lab.g, "git", &["config", "remote.N1.annex-cost", "10"])
        .ok();
    let r = lab.run(&lab.nodes[0], "git", &["annex", "contentlocation", &key]);
    r.ok();
    let object = lab.nodes[0].join(r.stdout.trim());

    let mut cmd = lab.command(&lab.shim, &lab.root);
    cmd.args([
        "p2pstdio",
        lab.g.to_str().expect("utf-8"),
        "cccccccc-cccc-4ccc-8ccc-cccccccccccc",
        "--uuid",
        &lab.cluster_uuid,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn git-annex-shell");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("VERSION 4\nGET 0 x {key}\nSUCCESS\n").as_bytes())
        .expect("write");
    drop(stdin);
    let mut stdout = child.stdout.take().expect("stdout");
    // The gateway blocks on the pipe: read the start of the DATA…
    let mut out = vec![0u8; 200_000];
    stdout.read_exact(&mut out).expect("read");
    // …then N1's copy (the cheapest) shrinks under it.
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&object)
        .and_then(|f| f.set_len(1000))
        .expect("truncate");
    stdout.read_to_end(&mut out).expect("read");
    let status = child.wait().expect("wait");
    assert!(status.success());
    let (got, tail) = split_data(&out);
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "wrong bytes after failover");
    assert_eq!(tail, "VALID\n");
    assert_eq!(std::fs::metadata(&object).expect("stat").len(), 1000);
}

/// PUT to a node behind git-annex-shell streams from that node's own offset:
/// the only node lacking the content has a 10-byte partial, so `PUT-FROM 10`.
#[test]
fn put_resumes_from_a_remote_nodes_offset() {
    let real_shell = support::git_annex_bin_dir().join("git-annex-shell");
    let lab = Lab::new_with(|lab| add_shell_node(lab, "N4", "../N4", &real_shell));
    let spool = lock_spool_dir(&lab);
    let key = "SHA256E-s36--7a1fd60c4df0d2a0f2d08aeab3d38b248dd55ee9e3993e8c5bbbe9f07a9a27a0.txt";
    let body = "new via hand-driven gateway session\n";
    // The local nodes have it already.
    for n in &lab.nodes[..3] {
        let f = n.join("new.txt");
        std::fs::write(&f, body).expect("write");
        lab.run(n, "git", &["annex", "add", "new.txt"]).ok();
    }
    let tmp = lab.nodes[3].join(".git/annex/tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    std::fs::write(tmp.join(key), &body.as_bytes()[..10]).expect("partial");
    let input = format!("VERSION 4\nPUT x {key}\nDATA 26\n{}VALID\n", &body[10..]);
    let (status, out, err) = lab.p2pstdio(&lab.cluster_uuid, input.as_bytes());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.get(2).copied(), Some("PUT-FROM 10"), "{out}\n{err}");
    assert!(lines[3].starts_with("SUCCESS-PLUS "), "{out}");
    assert_eq!(plus_uuids(lines[3]), sorted(lab.node_uuids.clone()));
    assert!(status.success(), "{err}");
    assert!(lab.node_has(3, key, Some(body.as_bytes())));
    lab.run(&lab.nodes[3], "git", &["annex", "fsck", "--key", key])
        .ok()
        .says("ok");
    assert_spool_empty(&spool);
}

/// A remote node that dies in the middle of a PUT (its git-annex-shell's
/// input is cut after 200000 bytes) is dropped from the operation: the others
/// store the content and `SUCCESS-PLUS` lists exactly them.
#[test]
fn remote_node_dying_mid_put_is_left_out() {
    let real_shell = support::git_annex_bin_dir().join("git-annex-shell");
    let lab = Lab::new_with(|lab| {
        let cut = shell_wrapper(lab, "N4", Some(200_000), None);
        add_shell_node(lab, "N4", "../N4", &cut);
        add_shell_node(lab, "N5", "../N5", &real_shell);
    });
    let spool = lock_spool_dir(&lab);
    let meg = lab.key_of("onemeg.bin");
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("read");
    let out = hand_put(&lab, &meg, &meg_bytes);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.get(2).copied(), Some("PUT-FROM 0"), "{out}");
    assert!(lines[3].starts_with("SUCCESS-PLUS "), "{out}");
    let mut others = lab.node_uuids.clone();
    others.remove(3);
    assert_eq!(plus_uuids(lines[3]), sorted(others));
    for i in [0, 1, 2, 4] {
        assert!(lab.node_has(i, &meg, Some(&meg_bytes)), "node {i}");
    }
    assert!(!lab.node_has(3, &meg, None));
    assert_eq!(take_spawned(&lab), ["N4"]);
    assert_spool_empty(&spool);
}
