//! The gateway's pure core under arbitrary facts: the `PUT` plan over an
//! arbitrary topology, the `GET` cursor under arbitrary holder behaviour,
//! the replies from arbitrary node reports, and the repair planner under
//! arbitrary location changes, monitor events, transfer results and time.

use std::collections::{BTreeMap, BTreeSet};

use super::input::Input;
use crate::cluster::get::{GetCursor, GetStep, Holder};
use crate::cluster::plan::{PutFacts, plan_put};
use crate::cluster::reply::{
    Outcome, RemoveReport, Report, Reporter, put_begin, put_reply, remove_reply,
};
use crate::cluster::topology::{Cost, Entry, Link, Topology};
use crate::key::Key;
use crate::message::Message;
use crate::replication::alloc::Layout;
use crate::replication::monitor::{Event, Liveness, Metrics, Monitor, MonitorConfig};
use crate::replication::policy::{Needs, Rule, resolve};
use crate::replication::repair::{Action, Env, Planner, RepairConfig, coordinator};
use crate::uuid::Uuid;
use crate::verify::Validity;

const CLUSTER: &str = "acae2ff6-6c1e-8bec-b8b9-397a3755f397";
const GATEWAYS: usize = 4;
const NODES: usize = 6;

fn gw(i: usize) -> Uuid {
    Uuid::parse(&format!("g{i}")).expect("valid literal")
}

fn node(i: usize) -> Uuid {
    Uuid::parse(&format!("n{i}")).expect("valid literal")
}

fn subset(i: &mut Input<'_>, n: usize, f: fn(usize) -> Uuid) -> BTreeSet<Uuid> {
    let bits = i.byte();
    (0..n)
        .filter(|k| bits & (1 << (k % 8)) != 0)
        .map(f)
        .collect()
}

fn topology(i: &mut Input<'_>) -> Topology {
    let mut t = Topology::new();
    let cluster = Uuid::parse(CLUSTER).expect("valid literal");
    for g in 0..GATEWAYS {
        if i.one_in(5) {
            continue;
        }
        let link = |i: &mut Input<'_>, to: Uuid| Link {
            to,
            cost: Cost::from_hundredths(u64::from(i.byte()) * 10),
            name: None,
        };
        let nodes = subset(i, NODES, node)
            .into_iter()
            .map(|n| link(i, n))
            .collect();
        let gateways = subset(i, GATEWAYS, gw)
            .into_iter()
            .filter(|x| *x != gw(g))
            .map(|x| link(i, x))
            .collect();
        t.insert(
            gw(g),
            Entry {
                clusters: vec![cluster.clone()],
                nodes,
                gateways,
            },
        );
    }
    t
}

/// The `PUT` plan: never a node twice, never a bypassed or holding node,
/// and each hop's share, planned again at that hop with the `BYPASS` it is
/// sent, stays within what it was assigned.
pub fn put_plan(data: &[u8]) {
    let mut i = Input::new(data);
    let t = topology(&mut i);
    let cluster = Uuid::parse(CLUSTER).expect("valid literal");
    let alive = subset(&mut i, GATEWAYS, gw);
    let wanted = subset(&mut i, NODES, node);
    let have = subset(&mut i, NODES, node);
    let mut bypass = subset(&mut i, NODES, node);
    bypass.extend(subset(&mut i, GATEWAYS, gw));
    let me = gw(i.below(GATEWAYS));
    let offsets: BTreeMap<Uuid, u64> = (0..NODES).map(|n| (node(n), i.number())).collect();
    check_plan(
        &t, &cluster, &alive, &me, &wanted, &have, &bypass, &offsets, None, 0,
    );
}

#[allow(clippy::too_many_arguments)]
fn check_plan(
    t: &Topology,
    cluster: &Uuid,
    alive: &BTreeSet<Uuid>,
    me: &Uuid,
    wanted: &BTreeSet<Uuid>,
    have: &BTreeSet<Uuid>,
    bypass: &BTreeSet<Uuid>,
    offsets: &BTreeMap<Uuid, u64>,
    assigned: Option<&BTreeSet<Uuid>>,
    depth: usize,
) {
    let routes = t.routes(me, cluster, alive, bypass);
    let plan = plan_put(&PutFacts {
        routes: &routes,
        wanted,
        have,
        bypass,
        offsets,
    });
    let mut seen = BTreeSet::new();
    let all = plan.local.iter().map(|l| &l.node).chain(
        plan.hops
            .iter()
            .chain(&plan.unsendable)
            .flat_map(|h| &h.nodes),
    );
    for n in all {
        assert!(
            seen.insert(n.clone()),
            "{n} targeted twice at {me}: {plan:?}"
        );
        assert!(
            !bypass.contains(n),
            "bypassed {n} targeted at {me}: {plan:?}"
        );
        assert!(!have.contains(n), "holder {n} targeted at {me}");
        if let Some(a) = assigned {
            assert!(
                a.contains(n),
                "{me} serves {n}, which it was not assigned: {plan:?}"
            );
        }
    }
    let mut hops = BTreeSet::new();
    for h in &plan.hops {
        assert!(hops.insert(h.gateway.clone()), "hop {} twice", h.gateway);
        assert!(
            h.gateway != *me && !bypass.contains(&h.gateway),
            "hop {} bypassed",
            h.gateway
        );
        assert!(!h.nodes.is_empty());
        for n in &h.nodes {
            assert!(
                !h.bypass.contains(n),
                "hop {} bypasses its own {n}",
                h.gateway
            );
        }
        assert!(
            h.bypass.contains(me),
            "hop {} may come back to {me}",
            h.gateway
        );
        if depth < 4 && !h.stock {
            let next: BTreeSet<Uuid> = h.bypass.iter().cloned().collect();
            let share: BTreeSet<Uuid> = h.nodes.iter().cloned().collect();
            check_plan(
                t,
                cluster,
                alive,
                &h.gateway,
                wanted,
                have,
                &next,
                offsets,
                Some(&share),
                depth + 1,
            );
        }
    }
}

/// The `GET` cursor under holders that fail, lie about sizes, end early or
/// say `INVALID`: it always terminates, each holder asked once, the offset
/// never goes back nor past the total, the header goes out once.
pub fn get_cursor(data: &[u8]) {
    let mut i = Input::new(data);
    let holders: Vec<Holder> = (0..i.below(6))
        .map(|_| Holder {
            node: node(i.below(NODES)),
            cost: Cost::from_hundredths(u64::from(i.byte())),
            busy: u32::from(i.byte() % 4),
        })
        .collect();
    let start = i.number();
    let size = i.bool().then(|| i.number());
    let mut c = GetCursor::new(&holders, start, size, i.u64());
    let mut asks = 0usize;
    let mut headers = 0usize;
    let mut last_offset = start;
    for _ in 0..10_000 {
        match c.next() {
            GetStep::Try { node, offset } => {
                asks += 1;
                assert!(
                    asks <= holders.len(),
                    "asks {asks} of {} holders",
                    holders.len()
                );
                assert!(holders.iter().any(|h| h.node == node));
                assert_eq!(offset, c.offset());
                match c.on_start(i.number()) {
                    Err(_) => {
                        c.on_failure();
                        continue;
                    }
                    Ok(Some(_)) => headers += 1,
                    Ok(None) => {}
                }
                assert!(headers <= 1, "a second DATA header");
                for _ in 0..i.below(4) {
                    c.on_data(i.number());
                    assert!(c.offset() >= last_offset, "the offset went back");
                    last_offset = c.offset();
                    if let Some(t) = c.total() {
                        assert!(c.offset() <= t.max(start), "past the total");
                    }
                    // The holder keeps streaming: the cursor repeats it.
                    if i.one_in(4)
                        && let GetStep::Try { node: again, .. } = c.next()
                    {
                        assert_eq!(again, node, "switched holder mid-stream");
                    }
                }
                match i.byte() % 3 {
                    0 => c.on_failure(),
                    1 => c.on_end(Validity::Valid),
                    _ => c.on_end(Validity::Invalid),
                }
            }
            GetStep::Complete { total, .. } => {
                assert!(c.started() && total >= start.min(total));
                assert_eq!(Some(total), c.total());
                return;
            }
            GetStep::NoHolderLeft { started, sent } => {
                assert_eq!(started, c.started());
                assert!(sent <= c.offset().saturating_sub(start));
                return;
            }
        }
    }
    panic!("the GET cursor did not terminate");
}

/// The replies a gateway builds from its nodes' reports.
pub fn replies(data: &[u8]) {
    let mut i = Input::new(data);
    let pool = |i: &mut Input<'_>| -> Uuid {
        match i.byte() % 3 {
            0 => Uuid::parse(CLUSTER).expect("valid literal"),
            1 => gw(i.below(GATEWAYS)),
            _ => node(i.below(NODES)),
        }
    };
    let list = |i: &mut Input<'_>| -> Vec<Uuid> { (0..i.below(4)).map(|_| pool(i)).collect() };
    let version = i64::from(i.byte() % 6) - 1;
    let reports: Vec<Report> = (0..i.below(8))
        .map(|_| {
            let from = pool(&mut i);
            let outcome = match i.byte() % 3 {
                0 => Outcome::Stored(list(&mut i)),
                1 => Outcome::AlreadyHad(list(&mut i)),
                _ => Outcome::Failed(list(&mut i)),
            };
            if i.bool() {
                Report::node(from, outcome)
            } else {
                Report::hop(from, outcome)
            }
        })
        .collect();
    let removes: Vec<RemoveReport> = (0..i.below(8))
        .map(|_| {
            let u = pool(&mut i);
            RemoveReport {
                from: if i.bool() {
                    Reporter::Node(u)
                } else {
                    Reporter::Hop(u)
                },
                removed: i.bool(),
                also: list(&mut i),
            }
        })
        .collect();
    let offsets: Vec<u64> = (0..i.below(3)).map(|_| i.number()).collect();
    let mut named: BTreeSet<Uuid> = BTreeSet::new();
    for r in &reports {
        let (Reporter::Node(u) | Reporter::Hop(u)) = &r.from;
        named.insert(u.clone());
        let (Outcome::Stored(us) | Outcome::AlreadyHad(us) | Outcome::Failed(us)) = &r.outcome;
        named.extend(us.iter().cloned());
    }
    for r in &removes {
        let (Reporter::Node(u) | Reporter::Hop(u)) = &r.from;
        named.insert(u.clone());
        named.extend(r.also.iter().cloned());
    }
    let check = |reply: &crate::cluster::reply::Reply| {
        let mut seen = BTreeSet::new();
        for u in &reply.record {
            assert!(!u.is_cluster(), "a cluster uuid recorded as a holder");
            assert!(seen.insert(u), "{u} recorded twice");
            assert!(named.contains(u), "{u} invented");
        }
        let mut line = Vec::new();
        reply.message.encode_into(&mut line);
        assert_eq!(line.pop(), Some(b'\n'));
        assert_eq!(Message::parse(&line).ok().as_ref(), Some(&reply.message));
        if version < 2 {
            assert!(matches!(
                reply.message,
                Message::Success | Message::Failure | Message::AlreadyHave
            ));
        }
    };
    let put = put_reply(version, &reports);
    check(&put);
    assert_eq!(
        put.ok(),
        reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Stored(_)))
    );
    check(&remove_reply(version, &removes));
    match put_begin(version, &reports, &offsets) {
        crate::cluster::reply::Begin::AlreadyHave(r) => check(&r),
        crate::cluster::reply::Begin::PutFrom(n) => assert_eq!(Some(&n), offsets.iter().min()),
        crate::cluster::reply::Begin::NoTarget => {}
    }
}

fn repair_key(k: usize) -> Key {
    Key::parse(&format!("SHA256E-s1000--{k:064x}")).expect("valid literal")
}

/// The repair planner under arbitrary location changes, monitor events,
/// transfer results and time: limits hold, a drop never runs beside another
/// transfer of its key nor two copies to one target, copies go to members lacking the key from alive holders, a drop
/// locks `keep` other alive holders first, and a gateway only plans keys it
/// coordinates.
pub fn repair_planner(data: &[u8]) {
    const KEYS: usize = 10;
    let mut i = Input::new(data);
    let per_source = 1 + u32::from(i.byte() % 3);
    let per_target = 1 + u32::from(i.byte() % 2);
    let in_flight = 1 + u32::from(i.byte() % 5);
    let config = RepairConfig {
        max_per_source: per_source,
        max_per_target: per_target,
        max_in_flight: in_flight,
        settle_ms: u64::from(i.byte() % 2) * 5_000,
        ..RepairConfig::default()
    };
    let nodes: Vec<Uuid> = (1..=5).map(node).collect();
    let me = gw(0);
    let mut planner = Planner::new(me.clone(), config);
    planner.set_members(nodes.clone());
    let mut monitor = Monitor::new(MonitorConfig::default());
    let layout = Layout::new();
    let gateways = if i.bool() {
        vec![me.clone(), gw(1)]
    } else {
        vec![me.clone()]
    };
    let numcopies = 1 + u32::from(i.byte() % 3);
    let min = 1 + u32::from(i.byte() % 3);
    let max = min + u32::from(i.byte() % 3);
    let effective = resolve(
        Rule {
            min: Some(min),
            max: Some(max),
            grace: Some(300),
        },
        numcopies,
        5,
    );
    let wanting_mask = i.byte();
    let placement = move |_: &Key, _: &[&Uuid], ns: &[Uuid], out: &mut Needs| {
        out.effective = effective;
        for (k, w) in out.wanting.iter_mut().enumerate().take(ns.len()) {
            *w = wanting_mask & (1 << (k % 8)) != 0;
        }
    };
    let mut now: u64 = 10_000_000;
    let mut state: BTreeMap<Uuid, Liveness> = BTreeMap::new();
    let mut live: BTreeMap<u64, Action> = BTreeMap::new();
    // Holders that reported the key missing (their copy does not count).
    let mut missing: BTreeSet<(Key, Uuid)> = BTreeSet::new();
    let refresh = |monitor: &mut Monitor, now: u64, free: u64| {
        for n in &nodes {
            let m = Metrics {
                free_bytes: free,
                ..Metrics::default()
            };
            monitor.on_metrics(n, m, now);
        }
    };
    refresh(&mut monitor, now, 1 << 40);
    let mut steps = 0;
    while !i.is_empty() && steps < 2048 {
        steps += 1;
        match i.byte() % 10 {
            0 | 1 => {
                let k = repair_key(i.below(KEYS));
                let n = nodes[i.below(nodes.len())].clone();
                missing.remove(&(k.clone(), n.clone()));
                planner.on_presence(&k, &n, !i.one_in(3));
            }
            2 => {
                let k = repair_key(i.below(KEYS));
                let n = nodes[i.below(nodes.len())].clone();
                if planner.on_missing(&k, &n) {
                    missing.insert((k, n));
                }
            }
            3 => {
                let n = nodes[i.below(nodes.len())].clone();
                let at = now;
                let ev = match i.byte() % 4 {
                    0 => Event::Alive { node: n, at },
                    1 => Event::Suspected {
                        node: n,
                        at,
                        last_seen: at,
                    },
                    2 => Event::Down {
                        node: n,
                        at,
                        last_seen: at.saturating_sub(310_000),
                    },
                    _ => Event::Recovered {
                        node: n,
                        at,
                        last_seen: 0,
                    },
                };
                state.insert(ev.node().clone(), ev.liveness());
                planner.on_event(&ev);
            }
            4..=6 => {
                let holders_before: BTreeMap<Key, Vec<Uuid>> = (0..KEYS)
                    .map(|k| (repair_key(k), planner.holders(&repair_key(k))))
                    .collect();
                let env = Env {
                    now,
                    placement: &placement,
                    monitor: &monitor,
                    layout: &layout,
                    gateways: &gateways,
                    tiebreak: Some(i.u64()),
                };
                for t in planner.poll(&env) {
                    let alive = |n: &Uuid| state.get(n).is_none_or(|l| *l == Liveness::Alive);
                    let k = t.action.key().clone();
                    assert_eq!(
                        coordinator(&k, &gateways),
                        Some(&me),
                        "planned another's key"
                    );
                    // Copies of one key may run at once (to different
                    // targets); a drop runs alone.
                    for a in live.values().filter(|a| a.key() == &k) {
                        let clash = match (a, &t.action) {
                            (Action::Copy { to: x, .. }, Action::Copy { to: y, .. }) => x == y,
                            _ => true,
                        };
                        assert!(!clash, "{:?} while {a:?} runs", t.action);
                    }
                    let h = &holders_before[&k];
                    let counts =
                        |n: &Uuid| h.contains(n) && !missing.contains(&(k.clone(), n.clone()));
                    match &t.action {
                        Action::Copy { from, to, .. } => {
                            assert!(counts(from) && alive(from), "copy from {from}");
                            assert!(!counts(to) && alive(to), "copy to {to}");
                            assert!(nodes.contains(to));
                        }
                        Action::Drop { from, lock, .. } => {
                            assert!(h.contains(from) && alive(from), "drop from {from}");
                            assert!(!lock.contains(from));
                            assert!(
                                lock.len() as u32 >= effective.keep,
                                "a drop locking {} < keep {}",
                                lock.len(),
                                effective.keep
                            );
                            let distinct: BTreeSet<&Uuid> = lock.iter().collect();
                            assert_eq!(distinct.len(), lock.len(), "a lock twice");
                            assert!(lock.iter().all(|l| counts(l) && alive(l)), "locks {lock:?}");
                        }
                    }
                    live.insert(t.id, t.action);
                }
                assert!(live.len() as u32 <= in_flight);
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
                assert!(src.values().all(|&c| c <= per_source));
                assert!(dst.values().all(|&c| c <= per_target));
            }
            7 => {
                if !live.is_empty() {
                    let id = *live.keys().nth(i.below(live.len())).expect("in range");
                    let action = live.remove(&id).expect("present");
                    let ok = !i.one_in(5);
                    let r = if ok {
                        Ok(())
                    } else {
                        Err("failed".to_string())
                    };
                    assert!(planner.on_transfer_done(id, r, now));
                    if ok {
                        let (Action::Copy { key, to: n, .. } | Action::Drop { key, from: n, .. }) =
                            &action;
                        missing.remove(&(key.clone(), n.clone()));
                    }
                    if ok && i.bool() {
                        // The location log change arrives (or not, or late).
                        match action {
                            Action::Copy { key, to, .. } => {
                                missing.remove(&(key.clone(), to.clone()));
                                planner.on_presence(&key, &to, true);
                            }
                            Action::Drop { key, from, .. } => {
                                missing.remove(&(key.clone(), from.clone()));
                                planner.on_presence(&key, &from, false);
                            }
                        }
                    }
                } else {
                    assert!(!planner.on_transfer_done(i.u64(), Ok(()), now));
                }
            }
            8 => {
                now = now.saturating_add(i.number().min(1 << 40));
                let free = if i.one_in(4) { i.number() } else { 1 << 40 };
                refresh(&mut monitor, now, free);
            }
            _ => {
                if i.bool() {
                    planner.recover_all();
                } else {
                    planner.recover(&repair_key(i.below(KEYS)));
                }
            }
        }
        assert_eq!(planner.in_flight(), live.len());
    }
}
