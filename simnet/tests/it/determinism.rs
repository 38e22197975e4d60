//! Scenario 4: the same seed gives the same trace of the network's decisions;
//! another seed gives another.

use protocol::AssociatedFile;
use simnet::{SeedGuard, Sim};

use crate::util::{MIB, STEP, content, ms};

/// A small scenario touching every kind of decision; returns its trace.
async fn scenario(seed: u64) -> Vec<String> {
    let mut sim = Sim::new(seed).unwrap();
    let a = sim.add_peer("a").await.unwrap();
    let b = sim.add_peer("b").await.unwrap();
    sim.add_client("user").await.unwrap();
    sim.set_latency("user", "a", ms(0)..=ms(4)).unwrap();
    sim.set_latency_oneway("b", "a", ms(1)..=ms(2)).unwrap();
    sim.set_latency("user", "b", ms(0)..=ms(1)).unwrap();
    let len = MIB / 2 + sim.rng().below(1000) as usize;
    let (_, key, src) = content(&mut sim, len);
    let net = sim.network().clone();
    net.note(format!("identities a={} b={}", a.peer_id, b.peer_id));
    net.note(format!("uuids a={} b={}", a.uuid, b.uuid));
    net.note(format!("content {key}"));

    let mut s = sim.session("user", "a").await.unwrap();
    assert!(
        s.put(&key, AssociatedFile::none(), &src, &mut |_| {})
            .await
            .unwrap()
            .stored
    );
    let scratch = sim.scratch("b").unwrap();
    let mut s2 = sim.session("b", "a").await.unwrap();
    let got = simnet::within(
        "get",
        STEP,
        s2.get(
            &key,
            AssociatedFile::none(),
            &scratch.join("partial"),
            &scratch.join("got"),
            &mut |_| {},
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(got);

    sim.partition("user", "b").unwrap();
    assert!(sim.session("user", "b").await.is_err());
    sim.heal("user", "b").unwrap();
    let mut s3 = sim.session("user", "b").await.unwrap();
    assert!(!s3.check_present(&key).await.unwrap());
    drop((s, s2, s3));
    sim.crash("b").await.unwrap();
    assert!(sim.session("user", "b").await.is_err());
    sim.restart("b").await.unwrap();
    sim.session("user", "b").await.unwrap();
    sim.trace()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_seed_same_trace() {
    let seed = simnet::seed_from_env();
    let _guard = SeedGuard(seed);
    let first = scenario(seed).await;
    let second = scenario(seed).await;
    assert_eq!(first, second, "seed {seed}: traces differ");
    for needle in [
        "connect user->a#0",
        "partition user|b: 0 cut",
        "crash b: 2 cut",
        "dial user->b refused: b is down",
    ] {
        assert!(
            first.iter().any(|l| l.contains(needle)),
            "{needle}: {first:#?}"
        );
    }
    let latencies = first.iter().filter(|l| l.starts_with("latency ")).count();
    assert!(latencies >= 6, "{first:#?}");
    let other = scenario(seed.wrapping_add(1)).await;
    assert_ne!(
        first,
        other,
        "seeds {seed} and {} gave one trace",
        seed.wrapping_add(1)
    );
}
