//! Load (issue 11): many clients against one gateway daemon with three mesh
//! node daemons, each client with its own identity and connection, 30 % of
//! transfers killed mid-`DATA` (the stream reset, or the connection
//! dropped). Afterwards: no session or pending stream left on any daemon,
//! the gateway's file descriptors and tasks back near where they started,
//! its memory bounded; every completed transfer right, every killed `PUT`
//! invisible everywhere and resumable (its partials are taken up by a new
//! `PUT`, after which no `annex/tmp` file is left), no transfer slot left
//! locked, and a fresh client served. And a client that stops reading in
//! the middle of a `GET` relayed from a node loses its session at the
//! gateway's idle deadline, the node's session with it.
//!
//! No timing is asserted (the figures are `benches/load.rs`'s).
//!
//! Run: `cargo test -p annexmesh-cli --test load`.

mod support;

#[path = "../benches/common/load.rs"]
mod load;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use load::{End, Held, Object, Op};
use support::{ProcessGuard, annexmesh_bin};

const TIMEOUT: Duration = Duration::from_secs(60);
const NODES: [&str; 3] = ["M1", "M2", "M3"];

struct Daemon {
    guard: ProcessGuard,
    api: String,
    token: String,
}

impl Daemon {
    fn held(&self) -> Held {
        Held::sample(self.guard.pid(), &self.api, &self.token)
    }
}

struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    daemons: std::collections::BTreeMap<String, Daemon>,
    target: node::net::PeerAddress,
    clients: Vec<libp2p::identity::Keypair>,
}

impl Lab {
    fn repo(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Waits (bounded) until no daemon holds a session or a pending stream.
    fn settle(&self) {
        let deadline = Instant::now() + TIMEOUT;
        for (name, d) in &self.daemons {
            loop {
                let h = d.held();
                if h.idle() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} kept sessions: {h}\n{}",
                    tail(&d.guard.stderr())
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn run_ok(repo: &Path, args: &[&str]) -> String {
    let out = Command::new(annexmesh_bin())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("ANNEXMESH_LOG")
        .output()
        .expect("run annexmesh");
    support::succeeded(
        out,
        &format!("annexmesh --repo {} {args:?}", repo.display()),
    )
}

fn git_config(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .arg("config")
        .args(args)
        .output()
        .expect("git config");
    assert!(out.status.success(), "git config {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn daemon(repo: &Path) -> Daemon {
    let mut cmd = Command::new(annexmesh_bin());
    cmd.arg("--repo")
        .arg(repo)
        .args(["daemon", "--no-git", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--api-listen", "127.0.0.1:0"])
        .env("ANNEXMESH_LOG", "annexmesh=info,node=info");
    let mut guard = ProcessGuard::spawn(&mut cmd);
    let (addr, api) = guard.wait_for(TIMEOUT, |out| {
        let addr = out.lines().find_map(|l| l.strip_prefix("listening on "))?;
        let api = out
            .lines()
            .find_map(|l| l.strip_prefix("api listening on "))?;
        Some((addr.to_owned(), api.to_owned()))
    });
    let token = run_ok(repo, &["api", "token"]).trim().to_owned();
    let _ = addr;
    Daemon { guard, api, token }
}

fn listen_addr(d: &Daemon) -> String {
    d.guard
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("listening on "))
        .expect("an address")
        .to_owned()
}

/// G and its cluster `c` of mesh nodes M1–M3, all daemons; `clients`
/// identities granted on G; `config` set in G's git config first.
fn lab(clients: usize, config: &[(&str, &str)]) -> Lab {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    for name in std::iter::once("G").chain(NODES) {
        run_ok(&root.join(name), &["init", "--description", name]);
    }
    let g = root.join("G");
    let identities: Vec<_> = (0..clients + 1)
        .map(|_| libp2p::identity::Keypair::generate_ed25519())
        .collect();
    for k in &identities {
        run_ok(&g, &["grant", &k.public().to_peer_id().to_string()]);
    }
    for (k, v) in config {
        git_config(&g, &[k, v]);
    }
    let mut daemons = std::collections::BTreeMap::new();
    daemons.insert("G".to_owned(), daemon(&g));
    for name in NODES {
        let m = root.join(name);
        daemons.insert(name.to_owned(), daemon(&m));
        run_ok(&m, &["join", run_ok(&g, &["invite"]).trim()]);
    }
    run_ok(&g, &["initcluster", "c"]);
    for name in NODES {
        // The journal `cluster add-node` reads follows the daemon's view.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = Command::new(annexmesh_bin())
                .arg("--repo")
                .arg(&g)
                .args(["cluster", "add-node", name, name])
                .output()
                .expect("run annexmesh");
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "G never took {name}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    run_ok(&g, &["updatecluster"]);
    let cluster = git_config(&g, &["annex.cluster.c"]);
    let target = node::net::PeerAddress::parse(&format!(
        "{}/annex-uuid/{cluster}",
        listen_addr(&daemons["G"])
    ))
    .expect("the cluster's address");
    Lab {
        _tmp: tmp,
        root,
        daemons,
        target,
        clients: identities,
    }
}

fn object_path(repo: &Path, key: &protocol::Key) -> PathBuf {
    repo.join("annex/objects")
        .join(key.hash_dir_lower())
        .join(key.file())
        .join(key.file())
}

/// The files in `repo`'s `annex/tmp` (name, size).
fn spool(repo: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(repo.join("annex/tmp")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let size = e.metadata().map_or(0, |m| m.len());
            (e.file_name().to_string_lossy().into_owned(), size)
        })
        .collect()
}

/// Transfer slot files of `repo` still locked by someone.
fn locked_slots(repo: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(node::busy::dir(&repo.join("annex"))) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .is_ok_and(|f| f.try_lock().is_err())
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// 24 clients for 5 s, 30 % of transfers killed mid-`DATA`: nothing stuck,
/// nothing leaked, nothing half-visible, and everything completed is right.
#[test]
fn killed_transfers_leave_no_session_no_leak_and_no_partial_object() {
    const CLIENTS: usize = 24;
    let lab = lab(CLIENTS, &[]);
    let rt = runtime();
    let g = &lab.daemons["G"];
    let stored: Vec<Object> = (0..6)
        .map(|i| load::object(1_000 + i, 96 * 1024 + 40_000 * i as usize))
        .collect();
    let ends = rt.block_on(load::store_all(
        &lab.target,
        lab.clients[CLIENTS].clone(),
        &stored,
    ));
    assert!(ends.iter().all(|e| *e == End::Done), "{ends:?}");
    lab.settle();
    let before = g.held();

    let plan = load::Plan {
        target: lab.target.clone(),
        identities: lab.clients[..CLIENTS].to_vec(),
        duration: Duration::from_secs(5),
        kill_share: 0.3,
        sizes: (64 * 1024, 512 * 1024),
        stored: Arc::new(stored.clone()),
        seed: 11,
        max_per_client: None,
        keep: true,
    };
    let outcome = rt.block_on(load::run(plan));
    let during = g.held();
    let records = &outcome.records;
    let killed = |op| {
        records
            .iter()
            .filter(|r| r.op == op && matches!(r.end, End::Killed(_)))
            .count()
    };
    let failed: Vec<_> = records
        .iter()
        .filter(|r| matches!(r.end, End::Failed(_)))
        .collect();
    eprintln!(
        "{} transfers, {} PUTs and {} GETs killed, {} failed, {} connects; G before {before}, after the load {during}",
        records.len(),
        killed(Op::Put),
        killed(Op::Get),
        failed.len(),
        outcome.connects
    );
    assert!(
        failed.is_empty() && outcome.connect_failures.is_empty(),
        "failed: {failed:?}\nconnects: {:?}\nG: {}",
        outcome.connect_failures,
        tail(&g.guard.stderr())
    );
    assert!(killed(Op::Put) > 0 && killed(Op::Get) > 0, "{records:?}");

    // Settled: no session anywhere, the gateway's descriptors and tasks
    // back near their start, its memory bounded.
    lab.settle();
    let after = g.held();
    eprintln!("G settled: {after}");
    assert!(after.fds <= before.fds + 16, "{before}\n{after}");
    assert!(after.tasks <= before.tasks + 64.0, "{before}\n{after}");
    assert!(after.rss_kib < 1024 * 1024, "{after}");
    for repo in std::iter::once("G").chain(NODES) {
        let left = locked_slots(&lab.repo(repo));
        assert!(left.is_empty(), "{repo}: slots left locked: {left:?}");
    }

    // Every completed PUT is on every node, whole; every killed one on none.
    let nodes: Vec<PathBuf> = NODES.iter().map(|n| lab.repo(n)).collect();
    let mut killed_puts = Vec::new();
    for r in records.iter().filter(|r| r.op == Op::Put) {
        let obj = r.object.as_ref().expect("kept content");
        for n in &nodes {
            let on = std::fs::read(object_path(n, &r.key)).ok();
            match r.end {
                End::Done => assert_eq!(
                    on.as_deref(),
                    Some(&obj.data[..]),
                    "{} not whole on {}",
                    r.key,
                    n.display()
                ),
                _ => assert!(on.is_none(), "killed {} visible on {}", r.key, n.display()),
            }
        }
        if r.end != End::Done {
            let size = obj.data.len() as u64;
            for n in &nodes {
                for (name, len) in spool(n) {
                    if name == r.key.file() {
                        assert!(len < size, "{name}: a whole partial in {}", n.display());
                    }
                }
            }
            killed_puts.push(obj.clone());
        }
    }
    assert!(
        !object_path(&lab.repo("G"), &stored[0].key).exists(),
        "the gateway stores nothing itself"
    );

    // The killed PUTs resume and complete from a fresh client; then no
    // partial is left anywhere, and their content is whole on every node.
    let fresh = lab.clients[CLIENTS].clone();
    let ends = rt.block_on(load::store_all(&lab.target, fresh.clone(), &killed_puts));
    assert!(ends.iter().all(|e| *e == End::Done), "{ends:?}");
    for obj in &killed_puts {
        for n in &nodes {
            assert_eq!(
                std::fs::read(object_path(n, &obj.key)).ok().as_deref(),
                Some(&obj.data[..]),
                "{} after the new PUT, on {}",
                obj.key,
                n.display()
            );
        }
    }
    for repo in std::iter::once("G").chain(NODES) {
        assert_eq!(spool(&lab.repo(repo)), Vec::new(), "{repo}'s annex/tmp");
    }
    // A fresh client still gets everything stored.
    let mut client = load::Client::new(0, fresh, lab.target.clone());
    for obj in stored.iter().chain(&killed_puts) {
        let end = rt.block_on(client.get(obj, None)).expect("GET");
        assert_eq!(end, End::Done, "{}", obj.key);
    }
    drop(client);
    lab.settle();
}

/// A client that stops reading in the middle of a `GET` relayed from a
/// mesh node, keeping its connection open, loses its session at G's idle
/// deadline (3 s here), and G's session with the node ends with it.
#[test]
fn a_client_that_stops_reading_mid_get_is_cut_at_the_gateway() {
    let lab = lab(1, &[("annexmesh.idletimeout", "3s")]);
    let rt = runtime();
    let g = &lab.daemons["G"];
    // Far larger than the streams' windows and buffers on the way.
    let obj = load::object(7, 24 << 20);
    let ends = rt.block_on(load::store_all(
        &lab.target,
        lab.clients[1].clone(),
        std::slice::from_ref(&obj),
    ));
    assert_eq!(ends, vec![End::Done]);
    lab.settle();
    let before = g.held();

    let mut stuck = load::Client::new(0, lab.clients[0].clone(), lab.target.clone());
    let first = rt.block_on(async {
        let s = stuck.session().await.expect("a session");
        let len = s.get_relay_start(&obj.key, 0).await.expect("GET");
        assert_eq!(len, obj.data.len() as u64);
        let n = s.relay_chunk(len).await.expect("bytes").len();
        s.relay_consume(n);
        n
    });
    assert!(first > 0);
    // It reads no more and keeps everything open; the deadline frees G and
    // the node it was relaying from.
    lab.settle();
    let after = g.held();
    eprintln!("G before {before}\nG after {after}");
    assert!(
        g.guard.stderr().contains("client not reading"),
        "{}",
        tail(&g.guard.stderr())
    );
    // Its stream was cut short.
    let got = rt.block_on(async {
        let s = stuck.session().await.expect("the session");
        let mut got = first as u64;
        while let Ok(b) = s.relay_chunk(u64::MAX).await {
            if b.is_empty() {
                break;
            }
            let n = b.len();
            s.relay_consume(n);
            got += n as u64;
        }
        got
    });
    assert!(got < obj.data.len() as u64, "all {got} bytes came");
    // Others are served.
    let mut fresh = load::Client::new(1, lab.clients[1].clone(), lab.target.clone());
    assert_eq!(rt.block_on(fresh.get(&obj, None)).expect("GET"), End::Done);
}
