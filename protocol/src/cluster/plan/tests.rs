use super::*;
use crate::cluster::topology::{Cost, Entry, Link, Topology};
use proptest::prelude::*;

const CU: &str = "acae2ff6-6c1e-8bec-b8b9-397a3755f397";

fn u(s: &str) -> Uuid {
    Uuid::parse(s).unwrap()
}

fn set(v: &[&str]) -> BTreeSet<Uuid> {
    v.iter().map(|s| u(s)).collect()
}

fn link(to: &str, cost: u64) -> Link {
    Link {
        to: u(to),
        cost: Cost::from_hundredths(cost * 100),
        name: None,
    }
}

fn entry(nodes: &[(&str, u64)], gateways: &[(&str, u64)]) -> Entry {
    Entry {
        clusters: vec![u(CU)],
        nodes: nodes.iter().map(|(n, c)| link(n, *c)).collect(),
        gateways: gateways.iter().map(|(n, c)| link(n, *c)).collect(),
    }
}

/// ams — nyc — lon, each with nodes.
fn line3() -> Topology {
    let mut t = Topology::new();
    t.insert(
        u("ams"),
        entry(&[("n1", 100), ("n2", 100)], &[("nyc", 200)]),
    );
    t.insert(
        u("nyc"),
        entry(&[("n3", 100)], &[("ams", 200), ("lon", 100)]),
    );
    t.insert(u("lon"), entry(&[("n5", 100)], &[("nyc", 100)]));
    t
}

fn plan_for(
    t: &Topology,
    me: &str,
    wanted: &BTreeSet<Uuid>,
    have: &BTreeSet<Uuid>,
    bypass: &BTreeSet<Uuid>,
) -> Plan {
    let alive: BTreeSet<Uuid> = t.gateways().cloned().collect();
    let routes = t.routes(&u(me), &u(CU), &alive, bypass);
    plan_put(&PutFacts {
        routes: &routes,
        wanted,
        have,
        bypass,
        offsets: &BTreeMap::new(),
    })
}

#[test]
fn local_targets_and_one_hop_with_its_bypass() {
    let t = line3();
    let wanted = set(&["n1", "n2", "n3", "n5"]);
    let have = set(&["n2"]);
    let p = plan_for(&t, "ams", &wanted, &have, &BTreeSet::new());
    assert!(!p.fallback);
    assert_eq!(
        p.local,
        vec![LocalTarget {
            node: u("n1"),
            offset: 0
        }]
    );
    assert_eq!(p.hops.len(), 1);
    let hop = &p.hops[0];
    assert_eq!(hop.gateway, u("nyc"));
    assert_eq!(hop.nodes, vec![u("n3"), u("n5")]);
    // Everything but nyc's share (n3, n5) and the gateways on its routes (nyc, lon).
    assert_eq!(hop.bypass, vec![u("ams"), u("n1"), u("n2")]);
    assert!(!hop.stock);
    assert_eq!(p.targets(), set(&["n1", "n3", "n5"]));
    // nyc, given that BYPASS, hands n5 on to lon, bypassing ams's side and n3.
    let bypass: BTreeSet<Uuid> = hop.bypass.iter().cloned().collect();
    let p2 = plan_for(&t, "nyc", &wanted, &have, &bypass);
    assert_eq!(p2.local.len(), 1);
    assert_eq!(p2.local[0].node, u("n3"));
    assert_eq!(p2.hops[0].gateway, u("lon"));
    assert_eq!(
        p2.hops[0].bypass,
        vec![u("ams"), u("n1"), u("n2"), u("n3"), u("nyc")]
    );
}

#[test]
fn fallback_when_nobody_wants_it() {
    let t = line3();
    let p = plan_for(
        &t,
        "ams",
        &set(&["elsewhere"]),
        &set(&["n3"]),
        &BTreeSet::new(),
    );
    assert!(p.fallback);
    assert_eq!(
        p.targets(),
        set(&["n1", "n2", "n5"]),
        "every node lacking it"
    );
    assert!(
        p.hops[0].bypass.contains(&u("elsewhere")),
        "wanted uuids are bypassed too"
    );
    // Everyone has it: nothing to do.
    let p = plan_for(
        &t,
        "ams",
        &BTreeSet::new(),
        &set(&["n1", "n2", "n3", "n5"]),
        &BTreeSet::new(),
    );
    assert!(p.is_empty());
}

#[test]
fn the_incoming_bypass_is_honoured_and_forwarded() {
    let t = line3();
    let wanted = set(&["n1", "n2", "n3", "n5"]);
    let p = plan_for(
        &t,
        "ams",
        &wanted,
        &BTreeSet::new(),
        &set(&["n1", "client-gw"]),
    );
    assert_eq!(p.local.len(), 1, "n1 is bypassed");
    assert!(p.hops[0].bypass.contains(&u("client-gw")));
    // Bypassing nyc cuts off lon's nodes.
    let p = plan_for(&t, "ams", &wanted, &BTreeSet::new(), &set(&["nyc"]));
    assert!(p.hops.is_empty());
    assert_eq!(p.targets(), set(&["n1", "n2"]));
}

#[test]
fn offsets_and_put_from() {
    let t = line3();
    let alive: BTreeSet<Uuid> = t.gateways().cloned().collect();
    let routes = t.routes(&u("ams"), &u(CU), &alive, &BTreeSet::new());
    let offsets: BTreeMap<Uuid, u64> = [(u("n1"), 40), (u("n5"), 7)].into_iter().collect();
    let p = plan_put(&PutFacts {
        routes: &routes,
        wanted: &set(&["n1", "n2"]),
        have: &BTreeSet::new(),
        bypass: &BTreeSet::new(),
        offsets: &offsets,
    });
    assert_eq!(
        p.local,
        vec![
            LocalTarget {
                node: u("n1"),
                offset: 40
            },
            LocalTarget {
                node: u("n2"),
                offset: 0
            }
        ]
    );
    assert_eq!(put_from(p.local.iter().map(|t| t.offset)), 0);
    assert_eq!(put_from([40, 12, 90]), 12);
    assert_eq!(put_from([]), 0);
    assert_eq!(data_len(100, 40), 60);
    assert_eq!(data_len(100, 140), 0);
}

#[test]
fn the_valid_gate() {
    use Validity::*;
    let good = GatewayCheck::Checked(Verdict::Good);
    let size_only = GatewayCheck::Checked(Verdict::SizeOnly);
    let bad = GatewayCheck::Checked(Verdict::WrongHash);
    assert!(send_valid(&good, Invalid), "a hash check overrides INVALID");
    assert!(send_valid(&size_only, Valid));
    assert!(send_valid(&size_only, Unknown));
    assert!(!send_valid(&size_only, Invalid));
    assert!(!send_valid(&bad, Valid));
    assert!(!send_valid(&GatewayCheck::Failed, Valid));
    assert!(send_valid(&GatewayCheck::FromOffset, Valid));
    assert!(!send_valid(&GatewayCheck::FromOffset, Invalid));
}

#[test]
fn a_stock_hop_is_told_to_forward_nowhere() {
    let mut t = Topology::new();
    t.insert(
        u("me"),
        entry(&[("n1", 100)], &[("old", 100), ("nyc", 100)]),
    );
    t.insert(
        u("nyc"),
        entry(&[("n3", 100)], &[("me", 100), ("old", 100)]),
    );
    let proxies: BTreeMap<String, Vec<(String, String)>> = [(
        "old".to_owned(),
        vec![
            ("n2".to_owned(), "node2".to_owned()),
            (CU.to_owned(), "c".to_owned()),
        ],
    )]
    .into_iter()
    .collect();
    let clusters = [(CU.to_owned(), vec!["n1".into(), "n2".into(), "n3".into()])]
        .into_iter()
        .collect();
    t.add_stock_gateways(&proxies, &clusters);
    let p = plan_for(
        &t,
        "me",
        &set(&["n1", "n2", "n3"]),
        &BTreeSet::new(),
        &BTreeSet::new(),
    );
    let old = p.hops.iter().find(|h| h.gateway == u("old")).unwrap();
    assert!(old.stock);
    assert_eq!(old.nodes, vec![u("n2")]);
    assert!(old.bypass.contains(&u("nyc")) && old.bypass.contains(&u("me")));
}

#[test]
fn a_bypass_too_long_for_a_line_leaves_the_hop_out() {
    let mut t = Topology::new();
    let long = |i: usize| format!("{i:0>100}");
    let many: Vec<(String, u64)> = (0..400).map(|i| (long(i), 1)).collect();
    let nodes: Vec<(&str, u64)> = many.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    t.insert(u("me"), entry(&nodes, &[("far", 1)]));
    t.insert(u("far"), entry(&[("x", 1)], &[]));
    let p = plan_for(&t, "me", &set(&["x"]), &BTreeSet::new(), &BTreeSet::new());
    assert!(p.hops.is_empty());
    assert_eq!(p.unsendable.len(), 1);
    assert!(!bypass_fits(&p.unsendable[0].bypass));
    assert!(bypass_fits(&[]));
}

// ---- The recursive simulation ----

/// The facts every gateway shares in a simulated cluster.
#[derive(Debug, Clone)]
struct World {
    topo: Topology,
    stock: BTreeSet<Uuid>,
    alive: BTreeSet<Uuid>,
    wanted: BTreeSet<Uuid>,
    have: BTreeSet<Uuid>,
}

#[derive(Debug, Default)]
struct Tally {
    deliveries: BTreeMap<Uuid, u32>,
    visits: BTreeMap<Uuid, u32>,
}

/// `gw` receives a PUT with `bypass`: an annexmesh gateway runs the planner;
/// a stock one does what git-annex does (puts to its own lacking nodes that
/// want it, else all its lacking nodes, whatever BYPASS says about nodes;
/// forwards to every linked gateway not bypassed, adding itself).
fn receive(w: &World, gw: &Uuid, bypass: &BTreeSet<Uuid>, tally: &mut Tally) {
    let v = tally.visits.entry(gw.clone()).or_insert(0);
    *v += 1;
    if *v > 1 {
        return;
    }
    if w.stock.contains(gw) {
        let lacking: Vec<Uuid> = w
            .topo
            .direct_nodes(gw)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !w.have.contains(n))
            .collect();
        let wanting: Vec<&Uuid> = lacking.iter().filter(|n| w.wanted.contains(*n)).collect();
        let targets: Vec<&Uuid> = if wanting.is_empty() {
            lacking.iter().collect()
        } else {
            wanting
        };
        for n in targets {
            *tally.deliveries.entry(n.clone()).or_insert(0) += 1;
        }
        let mut onward = bypass.clone();
        onward.insert(gw.clone());
        for (g, _) in w.topo.links(gw) {
            if w.alive.contains(&g) && !onward.contains(&g) {
                receive(w, &g, &onward, tally);
            }
        }
        return;
    }
    let routes = w.topo.routes(gw, &u(CU), &w.alive, bypass);
    let plan = plan_put(&PutFacts {
        routes: &routes,
        wanted: &w.wanted,
        have: &w.have,
        bypass,
        offsets: &BTreeMap::new(),
    });
    for t in &plan.local {
        *tally.deliveries.entry(t.node.clone()).or_insert(0) += 1;
    }
    for hop in &plan.hops {
        if w.alive.contains(&hop.gateway) {
            let b: BTreeSet<Uuid> = hop.bypass.iter().cloned().collect();
            receive(w, &hop.gateway, &b, tally);
        }
    }
}

/// Runs a PUT from `g0` and checks exactly-once delivery.
fn check_exactly_once(w: &World) -> Result<(), String> {
    let me = u("g0");
    let routes = w.topo.routes(&me, &u(CU), &w.alive, &BTreeSet::new());
    let lacking: BTreeSet<Uuid> = routes
        .reachable()
        .into_iter()
        .filter(|n| !w.have.contains(n))
        .collect();
    let wanted: BTreeSet<Uuid> = lacking.intersection(&w.wanted).cloned().collect();
    let expected = if wanted.is_empty() { lacking } else { wanted };
    let mut tally = Tally::default();
    receive(w, &me, &BTreeSet::new(), &mut tally);
    for (g, v) in &tally.visits {
        if *v != 1 {
            return Err(format!("gateway {g} visited {v} times"));
        }
    }
    let all: BTreeSet<&Uuid> = tally.deliveries.keys().chain(expected.iter()).collect();
    for n in all {
        let got = tally.deliveries.get(n).copied().unwrap_or(0);
        let want = u32::from(expected.contains(n));
        if got != want {
            return Err(format!("node {n}: {got} deliveries, expected {want}"));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Line,
    Ring,
    Star,
    Mesh,
    Random,
}

/// The directed gateway links of `shape` over `n` gateways.
fn gateway_links(
    n: usize,
    shape: Shape,
    random_links: &[(usize, usize)],
) -> BTreeSet<(usize, usize)> {
    let mut links: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut both = |a: usize, b: usize| {
        if a != b {
            links.insert((a, b));
            links.insert((b, a));
        }
    };
    match shape {
        Shape::Line => (1..n).for_each(|i| both(i - 1, i)),
        Shape::Ring => (0..n).for_each(|i| both(i, (i + 1) % n)),
        Shape::Star => (1..n).for_each(|i| both(0, i)),
        Shape::Mesh => (0..n).for_each(|i| (0..n).for_each(|j| both(i, j))),
        Shape::Random => random_links.iter().for_each(|&(a, b)| {
            if a % n != b % n {
                links.insert((a % n, b % n));
            }
        }),
    }
    links
}

/// Each gateway's nodes: node `i` is attached to gateways `a` and `b` (once
/// if equal), and to at most one stock gateway.
fn attach_nodes(
    n: usize,
    nodes: &[(usize, usize, u64, u64)],
    stock: &BTreeSet<usize>,
) -> BTreeMap<usize, Vec<(String, u64)>> {
    let mut node_links: BTreeMap<usize, Vec<(String, u64)>> = BTreeMap::new();
    let mut stock_owned: BTreeSet<usize> = BTreeSet::new();
    for (i, &(a, b, ca, cb)) in nodes.iter().enumerate() {
        let name = format!("n{i}");
        for (gw, c) in [(a % n, ca), (b % n, cb)] {
            if stock.contains(&gw) && !stock_owned.insert(i) {
                continue; // one stock gateway per node at most
            }
            let list = node_links.entry(gw).or_default();
            if !list.iter().any(|(x, _)| *x == name) {
                list.push((name.clone(), c));
            }
        }
    }
    node_links
}

/// A world of `n` gateways `g0..` linked in `shape` (links both ways, with
/// random costs; `Random` draws directed links), nodes attached to one or two
/// gateways each. Gateways in `stock` (never g0) have no topology line: they
/// appear in proxy.log, and their nodes are attached to no other stock one.
#[allow(clippy::too_many_arguments)]
fn world(
    n: usize,
    shape: Shape,
    costs: &[u64],
    random_links: &[(usize, usize)],
    nodes: &[(usize, usize, u64, u64)],
    stock: &BTreeSet<usize>,
    dead: &BTreeSet<usize>,
    wanted: &BTreeSet<usize>,
    have: &BTreeSet<usize>,
) -> World {
    let g = |i: usize| format!("g{i}");
    let cost = |i: usize| costs.get(i % costs.len().max(1)).copied().unwrap_or(1);
    let links = gateway_links(n, shape, random_links);
    let stock: BTreeSet<usize> = stock.iter().map(|s| s % n).filter(|s| *s != 0).collect();
    let node_links = attach_nodes(n, nodes, &stock);
    let mut topo = Topology::new();
    let mut proxies: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for i in 0..n {
        let ns = node_links.get(&i).cloned().unwrap_or_default();
        if stock.contains(&i) {
            let mut entries: Vec<(String, String)> =
                ns.iter().map(|(x, _)| (x.clone(), x.clone())).collect();
            entries.push((CU.to_owned(), "cluster".to_owned()));
            proxies.insert(g(i), entries);
            continue;
        }
        let gateways: Vec<Link> = links
            .iter()
            .filter(|(a, _)| *a == i)
            .enumerate()
            .map(|(k, (_, b))| Link {
                to: u(&g(*b)),
                cost: Cost::from_hundredths(cost(i * 7 + k) * 100),
                name: Some(format!("G{b}")),
            })
            .collect();
        let nodes = ns
            .iter()
            .map(|(x, c)| Link {
                to: u(x),
                cost: Cost::from_hundredths(c * 100),
                name: Some(x.clone()),
            })
            .collect();
        topo.insert(
            u(&g(i)),
            Entry {
                clusters: vec![u(CU)],
                nodes,
                gateways,
            },
        );
    }
    let members: Vec<String> = (0..nodes.len()).map(|i| format!("n{i}")).collect();
    let clusters = [(CU.to_owned(), members)].into_iter().collect();
    topo.add_stock_gateways(&proxies, &clusters);
    let alive = (0..n)
        .filter(|i| *i == 0 || !dead.contains(i))
        .map(|i| u(&g(i)))
        .collect();
    let pick = |s: &BTreeSet<usize>| -> BTreeSet<Uuid> {
        s.iter()
            .filter(|i| **i < nodes.len())
            .map(|i| u(&format!("n{i}")))
            .collect()
    };
    World {
        topo,
        stock: stock.iter().map(|i| u(&g(*i))).collect(),
        alive,
        wanted: pick(wanted),
        have: pick(have),
    }
}

#[test]
fn exactly_once_in_every_shape() {
    let nodes: Vec<(usize, usize, u64, u64)> = (0..10)
        .map(|i| (i, i * 3 + 1, (i % 3) as u64, (i % 2) as u64 * 2))
        .collect();
    let none = BTreeSet::new();
    let wanted: BTreeSet<usize> = (0..10).filter(|i| i % 4 != 1).collect();
    let have: BTreeSet<usize> = [2].into_iter().collect();
    for shape in [Shape::Line, Shape::Ring, Shape::Star, Shape::Mesh] {
        for n in 2..=5 {
            for stock in [none.clone(), [n - 1].into_iter().collect()] {
                let w = world(
                    n,
                    shape,
                    &[1, 2, 0, 3],
                    &[],
                    &nodes,
                    &stock,
                    &none,
                    &wanted,
                    &have,
                );
                if let Err(e) = check_exactly_once(&w) {
                    panic!("{shape:?} of {n}, stock {stock:?}: {e}");
                }
            }
        }
    }
}

#[test]
fn a_ring_reaches_around_a_dead_gateway_once() {
    // g0—g1—g2—g3—g0, g1 dead: g2's nodes go round through g3.
    let nodes = [(2, 2, 1, 1), (1, 3, 1, 5), (0, 1, 9, 1)];
    let none = BTreeSet::new();
    let dead = [1].into_iter().collect();
    let all: BTreeSet<usize> = (0..3).collect();
    let w = world(4, Shape::Ring, &[1], &[], &nodes, &none, &dead, &all, &none);
    let routes = w.topo.routes(&u("g0"), &u(CU), &w.alive, &BTreeSet::new());
    assert_eq!(routes.get(&u("n0")).unwrap().hops, vec![u("g3"), u("g2")]);
    assert_eq!(routes.get(&u("n1")).unwrap().hops, vec![u("g3")]);
    assert_eq!(routes.get(&u("n2")).unwrap().hops, Vec::<Uuid>::new());
    check_exactly_once(&w).unwrap();
}

fn arb_shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Line),
        Just(Shape::Ring),
        Just(Shape::Star),
        Just(Shape::Mesh),
        Just(Shape::Random)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn every_wanted_reachable_node_gets_the_put_exactly_once(
        n in 2usize..=5,
        shape in arb_shape(),
        costs in proptest::collection::vec(0u64..4, 1..8),
        random_links in proptest::collection::vec((0usize..5, 0usize..5), 0..16),
        nodes in proptest::collection::vec((0usize..5, 0usize..5, 0u64..4, 0u64..4), 0..10),
        stock in proptest::collection::btree_set(0usize..5, 0..2),
        dead in proptest::collection::btree_set(0usize..5, 0..2),
        wanted in proptest::collection::btree_set(0usize..10, 0..10),
        have in proptest::collection::btree_set(0usize..10, 0..4),
    ) {
        let w = world(n, shape, &costs, &random_links, &nodes, &stock, &dead, &wanted, &have);
        if let Err(e) = check_exactly_once(&w) {
            return Err(TestCaseError::fail(format!("{e}\n{w:#?}")));
        }
    }

    #[test]
    fn hop_shares_and_local_targets_are_disjoint(
        n in 2usize..=5,
        shape in arb_shape(),
        costs in proptest::collection::vec(0u64..4, 1..8),
        random_links in proptest::collection::vec((0usize..5, 0usize..5), 0..16),
        nodes in proptest::collection::vec((0usize..5, 0usize..5, 0u64..4, 0u64..4), 0..10),
        wanted in proptest::collection::btree_set(0usize..10, 0..10),
        bypass in proptest::collection::btree_set(0usize..15, 0..4),
    ) {
        let none = BTreeSet::new();
        let w = world(n, shape, &costs, &random_links, &nodes, &none, &none, &wanted, &none);
        let bypass: BTreeSet<Uuid> = bypass
            .iter()
            .map(|i| if *i < 10 { u(&format!("n{i}")) } else { u(&format!("g{}", i - 10)) })
            .filter(|g| *g != u("g0"))
            .collect();
        let routes = w.topo.routes(&u("g0"), &u(CU), &w.alive, &bypass);
        let plan = plan_put(&PutFacts {
            routes: &routes,
            wanted: &w.wanted,
            have: &w.have,
            bypass: &bypass,
            offsets: &BTreeMap::new(),
        });
        let mut seen: BTreeSet<Uuid> = BTreeSet::new();
        for t in &plan.local {
            prop_assert!(seen.insert(t.node.clone()));
            prop_assert!(!bypass.contains(&t.node));
        }
        for h in &plan.hops {
            prop_assert!(!bypass.contains(&h.gateway));
            for b in &bypass {
                prop_assert!(h.bypass.contains(b), "the incoming BYPASS is forwarded");
            }
            prop_assert!(h.bypass.contains(&u("g0")));
            for node in &h.nodes {
                prop_assert!(seen.insert(node.clone()), "one share per node");
                prop_assert!(!h.bypass.contains(node));
            }
            for other in &plan.hops {
                if other.gateway != h.gateway {
                    prop_assert!(h.bypass.contains(&other.gateway));
                    for node in &other.nodes {
                        prop_assert!(h.bypass.contains(node));
                    }
                }
            }
        }
    }
}

#[test]
fn direct_targets_are_the_wanted_else_all() {
    assert_eq!(
        direct_targets(&[false, true, false, true]),
        (vec![1, 3], false)
    );
    assert_eq!(direct_targets(&[false, false]), (vec![0, 1], true));
    assert_eq!(direct_targets(&[]), (vec![], true));
}
