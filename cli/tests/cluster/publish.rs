//! Publishing through a gateway (issue 13): what a session writes about the
//! nodes reaches G's `git-annex` branch when the session ends, so a second
//! user's `git clone` of G sees the cluster's copies and can `get` them, and
//! no longer sees copies a drop removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CLUSTER, Lab, TIMEOUT};

impl Lab {
    /// G's master takes C's commits, as when the dataset is cloned onto the
    /// gateway host: a second user cloning G then has the files.
    fn publish_master(&self) {
        self.run(
            &self.g,
            "git",
            &["pull", "-q", "--ff-only", "../C", "master"],
        )
        .ok();
    }

    /// A second user's clone of G over fake-ssh, `git annex init`ed.
    pub(super) fn second_clone(&self, name: &str) -> PathBuf {
        let url = format!("localhost:{}", self.g.display());
        self.run(&self.root, "git", &["clone", "-q", "-o", "G", &url, name])
            .ok();
        let dir = self.root.join(name);
        self.run(&dir, "git", &["annex", "init", name]).ok();
        dir
    }

    pub(super) fn annex_in(&self, dir: &Path, args: &[&str]) -> super::Finished {
        let mut full = vec!["annex"];
        full.extend_from_slice(args);
        self.run(dir, "git", &full)
    }

    /// Files left in G's journal (uncommitted changes).
    fn g_journal(&self) -> Vec<String> {
        let dir = self.g.join(".git/annex/journal");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The subjects of G's `git-annex` branch commits, newest first.
    fn g_branch_subjects(&self) -> Vec<String> {
        let r = self.run(&self.g, "git", &["log", "--format=%s", "git-annex"]);
        r.ok();
        r.stdout.lines().map(str::to_owned).collect()
    }
}

/// What `whereis` in a second clone must list for content on every node.
fn lists_cluster_and_nodes(whereis: &super::Finished) {
    whereis
        .ok()
        .says(&format!("cluster {CLUSTER} [G-{CLUSTER}]"))
        .says("-- G-N1")
        .says("-- G-N2")
        .says("-- G-N3");
}

#[test]
fn a_second_clone_of_the_gateway_gets_from_the_cluster() {
    let lab = Lab::new();
    lab.publish_master();
    let meg_bytes = std::fs::read(lab.c.join("onemeg.bin")).expect("publish test step");
    lab.annex_c(&["copy", "--to", &format!("G-{CLUSTER}")]).ok();
    assert_eq!(
        lab.g_journal(),
        Vec::<String>::new(),
        "the session left its records uncommitted"
    );
    assert!(
        lab.g_branch_subjects()
            .iter()
            .any(|s| s == "annexmesh annex-shell: record changes"),
        "{:?}",
        lab.g_branch_subjects()
    );

    let d = lab.second_clone("D");
    lists_cluster_and_nodes(&lab.annex_in(&d, &["whereis", "hello.txt"]));
    lists_cluster_and_nodes(&lab.annex_in(&d, &["whereis", "onemeg.bin"]));
    lab.annex_in(&d, &["get", "."]).ok();
    assert_eq!(
        std::fs::read_to_string(d.join("hello.txt")).expect("got hello"),
        "hello\n"
    );
    assert_eq!(
        std::fs::read(d.join("onemeg.bin")).expect("got onemeg"),
        meg_bytes
    );

    // The drop is committed too: a later clone no longer sees the nodes.
    lab.annex_c(&[
        "drop",
        "--force",
        "--from",
        &format!("G-{CLUSTER}"),
        "hello.txt",
    ])
    .ok();
    for i in 0..3 {
        assert!(!lab.node_has(i, &lab.key_of("hello.txt"), None));
    }
    assert_eq!(lab.g_journal(), Vec::<String>::new());
    let e = lab.second_clone("E");
    let whereis = lab.annex_in(&e, &["whereis", "hello.txt"]);
    for node in ["G-N1", "G-N2", "G-N3"] {
        assert!(
            !whereis.stdout.contains(node),
            "{node} still listed after the drop\n{}",
            whereis.report()
        );
    }
    lists_cluster_and_nodes(&lab.annex_in(&e, &["whereis", "onemeg.bin"]));
}

#[test]
fn concurrent_publishers_are_committed_in_batches() {
    const CLIENTS: usize = 8;
    const FILES: usize = 3;
    let lab = Lab::new();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let name = format!("P{c}");
        let dir = lab.second_clone(&name);
        for f in 0..FILES {
            std::fs::write(dir.join(format!("f{f}.txt")), format!("{name} file {f}\n"))
                .expect("publish test step");
        }
        lab.annex_in(&dir, &["add", "."]).ok();
        lab.run(&dir, "git", &["commit", "-q", "-m", "add"]).ok();
        let keys: Vec<String> = (0..FILES)
            .map(|f| {
                let r = lab.annex_in(&dir, &["lookupkey", &format!("f{f}.txt")]);
                r.ok();
                r.stdout.trim().to_owned()
            })
            .collect();
        clients.push((dir, keys));
    }
    let before = lab.g_branch_subjects().len();
    std::thread::scope(|s| {
        for (dir, _) in &clients {
            let lab = &lab;
            s.spawn(move || {
                lab.annex_in(dir, &["copy", "--to", &format!("G-{CLUSTER}")])
                    .ok();
            });
        }
    });
    assert_eq!(lab.g_journal(), Vec::<String>::new());
    let subjects = lab.g_branch_subjects();
    let made = subjects.len() - before;
    assert!(
        (1..=CLIENTS).contains(&made),
        "{made} commits for {} files from {CLIENTS} sessions: {subjects:?}",
        CLIENTS * FILES
    );

    let d = lab.second_clone("D");
    for (_, keys) in &clients {
        for key in keys {
            let w = lab.annex_in(&d, &["whereis", "--key", key]);
            lists_cluster_and_nodes(&w);
        }
    }
    lab.annex_in(&lab.g, &["fsck", "--all", "--quiet"]).ok();
    for n in &lab.nodes {
        lab.annex_in(n, &["fsck", "--quiet"]).ok();
    }
}

/// The same through G's daemon over `p2p-annex::libp2p:`: the session's
/// records reach the branch when it ends.
#[test]
fn a_second_clone_sees_what_came_over_libp2p() {
    let lab = Lab::gateway();
    lab.annexmesh(&lab.g, &["updatecluster"]).ok();
    let lab = lab.with_client();
    lab.publish_master();
    let (mut daemon, with_target, path) = lab.cluster_over_p2p_annex();
    let run = |args: &[&str]| {
        lab.run_p2p(&lab.c, args, &path, &with_target);
    };
    run(&[
        "sh",
        "-c",
        r#"printf '%s\n' "$ADDR" | git annex p2p --link --name GC"#,
    ]);
    run(&[
        "git",
        "annex",
        "copy",
        "--to",
        "GC",
        "hello.txt",
        "onemeg.bin",
    ]);

    // The daemon commits when the session ends; the journal drains within a
    // bound, without a restart.
    let key = lab.key_of("onemeg.bin");
    let key = protocol::Key::parse(&key).expect("key");
    let log = protocol::logs::presence::location_log_path(&key);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = lab.run(&lab.g, "git", &["show", &format!("git-annex:{log}")]);
        if r.status.success() && lab.node_uuids.iter().all(|u| r.stdout.contains(u)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "G's branch lacks the nodes' records\n{}",
            r.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = lab.second_clone("D");
    lists_cluster_and_nodes(&lab.annex_in(&d, &["whereis", "onemeg.bin"]));
    lab.annex_in(&d, &["get", "."]).ok();
    assert_eq!(
        std::fs::read_to_string(d.join("hello.txt")).expect("got hello"),
        "hello\n"
    );
    daemon.terminate(TIMEOUT);
}
