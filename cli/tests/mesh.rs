//! A living mesh (issue 9): repositories join by invitation, every member
//! gossips with every other with no grant and no restart, daemons reconnect
//! after a restart, members reach each other's repositories without a grant,
//! and a removed member's writes stop being taken. Real `annexmesh daemon`
//! processes on loopback TCP.
//!
//! Run: `cargo test -p annexmesh-cli --test mesh`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::branch_file;
use support::mesh::{
    Mesh, TIMEOUT, copies, git_config, object_path, repair_cluster, upload, wait_copies,
};

#[test]
fn members_join_by_invitation_and_gossip_without_grants() {
    let m = Mesh::new();
    let pa = m.init("alpha");
    let pb = m.init("beta");
    let pc = m.init("gamma");
    let (_da, addr_a) = m.daemon("alpha");

    // beta joins with its daemon stopped, then starts it: no --peer, no grant.
    let line = m.invite("alpha");
    assert!(line.starts_with("annexmesh-invite:"), "{line}");
    let joined = m.ok("beta", &["join", &line]);
    assert!(joined.contains(&pa), "{joined}");
    // An invitation is used once.
    let again = m.run("gamma", &["join", &line]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let (mut db, _) = m.daemon("beta");
    m.wait_connected("alpha", &pb);
    m.wait_connected("beta", &pa);

    // gamma joins with its daemon already running.
    let (_dc, addr_c) = m.daemon("gamma");
    m.ok("gamma", &["join", &m.invite("alpha")]);
    m.wait_connected("alpha", &pc);
    m.wait_connected("gamma", &pa);
    // beta learns of gamma through alpha, and dials it itself.
    m.wait_connected("beta", &pc);

    // A change made on alpha by another process reaches gamma; one made on
    // gamma reaches beta.
    m.ok("alpha", &["initcluster", "first"]);
    m.wait_for_line("gamma", "uuid.log", "cluster first");
    m.ok("gamma", &["initcluster", "third"]);
    m.wait_for_line("beta", "uuid.log", "cluster third");

    let list = m.ok("alpha", &["peers"]);
    for name in ["alpha", "beta", "gamma"] {
        assert!(list.contains(&format!("-- {name} [read-write]")), "{list}");
    }
    assert!(list.contains(&addr_c), "gamma's address listed: {list}");

    // Members store on each other's repositories with no grant and no token.
    let file = m.root.join("doc.txt");
    std::fs::write(&file, b"member data\n").expect("write");
    let key = m.ok(
        "beta",
        &["put", file.to_str().expect("utf8"), "--to", &addr_a],
    );
    assert!(key.trim().starts_with("SHA256E-s12--"), "{key}");

    // beta restarts and finds its way back by itself.
    db.terminate(TIMEOUT);
    let (_db, _) = m.daemon("beta");
    m.wait_connected("beta", &pa);
    m.wait_connected("alpha", &pb);

    // alpha removes gamma: gamma's later writes reach no one.
    let removed = m.ok("alpha", &["peers", "rm", "gamma"]);
    assert!(removed.contains(&pc), "{removed}");
    m.wait_for_line("beta", "annexmesh/members.log", &format!("{pc} removed"));
    m.ok("gamma", &["initcluster", "ignored"]);
    // A marker written after gamma's change, by a member, arrives; gamma's
    // change must not have arrived with it.
    std::thread::sleep(Duration::from_secs(2));
    m.ok("alpha", &["initcluster", "marker"]);
    m.wait_for_line("beta", "uuid.log", "cluster marker");
    assert!(
        !branch_file(&m.repo("beta"), "uuid.log").contains("cluster ignored"),
        "a removed member's write was taken"
    );
    assert!(!branch_file(&m.repo("alpha"), "uuid.log").contains("cluster ignored"));
}

/// A cluster set up over the mesh alone (issue 9, item 3): gateway G with
/// mesh node M1, gateway H extends G's cluster by naming G (no git remote,
/// no fetch) and adds mesh node M2; G's daemon follows the gossiped topology
/// and lists H's node as `H-M2`; an upload to the cluster through G reaches
/// both nodes.
#[test]
fn a_cluster_is_set_up_over_the_mesh() {
    let m = Mesh::new();
    for name in ["G", "H", "M1", "M2"] {
        m.init(name);
    }
    let (_dg, addr_g) = m.daemon("G");
    let mut daemons = Vec::new();
    for name in ["H", "M1", "M2"] {
        daemons.push(m.daemon(name));
        m.ok(name, &["join", &m.invite("G")]);
    }
    m.ok("G", &["initcluster", "c"]);
    // G knows the members by name once their descriptions have come by gossip.
    for name in ["H", "M1", "M2"] {
        m.wait_for_peer("G", &format!("-- {name} ["));
    }
    m.ok_once_known("G", &["cluster", "add-node", "M1", "M1"]);
    m.ok("G", &["updatecluster"]);
    let cluster = git_config(&m.repo("G"), "annex.cluster.c");
    assert!(cluster.starts_with("ac"), "{cluster}");

    // H learns of G's cluster by gossip, then extends it by naming G.
    m.wait_for_line("H", "proxy.log", ":c");
    m.wait_for_peer("H", "-- M2 [");
    m.wait_for_peer("H", "-- G [");
    m.ok_once_known("H", &["extendcluster", "G", "c"]);
    m.ok_once_known("H", &["cluster", "add-node", "M2", "M2"]);
    let added = Instant::now();
    m.ok("H", &["updatecluster"]);
    // G follows H's topology line: it links back to H and lists H's node.
    m.wait_for_line("G", "proxy.log", ":H-M2");
    eprintln!(
        "node added at H: routable from G after {:?}",
        added.elapsed()
    );
    m.wait_for_line("G", "cluster.log", &git_config(&m.repo("M2"), "annex.uuid"));

    let file = m.root.join("big.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let target = format!("{addr_g}/annex-uuid/{cluster}");
    let key = m.ok(
        "M1",
        &["put", file.to_str().expect("utf8"), "--to", &target],
    );
    let key = key.trim();
    for node in ["M1", "M2"] {
        assert_eq!(
            std::fs::read(object_path(&m.repo(node), key))
                .ok()
                .as_deref(),
            Some(&data[..]),
            "{node} lacks the upload"
        );
    }
    drop(daemons);
}

/// The peer monitor (issue 10): a member killed with SIGKILL is suspected
/// by the others once silent for the `--suspect-after` time, and alive again
/// when it is back; a replication policy set on one member reaches the others.
#[test]
fn members_are_monitored_and_policies_spread() {
    let m = Mesh::new();
    let _pa = m.init("alpha");
    let pb = m.init("beta");
    let quick = ["--suspect-after", "2s"];
    let (_da, _) = m.daemon_with("alpha", &quick);
    let (mut db, _) = m.daemon_with("beta", &quick);
    m.ok("beta", &["join", &m.invite("alpha")]);
    m.wait_connected("alpha", &pb);
    let beta = git_config(&m.repo("beta"), "annex.uuid");
    let state = |want: &str| {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let json = m.ok("alpha", &["alerts", "--json"]);
            if json.contains(&format!("\"uuid\":\"{beta}\",\"state\":\"{want}\"")) {
                return json;
            }
            assert!(Instant::now() < deadline, "beta never {want}: {json}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    state("alive");
    db.signal("KILL");
    let _ = db.wait_timeout(TIMEOUT);
    let json = state("suspected");
    assert!(json.contains("\"kind\":\"suspected\""), "{json}");
    let (_db, _) = m.daemon_with("beta", &quick);
    state("alive");

    // A policy set on alpha, for a cluster alpha serves, reaches beta.
    m.ok("alpha", &["initcluster", "c"]);
    let shown = m.ok(
        "alpha",
        &[
            "replication",
            "c",
            "--min",
            "2",
            "--max",
            "3",
            "--grace",
            "90s",
        ],
    );
    assert!(shown.contains("min 2 max 3 grace 90s"), "{shown}");
    m.wait_for_line("beta", "annexmesh/replication.log", "min=2 max=3 grace=90");
    let json = m.ok("beta", &["replication", "c", "--json"]);
    assert_eq!(json.trim(), "{\"min\":2,\"max\":3,\"grace\":90}");
    assert!(
        !m.run("beta", &["replication", "c", "--min", "4", "--max", "3"])
            .status
            .success()
    );
}

/// Runs git in `dir` (with an identity for commits); returns its stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    support::succeeded(out, &format!("git {args:?} in {}", dir.display()))
}

/// The commit `name` is at in the repository `git_dir`, if any.
fn rev(git_dir: &Path, name: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "-q", "--verify", name])
        .output()
        .expect("git rev-parse");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Waits (bounded) until `name` in `git_dir` is at `sha`.
fn wait_rev(git_dir: &Path, name: &str, sha: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = rev(git_dir, name);
        if now.as_deref() == Some(sha) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} in {} is at {now:?}, never at {sha}",
            git_dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The gateways of a cluster keep their git branches in step over the mesh
/// (issue 9, item 3; git-annex documents that "a branch pushed to one gateway
/// will not be able to be pulled from another"): a branch pushed to G is
/// pulled from H, and the other way; branches only move forward, so when the
/// two have diverged each keeps its own and holds the other's beside it.
#[test]
fn branches_pushed_to_one_gateway_are_pulled_from_another() {
    let m = Mesh::new();
    m.init("G");
    m.init("H");
    let (_dg, _) = m.daemon("G");
    let (dh, _) = m.daemon("H");
    m.ok("H", &["join", &m.invite("G")]);
    m.ok("G", &["initcluster", "c"]);
    m.ok("G", &["updatecluster"]);
    m.wait_for_line("H", "proxy.log", ":c");
    m.wait_for_peer("H", "-- G [");
    m.ok_once_known("H", &["extendcluster", "G", "c"]);
    m.ok("H", &["updatecluster"]);
    let (g, h) = (m.repo("G"), m.repo("H"));
    let (g_uuid, h_uuid) = (git_config(&g, "annex.uuid"), git_config(&h, "annex.uuid"));

    // A user pushes to G; another clones H and has it.
    let u = m.root.join("U");
    git(&m.root, &["init", "-q", "U"]);
    std::fs::write(u.join("a.txt"), "one\n").expect("write");
    git(&u, &["add", "a.txt"]);
    git(&u, &["commit", "-q", "-m", "one"]);
    git(&u, &["remote", "add", "G", g.to_str().expect("utf8")]);
    git(&u, &["remote", "add", "H", h.to_str().expect("utf8")]);
    git(&u, &["push", "-q", "G", "HEAD:refs/heads/main"]);
    let one = rev(&u.join(".git"), "HEAD").expect("HEAD");
    wait_rev(&h, "refs/heads/main", &one);
    git(
        &m.root,
        &["clone", "-q", "-b", "main", h.to_str().expect("utf8"), "V"],
    );
    assert_eq!(
        std::fs::read_to_string(m.root.join("V/a.txt")).expect("cloned"),
        "one\n"
    );

    // And back: a commit pushed to H moves G's branch forward.
    std::fs::write(u.join("a.txt"), "two\n").expect("write");
    git(&u, &["commit", "-q", "-am", "two"]);
    git(&u, &["push", "-q", "H", "HEAD:refs/heads/main"]);
    let two = rev(&u.join(".git"), "HEAD").expect("HEAD");
    wait_rev(&g, "refs/heads/main", &two);

    // Diverged while H's daemon was away: each keeps its own commit and
    // holds the other's under refs/annexmesh/gateways/<uuid>/.
    drop(dh);
    std::fs::write(u.join("a.txt"), "three\n").expect("write");
    git(&u, &["commit", "-q", "-am", "three"]);
    git(&u, &["push", "-q", "G", "HEAD:refs/heads/main"]);
    let three = rev(&u.join(".git"), "HEAD").expect("HEAD");
    let v = m.root.join("V");
    git(&v, &["pull", "-q", "--ff-only"]);
    std::fs::write(v.join("b.txt"), "other\n").expect("write");
    git(&v, &["add", "b.txt"]);
    git(&v, &["commit", "-q", "-m", "other"]);
    git(&v, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let other = rev(&v.join(".git"), "HEAD").expect("HEAD");
    let (_dh, _) = m.daemon("H");
    wait_rev(
        &h,
        &format!("refs/annexmesh/gateways/{g_uuid}/main"),
        &three,
    );
    wait_rev(
        &g,
        &format!("refs/annexmesh/gateways/{h_uuid}/main"),
        &other,
    );
    assert_eq!(rev(&h, "refs/heads/main").as_deref(), Some(other.as_str()));
    assert_eq!(rev(&g, "refs/heads/main").as_deref(), Some(three.as_str()));
}

/// Automatic repair (issue 10) with real daemons: min 2, max 2 over three
/// mesh nodes. Uploads are placed on two (the PUT honours max). A node killed
/// with SIGKILL is suspected, then down after the grace; every key it held
/// is copied from the other holder to the third node, verified there. When
/// it comes back its extra copies are trimmed again, never below two.
#[test]
fn a_killed_node_is_repaired_around_and_trimmed_when_back() {
    let quick = ["--suspect-after", "3s"];
    let (m, mut daemons, target) =
        repair_cluster(&quick, &["--min", "2", "--max", "2", "--grace", "2s"]);
    let keys = upload(&m, &target, 8);
    let all = ["M1", "M2", "M3"];
    // The PUTs place two copies each (the policy's max); the repairer's
    // index learns the keys from the gateway's location log.
    wait_copies(&m, &daemons["G"], &keys, &all, 2, "placed at max");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = m.ok("G", &["status", "--json"]);
        if status.contains("\"keys\":8") {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The node holding the most goes away for good.
    let held = copies(&m, &keys, &all);
    let victim = *all
        .iter()
        .max_by_key(|n| held.iter().filter(|c| c.iter().any(|x| x == *n)).count())
        .expect("a node");
    let lost = held
        .iter()
        .filter(|c| c.iter().any(|x| x == victim))
        .count();
    assert!(lost > 0);
    let mut d = daemons.remove(victim).expect("victim daemon");
    d.signal("KILL");
    let _ = d.wait_timeout(TIMEOUT);
    let live: Vec<&str> = all.iter().copied().filter(|n| *n != victim).collect();
    wait_copies(
        &m,
        &daemons["G"],
        &keys,
        &live,
        2,
        "repaired after the kill",
    );
    // The repairer's own view follows (its index learns the new copies from
    // the gateway's location log).
    let deadline = Instant::now() + TIMEOUT;
    for key in &keys {
        loop {
            let on = m.ok("G", &["status", key]);
            if on.contains("at its replication") {
                break;
            }
            assert!(Instant::now() < deadline, "{on}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Back: the extra copies go, never below two anywhere.
    daemons.insert(victim.to_owned(), m.daemon_with(victim, &quick).0);
    wait_copies(
        &m,
        &daemons["G"],
        &keys,
        &all,
        2,
        "trimmed after the node came back",
    );
    m.ok("G", &["recover", "--all"]);
    drop(daemons);
}

/// A node that is gone for less than the grace causes no copy at all
/// (issue 10: ipfs-cluster repins at the first alert).
#[test]
fn a_node_back_within_the_grace_causes_no_copies() {
    let quick = ["--suspect-after", "3s"];
    let (m, mut daemons, target) =
        repair_cluster(&quick, &["--min", "3", "--max", "3", "--grace", "10m"]);
    let keys = upload(&m, &target, 4);
    let all = ["M1", "M2", "M3"];
    wait_copies(&m, &daemons["G"], &keys, &all, 3, "uploaded");
    let beta = git_config(&m.repo("M3"), "annex.uuid");
    let mut d = daemons.remove("M3").expect("M3");
    d.signal("KILL");
    let _ = d.wait_timeout(TIMEOUT);
    let state = |want: &str| {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let json = m.ok("G", &["alerts", "--json"]);
            if json.contains(&format!("\"uuid\":\"{beta}\",\"state\":\"{want}\"")) {
                return;
            }
            assert!(Instant::now() < deadline, "M3 never {want}: {json}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    state("suspected");
    daemons.insert("M3".to_owned(), m.daemon_with("M3", &quick).0);
    state("alive");
    let g = daemons.get("G").expect("G");
    let log = g.stderr();
    assert!(!log.contains("repair: Copy"), "copies were made:\n{log}");
    let status = m.ok("G", &["status", "--json"]);
    assert!(status.contains("\"under_replicated\":0"), "{status}");
    drop(daemons);
}

/// Deadlines on nodes (issue 11): a mesh node stopped with SIGSTOP (still
/// connected, answering nothing) drops out of a PUT's fan-out, which stores
/// on the others and records exactly them; a GET whose cheapest holder is the
/// stopped node fails over to another. Short deadlines set on the gateway
/// (`annexmesh.replytimeout`, `annex.stalldetection`) keep the test quick.
#[test]
fn a_stopped_node_drops_out_of_a_put_and_a_get_fails_over() {
    let (m, daemons, target) = repair_cluster(&[], &["--min", "1", "--max", "3", "--grace", "10m"]);
    let g = m.repo("G");
    for (k, v) in [
        ("annexmesh.replytimeout", "3s"),
        ("annex.stalldetection", "1KB/3s"),
        // The stopped node is the first a GET tries.
        ("remote.M3.annex-cost", "10"),
    ] {
        let st = Command::new("git")
            .arg("--git-dir")
            .arg(&g)
            .args(["config", k, v])
            .status()
            .expect("git config");
        assert!(st.success());
    }
    let all = ["M1", "M2", "M3"];
    let before = upload(&m, &target, 1);
    assert_eq!(copies(&m, &before, &all), vec![all.to_vec()]);

    let victim = &daemons["M3"];
    victim.signal("STOP");
    let file = m.root.join("during.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
    std::fs::write(&file, &data).expect("write");
    let key = m.ok(
        "M1",
        &["put", file.to_str().expect("utf8"), "--to", &target],
    );
    let key = key.trim().to_owned();
    assert_eq!(
        copies(&m, std::slice::from_ref(&key), &all),
        vec![vec!["M1", "M2"]],
        "the PUT stored on the live nodes only"
    );
    // The gateway's location log names exactly the nodes that stored it.
    let uuid = |n: &str| git_config(&m.repo(n), "annex.uuid");
    let whereis = m.ok("G", &["whereis", &key, "--json"]);
    assert!(whereis.contains(&uuid("M1")), "{whereis}");
    assert!(whereis.contains(&uuid("M2")), "{whereis}");
    assert!(!whereis.contains(&uuid("M3")), "{whereis}");

    // The first upload is on all three; the stopped one is tried first.
    let out = m.root.join("got.bin");
    m.ok(
        "M1",
        &[
            "get",
            &before[0],
            "--from",
            &target,
            "-o",
            out.to_str().expect("utf8"),
        ],
    );
    let original = std::fs::read(m.root.join("f0.bin")).expect("f0");
    assert_eq!(std::fs::read(&out).expect("got"), original);
    let log = daemons["G"].stderr();
    assert!(
        log.contains("node M3 cannot send"),
        "the GET never tried the stopped node:\n{log}"
    );
    victim.signal("CONT");
    drop(daemons);
}

/// `annex.diskreserve` at the fan-out (issue 11): a node whose heartbeat
/// says it has no room beyond its reserve is skipped by the gateway's PUT
/// (not asked, not filled); the others store.
#[test]
fn a_node_without_room_is_skipped_by_the_fan_out() {
    let m = Mesh::new();
    let mut daemons = Vec::new();
    for name in ["G", "M1", "M2"] {
        m.init(name);
    }
    // M2 keeps a petabyte free: no disk here has room beyond that.
    let st = Command::new("git")
        .arg("--git-dir")
        .arg(m.repo("M2"))
        .args(["config", "annex.diskreserve", "1000 TB"])
        .status()
        .expect("git config");
    assert!(st.success());
    let (dg, addr_g) = m.daemon("G");
    for name in ["M1", "M2"] {
        daemons.push(m.daemon(name).0);
        m.ok(name, &["join", &m.invite("G")]);
    }
    m.ok("G", &["initcluster", "c"]);
    for name in ["M1", "M2"] {
        m.wait_for_peer("G", &format!("-- {name} ["));
        m.ok_once_known("G", &["cluster", "add-node", name, name]);
    }
    m.ok("G", &["updatecluster"]);
    let cluster = git_config(&m.repo("G"), "annex.cluster.c");
    let target = format!("{addr_g}/annex-uuid/{cluster}");
    // G has heard M2's heartbeat (its free space beyond the reserve: 0).
    let m2 = git_config(&m.repo("M2"), "annex.uuid");
    let health = m.repo("G").join("annex/annexmesh/health");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&health).unwrap_or_default();
        let heard = text.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 7 && w[1] == m2 && w[4] == "0"
        });
        if heard {
            break;
        }
        assert!(Instant::now() < deadline, "G never heard M2: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let keys = upload(&m, &target, 1);
    assert_eq!(copies(&m, &keys, &["M1", "M2"]), vec![vec!["M1"]]);
    let log = dg.stderr();
    assert!(
        log.contains("node M2 skipped"),
        "M2 was not skipped by its heartbeat:\n{log}"
    );
    drop(daemons);
}

/// A PUT honours the cluster's replication (issue 10): min 1 max 2 over
/// three mesh nodes, so each upload lands on exactly two of them, chosen by
/// the allocator (read from the nodes' disks right after each PUT, before
/// the repairer, which waits for a key to settle, would trim a third copy).
#[test]
fn a_put_places_the_policy_max_copies() {
    let (m, daemons, target) = repair_cluster(&[], &["--min", "1", "--max", "2", "--grace", "10m"]);
    let all = ["M1", "M2", "M3"];
    let mut pairs = std::collections::BTreeSet::new();
    for i in 0..6u32 {
        let file = m.root.join(format!("p{i}.bin"));
        let data: Vec<u8> = (0..30_000 + 1_000 * i)
            .map(|b| (b.wrapping_mul(17).wrapping_add(i) % 253) as u8)
            .collect();
        std::fs::write(&file, &data).expect("write");
        let key = m.ok(
            "M1",
            &["put", file.to_str().expect("utf8"), "--to", &target],
        );
        let key = key.trim().to_owned();
        let on = copies(&m, std::slice::from_ref(&key), &all).remove(0);
        assert_eq!(
            on.len(),
            2,
            "{key} is on {on:?}, not on two nodes\nG's log: {}",
            daemons["G"].stderr()
        );
        for n in &on {
            assert_eq!(
                std::fs::read(object_path(&m.repo(n), &key)).ok().as_deref(),
                Some(&data[..]),
                "{n}'s copy of {key}"
            );
        }
        pairs.insert(on);
    }
    let log = daemons["G"].stderr();
    assert!(
        log.contains("the cluster's max places it on 2 of 3 nodes"),
        "the gateway never capped a PUT:\n{log}"
    );
    eprintln!("pairs used over 6 uploads: {pairs:?}");

    // A min no PUT can reach: stored where it can be, the client told it
    // succeeded, the gateway's log says it is short.
    m.ok("G", &["replication", "c", "--min", "4", "--max", "4"]);
    let keys = upload(&m, &target, 1);
    assert_eq!(copies(&m, &keys, &all), vec![all.to_vec()]);
    let log = daemons["G"].stderr();
    assert!(
        log.contains(&format!("PUT of {} is below the cluster's min", keys[0]))
            && log.contains("placed 3 of 4 needed copies"),
        "no warning for a PUT short of min:\n{log}"
    );
    drop(daemons);
}

/// Writes `line` into the git-annex journal of `repo` for branch file `file`
/// (what the branch or the journal holds, plus the line), atomically.
fn journal_append(repo: &Path, file: &str, line: &str) {
    let dir = repo.join("annex/journal");
    std::fs::create_dir_all(&dir).expect("journal dir");
    let name = file.replace('_', "__").replace('/', "_");
    let path = dir.join(&name);
    let mut content = std::fs::read_to_string(&path).unwrap_or_else(|_| branch_file(repo, file));
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    content.push_str(line);
    content.push('\n');
    let tmp = repo.join(format!("annex/{name}.tmp"));
    std::fs::write(&tmp, content).expect("write journal file");
    std::fs::rename(&tmp, &path).expect("rename journal file");
}

#[test]
fn a_read_only_member_writes_no_metadata() {
    let m = Mesh::new();
    m.init("alpha");
    let pb = m.init("beta");
    let pc = m.init("gamma");
    let (mut da, _) = m.daemon("alpha");
    let (_db, _) = m.daemon("beta");
    let (_dc, _) = m.daemon("gamma");
    m.ok("beta", &["join", &m.invite("alpha")]);
    m.ok("gamma", &["join", &m.invite("alpha")]);
    m.wait_connected("alpha", &pb);
    m.wait_connected("alpha", &pc);
    m.wait_connected("beta", &pc);
    let uuid = |n: &str| git_config(&m.repo(n), "annex.uuid");
    let (ua, ub, uc) = (uuid("alpha"), uuid("beta"), uuid("gamma"));

    // alpha makes gamma read-only; beta hears of it.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 5;
    journal_append(
        &m.repo("alpha"),
        "annexmesh/members.log",
        &format!("{later}s {pc} member {uc} read-only"),
    );
    m.wait_for_line("beta", "annexmesh/members.log", &format!("{uc} read-only"));
    m.wait_for_peer("alpha", "-- gamma [read-only]");

    // gamma claims alpha holds a key, and that it proxies alpha.
    let key_log = "fbd/530/SHA256E-s3--forged.txt.log";
    let forged = format!("{later}s 1 {ua}");
    journal_append(&m.repo("gamma"), key_log, &forged);
    let proxy = format!("{later}s {uc} {ua}:alpha");
    journal_append(&m.repo("gamma"), "proxy.log", &proxy);
    // alpha refuses what gamma sent, and says so.
    let deadline = Instant::now() + TIMEOUT;
    while !(da.stdout() + &da.stderr()).contains("metadata: refused") {
        assert!(
            Instant::now() < deadline,
            "alpha never refused gamma's lines:\n{}\n{}",
            da.stdout(),
            da.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // beta, read-write, still spreads its own location lines, written after.
    let own_log = "aaa/bbb/SHA256E-s3--own.txt.log";
    let own = format!("{later}s 1 {ub}");
    journal_append(&m.repo("beta"), own_log, &own);
    m.wait_for_line("alpha", own_log, &own);
    // Anti-entropy on a fresh connection brings gamma's lines again: a
    // restart of alpha's daemon still takes none of them.
    da.terminate(TIMEOUT);
    let (_da, _) = m.daemon("alpha");
    m.wait_connected("alpha", &pc);
    m.wait_connected("alpha", &pb);
    let marker_log = "ccc/ddd/SHA256E-s3--marker.txt.log";
    let marker = format!("{later}s 1 {ub}");
    journal_append(&m.repo("beta"), marker_log, &marker);
    m.wait_for_line("alpha", marker_log, &marker);
    for repo in ["alpha", "beta"] {
        assert!(
            !branch_file(&m.repo(repo), key_log).contains(&ua),
            "{repo} took a read-only member's location line"
        );
        assert!(
            !branch_file(&m.repo(repo), "proxy.log").contains(&proxy),
            "{repo} took a read-only member's proxy line"
        );
    }
    assert!(
        branch_file(&m.repo("gamma"), key_log).contains(&forged),
        "gamma kept its own journal line (the test wrote what it meant to)"
    );
}
