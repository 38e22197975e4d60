//! Scenario 2: a partition in the middle of an upload. The upload fails
//! cleanly, dials fail while partitioned, and after healing the upload resumes
//! where the server's partial file ends (`PUT-FROM` > 0).

use protocol::AssociatedFile;
use simnet::Sim;

use crate::util::{MIB, STEP, content, ms, settled_partial, stored, wait_partial};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_mid_put_then_resume() {
    let mut sim = Sim::from_env().unwrap();
    let a = sim.add_peer("a").await.unwrap();
    let user = sim.add_client("user").await.unwrap();
    sim.set_latency("user", "a", ms(1)..=ms(4)).unwrap();
    let len = 8 * MIB + sim.rng().below(12 * MIB as u64) as usize;
    let (data, key, src) = content(&mut sim, len);
    let store = sim.store("a").unwrap();

    let mut s = sim.session("user", "a").await.unwrap();
    let upload = {
        let (key, src) = (key.clone(), src.clone());
        tokio::spawn(async move { s.put(&key, AssociatedFile::none(), &src, &mut |_| {}).await })
    };
    wait_partial(&store, &key, 3 * MIB as u64).await;
    assert!(
        sim.partition("user", "a").unwrap() >= 1,
        "the connection is cut"
    );
    let failed = simnet::within("the cut upload to fail", STEP, upload)
        .await
        .unwrap()
        .unwrap();
    assert!(failed.is_err(), "{failed:?}");
    assert!(!store.contains(&key));

    // While partitioned, new connections are refused.
    sim.wait_disconnected("user", "a").await.unwrap();
    let refused = sim.session("user", "a").await.map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("partitioned"), "{refused}");

    let have = settled_partial(&store, &key).await;
    assert!(have >= 3 * MIB as u64 && have < len as u64, "{have}");

    sim.heal("user", "a").unwrap();
    let net = sim.network().clone();
    let before = net.bytes_sent(user, a.node);
    let mut s = sim.session("user", "a").await.unwrap();
    let mut first = None;
    let put = simnet::within(
        "the resumed put",
        STEP,
        s.put(&key, AssociatedFile::none(), &src, &mut |done| {
            first.get_or_insert(done);
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(put.stored, "{put:?}");
    // Progress counts from the offset the server asked for (PUT-FROM), plus
    // at most one chunk. The server may have written a little more after we
    // looked (what its buffers still held), never less.
    let first = first.unwrap();
    assert!(first > have, "first progress {first}, had {have}");
    let sent = net.bytes_sent(user, a.node) - before;
    let rest = len as u64 - have;
    assert!(
        sent < rest + MIB as u64 / 2,
        "sent {sent} for the last {rest}"
    );
    assert!(stored(&store, &key) == data, "content differs");
    assert_eq!(store.partial_size(&key), 0);
    let trace = sim.trace().join("\n");
    assert!(
        trace.contains("dial user->a refused: user and a are partitioned"),
        "{trace}"
    );
}
