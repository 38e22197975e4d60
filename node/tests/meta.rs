#![allow(clippy::unwrap_used)]
//! Metadata over the mesh: gossip spreads a change at once, anti-entropy brings
//! a latecomer up to date, and unauthorized peers are ignored.

use std::collections::{HashMap, HashSet};
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

/// A peer with its own key, starting from `catalog`.
async fn keyed_peer(
    key: Keypair,
    allowed: Allowed,
    catalog: Catalog,
) -> (Net, Arc<Meta>, libp2p::Multiaddr) {
    let net = Net::spawn(build_swarm(key.clone(), memory_transport(&key).unwrap()).unwrap());
    let addr = net.listen("/memory/0".parse().unwrap()).await.unwrap();
    let meta = Meta::start(
        net.clone(),
        catalog,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_write_only_what_their_role_allows() {
    use node::members::Members;
    use std::sync::atomic::Ordering;
    let (ka, kb, kc) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let (pa, pb, pc) = (
        ka.public().to_peer_id(),
        kb.public().to_peer_id(),
        kc.public().to_peer_id(),
    );
    let ua = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa";
    let ub = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb";
    let uc = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";
    let mut catalog = Catalog::new();
    for line in [
        format!("1s {pa} member {ua} read-only"),
        format!("1s {pb} member {ub} read-write"),
        format!("1s {pc} member {uc} read-write"),
    ] {
        catalog.insert_line("annexmesh/members.log", &line);
    }
    let members = |me| Allowed::Members(Arc::new(Members::new(me, HashMap::new())));
    let (a, ma, _) = keyed_peer(ka, members(pa), catalog.clone()).await;
    let (_b, mb, addr_b) = keyed_peer(kb, members(pb), catalog.clone()).await;
    let (c, mc, _) = keyed_peer(kc, members(pc), catalog).await;
    a.dial(&addr_b).await.unwrap();
    c.dial(&addr_b).await.unwrap();

    // The read-only member claims C holds a key, and that it proxies C.
    let key_log = "fbd/530/SHA256E-s3--x.txt.log";
    let forged = format!("1700000000s 1 {uc}");
    ma.record_local(key_log, format!("{forged}\n").as_bytes());
    ma.record_local("proxy.log", format!("1700000000s {ua} {uc}:c\n").as_bytes());
    // C, read-write, may not speak for B's location, nor describe B's proxying.
    let forged_b = format!("1700000001s 1 {ub}");
    mc.record_local("aaa/bbb/K.log", format!("{forged_b}\n").as_bytes());
    mc.record_local("proxy.log", format!("1700000001s {ub} {uc}:c\n").as_bytes());
    // Its own location line spreads.
    let own = format!("1700000002s 1 {uc}");
    mc.record_local("ccc/ddd/K.log", format!("{own}\n").as_bytes());
    wait_for(&mb, "ccc/ddd/K.log", &own).await;

    // Every forged line reaches B (by gossip or anti-entropy) and is refused.
    let start = Instant::now();
    while mb.counters.lines_rejected.load(Ordering::Relaxed) < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {} line(s) refused",
            mb.counters.lines_rejected.load(Ordering::Relaxed)
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), mb.changed()).await;
    }
    assert!(mb.file_lines(key_log).is_empty());
    assert!(mb.file_lines("aaa/bbb/K.log").is_empty());
    assert!(mb.file_lines("proxy.log").is_empty());
    // An anti-entropy round with each changes nothing more.
    assert_eq!(mb.sync_with(pa).await.unwrap(), 0);
    assert_eq!(mb.sync_with(pc).await.unwrap(), 0);
    assert!(mb.file_lines(key_log).is_empty());
}

/// Peers let in by a grant rather than membership: a read-write grant's
/// lines are taken (as before membership), a read-only grant's are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_grant_writes_no_metadata() {
    use node::members::Members;
    use protocol::server::ServeMode;
    use std::sync::atomic::Ordering;
    let (ka, kb, kc) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let (pa, pb, pc) = (
        ka.public().to_peer_id(),
        kb.public().to_peer_id(),
        kc.public().to_peer_id(),
    );
    let grants = HashMap::from([(pa, ServeMode::ReadOnly), (pc, ServeMode::ReadWrite)]);
    let b_allows = Allowed::Members(Arc::new(Members::new(pb, grants)));
    let (a, ma, _) = keyed_peer(ka, Allowed::Any, Catalog::new()).await;
    let (_b, mb, addr_b) = keyed_peer(kb, b_allows, Catalog::new()).await;
    let (c, mc, _) = keyed_peer(kc, Allowed::Any, Catalog::new()).await;
    a.dial(&addr_b).await.unwrap();
    c.dial(&addr_b).await.unwrap();
    let forged = "1700000000s u1 from a read-only grant timestamp=1s";
    ma.record_local("uuid.log", format!("{forged}\n").as_bytes());
    let fine = "1700000001s u2 from a read-write grant timestamp=1s";
    mc.record_local("uuid.log", format!("{fine}\n").as_bytes());
    wait_for(&mb, "uuid.log", fine).await;
    let start = Instant::now();
    while mb.counters.lines_rejected.load(Ordering::Relaxed) < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the read-only grant's line was never refused"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), mb.changed()).await;
    }
    assert_eq!(mb.sync_with(pa).await.unwrap(), 0);
    assert!(!mb.file_lines("uuid.log").iter().any(|l| l == forged));
}
