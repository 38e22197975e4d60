//! A mesh of real `annexmesh daemon` processes on loopback, for the tests
//! of `mesh.rs` and `fsck.rs`: repositories, daemons, invitations, a
//! cluster gateway with mesh nodes, uploads and where their objects are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ProcessGuard, annexmesh_bin};

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Mesh {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Mesh {
    pub fn new() -> Mesh {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        Mesh { _tmp: tmp, root }
    }

    pub fn repo(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn run(&self, name: &str, args: &[&str]) -> std::process::Output {
        Command::new(annexmesh_bin())
            .arg("--repo")
            .arg(self.repo(name))
            .args(args)
            .current_dir(&self.root)
            .env_remove("ANNEXMESH_LOG")
            .output()
            .expect("run annexmesh")
    }

    pub fn ok(&self, name: &str, args: &[&str]) -> String {
        super::succeeded(
            self.run(name, args),
            &format!("annexmesh --repo {name} {args:?}"),
        )
    }

    pub fn init(&self, name: &str) -> String {
        let out = self.ok(name, &["init", "--description", name]);
        out.rsplit("peer ")
            .next()
            .and_then(|s| s.strip_suffix(")\n"))
            .expect("peer id in init output")
            .to_owned()
    }

    /// Starts the daemon; returns it and its address.
    pub fn daemon(&self, name: &str) -> (ProcessGuard, String) {
        self.daemon_with(name, &[])
    }

    /// [`Mesh::daemon`] with more daemon arguments.
    pub fn daemon_with(&self, name: &str, extra: &[&str]) -> (ProcessGuard, String) {
        let mut cmd = Command::new(annexmesh_bin());
        cmd.arg("--repo")
            .arg(self.repo(name))
            .args(["daemon", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .env("ANNEXMESH_LOG", "annexmesh=info,node=info");
        let mut d = ProcessGuard::spawn(&mut cmd);
        let addr = d.wait_for(TIMEOUT, |out| {
            out.lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .map(str::to_owned)
        });
        (d, addr)
    }

    pub fn invite(&self, name: &str) -> String {
        self.ok(name, &["invite"]).trim().to_owned()
    }

    /// Waits (bounded) until `git show git-annex:<file>` in `name` has `text`.
    pub fn wait_for_line(&self, name: &str, file: &str, text: &str) {
        super::wait_for_branch_line(&self.repo(name), file, text, TIMEOUT);
    }

    /// Runs a command that names members (`cluster add-node`,
    /// `extendcluster`) until it succeeds: it reads the journal, which
    /// follows the daemon's view (what `peers` shows) by its persist
    /// interval.
    pub fn ok_once_known(&self, name: &str, args: &[&str]) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.run(name, args);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{name} {args:?} kept failing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `peers` in `name` prints `text`.
    pub fn wait_for_peer(&self, name: &str, text: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let list = self.ok(name, &["peers"]);
            if list.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s peers never showed {text:?}: {list}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `peers --json` in `name` says `peer` is connected.
    pub fn wait_connected(&self, name: &str, peer: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let json = self.ok(name, &["peers", "--json"]);
            let connected = json
                .split("},{")
                .any(|m| m.contains(peer) && m.contains("\"state\":\"connected\""));
            if connected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never connected to {peer}: {json}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn object_path(repo: &Path, key: &str) -> PathBuf {
    let key = protocol::Key::parse(key).expect("key");
    repo.join("annex/objects")
        .join(key.hash_dir_lower())
        .join(key.file())
        .join(key.file())
}

pub fn git_config(repo: &Path, key: &str) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["config", key])
        .output()
        .expect("git config");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A gateway G and three mesh nodes, all daemons (`extra` daemon arguments)
/// joined by invitation, the nodes in G's cluster `c` with `policy`
/// (`replication c …` arguments). Returns the mesh, the daemons by name and
/// the cluster's libp2p address on G.
pub fn repair_cluster(
    extra: &[&str],
    policy: &[&str],
) -> (
    Mesh,
    std::collections::BTreeMap<String, ProcessGuard>,
    String,
) {
    cluster_of(&["M1", "M2", "M3"], extra, policy)
}

/// [`repair_cluster`] with the mesh nodes `nodes`.
pub fn cluster_of(
    nodes: &[&str],
    extra: &[&str],
    policy: &[&str],
) -> (
    Mesh,
    std::collections::BTreeMap<String, ProcessGuard>,
    String,
) {
    let m = Mesh::new();
    let mut daemons = std::collections::BTreeMap::new();
    m.init("G");
    for name in nodes {
        m.init(name);
    }
    let (dg, addr_g) = m.daemon_with("G", extra);
    daemons.insert("G".to_owned(), dg);
    for &name in nodes {
        daemons.insert(name.to_owned(), m.daemon_with(name, extra).0);
        m.ok(name, &["join", &m.invite("G")]);
    }
    m.ok("G", &["initcluster", "c"]);
    for name in nodes {
        m.wait_for_peer("G", &format!("-- {name} ["));
        m.ok_once_known("G", &["cluster", "add-node", name, name]);
    }
    m.ok("G", &["updatecluster"]);
    let mut args = vec!["replication", "c"];
    args.extend_from_slice(policy);
    m.ok("G", &args);
    let cluster = git_config(&m.repo("G"), "annex.cluster.c");
    (m, daemons, format!("{addr_g}/annex-uuid/{cluster}"))
}

/// Uploads `n` files of 20–60 KiB to `target` (from M1's repository, as a
/// client); returns their keys.
pub fn upload(m: &Mesh, target: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let file = m.root.join(format!("f{i}.bin"));
            let data: Vec<u8> = (0..20_000 + 4_000 * i as u32)
                .map(|b| (b.wrapping_mul(31).wrapping_add(i as u32) % 251) as u8)
                .collect();
            std::fs::write(&file, data).expect("write");
            let key = m.ok("M1", &["put", file.to_str().expect("utf8"), "--to", target]);
            key.trim().to_owned()
        })
        .collect()
}

/// On which of `nodes` each key's object is, by disk.
pub fn copies(m: &Mesh, keys: &[String], nodes: &[&str]) -> Vec<Vec<String>> {
    keys.iter()
        .map(|k| {
            nodes
                .iter()
                .filter(|n| object_path(&m.repo(n), k).exists())
                .map(|n| (*n).to_owned())
                .collect()
        })
        .collect()
}

/// Waits (bounded) until every key is on exactly `want` of `nodes`.
pub fn wait_copies(
    m: &Mesh,
    g: &ProcessGuard,
    keys: &[String],
    nodes: &[&str],
    want: usize,
    what: &str,
) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = copies(m, keys, nodes);
        if now.iter().all(|c| c.len() == want) {
            return;
        }
        if Instant::now() >= deadline {
            let log = g.stderr();
            panic!(
                "{what}: not every key on {want} of {nodes:?}: {now:?}\nstatus: {}\nG's log: {log}",
                m.ok("G", &["status"])
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
