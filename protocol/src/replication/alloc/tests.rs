use proptest::prelude::*;

use super::*;

fn u(s: &str) -> Uuid {
    Uuid::parse(s).unwrap()
}

fn cand(n: &str, room: u64) -> Candidate {
    Candidate {
        node: u(n),
        wants: true,
        alive: true,
        room: Some(room),
        holds: false,
        busy: false,
    }
}

fn req(want: usize, at_least: usize) -> Request<'static> {
    Request {
        size: 10,
        want,
        at_least,
        holders: &[],
        tiebreak: None,
    }
}

/// Two sites: gw1 with n1, n2; gw2 with n3, n4.
fn two_sites() -> Layout {
    let mut l = Layout::new();
    for (n, g) in [("n1", "gw1"), ("n2", "gw1"), ("n3", "gw2"), ("n4", "gw2")] {
        l.set_site(u(n), u(g));
    }
    l
}

#[test]
fn spreads_across_sites_before_room() {
    let l = two_sites();
    // n1 and n2 are emptiest, but share a site.
    let c = vec![
        cand("n1", 1000),
        cand("n2", 900),
        cand("n3", 100),
        cand("n4", 50),
    ];
    assert_eq!(
        allocate(&l, &c, &req(2, 2)).unwrap(),
        vec![u("n1"), u("n3")]
    );
    // With a copy already on gw1, both new ones go to... gw2 first, then gw1.
    let holders = [u("n1")];
    let r = Request {
        holders: &holders,
        ..req(2, 2)
    };
    let mut c2 = c.clone();
    c2[0].holds = true;
    assert_eq!(allocate(&l, &c2, &r).unwrap(), vec![u("n3"), u("n2")]);
}

#[test]
fn groups_come_after_sites() {
    let mut l = Layout::new();
    l.set_groups(u("n1"), ["rackA".to_string()]);
    l.set_groups(u("n2"), ["rackA".to_string()]);
    l.set_groups(u("n3"), ["rackB".to_string()]);
    // No sites known: each node is its own site; groups decide.
    let c = vec![cand("n1", 1000), cand("n2", 999), cand("n3", 11)];
    assert_eq!(
        allocate(&l, &c, &req(2, 2)).unwrap(),
        vec![u("n1"), u("n3")]
    );
    assert_eq!(l.groups(&u("n1")).count(), 1);
    assert_eq!(l.site(&u("n9")), &u("n9"));
}

#[test]
fn emptiest_first_and_deterministic_ties() {
    let l = Layout::new();
    let c = vec![cand("b", 50), cand("a", 50), cand("c", 500)];
    assert_eq!(
        allocate(&l, &c, &req(3, 3)).unwrap(),
        vec![u("c"), u("a"), u("b")]
    );
    // A tiebreak reorders equals only, and is a pure function of its input.
    let mut seen = BTreeSet::new();
    for r in 0..32u64 {
        let rq = Request {
            tiebreak: Some(r),
            ..req(2, 2)
        };
        let got = allocate(&l, &c, &rq).unwrap();
        assert_eq!(got[0], u("c"));
        assert_eq!(got, allocate(&l, &c, &rq).unwrap());
        seen.insert(got[1].clone());
    }
    assert_eq!(
        seen.len(),
        2,
        "both tied nodes get picked for some tiebreak"
    );
}

#[test]
fn shortfall_says_why() {
    let l = Layout::new();
    let mut c = vec![
        cand("full", 5),
        cand("down", 100),
        cand("picky", 100),
        cand("nometrics", 100),
        cand("ok", 100),
        cand("busy", 100),
        cand("has", 100),
    ];
    c[1].alive = false;
    c[2].wants = false;
    c[3].room = None;
    c[5].busy = true;
    c[6].holds = true;
    let err = allocate(&l, &c, &req(3, 2)).unwrap_err();
    assert_eq!(err.placed, vec![u("ok")]);
    assert_eq!(err.needed, 2);
    let reasons: BTreeMap<String, Skip> = err
        .skipped
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
    assert_eq!(reasons["full"], Skip::Full { room: 5 });
    assert_eq!(reasons["down"], Skip::Down);
    assert_eq!(reasons["picky"], Skip::NotWanting);
    assert_eq!(reasons["nometrics"], Skip::NoMetrics);
    assert_eq!(reasons["busy"], Skip::Busy);
    assert!(!reasons.contains_key("has"), "holders are not candidates");
    assert!(err.blocked_by_limits());
    let msg = err.to_string();
    assert!(msg.starts_with("placed 1 of 2 needed copies: "), "{msg}");
    assert!(msg.contains("full full (5 bytes free)"), "{msg}");
    assert!(msg.contains("down not alive"), "{msg}");
    // Between at_least and want is fine.
    assert_eq!(allocate(&l, &c, &req(3, 1)).unwrap(), vec![u("ok")]);
    assert_eq!(allocate(&l, &c, &req(0, 0)).unwrap(), Vec::<Uuid>::new());
    let none = allocate(&l, &[], &req(1, 1)).unwrap_err();
    assert_eq!(
        none.to_string(),
        "placed 0 of 1 needed copies: no other node"
    );
}

#[test]
fn put_places_max_and_fails_below_min() {
    // A PUT with min 2 and max 3 among 5 wanting nodes.
    let l = two_sites();
    let c: Vec<Candidate> = ["n1", "n2", "n3", "n4", "n5"]
        .iter()
        .map(|n| cand(n, 100))
        .collect();
    let got = allocate(&l, &c, &req(3, 2)).unwrap();
    assert_eq!(got.len(), 3);
    let sites: BTreeSet<&Uuid> = got.iter().map(|n| l.site(n)).collect();
    assert_eq!(sites.len(), 3, "gw1, gw2 and n5's own site");
}

#[test]
fn put_targets_fill_to_max_and_need_min() {
    use crate::replication::policy::{Rule, resolve};
    let l = two_sites();
    let c: Vec<Candidate> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| cand(n, 100))
        .collect();
    let e = resolve(Rule::parse("min=2 max=3"), 1, 4);
    assert_eq!(put_targets(&l, &c, 10, &e, &[], None).unwrap().len(), 3);
    let mut c2 = c.clone();
    c2[0].holds = true;
    let got = put_targets(&l, &c2, 10, &e, &[u("n1")], None).unwrap();
    assert_eq!(got, vec![u("n3"), u("n2")]);
    // Only one node with room: below min.
    for x in &mut c2[1..3] {
        x.room = Some(1);
    }
    // Only n4 has room: enough for min 2, not for max 3.
    assert_eq!(
        put_targets(&l, &c2, 10, &e, &[u("n1")], None).unwrap(),
        vec![u("n4")]
    );
    let e5 = resolve(Rule::parse("min=3 max=3"), 1, 4);
    let err = put_targets(&l, &c2, 10, &e5, &[u("n1")], None).unwrap_err();
    assert_eq!(err.needed, 2);
    assert_eq!(err.placed, vec![u("n4")]);
}

#[test]
fn layout_from_branch() {
    use crate::cluster::topology::{Cost, Entry, Link};
    use crate::logs::catalog::Catalog;
    let mut t = Topology::new();
    let link = |n: &str| Link {
        to: u(n),
        cost: Cost::from_hundredths(100),
        name: None,
    };
    t.insert(
        u("gw2"),
        Entry {
            clusters: vec![],
            nodes: vec![link("n1"), link("n3")],
            gateways: vec![],
        },
    );
    t.insert(
        u("gw1"),
        Entry {
            clusters: vec![],
            nodes: vec![link("n1"), link("n2")],
            gateways: vec![],
        },
    );
    let mut cat = Catalog::new();
    cat.insert_line("group.log", "n1 rackA backup timestamp=1s");
    let l = Layout::from_branch(&t, &View::new(&cat));
    assert_eq!(l.site(&u("n1")), &u("gw1"), "smallest gateway uuid");
    assert_eq!(l.site(&u("n3")), &u("gw2"));
    assert_eq!(l.groups(&u("n1")).count(), 2);
}

fn arb_cands() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (
            any::<bool>(),
            any::<bool>(),
            prop::option::of(0u64..200),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.2),
            0u8..4,
        ),
        0..10,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (wants, alive, room, holds, busy, _))| Candidate {
                node: u(&format!("n{i}")),
                wants,
                alive,
                room,
                holds,
                busy,
            })
            .collect()
    })
}

proptest! {
    /// Chosen nodes are eligible, distinct, at most `want`; a shortfall
    /// accounts for every non-holder.
    #[test]
    fn allocation_is_sound(
        cands in arb_cands(),
        sites in prop::collection::vec(0u8..3, 10),
        want in 0usize..6,
        at_least in 0usize..6,
        size in 0u64..150,
        tiebreak in prop::option::of(any::<u64>()),
    ) {
        let mut l = Layout::new();
        for (i, s) in sites.iter().enumerate() {
            l.set_site(u(&format!("n{i}")), u(&format!("gw{s}")));
        }
        let r = Request { size, want, at_least, holders: &[], tiebreak };
        let by_node: BTreeMap<Uuid, &Candidate> = cands.iter().map(|c| (c.node.clone(), c)).collect();
        let eligible = |c: &Candidate| c.wants && c.alive && !c.holds && !c.busy && c.room.is_some_and(|x| x >= size);
        match allocate(&l, &cands, &r) {
            Ok(chosen) => {
                prop_assert!(chosen.len() <= want && chosen.len() >= at_least.min(want).min(chosen.len()));
                prop_assert!(chosen.len() >= at_least);
                let distinct: BTreeSet<&Uuid> = chosen.iter().collect();
                prop_assert_eq!(distinct.len(), chosen.len());
                for n in &chosen {
                    prop_assert!(eligible(by_node[n]));
                }
                let n_eligible = cands.iter().filter(|c| eligible(c)).count();
                prop_assert_eq!(chosen.len(), want.min(n_eligible));
            }
            Err(s) => {
                prop_assert!(s.placed.len() < at_least);
                for n in &s.placed {
                    prop_assert!(eligible(by_node[n]));
                }
                let accounted = s.placed.len() + s.skipped.len();
                prop_assert_eq!(accounted, cands.iter().filter(|c| !c.holds).count());
            }
        }
    }

    /// Site spread: no site gets a second copy while an eligible node of an
    /// unused site was passed over.
    #[test]
    fn sites_fill_evenly(n_sites in 1usize..4, per_site in 1usize..4, want in 1usize..8) {
        let mut l = Layout::new();
        let mut cands = Vec::new();
        for s in 0..n_sites {
            for i in 0..per_site {
                let n = format!("s{s}n{i}");
                l.set_site(u(&n), u(&format!("gw{s}")));
                cands.push(cand(&n, 100 + i as u64));
            }
        }
        let chosen = allocate(&l, &cands, &req(want, 0)).unwrap();
        let mut per: BTreeMap<&Uuid, usize> = BTreeMap::new();
        for n in &chosen {
            *per.entry(l.site(n)).or_default() += 1;
        }
        let (lo, hi) = (per.values().min().copied().unwrap_or(0), per.values().max().copied().unwrap_or(0));
        prop_assert!(hi - lo <= 1 || per.len() < n_sites.min(chosen.len()));
        prop_assert!(hi - lo <= 1);
    }
}

fn put_node(n: &str, room: Option<u64>) -> PutNode {
    PutNode {
        node: u(n),
        alive: true,
        room,
    }
}

fn put_key(i: u32) -> crate::key::Key {
    crate::key::Key::parse(&format!("SHA256E-s10--{i:064x}.bin")).unwrap()
}

#[test]
fn cap_put_keeps_the_plan_without_a_binding_max() {
    use crate::replication::policy::Rule;
    let l = two_sites();
    let planned: Vec<PutNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| put_node(n, None))
        .collect();
    // No max: every planned node.
    let c = cap_put(&l, Rule::parse("min=1"), 1, &put_key(1), &planned, &[]);
    assert_eq!((c.targets.len(), c.capped, c.shortfall), (3, false, None));
    // A max that leaves room for all of them.
    let c = cap_put(
        &l,
        Rule::parse("max=4"),
        1,
        &put_key(1),
        &planned,
        &[u("n4")],
    );
    assert_eq!((c.targets.len(), c.capped), (4 - 1, false));
    // Below min with nothing to cap: a shortfall naming what is placed.
    let c = cap_put(&l, Rule::parse("min=5"), 1, &put_key(1), &planned, &[]);
    let s = c.shortfall.expect("short of min");
    assert_eq!((s.needed, s.placed.len()), (5, 3));
}

#[test]
fn cap_put_places_max_counting_holders_spread_over_sites() {
    use crate::replication::policy::Rule;
    let l = two_sites();
    let planned: Vec<PutNode> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| put_node(n, Some(100)))
        .collect();
    for i in 0..16 {
        let c = cap_put(
            &l,
            Rule::parse("min=1 max=2"),
            1,
            &put_key(i),
            &planned,
            &[],
        );
        assert!(c.capped);
        assert_eq!(c.shortfall, None);
        assert_eq!(c.targets.len(), 2, "{c:?}");
        let sites: BTreeSet<&Uuid> = c.targets.iter().map(|n| l.site(n)).collect();
        assert_eq!(sites.len(), 2, "one per site: {c:?}");
        // Deterministic per key.
        let again = cap_put(
            &l,
            Rule::parse("min=1 max=2"),
            1,
            &put_key(i),
            &planned,
            &[],
        );
        assert_eq!(again, c);
    }
    // A holder at gw1 counts: one more copy, at gw2.
    let rest = &planned[1..];
    let c = cap_put(&l, Rule::parse("max=2"), 1, &put_key(0), rest, &[u("n1")]);
    assert_eq!(c.targets.len(), 1);
    assert_eq!(l.site(&c.targets[0]), &u("gw2"));
    // Holders already at max: nothing to write.
    let c = cap_put(
        &l,
        Rule::parse("max=2"),
        1,
        &put_key(0),
        &planned[2..],
        &[u("n1"), u("n2")],
    );
    assert!(c.targets.is_empty() && c.capped && c.shortfall.is_none());
}

#[test]
fn cap_put_below_min_says_why() {
    use crate::replication::policy::Rule;
    let l = two_sites();
    let mut planned: Vec<PutNode> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| put_node(n, Some(100)))
        .collect();
    planned[0].alive = false;
    planned[1].room = Some(1);
    planned[2].room = Some(0);
    // Only n4 can take it: placed, and the shortfall names the others.
    let c = cap_put(
        &l,
        Rule::parse("min=2 max=3"),
        1,
        &put_key(3),
        &planned,
        &[],
    );
    assert!(c.capped);
    assert_eq!(c.targets, vec![u("n4")]);
    let s = c.shortfall.expect("short");
    assert_eq!(s.needed, 2);
    assert_eq!(
        s.skipped,
        vec![
            (u("n1"), Skip::Down),
            (u("n2"), Skip::Full { room: 1 }),
            (u("n3"), Skip::Full { room: 0 })
        ]
    );
    let text = s.to_string();
    assert!(
        text.contains("placed 1 of 2") && text.contains("not alive"),
        "{text}"
    );
    // An unheard node is assumed to have room.
    planned[3].room = None;
    let c = cap_put(
        &l,
        Rule::parse("min=1 max=3"),
        1,
        &put_key(3),
        &planned,
        &[],
    );
    assert_eq!((c.targets, c.shortfall), (vec![u("n4")], None));
}
