//! Scenario 1: content put on peer A is fetched from A by peer B.

use protocol::AssociatedFile;
use simnet::Sim;

use crate::util::{MIB, STEP, content, ms, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_on_a_then_b_gets_it_from_a() {
    let mut sim = Sim::from_env().unwrap();
    let a = sim.add_peer("a").await.unwrap();
    sim.add_peer("b").await.unwrap();
    sim.add_client("user").await.unwrap();
    sim.set_latency("user", "a", ms(1)..=ms(3)).unwrap();
    sim.set_latency("b", "a", ms(2)..=ms(6)).unwrap();
    let len = 2 * MIB + sim.rng().below(MIB as u64) as usize;
    let (data, key, src) = content(&mut sim, len);

    // The user puts it on A.
    let mut s = sim.session("user", "a").await.unwrap();
    let put = simnet::within(
        "put",
        STEP,
        s.put(&key, AssociatedFile::none(), &src, &mut |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(put.stored && !put.already_had, "{put:?}");
    s.close().await.unwrap();
    let store_a = sim.store("a").unwrap();
    assert!(stored(&store_a, &key) == data);

    // B fetches it from A and keeps it.
    let mut s = sim.session("b", "a").await.unwrap();
    assert!(s.check_present(&key).await.unwrap());
    let scratch = sim.scratch("b").unwrap();
    let (partial, dest) = (scratch.join("partial"), scratch.join("got"));
    let got = simnet::within(
        "get",
        STEP,
        s.get(&key, AssociatedFile::none(), &partial, &dest, &mut |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(got);
    s.close().await.unwrap();
    let store_b = sim.store("b").unwrap();
    store_b.add_file(&key, &dest).unwrap();
    assert!(stored(&store_b, &key) == data);

    // Anyone can now ask B for it; the bytes crossed the b<->a link.
    let mut s = sim.session("user", "b").await.unwrap();
    assert!(s.check_present(&key).await.unwrap());
    let net = sim.network();
    let (nb, na) = (sim.node_id("b").unwrap(), a.node);
    assert!(net.bytes_sent(na, nb) >= len as u64);
    assert!(net.bytes_sent(nb, na) < len as u64 / 10);
}

/// A cut (not a partition) in the middle of a download: the get fails, a new
/// connection is allowed at once, and the download resumes from the client's
/// partial file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_mid_get_then_resume() {
    let mut sim = Sim::from_env().unwrap();
    sim.add_peer("a").await.unwrap();
    sim.add_peer("b").await.unwrap();
    sim.set_latency("b", "a", ms(1)..=ms(4)).unwrap();
    let len = 6 * MIB + sim.rng().below(4 * MIB as u64) as usize;
    let (data, key, src) = content(&mut sim, len);
    let store_a = sim.store("a").unwrap();
    store_a.add_file(&key, &src).unwrap();

    let scratch = sim.scratch("b").unwrap();
    let (partial, dest) = (scratch.join("partial"), scratch.join("got"));
    let mut s = sim.session("b", "a").await.unwrap();
    let download = {
        let (key, partial, dest) = (key.clone(), partial.clone(), dest.clone());
        tokio::spawn(async move {
            s.get(&key, AssociatedFile::none(), &partial, &dest, &mut |_| {})
                .await
        })
    };
    let size = || std::fs::metadata(&partial).map_or(0, |m| m.len());
    simnet::wait_until("the download to get going", STEP, || {
        size() >= 2 * MIB as u64
    })
    .await
    .unwrap();
    assert!(sim.cut("a", "b").unwrap() >= 1);
    let failed = simnet::within("the cut download to fail", STEP, download)
        .await
        .unwrap()
        .unwrap();
    assert!(failed.is_err(), "{failed:?}");
    let have = size();
    assert!(have >= 2 * MIB as u64 && have < len as u64, "{have}");
    assert!(!dest.exists());

    sim.wait_disconnected("a", "b").await.unwrap();
    let mut s = sim.session("b", "a").await.unwrap();
    let mut first = None;
    let got = simnet::within(
        "the resumed get",
        STEP,
        s.get(&key, AssociatedFile::none(), &partial, &dest, &mut |done| {
            first.get_or_insert(done);
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(got);
    assert!(first.unwrap() > have, "resumed at {first:?}, had {have}");
    assert!(std::fs::read(&dest).unwrap() == data, "content differs");
}
