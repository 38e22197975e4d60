use proptest::prelude::*;

use super::*;

fn u(s: &str) -> Uuid {
    Uuid::parse(s).unwrap()
}

fn monitor() -> Monitor {
    Monitor::new(MonitorConfig {
        suspect_after_ms: 10_000,
        grace_ms: 300_000,
        ..MonitorConfig::default()
    })
}

#[test]
fn defaults_match_the_documented_ones() {
    let c = MonitorConfig::default();
    assert_eq!(c.suspect_after_ms, 10_000);
    assert_eq!(c.grace_ms, 300_000);
    assert_eq!(c.metric_ttl_ms, 30_000);
}

#[test]
fn silent_node_is_suspected_then_down_then_recovers() {
    let mut m = monitor();
    let a = u("a");
    assert_eq!(
        m.on_heartbeat(&a, 0),
        Some(Event::Alive {
            node: a.clone(),
            at: 0
        })
    );
    assert_eq!(
        m.on_heartbeat(&a, 1_000),
        None,
        "steady heartbeats are quiet"
    );
    assert!(m.tick(10_999).is_empty());
    assert_eq!(
        m.tick(11_000),
        vec![Event::Suspected {
            node: a.clone(),
            at: 11_000,
            last_seen: 1_000
        }]
    );
    assert_eq!(m.liveness(&a), Some(Liveness::Suspected));
    assert!(m.tick(310_999).is_empty());
    assert_eq!(m.next_deadline(), Some(311_000));
    assert_eq!(
        m.tick(311_000),
        vec![Event::Down {
            node: a.clone(),
            at: 311_000,
            last_seen: 1_000
        }]
    );
    assert!(m.tick(400_000).is_empty(), "reported once");
    assert_eq!(m.next_deadline(), None);
    assert_eq!(
        m.on_heartbeat(&a, 500_000),
        Some(Event::Recovered {
            node: a.clone(),
            at: 500_000,
            last_seen: 1_000
        })
    );
    assert_eq!(m.liveness(&a), Some(Liveness::Alive));
    let kinds: Vec<Liveness> = m.alerts().map(|x| x.event.liveness()).collect();
    assert_eq!(
        kinds,
        vec![
            Liveness::Alive,
            Liveness::Suspected,
            Liveness::Down,
            Liveness::Alive
        ]
    );
}

#[test]
fn back_within_grace_is_alive_not_recovered() {
    let mut m = monitor();
    let a = u("a");
    m.watch(a.clone(), 0);
    assert!(m.alerts().next().is_none(), "watch is silent");
    assert_eq!(m.tick(20_000).len(), 1);
    assert_eq!(
        m.on_heartbeat(&a, 60_000),
        Some(Event::Alive {
            node: a.clone(),
            at: 60_000
        })
    );
    assert!(m.tick(61_000).is_empty());
}

#[test]
fn one_long_silence_gives_both_events_in_order() {
    let mut m = monitor();
    m.watch(u("b"), 0);
    m.watch(u("a"), 0);
    let e = m.tick(1_000_000);
    let got: Vec<(String, Liveness)> = e
        .iter()
        .map(|e| (e.node().to_string(), e.liveness()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), Liveness::Suspected),
            ("a".into(), Liveness::Down),
            ("b".into(), Liveness::Suspected),
            ("b".into(), Liveness::Down),
        ]
    );
}

#[test]
fn grace_can_change_and_clock_never_goes_back() {
    let mut m = monitor();
    let a = u("a");
    m.on_heartbeat(&a, 50_000);
    m.on_heartbeat(&a, 40_000);
    assert_eq!(m.last_seen(&a), Some(50_000));
    m.set_grace_ms(0);
    let e = m.tick(60_000);
    assert_eq!(e.len(), 2, "no grace: down at once");
}

#[test]
fn alerts_and_nodes_are_bounded() {
    let mut m = Monitor::new(MonitorConfig {
        max_alerts: 3,
        max_nodes: 2,
        ..MonitorConfig::default()
    });
    assert!(m.on_heartbeat(&u("a"), 0).is_some());
    assert!(m.on_heartbeat(&u("b"), 0).is_some());
    assert!(m.on_heartbeat(&u("c"), 0).is_none(), "over the node limit");
    assert!(!m.watch(u("c"), 0));
    m.tick(1_000_000);
    assert_eq!(m.alerts().count(), 3);
    assert_eq!(m.nodes().count(), 2);
    assert!(
        m.alerts()
            .all(|a| a.event.liveness() == Liveness::Down || a.event.node() == &u("b"))
    );
    m.forget(&u("a"));
    assert_eq!(m.nodes().count(), 1);
    let mut quiet = Monitor::new(MonitorConfig {
        max_alerts: 0,
        ..MonitorConfig::default()
    });
    quiet.on_heartbeat(&u("a"), 0);
    assert_eq!(quiet.alerts().count(), 0);
}

#[test]
fn not_down_keeps_suspected_and_unknown() {
    let mut m = monitor();
    m.watch(u("a"), 0);
    m.watch(u("b"), 0);
    m.on_heartbeat(&u("b"), 305_000);
    m.tick(310_000);
    assert_eq!(m.liveness(&u("a")), Some(Liveness::Down));
    assert_eq!(m.liveness(&u("b")), Some(Liveness::Alive));
    m.tick(320_000);
    assert_eq!(m.liveness(&u("b")), Some(Liveness::Suspected));
    let all = [u("a"), u("b"), u("c")];
    assert_eq!(m.not_down(&all), vec![u("b"), u("c")]);
}

#[test]
fn metrics_expire_after_ttl() {
    let mut m = monitor();
    let a = u("a");
    let x = Metrics::from_statvfs(1_000, 100, 2, 300);
    assert_eq!(x.free_bytes, 900);
    assert_eq!(x.room(), 600);
    assert_eq!(Metrics::from_statvfs(50, 100, 0, 0).room(), 0);
    assert!(m.on_metrics(&a, x, 1_000));
    assert_eq!(m.metrics(&a, 30_999), Some(&x));
    assert_eq!(m.room(&a, 30_999), Some(600));
    assert_eq!(m.metrics(&a, 31_000), None, "expired");
    assert!(
        !m.on_metrics(&a, Metrics::default(), 500),
        "older report ignored"
    );
    assert!(m.on_metrics(&a, Metrics::default(), 40_000));
    assert_eq!(m.room(&a, 40_000), Some(0));
    assert_eq!(m.metrics(&u("zz"), 0), None);
}

#[derive(Debug, Clone)]
enum Op {
    Beat(u8, u64),
    Tick(u64),
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0u8..4, 0u64..400_000).prop_map(|(n, d)| Op::Beat(n, d)),
            (0u64..400_000).prop_map(Op::Tick),
        ],
        0..60,
    )
}

proptest! {
    /// Whatever the order of heartbeats and ticks, the events follow the
    /// state machine: each event leaves the state it names, `Down` only
    /// follows `Suspected`, `Recovered` only follows `Down`, and `Alive` from
    /// a known node only follows `Suspected`.
    #[test]
    fn transitions_follow_the_machine(ops in arb_ops()) {
        let mut m = monitor();
        let mut now = 0u64;
        let mut state: BTreeMap<Uuid, Liveness> = BTreeMap::new();
        for op in ops {
            let events = match op {
                Op::Beat(n, d) => {
                    now += d / 10;
                    m.on_heartbeat(&u(&format!("n{n}")), now).into_iter().collect()
                }
                Op::Tick(d) => {
                    now += d;
                    m.tick(now)
                }
            };
            for e in events {
                let before = state.get(e.node()).copied();
                match &e {
                    Event::Alive { .. } => prop_assert!(matches!(before, None | Some(Liveness::Suspected))),
                    Event::Suspected { .. } => prop_assert_eq!(before, Some(Liveness::Alive)),
                    Event::Down { .. } => prop_assert_eq!(before, Some(Liveness::Suspected)),
                    Event::Recovered { .. } => prop_assert_eq!(before, Some(Liveness::Down)),
                }
                state.insert(e.node().clone(), e.liveness());
            }
            for (n, l) in &state {
                prop_assert_eq!(m.liveness(n), Some(*l));
            }
        }
    }
}
