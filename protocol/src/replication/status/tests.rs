use super::*;
use crate::replication::repair::tests::{World, eff, key, u, uniform};
use crate::replication::repair::{Planner, RepairConfig};

fn statuses(w: &World, p: &dyn crate::replication::Placement, f: &Filter) -> Vec<KeyStatus> {
    let env = w.env(p);
    w.planner.statuses(&env, f).collect()
}

#[test]
fn states_per_key_and_node() {
    let mut w = World::new(3, RepairConfig::default());
    for i in 0..4 {
        w.planner.on_presence(&key(i), &u("n1"), true);
        w.planner.on_presence(&key(i), &u("n2"), true);
    }
    w.planner.on_presence(&key(4), &u("n1"), true);
    let p = uniform(eff(2, 2));
    let t = w.poll(&p);
    assert_eq!(t.len(), 1, "key 4 is short");
    w.planner.on_missing(&key(3), &u("n2"));
    let all = statuses(&w, &p, &Filter::default());
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].key, key(0), "in key order");
    let k4 = all.iter().find(|s| s.key == key(4)).unwrap();
    assert_eq!(k4.copies, 1);
    assert!(k4.under_replicated);
    let states: Vec<(&str, &NodeState)> = k4
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), &n.state))
        .collect();
    let Action { to } = target(&t[0].action);
    assert!(states.contains(&("n1", &NodeState::Present)));
    assert!(states.contains(&(to.as_str(), &NodeState::Transferring)));
    let k3 = all.iter().find(|s| s.key == key(3)).unwrap();
    assert!(k3.under_replicated);
    assert!(k3.has(StateKind::Missing, Some(&u("n2"))));
    assert!(!k3.has(StateKind::Missing, Some(&u("n1"))));
    let k0 = all.iter().find(|s| s.key == key(0)).unwrap();
    assert_eq!((k0.copies, k0.min, k0.max), (2, 2, 2));
    assert!(!k0.under_replicated && !k0.queued && k0.error.is_none());

    // Filters.
    let f = |states: Vec<StateKind>, node: Option<&str>, under: bool| Filter {
        states,
        node: node.map(u),
        under_replicated: under,
    };
    assert_eq!(
        statuses(&w, &p, &f(vec![StateKind::Missing], None, false)).len(),
        1
    );
    assert_eq!(
        statuses(&w, &p, &f(vec![StateKind::Transferring], None, false)).len(),
        1
    );
    assert_eq!(statuses(&w, &p, &f(vec![], None, true)).len(), 2);
    // n2 holds keys 0..4 and receives key 4.
    assert_eq!(to, u("n2"));
    assert_eq!(statuses(&w, &p, &f(vec![], Some("n2"), false)).len(), 5);
    assert_eq!(
        statuses(&w, &p, &f(vec![StateKind::Present], Some("n2"), false)).len(),
        3,
        "n2's copy of key 3 is missing"
    );
    let s = w.planner.summary(&w.env(&p));
    assert_eq!(
        s,
        Summary {
            keys: 5,
            under_replicated: 2,
            // key 4's copy is under way; key 3 awaits evaluation.
            queued: 0,
            transferring: 1,
            errors: 0,
            missing: 1,
        }
    );
}

struct Action {
    to: crate::uuid::Uuid,
}

fn target(a: &crate::replication::Action) -> Action {
    match a {
        crate::replication::Action::Copy { to, .. } => Action { to: to.clone() },
        a => panic!("{a:?}"),
    }
}

#[test]
fn errors_show_on_the_node_and_the_key() {
    let mut w = World::new(2, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    let p = uniform(eff(2, 2));
    let t = w.poll(&p);
    w.planner
        .on_transfer_done(t[0].id, Err("disk on fire".repeat(100)), w.now);
    let st = w.planner.status(&key(0), &w.env(&p)).unwrap();
    let err = st.error.clone().unwrap();
    assert!(err.len() <= crate::replication::repair::MAX_ERROR_BYTES);
    assert!(st.nodes.iter().any(|n| n.node == u("n2")
        && matches!(&n.state, NodeState::Error(m) if m.starts_with("disk on fire"))));
    assert!(st.has(StateKind::Error, None));
    let f = Filter {
        states: vec![StateKind::Error],
        ..Filter::default()
    };
    assert!(f.matches(&st));
    assert!(w.planner.status(&key(9), &w.env(&p)).is_none());
    assert!(
        Planner::new(u("g"), RepairConfig::default())
            .statuses(&w.env(&p), &f)
            .next()
            .is_none()
    );
}

#[test]
fn queued_keys_and_state_names() {
    let config = RepairConfig {
        max_in_flight: 1,
        ..RepairConfig::default()
    };
    let mut w = World::new(3, config);
    for i in 0..3 {
        w.planner.on_presence(&key(i), &u("n1"), true);
    }
    let p = uniform(eff(2, 2));
    assert_eq!(w.poll(&p).len(), 1);
    let f = Filter {
        states: vec![StateKind::Queued],
        ..Filter::default()
    };
    assert_eq!(statuses(&w, &p, &f).len(), 2);
    for (s, k) in [
        ("present", StateKind::Present),
        ("queued", StateKind::Queued),
        ("transferring", StateKind::Transferring),
        ("error", StateKind::Error),
        ("missing", StateKind::Missing),
    ] {
        assert_eq!(StateKind::parse(s), Some(k));
    }
    assert_eq!(StateKind::parse("pinned"), None);
    assert_eq!(NodeState::Dropping.kind(), StateKind::Transferring);
}

/// An fsck finding that needs a person (no good copy) shows as the key's
/// error, on the node, until the key is recovered.
#[test]
fn a_reported_error_shows_until_recovered() {
    let mut w = World::new(3, RepairConfig::default());
    w.planner.on_presence(&key(0), &u("n1"), true);
    w.planner.on_presence(&key(0), &u("n2"), true);
    let p = uniform(eff(1, 2));
    assert!(
        w.planner
            .report_error(&key(0), &u("n2"), "fsck: no good copy")
    );
    assert!(!w.planner.report_error(&key(9), &u("n2"), "unknown key"));
    // Evaluations that find the key at its replication keep it.
    for _ in 0..3 {
        w.poll(&p);
        w.planner.reevaluate_all();
    }
    let all = statuses(&w, &p, &Filter::default());
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].error.as_deref(), Some("fsck: no good copy"));
    assert!(all[0].has(StateKind::Error, None));
    // Recorded absent there (a local node's copy moved aside): the node's
    // own state is the error.
    w.planner.on_presence(&key(0), &u("n2"), false);
    let all = statuses(&w, &p, &Filter::default());
    assert!(all[0].has(StateKind::Error, Some(&u("n2"))), "{all:?}");
    assert!(w.planner.recover(&key(0)));
    let all = statuses(&w, &p, &Filter::default());
    assert!(all[0].error.is_none() && !all[0].has(StateKind::Error, None));
    // A new copy on the node clears it too.
    w.planner.report_error(&key(0), &u("n2"), "fsck: bad");
    w.planner.on_presence(&key(0), &u("n3"), true);
    assert!(
        statuses(&w, &p, &Filter::default())[0].error.is_some(),
        "another node's copy changes nothing"
    );
    w.planner.on_presence(&key(0), &u("n2"), true);
    assert!(statuses(&w, &p, &Filter::default())[0].error.is_none());
}
