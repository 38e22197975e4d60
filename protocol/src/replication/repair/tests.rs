use proptest::prelude::*;

use super::*;
use crate::replication::monitor::{Metrics, MonitorConfig};
use crate::replication::policy::{Rule, resolve};

pub(crate) fn u(s: &str) -> Uuid {
    Uuid::parse(s).unwrap()
}

pub(crate) fn key(i: u32) -> Key {
    Key::parse(&format!("SHA256E-s1000--{i:064x}")).unwrap()
}

pub(crate) fn eff(min: u32, max: u32) -> Effective {
    resolve(
        Rule {
            min: Some(min),
            max: Some(max),
            grace: Some(300),
        },
        min,
        max,
    )
}

/// Everyone wants everything; nobody requires anything; `e` applies.
pub(crate) fn uniform(e: Effective) -> impl Fn(&Key, &[&Uuid], &[Uuid], &mut Needs) {
    move |_, _, _, out| {
        out.effective = e;
        out.wanting.fill(true);
    }
}

/// A cluster of nodes `n1..=nN` behind one gateway `gw`, all with room.
pub(crate) struct World {
    pub planner: Planner,
    pub monitor: Monitor,
    pub layout: Layout,
    pub gateways: Vec<Uuid>,
    pub now: u64,
    pub nodes: Vec<Uuid>,
}

impl World {
    pub fn new(n: usize, config: RepairConfig) -> World {
        let nodes: Vec<Uuid> = (1..=n).map(|i| u(&format!("n{i}"))).collect();
        let mut planner = Planner::new(u("gw"), config);
        planner.set_members(nodes.clone());
        let mut w = World {
            planner,
            monitor: Monitor::new(MonitorConfig::default()),
            layout: Layout::new(),
            gateways: vec![u("gw")],
            now: 10_000_000,
            nodes,
        };
        w.refresh_metrics(1 << 40);
        w
    }

    pub fn refresh_metrics(&mut self, free: u64) {
        for n in self.nodes.clone() {
            self.set_free(&n, free);
        }
    }

    pub fn set_free(&mut self, n: &Uuid, free: u64) {
        let m = Metrics {
            free_bytes: free,
            ..Metrics::default()
        };
        self.monitor.on_metrics(n, m, self.now);
    }

    pub fn env<'a>(&'a self, p: &'a dyn Placement) -> Env<'a> {
        Env {
            now: self.now,
            placement: p,
            monitor: &self.monitor,
            layout: &self.layout,
            gateways: &self.gateways,
            tiebreak: None,
        }
    }

    pub fn poll(&mut self, p: &dyn Placement) -> Vec<Transfer> {
        let env = Env {
            now: self.now,
            placement: p,
            monitor: &self.monitor,
            layout: &self.layout,
            gateways: &self.gateways,
            tiebreak: None,
        };
        self.planner.poll(&env)
    }

    pub fn event(&mut self, e: Event) {
        self.planner.on_event(&e);
    }

    pub fn down(&mut self, n: &str) {
        let last_seen = self.now.saturating_sub(310_000);
        self.event(Event::Down {
            node: u(n),
            at: self.now,
            last_seen,
        });
    }

    pub fn recovered(&mut self, n: &str) {
        self.event(Event::Recovered {
            node: u(n),
            at: self.now,
            last_seen: 0,
        });
    }

    /// Polls and completes every transfer successfully until nothing is
    /// planned; returns every action, in order.
    pub fn settle(&mut self, p: &dyn Placement) -> Vec<Action> {
        let mut all = Vec::new();
        for _ in 0..10_000 {
            let ts = self.poll(p);
            if ts.is_empty() {
                break;
            }
            for t in ts {
                assert!(self.planner.on_transfer_done(t.id, Ok(()), self.now));
                all.push(t.action);
            }
        }
        all
    }

    /// Holders whose node is not down.
    pub fn live_copies(&self, k: &Key, down: &[&str]) -> usize {
        self.planner
            .holders(k)
            .iter()
            .filter(|h| !down.contains(&h.as_str()))
            .count()
    }
}

/// `keys` keys, key i on nodes i % n and (i + 1) % n (and (i + 2) % n if
/// `three`).
fn spread(w: &mut World, keys: u32, three: bool) {
    let n = w.nodes.len() as u32;
    for i in 0..keys {
        let copies = if three { 3 } else { 2 };
        for c in 0..copies {
            let node = w.nodes[((i + c) % n) as usize].clone();
            w.planner.on_presence(&key(i), &node, true);
        }
    }
}

#[test]
fn healthy_cluster_plans_nothing() {
    let mut w = World::new(5, RepairConfig::default());
    spread(&mut w, 50, false);
    let p = uniform(eff(2, 3));
    assert!(w.poll(&p).is_empty());
    assert_eq!(w.planner.pending_evaluation(), 0);
    assert_eq!(w.planner.key_count(), 50);
    assert_eq!(w.planner.held_by(&u("n1")), 20);
}

#[test]
fn down_node_keys_below_min_get_copies() {
    let mut w = World::new(5, RepairConfig::default());
    spread(&mut w, 50, false);
    let p = uniform(eff(2, 3));
    w.poll(&p);
    w.down("n1");
    assert_eq!(w.planner.pending_evaluation(), 20, "only n1's keys");
    let actions = w.settle(&p);
    assert_eq!(actions.len(), 20);
    for a in &actions {
        let Action::Copy { key, from, to } = a else {
            panic!("{a:?}")
        };
        assert_ne!(from, &u("n1"));
        assert_ne!(to, &u("n1"));
        assert!(w.planner.holders(key).contains(to));
    }
    for i in 0..50 {
        assert!(w.live_copies(&key(i), &["n1"]) >= 2, "key {i}");
    }
    assert!(w.settle(&p).is_empty());
}

#[test]
fn between_min_and_max_nothing_moves() {
    let mut w = World::new(5, RepairConfig::default());
    spread(&mut w, 50, true);
    let p = uniform(eff(2, 3));
    w.poll(&p);
    w.down("n1");
    assert!(w.settle(&p).is_empty());
    w.recovered("n1");
    assert!(w.settle(&p).is_empty());
}

#[test]
fn flap_within_grace_moves_nothing() {
    // Driven by the real monitor: suspected, back before grace ends.
    let mut w = World::new(4, RepairConfig::default());
    spread(&mut w, 40, false);
    let p = uniform(eff(2, 2));
    let mut monitor = Monitor::new(MonitorConfig::default());
    for n in &w.nodes {
        monitor.on_heartbeat(n, 0);
    }
    let mut transfers = 0;
    for t in (0..=70_000).step_by(1_000) {
        w.now = t;
        for n in w.nodes.clone() {
            if (n != u("n1") || t > 60_000)
                && let Some(e) = monitor.on_heartbeat(&n, t)
            {
                w.event(e);
            }
        }
        for e in monitor.tick(t) {
            w.event(e);
        }
        w.refresh_metrics(1 << 40);
        transfers += w.poll(&p).len();
    }
    assert_eq!(transfers, 0, "a 60 s outage with 300 s grace moves nothing");
    let kinds: Vec<Liveness> = monitor.alerts().map(|a| a.event.liveness()).collect();
    assert!(kinds.contains(&Liveness::Suspected));
    assert!(!kinds.contains(&Liveness::Down));
}

#[test]
fn recovered_node_sheds_copies_above_max() {
    let mut w = World::new(4, RepairConfig::default());
    spread(&mut w, 20, false);
    let p = uniform(eff(2, 2));
    w.poll(&p);
    w.down("n1");
    let copies = w.settle(&p);
    assert_eq!(copies.len(), 10);
    w.recovered("n1");
    let drops = w.settle(&p);
    assert_eq!(drops.len(), 10);
    for a in &drops {
        let Action::Drop { key, from, lock } = a else {
            panic!("{a:?}")
        };
        assert_eq!(lock.len(), 2, "locks keep = max(min, numcopies) copies");
        assert!(!lock.contains(from));
        assert_eq!(w.planner.holders(key).len(), 2);
    }
    for i in 0..20 {
        assert_eq!(w.planner.holders(&key(i)).len(), 2);
    }
}

#[test]
fn drops_never_go_below_numcopies() {
    // min 1, max 1, but numcopies 3: a drop must leave 3.
    let mut w = World::new(5, RepairConfig::default());
    for n in ["n1", "n2", "n3", "n4", "n5"] {
        w.planner.on_presence(&key(0), &u(n), true);
    }
    let e = resolve(Rule::parse("min=1 max=1"), 3, 5);
    assert_eq!(e.keep, 3);
    let p = uniform(e);
    let drops = w.settle(&p);
    assert_eq!(drops.len(), 2);
    assert_eq!(w.planner.holders(&key(0)).len(), 3);
}

#[test]
fn required_content_is_honoured() {
    let mut w = World::new(4, RepairConfig::default());
    // On n1, n2; n4 requires it; max 2.
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(0), &u("n2"), true);
    let p = |_: &Key, _: &[&Uuid], nodes: &[Uuid], out: &mut Needs| {
        out.effective = eff(2, 2);
        out.wanting.fill(true);
        for (i, n) in nodes.iter().enumerate() {
            out.required[i] = n == &u("n4");
        }
    };
    let actions = w.settle(&p);
    assert!(matches!(&actions[0], Action::Copy { to, .. } if to == &u("n4")));
    // Then the excess copy is dropped, never from n4.
    assert!(matches!(&actions[1], Action::Drop { from, .. } if from != &u("n4")));
    assert_eq!(actions.len(), 2);
    assert!(w.planner.holders(&key(0)).contains(&u("n4")));
    assert_eq!(w.planner.holders(&key(0)).len(), 2);
    // And it keeps it even when every other node is required not to drop.
    assert!(w.settle(&p).is_empty());
}

#[test]
fn only_wanting_nodes_get_copies_unless_nobody_wants() {
    let mut w = World::new(4, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(1), &u("n1"), true);
    let p = |k: &Key, _: &[&Uuid], nodes: &[Uuid], out: &mut Needs| {
        out.effective = eff(2, 4);
        if k == &key(0) {
            for (i, n) in nodes.iter().enumerate() {
                out.wanting[i] = n == &u("n3");
            }
        }
    };
    let actions = w.settle(&p);
    let targets: BTreeMap<Key, Uuid> = actions
        .iter()
        .map(|a| match a {
            Action::Copy { key, to, .. } => (key.clone(), to.clone()),
            a => panic!("{a:?}"),
        })
        .collect();
    assert_eq!(targets[&key(0)], u("n3"));
    assert!(
        targets.contains_key(&key(1)),
        "nobody wants key 1: anyone may take it"
    );
}

#[test]
fn transfers_in_flight_are_bounded() {
    let config = RepairConfig {
        max_per_source: 2,
        max_per_target: 1,
        max_in_flight: 3,
        ..RepairConfig::default()
    };
    let mut w = World::new(6, config);
    spread(&mut w, 60, false);
    let p = uniform(eff(2, 3));
    w.poll(&p);
    w.down("n1");
    let first = w.poll(&p);
    assert_eq!(first.len(), 3);
    assert!(w.poll(&p).is_empty(), "global limit");
    let mut per_src: BTreeMap<Uuid, u32> = BTreeMap::new();
    let mut per_dst: BTreeMap<Uuid, u32> = BTreeMap::new();
    for t in &first {
        let Action::Copy { from, to, .. } = &t.action else {
            panic!()
        };
        *per_src.entry(from.clone()).or_default() += 1;
        *per_dst.entry(to.clone()).or_default() += 1;
    }
    assert!(per_src.values().all(|&c| c <= 2));
    assert!(per_dst.values().all(|&c| c <= 1));
    assert_eq!(w.planner.queued(), 20 - 3);
    w.planner.on_transfer_done(first[0].id, Ok(()), w.now);
    assert_eq!(w.poll(&p).len(), 1);
    // Everything completes eventually.
    for t in &first[1..] {
        w.planner.on_transfer_done(t.id, Ok(()), w.now);
    }
    let rest = w.settle(&p);
    assert_eq!(rest.len(), 20 - 4);
}

#[test]
fn failures_back_off_and_recover_retries_now() {
    let mut w = World::new(3, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    let p = uniform(eff(2, 2));
    let t = w.poll(&p);
    assert_eq!(t.len(), 1);
    assert!(
        w.planner
            .on_transfer_done(t[0].id, Err("connection reset".into()), w.now)
    );
    assert!(
        !w.planner.on_transfer_done(t[0].id, Ok(()), w.now),
        "unknown id"
    );
    let st = w.planner.status(&key(0), &w.env(&p)).unwrap();
    assert_eq!(st.error.as_deref(), Some("connection reset"));
    assert_eq!((st.attempts, st.retry_at), (1, Some(w.now + 60_000)));
    assert!(w.poll(&p).is_empty(), "backing off");
    assert_eq!(w.planner.deferred(), 1);
    w.now += 60_000;
    w.refresh_metrics(1 << 40);
    let t2 = w.poll(&p);
    assert_eq!(t2.len(), 1, "retried after 60 s");
    w.planner
        .on_transfer_done(t2[0].id, Err("again".into()), w.now);
    w.now += 60_000;
    w.refresh_metrics(1 << 40);
    assert!(w.poll(&p).is_empty(), "second backoff is 120 s");
    assert!(w.planner.recover(&key(0)));
    assert!(!w.planner.recover(&key(99)));
    let t3 = w.poll(&p);
    assert_eq!(t3.len(), 1);
    w.planner
        .on_transfer_done(t3[0].id, Err("third".into()), w.now);
    assert_eq!(w.planner.recover_all(), 1);
    let t4 = w.poll(&p);
    w.planner.on_transfer_done(t4[0].id, Ok(()), w.now);
    assert!(w.poll(&p).is_empty());
    assert_eq!(w.planner.status(&key(0), &w.env(&p)).unwrap().error, None);
}

#[test]
fn backoff_doubles_to_a_cap() {
    let c = RepairConfig::default();
    assert_eq!(backoff(&c, 1), 60_000);
    assert_eq!(backoff(&c, 2), 120_000);
    assert_eq!(backoff(&c, 7), 64 * 60_000);
    assert_eq!(backoff(&c, 255), 64 * 60_000);
}

#[test]
fn shortfall_is_an_error_with_reasons() {
    let mut w = World::new(3, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.set_free(&u("n2"), 10);
    w.monitor = Monitor::new(MonitorConfig::default());
    w.set_free(&u("n1"), 1 << 30);
    w.set_free(&u("n2"), 10);
    let p = uniform(eff(2, 2));
    assert!(w.poll(&p).is_empty());
    let st = w.planner.status(&key(0), &w.env(&p)).unwrap();
    let msg = st.error.unwrap();
    assert!(msg.contains("placed 0 of 1"), "{msg}");
    assert!(msg.contains("n2 full (10 bytes free)"), "{msg}");
    assert!(msg.contains("n3 no fresh metrics"), "{msg}");
    assert!(st.under_replicated);
}

#[test]
fn starved_key_waits_for_a_holder() {
    let mut w = World::new(3, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    let p = uniform(eff(1, 1));
    w.poll(&p);
    w.down("n1");
    assert!(w.poll(&p).is_empty());
    assert_eq!(w.planner.starved(), 1);
    w.event(Event::Alive {
        node: u("n1"),
        at: w.now,
    });
    w.poll(&p);
    assert_eq!(w.planner.starved(), 0);
}

#[test]
fn missing_copies_do_not_count() {
    let mut w = World::new(3, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(0), &u("n2"), true);
    let p = uniform(eff(2, 2));
    assert!(w.poll(&p).is_empty());
    assert!(w.planner.on_missing(&key(0), &u("n2")));
    assert!(!w.planner.on_missing(&key(0), &u("n2")), "once");
    assert!(!w.planner.on_missing(&key(0), &u("n3")), "not a holder");
    let st = w.planner.status(&key(0), &w.env(&p)).unwrap();
    assert!(st.under_replicated);
    let t = w.poll(&p);
    assert_eq!(t.len(), 1);
    assert!(matches!(&t[0].action, Action::Copy { from, .. } if from == &u("n1")));
}

#[test]
fn longer_per_key_grace_defers_repair() {
    let mut w = World::new(3, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(0), &u("n2"), true);
    w.planner.on_presence(&key(1), &u("n1"), true);
    w.planner.on_presence(&key(1), &u("n2"), true);
    // key 1 has grace 3600 s; the cluster's is 300 s.
    let p = |k: &Key, _: &[&Uuid], _: &[Uuid], out: &mut Needs| {
        let grace = if k == &key(1) { 3600 } else { 300 };
        out.effective = resolve(
            Rule {
                grace: Some(grace),
                ..Rule::parse("min=2 max=2")
            },
            1,
            3,
        );
        out.wanting.fill(true);
    };
    w.poll(&p);
    w.now = 1_000_000;
    w.refresh_metrics(1 << 40);
    w.event(Event::Down {
        node: u("n1"),
        at: w.now,
        last_seen: w.now - 310_000,
    });
    let t = w.poll(&p);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].action.key(), &key(0));
    assert_eq!(w.planner.deferred(), 1);
    w.now += 3_300_000 - 1;
    w.refresh_metrics(1 << 40);
    assert!(w.poll(&p).is_empty());
    w.now += 1;
    w.refresh_metrics(1 << 40);
    let t = w.poll(&p);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].action.key(), &key(1));
}

#[test]
fn sources_prefer_the_targets_site() {
    let mut w = World::new(4, RepairConfig::default());
    for (n, g) in [("n1", "gwA"), ("n2", "gwA"), ("n3", "gwB"), ("n4", "gwB")] {
        w.layout.set_site(u(n), u(g));
    }
    // On n1 (A) and n3 (B), n4 down... copy must go to n2 (A) since n4 is
    // down; source n1, same site.
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(0), &u("n3"), true);
    w.planner.on_presence(&key(0), &u("n4"), true);
    let p = uniform(eff(3, 3));
    w.poll(&p);
    w.down("n4");
    let t = w.poll(&p);
    assert_eq!(
        t[0].action,
        Action::Copy {
            key: key(0),
            from: u("n1"),
            to: u("n2")
        }
    );
}

#[test]
fn two_gateways_split_the_keys() {
    let p = uniform(eff(2, 3));
    let gws = vec![u("gwA"), u("gwB")];
    let mk = |me: &str| {
        let mut w = World::new(5, RepairConfig::default());
        w.planner = Planner::new(u(me), RepairConfig::default());
        w.planner.set_members(w.nodes.clone());
        w.gateways = gws.clone();
        spread(&mut w, 200, false);
        w.poll(&p);
        w.down("n1");
        w
    };
    let (mut a, mut b) = (mk("gwA"), mk("gwB"));
    let ka: BTreeSet<Key> = a.settle(&p).iter().map(|x| x.key().clone()).collect();
    let kb: BTreeSet<Key> = b.settle(&p).iter().map(|x| x.key().clone()).collect();
    assert!(ka.is_disjoint(&kb), "never the same key at once");
    assert_eq!(ka.len() + kb.len(), 80, "together: every key n1 held");
    assert!(!ka.is_empty() && !kb.is_empty(), "both take a share");
    assert_eq!(b.planner.owned_by_others(), ka.len());
    for k in &ka {
        assert_eq!(coordinator(k, &gws), Some(&u("gwA")));
    }
    // gwA goes down: gwB takes its share.
    b.gateways = vec![u("gwB")];
    let taken = b.settle(&p);
    assert_eq!(taken.len(), ka.len());
    assert_eq!(b.planner.owned_by_others(), 0);
}

#[test]
fn coordinator_is_stable_when_other_gateways_leave() {
    let all: Vec<Uuid> = (0..5).map(|i| u(&format!("g{i}"))).collect();
    for i in 0..200 {
        let k = key(i);
        let c = coordinator(&k, &all).unwrap().clone();
        // Removing a gateway that is not the coordinator changes nothing.
        for g in &all {
            if *g == c {
                continue;
            }
            let rest: Vec<Uuid> = all.iter().filter(|x| *x != g).cloned().collect();
            assert_eq!(coordinator(&k, &rest), Some(&c));
        }
    }
    assert_eq!(coordinator(&key(0), &[]), None);
}

#[test]
fn partition_heal_copies_each_sides_new_keys() {
    // Side A: n1, n2 (n2 full); side B: n3, n4 (n4 full). During the
    // partition each side wrote keys to one node only; min 2.
    let p = uniform(eff(2, 2));
    let mut w = World::new(4, RepairConfig::default());
    w.planner.set_members(w.nodes.clone());
    w.set_free(&u("n2"), 0);
    w.set_free(&u("n4"), 0);
    w.down("n3");
    w.down("n4");
    for i in 0..10 {
        w.planner.on_presence(&key(i), &u("n1"), true);
    }
    assert!(w.poll(&p).is_empty(), "side A alone cannot reach min");
    // Heal: B's location logs merge in, B's nodes are back.
    for i in 10..20 {
        w.planner.on_presence(&key(i), &u("n3"), true);
    }
    w.recovered("n3");
    w.recovered("n4");
    w.planner.recover_all();
    let actions = w.settle(&p);
    assert_eq!(actions.len(), 20);
    for a in &actions {
        let Action::Copy { key, from, to } = a else {
            panic!()
        };
        let i: u32 = (0..20).find(|i| &self::key(*i) == key).unwrap();
        if i < 10 {
            assert_eq!((from, to), (&u("n1"), &u("n3")));
        } else {
            assert_eq!((from, to), (&u("n3"), &u("n1")));
        }
    }
}

#[test]
fn limits_bound_the_index() {
    let mut w = World::new(
        2,
        RepairConfig {
            max_keys: 3,
            max_nodes: 3,
            ..RepairConfig::default()
        },
    );
    for i in 0..5 {
        w.planner.on_presence(&key(i), &u("n1"), true);
    }
    assert_eq!(w.planner.key_count(), 3);
    assert_eq!(w.planner.ignored(), 2);
    assert!(w.planner.on_presence(&key(0), &u("x3"), true));
    assert!(
        !w.planner.on_presence(&key(0), &u("x4"), true),
        "node limit"
    );
    assert!(!w.planner.on_presence(&key(9), &u("n1"), false));
    // Non-members are indexed but do not count.
    let p = uniform(eff(2, 2));
    let t = w.poll(&p);
    assert!(
        t.iter()
            .all(|t| matches!(&t.action, Action::Copy { to, .. } if to == &u("n2")))
    );
}

#[test]
fn membership_change_re_evaluates() {
    let mut w = World::new(3, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(0), &u("n2"), true);
    let p = uniform(eff(2, 2));
    assert!(w.poll(&p).is_empty());
    w.planner.set_members([u("n1"), u("n3")]);
    let t = w.poll(&p);
    assert_eq!(t.len(), 1);
    assert!(matches!(&t[0].action, Action::Copy { to, .. } if to == &u("n3")));
}

/// What a finished action writes to the location log.
fn apply(p: &mut Planner, a: &Action) {
    match a {
        Action::Copy { key, to, .. } => p.on_presence(key, to, true),
        Action::Drop { key, from, .. } => p.on_presence(key, from, false),
    };
}

#[test]
fn end_to_end_from_the_branch() {
    use crate::logs::catalog::Catalog;
    use crate::logs::presence::{Status, location_log_path, record};
    use crate::logs::view::View;
    use crate::preferred::Context;
    use crate::replication::policy::{Policy, PreferredPlacement, REPLICATION_LOG, record_cluster};
    let cluster = Uuid::parse("acae2ff6-6c1e-8bec-b8b9-397a3755f397").unwrap();
    let nodes: Vec<Uuid> = (1..=4)
        .map(|i| Uuid::parse(&format!("0000000{i}-0000-4000-8000-000000000000")).unwrap())
        .collect();
    let mut cat = Catalog::new();
    cat.insert_line("numcopies.log", "1s 2");
    cat.insert_content(
        REPLICATION_LOG,
        &record_cluster(b"", &cluster, &Rule::parse("max=2 grace=60"), 1),
    );
    // Node 4 wants nothing: it never gets a copy.
    cat.insert_line(
        "preferred-content.log",
        &format!("{} nothing timestamp=1s", nodes[3]),
    );
    for i in 0..10 {
        let path = location_log_path(&key(i));
        let mut log = record(b"", nodes[0].as_str(), Status::Present, 5);
        log = record(&log, nodes[1].as_str(), Status::Present, 5);
        // The cluster uuid in a location log is never a holder.
        log = record(&log, cluster.as_str(), Status::Present, 5);
        cat.insert_content(&path, &log);
    }
    let policy = Policy::from_catalog(&cat);
    let ctx = Context::from_view(&View::new(&cat));
    let placement = PreferredPlacement::new(&ctx, &policy, cluster.clone(), &nodes);
    let mut planner = Planner::new(u("gw"), RepairConfig::default());
    planner.set_members(nodes.clone());
    planner.load(&cat);
    assert_eq!(
        planner.holders(&key(0)),
        vec![nodes[0].clone(), nodes[1].clone()]
    );
    let mut monitor = Monitor::new(MonitorConfig {
        grace_ms: policy.grace(&cluster) * 1000,
        ..MonitorConfig::default()
    });
    for n in &nodes {
        monitor.watch(n.clone(), 0);
    }
    let layout = Layout::new();
    let mut transfers = Vec::new();
    for t in (0..=80_000u64).step_by(1_000) {
        for n in &nodes {
            if n != &nodes[0]
                && let Some(e) = monitor.on_heartbeat(n, t)
            {
                planner.on_event(&e);
            }
            monitor.on_metrics(
                n,
                Metrics {
                    free_bytes: 1 << 30,
                    ..Metrics::default()
                },
                t,
            );
        }
        for e in monitor.tick(t) {
            planner.on_event(&e);
        }
        let env = Env {
            now: t,
            placement: &placement,
            monitor: &monitor,
            layout: &layout,
            gateways: &[],
            tiebreak: None,
        };
        loop {
            let ts = planner.poll(&env);
            if ts.is_empty() {
                break;
            }
            for tr in ts {
                assert!(planner.on_transfer_done(tr.id, Ok(()), t));
                transfers.push((t, tr));
            }
        }
    }
    // Node 1 silent from 0: suspected at 10 s, down at 70 s (grace 60 s).
    assert_eq!(transfers.len(), 10);
    for (t, tr) in &transfers {
        assert_eq!(*t, 70_000);
        let Action::Copy { from, to, .. } = &tr.action else {
            panic!()
        };
        assert_eq!(from, &nodes[1]);
        assert_eq!(to, &nodes[2], "node 4 wants nothing");
    }
    // The copy was recorded in the index when it finished, so the location
    // log saying so changes nothing; a log saying node 2 lost it does.
    let path = location_log_path(&key(0));
    let log = cat.file(&path).unwrap().content();
    let content = record(&log, nodes[2].as_str(), Status::Present, 9);
    cat.insert_content(&path, &content);
    assert!(!planner.on_location_log(&path, cat.file(&path).unwrap()));
    assert_eq!(planner.holders(&key(0)).len(), 3);
    let content = record(&content, nodes[1].as_str(), Status::Absent, 10);
    cat.insert_content(&path, &content);
    assert!(planner.on_location_log(&path, cat.file(&path).unwrap()));
    assert!(!planner.on_location_log(&path, cat.file(&path).unwrap()));
    assert!(!planner.on_location_log("uuid.log", cat.file(&path).unwrap()));
    assert_eq!(
        planner.holders(&key(0)),
        vec![nodes[0].clone(), nodes[2].clone()]
    );
}

#[derive(Debug, Clone)]
enum Op {
    Present(u32, u8, bool),
    Event(u8, u8),
    Poll,
    Done(u8, bool),
    Advance(u32),
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0u32..12, 0u8..5, any::<bool>()).prop_map(|(k, n, p)| Op::Present(k, n, p)),
            (0u8..5, 0u8..4).prop_map(|(n, e)| Op::Event(n, e)),
            Just(Op::Poll),
            Just(Op::Poll),
            (any::<u8>(), prop::bool::weighted(0.8)).prop_map(|(i, ok)| Op::Done(i, ok)),
            (0u32..400_000).prop_map(Op::Advance),
        ],
        0..80,
    )
}

proptest! {
    /// Whatever happens: limits hold, copies go to members not holding the
    /// key from alive holders, drops leave `keep` locked alive copies, and
    /// a gateway only touches keys it coordinates.
    #[test]
    fn planner_invariants(ops in arb_ops(), min in 1u32..4, extra in 0u32..2, second_gw in any::<bool>()) {
        let config = RepairConfig { max_per_source: 2, max_per_target: 1, max_in_flight: 4, ..RepairConfig::default() };
        let mut w = World::new(5, config);
        if second_gw {
            w.gateways = vec![u("gw"), u("gw2")];
        }
        let p = uniform(eff(min, min + extra));
        let mut live: BTreeMap<u64, Action> = BTreeMap::new();
        let mut state: BTreeMap<Uuid, Liveness> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Present(k, n, pr) => { w.planner.on_presence(&key(k), &w.nodes[n as usize].clone(), pr); }
                Op::Event(n, e) => {
                    let node = w.nodes[n as usize].clone();
                    let at = w.now;
                    let ev = match e {
                        0 => Event::Alive { node, at },
                        1 => Event::Suspected { node, at, last_seen: at },
                        2 => Event::Down { node, at, last_seen: at.saturating_sub(310_000) },
                        _ => Event::Recovered { node, at, last_seen: 0 },
                    };
                    state.insert(ev.node().clone(), ev.liveness());
                    w.event(ev);
                }
                Op::Poll => {
                    let holders_before: BTreeMap<Key, Vec<Uuid>> =
                        (0..12).map(|k| (key(k), w.planner.holders(&key(k)))).collect();
                    for t in w.poll(&p) {
                        let alive = |n: &Uuid| state.get(n).is_none_or(|l| *l == Liveness::Alive);
                        if second_gw {
                            prop_assert_eq!(coordinator(t.action.key(), &w.gateways), Some(&u("gw")));
                        }
                        match &t.action {
                            Action::Copy { key, from, to } => {
                                let h = &holders_before[key];
                                prop_assert!(h.contains(from) && alive(from));
                                prop_assert!(!h.contains(to) && alive(to));
                                prop_assert!(w.nodes.contains(to));
                            }
                            Action::Drop { key, from, lock } => {
                                let h = &holders_before[key];
                                prop_assert!(h.contains(from) && alive(from));
                                prop_assert!(!lock.contains(from));
                                prop_assert!(lock.len() as u32 >= min);
                                prop_assert!(lock.iter().all(|l| h.contains(l) && alive(l)));
                            }
                        }
                        live.insert(t.id, t.action);
                    }
                    prop_assert!(live.len() <= 4);
                    let mut src: BTreeMap<&Uuid, u32> = BTreeMap::new();
                    let mut dst: BTreeMap<&Uuid, u32> = BTreeMap::new();
                    for a in live.values() {
                        match a {
                            Action::Copy { from, to, .. } => {
                                *src.entry(from).or_default() += 1;
                                *dst.entry(to).or_default() += 1;
                            }
                            Action::Drop { from, .. } => *src.entry(from).or_default() += 1,
                        }
                    }
                    prop_assert!(src.values().all(|&c| c <= 2));
                    prop_assert!(dst.values().all(|&c| c <= 1));
                }
                Op::Done(i, ok) => {
                    if !live.is_empty() {
                        let id = *live.keys().nth(i as usize % live.len()).unwrap();
                        live.remove(&id);
                        let r = if ok { Ok(()) } else { Err("failed".to_string()) };
                        prop_assert!(w.planner.on_transfer_done(id, r, w.now));
                    }
                }
                Op::Advance(d) => {
                    w.now += u64::from(d);
                    w.refresh_metrics(1 << 40);
                }
            }
            prop_assert_eq!(w.planner.in_flight(), live.len());
        }
    }

    /// Two gateways fed the same facts never have the same key in flight at
    /// once, and between them repair what one gateway alone would.
    #[test]
    fn two_planners_never_overlap(
        holders in prop::collection::vec(prop::collection::btree_set(0u8..5, 1..4), 1..30),
        down in 0u8..5,
        min in 1u32..4,
    ) {
        let p = uniform(eff(min, min + 1));
        let gws = vec![u("gwA"), u("gwB")];
        let mk = |me: &str, gateways: Vec<Uuid>| {
            let mut w = World::new(5, RepairConfig { max_in_flight: 4, ..RepairConfig::default() });
            w.planner = Planner::new(u(me), *w.planner.config());
            w.planner.set_members(w.nodes.clone());
            w.gateways = gateways;
            for (k, hs) in holders.iter().enumerate() {
                for h in hs {
                    w.planner.on_presence(&key(k as u32), &w.nodes[*h as usize].clone(), true);
                }
            }
            w.down(&format!("n{}", down + 1));
            w
        };
        let (mut a, mut b) = (mk("gwA", gws.clone()), mk("gwB", gws.clone()));
        let mut solo = mk("gwA", vec![]);
        let mut ka = BTreeSet::new();
        let mut kb = BTreeSet::new();
        for _ in 0..200 {
            let ta = a.poll(&p);
            let tb = b.poll(&p);
            if ta.is_empty() && tb.is_empty() {
                break;
            }
            let now_a: BTreeSet<Key> = ta.iter().map(|t| t.action.key().clone()).collect();
            let now_b: BTreeSet<Key> = tb.iter().map(|t| t.action.key().clone()).collect();
            prop_assert!(now_a.is_disjoint(&now_b));
            // Each side's completed transfers reach the other as location-log
            // changes, as gossip would carry them.
            for t in ta {
                a.planner.on_transfer_done(t.id, Ok(()), a.now);
                apply(&mut b.planner, &t.action);
                ka.insert(t.action.key().clone());
            }
            for t in tb {
                b.planner.on_transfer_done(t.id, Ok(()), b.now);
                apply(&mut a.planner, &t.action);
                kb.insert(t.action.key().clone());
            }
        }
        prop_assert!(ka.is_disjoint(&kb));
        let ks: BTreeSet<Key> = solo.settle(&p).iter().map(|x| x.key().clone()).collect();
        let both: BTreeSet<Key> = ka.union(&kb).cloned().collect();
        prop_assert_eq!(both, ks);
    }

    /// With every node alive and room everywhere, settling reaches
    /// `min <= copies <= max` for every key, whatever the start.
    #[test]
    fn settling_converges(
        holders in prop::collection::vec(prop::collection::btree_set(0u8..6, 1..6), 1..20),
        min in 1u32..4,
        extra in 0u32..3,
    ) {
        let mut w = World::new(6, RepairConfig { max_in_flight: 3, ..RepairConfig::default() });
        for (k, hs) in holders.iter().enumerate() {
            for h in hs {
                w.planner.on_presence(&key(k as u32), &w.nodes[*h as usize].clone(), true);
            }
        }
        let p = uniform(eff(min, min + extra));
        w.settle(&p);
        for k in 0..holders.len() as u32 {
            let n = w.planner.holders(&key(k)).len() as u32;
            prop_assert!(n >= min && n <= min + extra, "key {} has {} copies", k, n);
        }
        prop_assert!(w.settle(&p).is_empty());
    }
}

/// A key first heard of after start is not judged before `settle_ms`: the
/// PUT that brought it may still be on its way to the other nodes.
#[test]
fn new_keys_settle_before_they_are_judged() {
    let mut w = World::new(
        3,
        RepairConfig {
            settle_ms: 10_000,
            ..RepairConfig::default()
        },
    );
    let p = uniform(eff(2, 3));
    assert!(w.poll(&p).is_empty());
    let start = w.now;
    let n1 = w.nodes[0].clone();
    w.planner.on_presence(&key(1), &n1, true);
    w.now = start + 1_000;
    assert!(w.poll(&p).is_empty(), "judged while settling");
    w.now = start + 9_999;
    assert!(w.poll(&p).is_empty(), "judged while settling");
    w.now = start + 10_001;
    let t = w.poll(&p);
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(matches!(t[0].action, Action::Copy { .. }));
}

/// A cluster taken up while the repairer runs (created after the daemon
/// started): its keys, loaded then, settle like new keys instead of being
/// judged at once while their PUTs may still be fanning out.
#[test]
fn a_cluster_loaded_late_lets_its_keys_settle() {
    let mut w = World::new(
        3,
        RepairConfig {
            settle_ms: 10_000,
            ..RepairConfig::default()
        },
    );
    let p = uniform(eff(2, 3));
    let start = w.now;
    let mut catalog = crate::logs::catalog::Catalog::new();
    catalog.insert_line(
        &crate::logs::presence::location_log_path(&key(1)),
        &format!("1700000000s 1 {}", w.nodes[0]),
    );
    w.planner.load_at(&catalog, start);
    w.now = start + 1_000;
    assert!(w.poll(&p).is_empty(), "judged while settling");
    w.now = start + 10_001;
    let t = w.poll(&p);
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(matches!(t[0].action, Action::Copy { .. }));
}

#[test]
fn a_key_dropped_from_every_node_is_no_longer_the_clusters() {
    let mut w = World::new(3, RepairConfig::default());
    let p = uniform(eff(2, 3));
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(0), &u("n2"), true);
    w.planner.on_presence(&key(1), &u("n1"), true);
    w.planner.on_presence(&key(1), &u("n2"), true);
    assert!(w.settle(&p).is_empty());
    // Dropped from the cluster (git annex drop --from the cluster).
    w.planner.on_presence(&key(0), &u("n1"), false);
    w.planner.on_presence(&key(0), &u("n2"), false);
    assert!(w.settle(&p).is_empty(), "a dropped key is not copied back");
    let env = w.env(&p);
    let filter = crate::replication::status::Filter::default();
    let listed: Vec<Key> = w.planner.statuses(&env, &filter).map(|s| s.key).collect();
    assert_eq!(listed, vec![key(1)], "only the held key is listed");
    assert!(w.planner.status(&key(0), &env).is_none());
    let summary = w.planner.summary(&env);
    assert_eq!(
        (summary.keys, summary.under_replicated, summary.errors),
        (1, 0, 0)
    );
}

/// Found by the repair fuzzer: a holder the running drop had locked went
/// missing, and a copy was planned beside the drop while the drop's source
/// still counted. A drop now runs alone; its end re-evaluates the key.
#[test]
fn nothing_is_planned_beside_a_running_drop() {
    let mut w = World::new(3, RepairConfig::default());
    let p = uniform(eff(2, 2));
    for n in w.nodes.clone() {
        w.planner.on_presence(&key(1), &n, true);
    }
    let ts = w.poll(&p);
    assert_eq!(ts.len(), 1, "{ts:?}");
    let Action::Drop { from, lock, .. } = ts[0].action.clone() else {
        panic!("expected a drop: {ts:?}");
    };
    assert_eq!(lock.len(), 2);
    // Both locked holders turn out to lack it: only the drop's source has
    // it. Planning a copy from the node being emptied would race the drop.
    assert!(w.planner.on_missing(&key(1), &lock[0]));
    assert!(w.planner.on_missing(&key(1), &lock[1]));
    assert!(w.poll(&p).is_empty(), "planned beside the drop");
    // The drop fails (its locks could not be taken); once its retry is due,
    // copies from the only real holder restore the key.
    assert!(
        w.planner
            .on_transfer_done(ts[0].id, Err("lock failed".into()), w.now)
    );
    w.now += 61 * 60_000;
    w.refresh_metrics(1 << 40);
    let again = w.poll(&p);
    assert!(!again.is_empty());
    for t in &again {
        assert!(
            matches!(&t.action, Action::Copy { from: f, .. } if *f == from),
            "{again:?}"
        );
    }
}
