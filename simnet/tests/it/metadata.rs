//! Metadata scenarios (issue sizes live in `benches/metadata.rs`): a change
//! reaches every peer; a peer cut off during many changes converges after it
//! is reconnected; a new peer catches up a large catalog.

use std::time::Duration;

use simnet::Sim;
use simnet::metadata::{MetaMesh, big_catalog, change, quantile, spread, start_meta};

use crate::util::ms;

const LIMIT: Duration = Duration::from_secs(30);

async fn settle() {
    // gossipsub exchanges subscriptions and grafts its mesh on heartbeats.
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_reaches_every_peer() {
    let mut sim = Sim::from_env().unwrap();
    let mesh = MetaMesh::build(&mut sim, 12, 2).await.unwrap();
    for a in &mesh.names {
        for b in &mesh.names {
            if a < b {
                sim.set_latency(a, b, ms(1)..=ms(10)).unwrap();
            }
        }
    }
    settle().await;
    let times = spread(&mut sim, &mesh, 10, LIMIT).await.unwrap();
    assert_eq!(times.len(), 10 * 11);
    println!(
        "12 peers: p50 {:?}, p99 {:?}",
        quantile(&times, 0.5),
        quantile(&times, 0.99)
    );
    let reference = mesh.meta("p0").catalog();
    for n in &mesh.names {
        assert_eq!(mesh.meta(n).catalog(), reference, "{n} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_cut_off_during_changes_converges_after_reconnecting() {
    let mut sim = Sim::from_env().unwrap();
    let mesh = MetaMesh::build(&mut sim, 6, 1).await.unwrap();
    settle().await;
    // Cut p5 off from everyone.
    for n in &mesh.names[..5] {
        sim.partition("p5", n).unwrap();
    }
    for i in 0..300 {
        let who = &mesh.names[i % 5];
        let (path, line) = change(who, i);
        mesh.meta(who)
            .record_local(&path, format!("{line}\n").as_bytes());
    }
    // The others converge among themselves; p5 has none of it.
    let (path, line) = change(&mesh.names[299 % 5], 299);
    for n in &mesh.names[..5] {
        assert!(
            simnet::metadata::arrival(mesh.meta(n), &path, &line, LIMIT)
                .await
                .is_some()
        );
    }
    assert!(mesh.meta("p5").file_lines(&path).is_empty());
    // Heal and reconnect: one anti-entropy exchange brings p5 up to date.
    for n in &mesh.names[..5] {
        sim.heal("p5", n).unwrap();
    }
    let addr = sim.addr("p0").unwrap();
    sim.net("p5").unwrap().dial(&addr).await.unwrap();
    assert!(
        simnet::metadata::arrival(mesh.meta("p5"), &path, &line, LIMIT)
            .await
            .is_some()
    );
    let reference = mesh.meta("p0").catalog();
    let deadline = std::time::Instant::now() + LIMIT;
    while mesh.meta("p5").catalog() != reference {
        assert!(std::time::Instant::now() < deadline, "p5 did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_peer_catches_up_a_catalog() {
    let mut sim = Sim::from_env().unwrap();
    sim.add_peer("old").await.unwrap();
    let catalog = big_catalog(5_000);
    let old = start_meta(&sim, "old", catalog.clone()).await.unwrap();
    sim.add_peer("new").await.unwrap();
    let new = start_meta(&sim, "new", Default::default()).await.unwrap();
    sim.set_latency("old", "new", ms(5)..=ms(20)).unwrap();
    let start = std::time::Instant::now();
    let addr = sim.addr("old").unwrap();
    sim.net("new").unwrap().dial(&addr).await.unwrap();
    while new.len() < 5_000 {
        assert!(start.elapsed() < LIMIT, "caught up {} of 5000", new.len());
        let _ = tokio::time::timeout(Duration::from_millis(50), new.changed()).await;
    }
    println!("caught up 5000 keys in {:?}", start.elapsed());
    assert_eq!(new.catalog(), old.catalog());
}
