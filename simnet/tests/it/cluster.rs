//! Scenario: real gateways and mesh nodes of one cluster (2–5 gateways as a
//! line, ring, star or full mesh), routes from the gossiped topology. A PUT
//! through one gateway reaches every node exactly once; a partition leaves
//! each half serving its own nodes, and after the heal the gateways'
//! location logs converge.

use std::time::Duration;

use protocol::AssociatedFile;
use protocol::logs::presence::location_log_path;
use simnet::Sim;
use simnet::cluster::{ClusterSim, Shape};

use crate::util::{content, ms};

const LIMIT: Duration = Duration::from_secs(30);
/// A PUT's bound: the upload crosses up to five gateways of debug builds,
/// each dialling its next hop, on a loaded 2-core machine.
const PUT_LIMIT: Duration = Duration::from_secs(120);

async fn build(shape: Shape, gateways: usize) -> (Sim, ClusterSim) {
    let mut sim = Sim::from_env().unwrap();
    sim.add_client("user").await.unwrap();
    let c = ClusterSim::build(&mut sim, shape, gateways, 1, LIMIT)
        .await
        .unwrap();
    (sim, c)
}

async fn put_through(sim: &mut Sim, c: &ClusterSim, gateway: &str) -> protocol::Key {
    let (_, key, src) = content(sim, 40_000);
    let mut s = sim.session_to("user", gateway, &c.cluster).await.unwrap();
    let out = simnet::within(
        "the PUT",
        PUT_LIMIT,
        s.put(&key, AssociatedFile::none(), &src, &mut |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.stored, "{out:?}");
    let _ = s.close().await;
    key
}

async fn exactly_once(shape: Shape, gateways: usize) {
    let (mut sim, c) = build(shape, gateways).await;
    for n in c.all_nodes() {
        sim.set_latency("user", &n, ms(1)..=ms(3)).unwrap();
    }
    let before = c.uploads(&sim).unwrap();
    let key = put_through(&mut sim, &c, "g0").await;
    let after = c.uploads(&sim).unwrap();
    for n in c.all_nodes() {
        assert!(
            sim.store(&n).unwrap().contains(&key),
            "{shape:?}: {n} lacks it"
        );
        assert_eq!(after[&n] - before[&n], 1, "{shape:?}: PUTs to {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_reaches_every_node_once_on_a_line() {
    exactly_once(Shape::Line, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_reaches_every_node_once_on_a_star() {
    exactly_once(Shape::Star, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_halves_serve_their_own_nodes_then_converge() {
    let (mut sim, c) = build(Shape::Line, 2).await;
    let halves = [["g0", "g0n0"], ["g1", "g1n0"]];
    for a in halves[0] {
        for b in halves[1] {
            sim.partition(a, b).unwrap();
        }
    }
    let left = put_through(&mut sim, &c, "g0").await;
    let right = put_through(&mut sim, &c, "g1").await;
    assert!(sim.store("g0n0").unwrap().contains(&left));
    assert!(!sim.store("g1n0").unwrap().contains(&left));
    assert!(sim.store("g1n0").unwrap().contains(&right));
    assert!(!sim.store("g0n0").unwrap().contains(&right));
    for a in halves[0] {
        for b in halves[1] {
            sim.heal(a, b).unwrap();
        }
    }
    let addr = sim.addr("g1").unwrap();
    sim.net("g0").unwrap().dial(&addr).await.unwrap();
    for key in [&left, &right] {
        let path = location_log_path(key);
        simnet::wait_until("the location logs to converge", LIMIT, || {
            c.metas["g0"].file_lines(&path) == c.metas["g1"].file_lines(&path)
                && !c.metas["g0"].file_lines(&path).is_empty()
        })
        .await
        .unwrap();
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_reaches_every_node_once_on_a_ring() {
    exactly_once(Shape::Ring, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_reaches_every_node_once_on_a_full_mesh() {
    exactly_once(Shape::FullMesh, 5).await;
}

/// A gateway goes away (cut off from every other node, as a crash looks from
/// outside): the others route around it (here, the ring's other way), and a
/// PUT still reaches every node that can be reached, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_that_goes_away_is_routed_around() {
    let (mut sim, c) = build(Shape::Ring, 4).await;
    let g2n0 = sim.uuid("g2n0").unwrap();
    let g1 = sim.uuid("g1").unwrap();
    let g3 = sim.uuid("g3").unwrap();
    let hops = |sim: &Sim| {
        node::topology::routes(&sim.store("g0").unwrap(), &c.cluster)
            .unwrap()
            .and_then(|r| r.get(&g2n0).map(|r| r.hops.clone()))
    };
    let before = hops(&sim).unwrap();
    // Crash whichever neighbour g0 goes through to reach g2.
    let (down, other) = if before.first() == Some(&g1) {
        ("g1", &g3)
    } else {
        ("g3", &g1)
    };
    let everyone: Vec<String> = c
        .gateways
        .iter()
        .cloned()
        .chain(c.all_nodes())
        .chain(["user".to_owned()])
        .filter(|n| n != down)
        .collect();
    for n in &everyone {
        sim.partition(down, n).unwrap();
    }
    simnet::wait_until("g0 to route around the crashed gateway", LIMIT, || {
        hops(&sim).is_some_and(|h| h.first() == Some(other))
    })
    .await
    .unwrap();
    let before = c.uploads(&sim).unwrap();
    let key = put_through(&mut sim, &c, "g0").await;
    let after = c.uploads(&sim).unwrap();
    let cut_off = format!("{down}n0");
    for n in c.all_nodes() {
        let want = u64::from(n != cut_off);
        assert_eq!(after[&n] - before[&n], want, "PUTs to {n}");
        assert_eq!(sim.store(&n).unwrap().contains(&key), n != cut_off, "{n}");
    }
}

/// The route from `g` to node `n`: the gateways crossed.
fn hops_to(sim: &Sim, c: &ClusterSim, g: &str, n: &str) -> Option<Vec<protocol::Uuid>> {
    let node = sim.uuid(n).ok()?;
    node::topology::routes(&sim.store(g).ok()?, &c.cluster)
        .ok()
        .flatten()
        .and_then(|r| r.get(&node).map(|r| r.hops.clone()))
}

/// A PUT through `g` reaches every node but those in `unreached` exactly
/// once, and those not at all.
async fn put_once(sim: &mut Sim, c: &ClusterSim, g: &str, unreached: &[&str]) {
    let before = c.uploads(sim).unwrap();
    let key = put_through(sim, c, g).await;
    let after = c.uploads(sim).unwrap();
    for n in c.all_nodes() {
        let reached = !unreached.contains(&n.as_str());
        assert_eq!(
            after[&n] - before[&n],
            u64::from(reached),
            "PUTs through {g} to {n}"
        );
        assert_eq!(sim.store(&n).unwrap().contains(&key), reached, "{n}");
    }
}

/// A link between two live gateways is cut (the others still reach both):
/// the gateways route around that link alone, from its ends too, and a PUT
/// through either side still reaches every node once; after the heal the
/// shortest path is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_link_between_live_gateways_is_routed_around_until_healed() {
    let (mut sim, c) = build(Shape::Ring, 4).await;
    for n in c.all_nodes() {
        sim.set_latency("user", &n, ms(1)..=ms(3)).unwrap();
    }
    let g1 = sim.uuid("g1").unwrap();
    let g2 = sim.uuid("g2").unwrap();
    let g3 = sim.uuid("g3").unwrap();
    assert_eq!(hops_to(&sim, &c, "g1", "g2n0"), Some(vec![g2.clone()]));
    sim.partition("g1", "g2").unwrap();
    simnet::wait_until("g1 to go round by g0 and g3", LIMIT, || {
        hops_to(&sim, &c, "g1", "g2n0").is_some_and(|h| h.len() == 3 && h[1] == g3 && h[2] == g2)
    })
    .await
    .unwrap();
    simnet::wait_until("g0 to avoid the cut link", LIMIT, || {
        hops_to(&sim, &c, "g0", "g2n0") == Some(vec![g3.clone(), g2.clone()])
            && hops_to(&sim, &c, "g0", "g1n0") == Some(vec![g1.clone()])
    })
    .await
    .unwrap();
    put_once(&mut sim, &c, "g0", &[]).await;
    put_once(&mut sim, &c, "g1", &[]).await;
    sim.heal("g1", "g2").unwrap();
    simnet::wait_until("g1 to take the direct link again", LIMIT, || {
        hops_to(&sim, &c, "g1", "g2n0") == Some(vec![g2.clone()])
    })
    .await
    .unwrap();
    put_once(&mut sim, &c, "g1", &[]).await;
}

/// A gateway crashes for real (its swarm and services stop): the others
/// route around it and a PUT reaches every reachable node once. Restarted
/// (same repository, same address), it is routed through again and a PUT
/// reaches every node once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_gateway_is_routed_around_and_back_through_after_a_restart() {
    let (mut sim, mut c) = build(Shape::Ring, 4).await;
    for n in c.all_nodes() {
        sim.set_latency("user", &n, ms(1)..=ms(3)).unwrap();
    }
    let g1 = sim.uuid("g1").unwrap();
    let g3 = sim.uuid("g3").unwrap();
    let before = hops_to(&sim, &c, "g0", "g2n0").unwrap();
    // Crash whichever neighbour g0 goes through to reach g2.
    let (down, other) = if before.first() == Some(&g1) {
        ("g1", &g3)
    } else {
        ("g3", &g1)
    };
    c.crash_gateway(&mut sim, down).await.unwrap();
    simnet::wait_until("g0 to route around the crashed gateway", LIMIT, || {
        hops_to(&sim, &c, "g0", "g2n0").is_some_and(|h| h.first() == Some(other))
    })
    .await
    .unwrap();
    let cut_off = format!("{down}n0");
    put_once(&mut sim, &c, "g0", &[cut_off.as_str()]).await;
    c.restart_gateway(&mut sim, down).await.unwrap();
    let down_uuid = sim.uuid(down).unwrap();
    simnet::wait_until("g0 to route through the restarted gateway", LIMIT, || {
        hops_to(&sim, &c, "g0", &cut_off) == Some(vec![down_uuid.clone()])
    })
    .await
    .unwrap();
    // g0 may see the restarted gateway before that one's daemon sees its own
    // links up again (each keeper notices a connection at its next tick): a
    // PUT in that window reaches the far nodes it routes to by the restarted
    // one on the repairer's next pass only. Back means routing again too.
    let want = c.all_nodes().len();
    simnet::wait_until(
        "the restarted gateway to route to every node",
        LIMIT,
        || c.routed_from(&sim, down).is_ok_and(|n| n == want),
    )
    .await
    .unwrap();
    put_once(&mut sim, &c, "g0", &[]).await;
}

/// Issue 10: a two-gateway cluster (two nodes each) is partitioned, with
/// min 3. Each side takes a key its half alone can hold twice; once the
/// halves heal, the gateways' repairers copy each side's key to the other
/// side, until both keys are on three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_partition_heals_each_sides_keys_reach_min_on_the_other() {
    let mut sim = Sim::from_env().unwrap();
    sim.add_client("user").await.unwrap();
    let mut c = ClusterSim::build(&mut sim, Shape::Line, 2, 2, LIMIT)
        .await
        .unwrap();
    c.start_node_services(&sim).await.unwrap();
    let rule = protocol::replication::Rule {
        min: Some(3),
        max: Some(3),
        grace: Some(5),
    };
    c.set_replication(&sim, "g0", &rule).unwrap();
    simnet::wait_until("the policy to reach g1", LIMIT, || {
        !c.metas["g1"]
            .file_lines(protocol::replication::REPLICATION_LOG)
            .is_empty()
    })
    .await
    .unwrap();
    c.start_repairers(
        &sim,
        protocol::replication::RepairConfig {
            suspect_after_ms: 3_000,
            retry_base_ms: 500,
            retry_max_ms: 2_000,
            settle_ms: 1_000,
            ..Default::default()
        },
    )
    .unwrap();
    let halves = [["g0", "g0n0", "g0n1"], ["g1", "g1n0", "g1n1"]];
    for a in halves[0] {
        for b in halves[1] {
            sim.partition(a, b).unwrap();
        }
    }
    let left = put_through(&mut sim, &c, "g0").await;
    let right = put_through(&mut sim, &c, "g1").await;
    let holders = |sim: &Sim, key: &protocol::Key| -> Vec<String> {
        c.all_nodes()
            .into_iter()
            .filter(|n| sim.store(n).unwrap().contains(key))
            .collect()
    };
    assert_eq!(holders(&sim, &left), ["g0n0", "g0n1"]);
    assert_eq!(holders(&sim, &right), ["g1n0", "g1n1"]);
    for a in halves[0] {
        for b in halves[1] {
            sim.heal(a, b).unwrap();
        }
    }
    let healed = simnet::wait_until("both keys on three nodes", Duration::from_secs(120), || {
        holders(&sim, &left).len() == 3 && holders(&sim, &right).len() == 3
    })
    .await;
    if let Err(e) = healed {
        let state = |g: &str| {
            let dir = node::config::state_dir(sim.store(g).unwrap().repo());
            let repair = std::fs::read_to_string(dir.join("repair")).unwrap_or_default();
            let health = std::fs::read_to_string(dir.join("health")).unwrap_or_default();
            format!("{g} repair:\n{repair}\n{g} health:\n{health}")
        };
        panic!(
            "{e}: left on {:?}, right on {:?}\n{}\n{}",
            holders(&sim, &left),
            holders(&sim, &right),
            state("g0"),
            state("g1")
        );
    }
    // And each side's key crossed to the other side.
    assert!(holders(&sim, &left).iter().any(|n| n.starts_with("g1")));
    assert!(holders(&sim, &right).iter().any(|n| n.starts_with("g0")));
}
