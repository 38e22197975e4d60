#![allow(clippy::unwrap_used)]
//! Metadata over the mesh: gossip spreads a change at once, anti-entropy brings
//! a latecomer up to date, and unauthorized peers are ignored.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use node::meta::{Allowed, Meta, MetaOptions};
use node::net::{Net, build_swarm, memory_transport};
use protocol::logs::catalog::Catalog;

async fn peer(allowed: Allowed) -> (Net, Arc<Meta>, libp2p::Multiaddr) {
    let key = Keypair::generate_ed25519();
    let net = Net::spawn(build_swarm(key.clone(), memory_transport(&key).unwrap()).unwrap());
    let addr = net.listen("/memory/0".parse().unwrap()).await.unwrap();
    let meta = Meta::start(
        net.clone(),
        Catalog::new(),
        MetaOptions {
            allowed,
            ..MetaOptions::default()
        },
        None,
    )
    .await
    .unwrap();
    (net, meta, addr)
}

async fn wait_for(meta: &Meta, path: &str, line: &str) -> Duration {
    let start = Instant::now();
    while !meta.file_lines(path).iter().any(|l| l == line) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{path} never got {line}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), meta.changed()).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_then_anti_entropy() {
    let (a, ma, _) = peer(Allowed::Any).await;
    let (b, mb, addr_b) = peer(Allowed::Any).await;
    let (_c, mc, addr_c) = peer(Allowed::Any).await;
    a.dial(&addr_b).await.unwrap();
    b.dial(&addr_c).await.unwrap();
    // Let gossipsub exchange subscriptions and build its mesh.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let path = "fbd/530/SHA256E-s3--2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae.txt.log";
    let line = "1700000000s 1 aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
    ma.record_local(path, format!("{line}\n").as_bytes());
    wait_for(&mb, path, line).await;
    wait_for(&mc, path, line).await;

    // Many changes on A, then a brand-new peer D that only connects afterwards.
    for i in 0..500 {
        ma.record_local(
            &format!("aaa/bbb/K{i}.log"),
            format!("17{i:08}s 1 u{i}\n").as_bytes(),
        );
    }
    let (d, md, _) = peer(Allowed::Any).await;
    d.dial(&addr_c).await.unwrap();
    wait_for(&md, "aaa/bbb/K499.log", "1700000499s 1 u499").await;
    wait_for(&md, path, line).await;
    assert_eq!(md.catalog(), ma.catalog(), "D converged with A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_peers_are_ignored() {
    let (a, ma, _) = peer(Allowed::Any).await;
    let (_b, mb, addr_b) = peer(Allowed::Peers(HashSet::new())).await;
    a.dial(&addr_b).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ma.record_local("uuid.log", b"u1 evil timestamp=1s\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(mb.file_lines("uuid.log").is_empty());
}
