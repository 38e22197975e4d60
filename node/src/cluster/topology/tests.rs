#![allow(clippy::unwrap_used)]

use super::*;
use protocol::logs::catalog::record_map;
use protocol::logs::members::Entry as M;

fn u(n: u8) -> Uuid {
    Uuid::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
}

fn cluster() -> Uuid {
    Uuid::parse("ac000000-0000-4000-8000-000000000001").unwrap()
}

fn line(nodes: &[(u8, &str)], gateways: &[(u8, &str)]) -> Entry {
    let l = |(n, name): &(u8, &str)| Link {
        to: u(*n),
        cost: Cost::from_f64(100.0).unwrap(),
        name: Some((*name).to_owned()),
    };
    Entry {
        clusters: vec![cluster()],
        nodes: nodes.iter().map(l).collect(),
        gateways: gateways.iter().map(l).collect(),
    }
}

fn peer(seed: u8) -> libp2p::PeerId {
    let mut bytes = [seed; 32];
    libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes)
        .unwrap()
        .public()
        .to_peer_id()
}

/// G — H — K in a line, each with a node: G routes K's node through H and
/// names it along the path; when its daemon sees H down, H's and K's nodes
/// are unreachable from G.
#[test]
fn routes_follow_the_gossiped_lines_and_liveness() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = crate::init::init(&tmp.path().join("g"), "G", [1; 16])
        .unwrap()
        .repo;
    let store = Store::new(repo);
    let g = store.uuid().clone();
    let (h, k) = (u(0x10), u(0x20));
    let j = store.journal();
    record_own(j, &g, &line(&[(1, "N1")], &[(0x10, "H")])).unwrap();
    assert!(
        !record_own(j, &g, &line(&[(1, "N1")], &[(0x10, "H")])).unwrap(),
        "unchanged"
    );
    record_own(j, &h, &line(&[(2, "N2")], &[(0x20, "K")])).unwrap();
    record_own(j, &k, &line(&[(3, "N3")], &[])).unwrap();
    let members = [u(1), u(2), u(3)].map(|x| x.to_string()).join(" ");
    j.modify("cluster.log", |old| {
        record_map(old, cluster().as_str(), &members, 100)
    })
    .unwrap();

    let routes = routes(&store, &cluster()).unwrap().unwrap();
    assert!(routes.get(&u(1)).unwrap().hops.is_empty());
    let r3 = routes.get(&u(3)).unwrap();
    assert_eq!(r3.hops, vec![h.clone(), k.clone()]);
    assert_eq!(r3.name, "H-K-N3");
    assert_eq!(routes.get(&u(2)).unwrap().name, "H-N2");

    // H is a member that G's daemon sees disconnected: routed around (here,
    // there is no other way).
    crate::members::record(
        j,
        &peer(7),
        &M::Member {
            uuid: h.to_string(),
            role: protocol::server::ServeMode::ReadWrite,
        },
    )
    .unwrap();
    let state = crate::config::state_dir(store.repo());
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        crate::keeper::seen_file(&state),
        format!("{} 0 -\n", peer(7)),
    )
    .unwrap();
    let routes = super::routes(&store, &cluster()).unwrap().unwrap();
    assert_eq!(routes.reachable(), [u(1)].into_iter().collect());
}

#[test]
fn no_routes_before_this_gateway_has_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = crate::init::init(&tmp.path().join("g"), "G", [1; 16])
        .unwrap()
        .repo;
    let store = Store::new(repo);
    assert!(routes(&store, &cluster()).unwrap().is_none());
}
