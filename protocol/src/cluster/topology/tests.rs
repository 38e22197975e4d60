use super::*;
use proptest::prelude::*;

pub(crate) const CU: &str = "acae2ff6-6c1e-8bec-b8b9-397a3755f397";

fn u(s: &str) -> Uuid {
    Uuid::parse(s).unwrap()
}

fn c(units: u64) -> Cost {
    Cost::from_hundredths(units * 100)
}

fn link(to: &str, cost: u64, name: Option<&str>) -> Link {
    Link {
        to: u(to),
        cost: c(cost),
        name: name.map(str::to_owned),
    }
}

fn entry(nodes: &[(&str, u64, &str)], gateways: &[(&str, u64, &str)]) -> Entry {
    Entry {
        clusters: vec![u(CU)],
        nodes: nodes.iter().map(|(n, c, m)| link(n, *c, Some(m))).collect(),
        gateways: gateways
            .iter()
            .map(|(n, c, m)| link(n, *c, Some(m)))
            .collect(),
    }
}

fn all_alive(t: &Topology) -> BTreeSet<Uuid> {
    t.gateways().cloned().collect()
}

fn none() -> BTreeSet<Uuid> {
    BTreeSet::new()
}

#[test]
fn costs_parse_and_print() {
    for (s, h) in [("0", 0), ("100", 10000), ("200.1", 20010), ("0.05", 5)] {
        assert_eq!(Cost::parse(s), Some(Cost::from_hundredths(h)), "{s}");
        assert_eq!(Cost::from_hundredths(h).to_string(), s);
    }
    for bad in [
        "",
        "-1",
        "1.",
        ".5",
        "1.234",
        "1e3",
        "abc",
        " 1",
        "1,0",
        "9999999999999999",
    ] {
        assert_eq!(Cost::parse(bad), None, "{bad:?}");
    }
    assert_eq!(Cost::from_f64(200.1), Some(Cost::from_hundredths(20010)));
    assert_eq!(Cost::from_f64(-1.0), None);
    assert_eq!(Cost::from_f64(f64::NAN), None);
    assert_eq!(Cost::from_f64(1e300), Some(Cost::from_hundredths(u64::MAX)));
    assert_eq!(
        c(1).saturating_add(Cost::from_hundredths(u64::MAX))
            .hundredths(),
        MAX_COST_HUNDREDTHS
    );
    assert_eq!(Cost::from_hundredths(20010).to_f64(), 200.1);
}

#[test]
fn a_line_round_trips() {
    let e = entry(
        &[("n1", 100, "node1"), ("n2", 200, "node2")],
        &[("gB", 300, "NYC")],
    );
    let line = format!("gA {} timestamp=1700000000s", e.value());
    assert_eq!(
        line,
        format!(
            "gA cluster={CU} nodes=n1:100:node1,n2:200:node2 gateways=gB:300:NYC timestamp=1700000000s"
        )
    );
    let (gw, back, clock) = Entry::parse_line(&line).unwrap();
    assert_eq!(gw, u("gA"));
    assert_eq!(back, e);
    assert_eq!(clock.seconds(), 1_700_000_000);
}

#[test]
fn lenient_on_unknown_fields_and_empty_lists() {
    let e = Entry::parse_value("future=x,y nodes= gateways=g:1.5 cluster=").unwrap();
    assert!(e.clusters.is_empty() && e.nodes.is_empty());
    assert_eq!(
        e.gateways,
        vec![Link {
            to: u("g"),
            cost: Cost::from_hundredths(150),
            name: None
        }]
    );
    // A uuid listed twice: the first entry stands.
    let e = Entry::parse_value("nodes=a:1,a:2,b:3").unwrap();
    assert_eq!(e.nodes.len(), 2);
    assert_eq!(e.nodes[0].cost, c(1));
    assert_eq!(Entry::parse_value("").unwrap(), Entry::default());
}

#[test]
fn garbage_is_rejected() {
    for bad in [
        "nodes=a",
        "nodes=a:x",
        "nodes=a:-1",
        "nodes=a:1:-bad",
        "nodes=a:1:bad/name",
        "nodes=:1",
        "cluster=a:b",
        "justaword",
        "nodes=a:1 stray",
    ] {
        assert!(Entry::parse_value(bad).is_err(), "{bad:?}");
    }
    let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("n{i}:1")).collect();
    assert_eq!(
        Entry::parse_value(&format!("nodes={}", many.join(","))),
        Err(TopologyError::TooMany)
    );
    assert_eq!(
        Entry::parse_line("gA nodes=a:1"),
        Err(TopologyError::Shape),
        "no timestamp"
    );
    assert!(Entry::parse_line("").is_err());
    assert!(Entry::parse_line("g:x nodes= timestamp=1s").is_err());
}

#[test]
fn the_formatter_drops_what_would_not_parse() {
    let e = Entry {
        clusters: vec![u("c:1"), u(CU)],
        nodes: vec![link("a,b", 1, None), link("n", 2, Some("-bad"))],
        gateways: vec![],
    };
    let back = Entry::parse_value(&e.value()).unwrap();
    assert_eq!(back.clusters, vec![u(CU)]);
    assert_eq!(back.nodes, vec![link("n", 2, None)]);
}

#[test]
fn newest_line_per_gateway_wins() {
    let log = format!(
        "gA cluster={CU} nodes=n1:100 gateways= timestamp=10s\n\
         gA cluster={CU} nodes=n2:100 gateways= timestamp=20s\n\
         gB cluster={CU} nodes=n3:100 gateways= timestamp=30s\n\
         gB cluster={CU} nodes=bad gateways= timestamp=40s\n\
         gC cluster={CU} nodes=n4:1 timestamp=5s\n\
         garbage\n\
         gC junk timestamp=1s\n"
    );
    let r = read(log.as_bytes());
    assert_eq!(r[&u("gA")].nodes[0].to, u("n2"));
    assert!(
        !r.contains_key(&u("gB")),
        "a newest line that does not parse leaves the gateway out"
    );
    assert_eq!(
        r[&u("gC")].nodes[0].to,
        u("n4"),
        "an older garbage line does not matter"
    );
    let out = record(log.as_bytes(), &u("gA"), &entry(&[("n9", 1, "x")], &[]), 15);
    let r = read(&out);
    assert_eq!(
        r[&u("gA")].nodes[0].to,
        u("n9"),
        "the clock advances past 20s"
    );
    assert!(String::from_utf8(out).unwrap().contains("gA cluster="));
}

/// AMS — NYC — LON in a line, with names.
fn line3() -> Topology {
    let mut t = Topology::new();
    t.insert(
        u("ams"),
        entry(&[("n1", 100, "node1")], &[("nyc", 200, "NYC")]),
    );
    t.insert(
        u("nyc"),
        entry(
            &[("n3", 100, "node3")],
            &[("ams", 200, "AMS"), ("lon", 100, "LON")],
        ),
    );
    t.insert(
        u("lon"),
        entry(&[("n5", 50, "node5")], &[("nyc", 100, "NYC")]),
    );
    t
}

#[test]
fn routes_along_a_line_with_names() {
    let t = line3();
    let rs = t.routes(&u("ams"), &u(CU), &all_alive(&t), &none());
    let r1 = rs.get(&u("n1")).unwrap();
    assert_eq!(
        (r1.cost, r1.hops.clone(), r1.name.as_str()),
        (c(100), vec![], "node1")
    );
    assert_eq!(r1.next_hop(), None);
    let r5 = rs.get(&u("n5")).unwrap();
    assert_eq!(r5.cost, c(350));
    assert_eq!(r5.hops, vec![u("nyc"), u("lon")]);
    assert_eq!(r5.next_hop(), Some(&u("nyc")));
    assert_eq!(r5.name, "NYC-LON-node5");
    assert_eq!(rs.get(&u("n3")).unwrap().name, "NYC-node3");
    assert_eq!(
        rs.reachable(),
        [u("n1"), u("n3"), u("n5")].into_iter().collect()
    );
    assert_eq!(
        rs.proxy_entries(),
        vec![
            (u("n1"), "node1".to_owned()),
            (u("n3"), "NYC-node3".to_owned()),
            (u("n5"), "NYC-LON-node5".to_owned())
        ]
    );
    assert_eq!(rs.cluster_nodes().len(), 3);
    assert_eq!(rs.get(&u("n5")).unwrap().ranked(2).cost, 350.0);
    // From the middle.
    let rs = t.routes(&u("nyc"), &u(CU), &all_alive(&t), &none());
    assert_eq!(rs.get(&u("n1")).unwrap().name, "AMS-node1");
    assert_eq!(rs.get(&u("n5")).unwrap().name, "LON-node5");
}

#[test]
fn dead_and_bypassed_gateways_are_routed_around() {
    // A ring: ams—nyc—lon—ams; ams's cheapest way to lon's node is via nyc.
    let mut t = Topology::new();
    t.insert(
        u("ams"),
        entry(&[], &[("nyc", 1, "NYC"), ("lon", 10, "LON")]),
    );
    t.insert(
        u("nyc"),
        entry(&[], &[("ams", 1, "AMS"), ("lon", 1, "LON")]),
    );
    t.insert(
        u("lon"),
        entry(&[("n", 1, "n")], &[("nyc", 1, "NYC"), ("ams", 10, "AMS")]),
    );
    let alive = all_alive(&t);
    let rs = t.routes(&u("ams"), &u(CU), &alive, &none());
    assert_eq!(rs.get(&u("n")).unwrap().hops, vec![u("nyc"), u("lon")]);
    let mut no_nyc = alive.clone();
    no_nyc.remove(&u("nyc"));
    let rs = t.routes(&u("ams"), &u(CU), &no_nyc, &none());
    assert_eq!(rs.get(&u("n")).unwrap().hops, vec![u("lon")]);
    assert_eq!(rs.get(&u("n")).unwrap().cost, c(11));
    let rs = t.routes(&u("ams"), &u(CU), &alive, &[u("nyc")].into_iter().collect());
    assert_eq!(rs.get(&u("n")).unwrap().hops, vec![u("lon")]);
    let rs = t.routes(
        &u("ams"),
        &u(CU),
        &[u("ams")].into_iter().collect(),
        &none(),
    );
    assert!(rs.get(&u("n")).is_none());
    assert!(rs.known().contains(&u("n")), "known even when unreachable");
}

#[test]
fn ties_go_to_fewer_hops_then_smaller_uuids() {
    let mut t = Topology::new();
    // me reaches n via b (one hop, cost 2), via a→c (two hops, cost 2), via c (cost 2).
    t.insert(
        u("me"),
        entry(&[], &[("a", 1, "a"), ("b", 1, "b"), ("c", 1, "c")]),
    );
    t.insert(u("a"), entry(&[], &[("c", 0, "c")]));
    t.insert(u("b"), entry(&[("n", 1, "n")], &[]));
    t.insert(u("c"), entry(&[("n", 1, "n")], &[]));
    let rs = t.routes(&u("me"), &u(CU), &all_alive(&t), &none());
    assert_eq!(
        rs.get(&u("n")).unwrap().hops,
        vec![u("b")],
        "b < c, and a→c is longer"
    );
    // A zero-cost direct link wins over everything.
    t.insert(u("me"), entry(&[("n", 2, "n")], &[("b", 0, "b")]));
    t.insert(u("b"), entry(&[("n", 2, "n")], &[]));
    let rs = t.routes(&u("me"), &u(CU), &all_alive(&t), &none());
    assert_eq!(
        rs.get(&u("n")).unwrap().hops,
        Vec::<Uuid>::new(),
        "equal cost, fewer hops"
    );
}

#[test]
fn links_are_directed_and_other_clusters_ignored() {
    let mut t = Topology::new();
    t.insert(u("a"), entry(&[], &[]));
    t.insert(u("b"), entry(&[("n", 1, "n")], &[("a", 1, "A")]));
    let rs = t.routes(&u("a"), &u(CU), &all_alive(&t), &none());
    assert!(rs.get(&u("n")).is_none(), "b links to a, a not to b");
    let mut other = entry(&[("m", 1, "m")], &[]);
    other.clusters = vec![u("ac000000-0000-8000-8000-000000000000")];
    t.insert(u("a"), entry(&[], &[("b", 1, "B"), ("x", 1, "X")]));
    t.insert(u("x"), other);
    let rs = t.routes(&u("a"), &u(CU), &all_alive(&t), &none());
    assert!(rs.get(&u("n")).is_some());
    assert!(rs.get(&u("m")).is_none(), "x serves another cluster");
    assert!(!rs.known().contains(&u("x")));
}

#[test]
fn members_and_fallback_names() {
    let mut t = line3();
    t.set_members(u(CU), [u("n1"), u("n5")]);
    t.insert(
        u("lon"),
        Entry {
            nodes: vec![link("n5", 50, None)],
            ..entry(&[], &[("nyc", 100, "NYC")])
        },
    );
    t.set_fallback_name(u("n5"), "five".into());
    t.set_name(&u("ams"), u("nyc"), "newyork".into());
    t.set_name(&u("ams"), u("lon"), "bad/name".into());
    t.set_name(&u("unknown"), u("lon"), "x".into());
    t.set_fallback_name(u("n1"), "-illegal".into());
    let rs = t.routes(&u("ams"), &u(CU), &all_alive(&t), &none());
    assert!(rs.get(&u("n3")).is_none(), "not in cluster.log");
    assert_eq!(rs.get(&u("n5")).unwrap().name, "newyork-LON-five");
    assert_eq!(
        t.name(&u("zz"), &u("qq")),
        "qq",
        "the uuid is the last resort"
    );
}

#[test]
fn stock_gateways_are_leaves_owning_their_nodes() {
    let mut t = Topology::new();
    t.insert(
        u("me"),
        entry(&[("n1", 100, "node1")], &[("old", 100, "OLD")]),
    );
    let proxies: BTreeMap<String, Vec<(String, String)>> = [
        (
            "old".to_owned(),
            vec![
                ("n1".to_owned(), "n1there".to_owned()),
                ("n2".to_owned(), "node2".to_owned()),
                ("far".to_owned(), "X-far".to_owned()),
                (CU.to_owned(), "mycluster".to_owned()),
            ],
        ),
        ("me".to_owned(), vec![("n1".to_owned(), "node1".to_owned())]),
    ]
    .into_iter()
    .collect();
    let clusters: BTreeMap<String, Vec<String>> =
        [(CU.to_owned(), vec!["n1".into(), "n2".into(), "far".into()])]
            .into_iter()
            .collect();
    t.add_stock_gateways(&proxies, &clusters);
    let alive = all_alive(&t);
    assert!(alive.contains(&u("old")));
    let rs = t.routes(&u("me"), &u(CU), &alive, &none());
    assert!(rs.is_stock(&u("old")));
    let r1 = rs.get(&u("n1")).unwrap();
    assert_eq!(
        r1.hops,
        vec![u("old")],
        "n1 is reached only through the stock gateway"
    );
    assert_eq!(r1.name, "OLD-n1there");
    assert_eq!(r1.cost, c(200));
    assert_eq!(rs.get(&u("n2")).unwrap().name, "OLD-node2");
    // If it is dead, its nodes are ours to reach again.
    let mut no_old = alive.clone();
    no_old.remove(&u("old"));
    let rs = t.routes(&u("me"), &u(CU), &no_old, &none());
    assert_eq!(rs.get(&u("n1")).unwrap().hops, Vec::<Uuid>::new());
    // A stock gateway is not crossed.
    t.insert(u("beyond"), entry(&[("n7", 1, "n7")], &[]));
    let rs2 = t.routes(&u("me"), &u(CU), &all_alive(&t), &none());
    assert!(rs2.get(&u("n7")).is_none());
    // The stock gateway links back to whoever links to it.
    let rs = t.routes(&u("old"), &u(CU), &all_alive(&t), &none());
    assert_eq!(rs.get(&u("n2")).unwrap().hops, Vec::<Uuid>::new());
}

fn arb_entry() -> impl Strategy<Value = Entry> {
    let uuid = "[a-f0-9-]{1,12}".prop_map(|s| u(&s));
    let name = proptest::option::of("[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,8}");
    let link = (uuid.clone(), 0u64..1_000_000, name).prop_map(|(to, h, name)| Link {
        to,
        cost: Cost::from_hundredths(h),
        name,
    });
    (
        proptest::collection::vec(uuid, 0..4),
        proptest::collection::vec(link.clone(), 0..6),
        proptest::collection::vec(link, 0..6),
    )
        .prop_map(|(clusters, nodes, gateways)| Entry {
            clusters,
            nodes,
            gateways,
        })
}

fn dedup<T: Clone>(v: &[T], key: impl Fn(&T) -> &Uuid) -> Vec<T> {
    let mut seen = BTreeSet::new();
    v.iter()
        .filter(|x| seen.insert(key(x).clone()))
        .cloned()
        .collect()
}

/// A random topology: `n` gateways `g0..`, random links and nodes `n0..`.
pub(crate) fn arb_topology() -> impl Strategy<Value = Topology> {
    (
        2usize..6,
        proptest::collection::vec((0usize..6, 0usize..6, 0u64..4), 0..20),
        proptest::collection::vec((0usize..6, 0usize..8, 0u64..4), 1..16),
    )
        .prop_map(|(n, links, nodes)| {
            let mut t = Topology::new();
            for g in 0..n {
                let gateways = links
                    .iter()
                    .filter(|(a, b, _)| a % n == g && b % n != g)
                    .map(|(_, b, c)| link(&format!("g{}", b % n), *c, Some(&format!("G{}", b % n))))
                    .collect::<Vec<_>>();
                let ns = nodes
                    .iter()
                    .filter(|(a, _, _)| a % n == g)
                    .map(|(_, m, c)| link(&format!("n{m}"), *c, Some(&format!("node{m}"))))
                    .collect::<Vec<_>>();
                t.insert(
                    u(&format!("g{g}")),
                    Entry {
                        clusters: vec![u(CU)],
                        nodes: dedup(&ns, |l| &l.to),
                        gateways: dedup(&gateways, |l| &l.to),
                    },
                );
            }
            t
        })
}

proptest! {
    #[test]
    fn entries_round_trip(e in arb_entry()) {
        let kept = Entry {
            clusters: e.clusters.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
            nodes: dedup(&e.nodes, |l| &l.to),
            gateways: dedup(&e.gateways, |l| &l.to),
        };
        let back = Entry::parse_value(&e.value()).unwrap();
        let mut sorted = back.clone();
        sorted.clusters.sort();
        prop_assert_eq!(sorted, kept);
        prop_assert_eq!(back.value(), Entry::parse_value(&back.value()).unwrap().value());
    }

    #[test]
    fn any_line_parses_or_fails_without_panicking(s in "\\PC{0,200}") {
        let _ = Entry::parse_line(&s);
        let _ = Entry::parse_value(&s);
        let _ = read(s.as_bytes());
    }

    #[test]
    fn routes_are_simple_deterministic_and_prefix_closed(t in arb_topology(), dead in 0usize..6) {
        let mut alive = all_alive(&t);
        alive.remove(&u(&format!("g{dead}")));
        alive.insert(u("g0"));
        let me = u("g0");
        let rs = t.routes(&me, &u(CU), &alive, &none());
        let again = t.routes(&me, &u(CU), &alive, &none());
        for r in rs.iter() {
            prop_assert_eq!(Some(r), again.get(&r.node));
            let hops: BTreeSet<&Uuid> = r.hops.iter().collect();
            prop_assert_eq!(hops.len(), r.hops.len(), "no cycles");
            prop_assert!(!r.hops.contains(&me));
            prop_assert!(r.hops.iter().all(|h| alive.contains(h)), "dead gateways avoided");
            prop_assert_eq!(r.name.matches('-').count(), r.hops.len());
            // The next hop, avoiding us, computes the tail of our route.
            if let Some(h) = r.next_hop() {
                let theirs = t.routes(h, &u(CU), &alive, &[me.clone()].into_iter().collect());
                let tail = theirs.get(&r.node);
                prop_assert!(tail.is_some());
                prop_assert_eq!(&tail.unwrap().hops[..], &r.hops[1..]);
            }
        }
    }
}

#[test]
fn a_cut_link_is_routed_around_or_leaves_the_far_side_unreached() {
    let mut t = line3();
    t.cut(&u("lon"), &u("nyc"));
    let rs = t.routes(&u("ams"), &u(CU), &all_alive(&t), &none());
    assert!(rs.get(&u("n5")).is_none(), "over the cut link");
    assert_eq!(rs.get(&u("n3")).unwrap().hops, vec![u("nyc")]);
    // With a second way round (ams–lon), n5 goes that way.
    let mut t = line3();
    t.insert(
        u("ams"),
        entry(
            &[("n1", 100, "node1")],
            &[("nyc", 100, "NYC"), ("lon", 500, "LON")],
        ),
    );
    t.insert(
        u("lon"),
        entry(
            &[("n5", 50, "node5")],
            &[("nyc", 100, "NYC"), ("ams", 500, "AMS")],
        ),
    );
    let rs = t.routes(&u("ams"), &u(CU), &all_alive(&t), &none());
    assert_eq!(rs.get(&u("n5")).unwrap().hops, vec![u("nyc"), u("lon")]);
    t.cut(&u("nyc"), &u("lon"));
    let rs = t.routes(&u("ams"), &u(CU), &all_alive(&t), &none());
    assert_eq!(rs.get(&u("n5")).unwrap().hops, vec![u("lon")]);
    assert_eq!(rs.get(&u("n5")).unwrap().name, "LON-node5");
}
