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
        LIMIT,
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
