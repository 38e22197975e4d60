//! The repair planner at the scale: 100 000 keys on 8 nodes, three
//! copies each. Asserts on counts only; prints how long each phase took and
//! the process's resident memory (run with `cargo test --release --test
//! replication_scale -- --nocapture` to see the numbers that matter).

use std::time::Instant;

use protocol::Key;
use protocol::replication::alloc::Layout;
use protocol::replication::monitor::{Event, Metrics, Monitor, MonitorConfig};
use protocol::replication::policy::{Rule, resolve};
use protocol::replication::repair::{Action, Env, Needs, Planner, RepairConfig};
use protocol::uuid::Uuid;

const KEYS: u32 = 100_000;
const NODES: usize = 8;

fn key(i: u32) -> Key {
    Key::parse(&format!("SHA256E-s4096--{i:064x}.dat")).expect("a valid key")
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Scale {
    planner: Planner,
    monitor: Monitor,
    layout: Layout,
    nodes: Vec<Uuid>,
    gateways: Vec<Uuid>,
    now: u64,
}

impl Scale {
    fn poll(
        &mut self,
        p: &dyn protocol::replication::Placement,
    ) -> Vec<protocol::replication::Transfer> {
        for n in &self.nodes {
            let m = Metrics {
                free_bytes: 1 << 40,
                ..Metrics::default()
            };
            self.monitor.on_metrics(n, m, self.now);
        }
        let env = Env {
            now: self.now,
            placement: p,
            monitor: &self.monitor,
            layout: &self.layout,
            gateways: &self.gateways,
            tiebreak: Some(7),
        };
        self.planner.poll(&env)
    }

    /// Polls and completes everything; returns (copies, drops, polls, peak in flight).
    fn settle(&mut self, p: &dyn protocol::replication::Placement) -> (usize, usize, usize, usize) {
        let (mut copies, mut drops, mut polls, mut peak) = (0, 0, 0, 0);
        loop {
            let ts = self.poll(p);
            polls += 1;
            if ts.is_empty() {
                break;
            }
            peak = peak.max(self.planner.in_flight());
            for t in ts {
                match t.action {
                    Action::Copy { .. } => copies += 1,
                    Action::Drop { .. } => drops += 1,
                }
                assert!(self.planner.on_transfer_done(t.id, Ok(()), self.now));
            }
            self.now += 10;
        }
        (copies, drops, polls, peak)
    }
}

#[test]
fn hundred_thousand_keys_one_node_down_and_back() {
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let nodes: Vec<Uuid> = (0..NODES)
        .map(|i| Uuid::parse(&format!("node-{i}")).unwrap())
        .collect();
    let mut layout = Layout::new();
    for (i, n) in nodes.iter().enumerate() {
        layout.set_site(n.clone(), Uuid::parse(&format!("gw-{}", i % 2)).unwrap());
    }
    let mut s = Scale {
        planner: Planner::new(Uuid::parse("gw-0").unwrap(), RepairConfig::default()),
        monitor: Monitor::new(MonitorConfig::default()),
        layout,
        nodes: nodes.clone(),
        gateways: vec![],
        now: 100_000_000,
    };
    s.planner.set_members(nodes.clone());
    for i in 0..KEYS {
        for c in 0..3 {
            s.planner
                .on_presence(&key(i), &nodes[(i as usize + c) % NODES], true);
        }
    }
    let e = resolve(Rule::parse("min=3 max=3"), 2, NODES as u32);
    let placement = move |_: &Key, _: &[&Uuid], _: &[Uuid], out: &mut Needs| {
        out.effective = e;
        out.wanting.fill(true);
    };
    let t_index = t0.elapsed();
    assert!(s.poll(&placement).is_empty(), "healthy");
    let t_first = t0.elapsed() - t_index;
    let rss1 = rss_kib();
    assert_eq!(s.planner.key_count(), KEYS as usize);
    let held = s.planner.held_by(&nodes[0]);
    assert_eq!(held, 37_500);

    // node-0 goes down past grace: exactly its keys are re-evaluated.
    let t1 = Instant::now();
    s.planner.on_event(&Event::Down {
        node: nodes[0].clone(),
        at: s.now,
        last_seen: s.now - 400_000,
    });
    assert_eq!(s.planner.pending_evaluation(), held);
    let first = s.poll(&placement);
    let t_down_first_poll = t1.elapsed();
    // node-0's keys have their other copies on nodes 1, 2, 6 and 7 only:
    // four sources of `max_per_source` transfers each.
    let per_source = RepairConfig::default().max_per_source as usize;
    assert_eq!(first.len(), 4 * per_source);
    let started = first.len();
    assert_eq!(s.planner.queued(), held - first.len());
    for t in first {
        s.planner.on_transfer_done(t.id, Ok(()), s.now);
    }
    let (copies, drops, polls, peak) = s.settle(&placement);
    let t_repair = t1.elapsed();
    assert_eq!(copies + started, held);
    assert_eq!(drops, 0);
    assert!(peak <= RepairConfig::default().max_in_flight as usize);
    for i in (0..KEYS).step_by(97) {
        let live = s
            .planner
            .holders(&key(i))
            .iter()
            .filter(|h| **h != nodes[0])
            .count();
        assert_eq!(live, 3, "key {i}");
    }
    assert_eq!(s.planner.queued(), 0);

    // node-0 recovers: its 37 500 copies are now above max and are dropped.
    let t2 = Instant::now();
    s.planner.on_event(&Event::Recovered {
        node: nodes[0].clone(),
        at: s.now,
        last_seen: s.now - 400_000,
    });
    let (copies2, drops2, polls2, _) = s.settle(&placement);
    let t_shed = t2.elapsed();
    assert_eq!(copies2, 0);
    assert_eq!(drops2, held);
    for i in (0..KEYS).step_by(89) {
        assert_eq!(s.planner.holders(&key(i)).len(), 3, "key {i}");
    }
    let rss2 = rss_kib();
    eprintln!(
        "scale: {KEYS} keys x 3 copies on {NODES} nodes: index built in {t_index:?}, \
         first full evaluation {t_first:?}; node down: first poll {t_down_first_poll:?}, \
         {copies} more copies in {polls} polls, all repaired in {t_repair:?}; \
         recovered: {drops2} drops in {polls2} polls, {t_shed:?}; \
         RSS KiB before {rss0:?}, after index {rss1:?}, end {rss2:?}"
    );
}
