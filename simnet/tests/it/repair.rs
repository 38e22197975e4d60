//! Scenario (issue 10): repair under seeded random failures. One gateway and
//! five member nodes, keys at min = max = 2; nodes drawn from the seed crash
//! one after another: every key they held is copied back to two live nodes,
//! and once the node is back its extra copies are trimmed, never below two.
//! `simnet/benches/repair.rs` runs the same at 100 000 keys.

use std::time::Duration;

use simnet::Sim;
use simnet::repair::{Scenario, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_node_failures_are_repaired_to_min_and_trimmed_to_max() {
    let mut sim = Sim::from_env().unwrap();
    let s = Scenario {
        nodes: 5,
        keys: 200,
        size: 2_000,
        copies: 2,
        rounds: 2,
        limit: Duration::from_secs(120),
    };
    let report = run(&mut sim, s).await.unwrap();
    assert_eq!(report.rounds.len(), 2);
    for r in &report.rounds {
        assert!(r.held > 0, "{r:?}");
        // Each key the node held needed one copy; none other did.
        assert!(r.copies >= r.held as u64, "{r:?}");
        assert!(r.fewest_during_trim >= 2, "{r:?}");
    }
}
