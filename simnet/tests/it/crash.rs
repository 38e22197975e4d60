//! Scenario 3: the serving peer crashes in the middle of an upload and comes
//! back from the same directory with the same identity: what it stored is
//! still there, and the upload resumes.

use protocol::AssociatedFile;
use simnet::Sim;

use crate::util::{MIB, STEP, content, ms, settled_partial, stored, wait_partial};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_and_restart_mid_put() {
    let mut sim = Sim::from_env().unwrap();
    let a = sim.add_peer("a").await.unwrap();
    sim.add_client("user").await.unwrap();
    sim.set_latency("user", "a", ms(1)..=ms(3)).unwrap();
    let (small, small_key, small_src) = content(&mut sim, MIB + 12_345);
    let len = 8 * MIB + sim.rng().below(2 * MIB as u64) as usize;
    let (big, big_key, big_src) = content(&mut sim, len);

    let mut s = sim.session("user", "a").await.unwrap();
    let put = s
        .put(&small_key, AssociatedFile::none(), &small_src, &mut |_| {})
        .await
        .unwrap();
    assert!(put.stored);
    let upload = {
        let (key, src) = (big_key.clone(), big_src.clone());
        tokio::spawn(async move { s.put(&key, AssociatedFile::none(), &src, &mut |_| {}).await })
    };
    let store = sim.store("a").unwrap();
    wait_partial(&store, &big_key, 2 * MIB as u64).await;
    // (How many sessions the peer itself still had to stop is a race with
    // their noticing the cut, so it is not checked.)
    sim.crash("a").await.unwrap();
    let failed = simnet::within("the cut upload to fail", STEP, upload)
        .await
        .unwrap()
        .unwrap();
    assert!(failed.is_err(), "{failed:?}");

    // Down: nobody gets through; the directory is intact.
    let refused = sim.session("user", "a").await.map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("a is down"), "{refused}");
    let store = sim.store("a").unwrap();
    assert!(stored(&store, &small_key) == small);
    let have = settled_partial(&store, &big_key).await;
    assert!(have >= 2 * MIB as u64 && have < len as u64, "{have}");

    sim.restart("a").await.unwrap();
    assert_eq!(sim.peer("a").unwrap().peer_id(), a.peer_id, "same identity");
    assert_eq!(sim.store("a").unwrap().uuid(), &a.uuid, "same repository");
    let mut s = sim.session("user", "a").await.unwrap();
    assert!(s.check_present(&small_key).await.unwrap());
    let scratch = sim.scratch("user").unwrap();
    assert!(
        s.get(
            &small_key,
            AssociatedFile::none(),
            &scratch.join("partial"),
            &scratch.join("small"),
            &mut |_| {}
        )
        .await
        .unwrap()
    );
    assert!(std::fs::read(scratch.join("small")).unwrap() == small);

    let mut first = None;
    let put = simnet::within(
        "the resumed put",
        STEP,
        s.put(&big_key, AssociatedFile::none(), &big_src, &mut |done| {
            first.get_or_insert(done);
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(put.stored, "{put:?}");
    let first = first.unwrap();
    assert!(first > have, "resumed at {first}, had {have}");
    let store = sim.store("a").unwrap();
    assert!(stored(&store, &big_key) == big, "content differs");
    let trace = sim.trace().join("\n");
    assert!(trace.contains("crash a: 1 cut"), "{trace}");
    assert!(trace.contains("restart a"), "{trace}");
}
