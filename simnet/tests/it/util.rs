//! Helpers shared by the scenarios.

use std::path::PathBuf;
use std::time::Duration;

use node::store::Store;
use protocol::Key;
use protocol::verify::Hash;
use simnet::Sim;

pub const MIB: usize = 1 << 20;

/// Upper bound for any single step of a scenario.
pub const STEP: Duration = Duration::from_secs(20);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn key_of(data: &[u8]) -> Key {
    let mut h = Hash::Sha256.hasher();
    h.update(data);
    Key::from_hash("SHA256E", data.len() as u64, &h.finish_hex(), ".bin").unwrap()
}

/// Random content from the simulation's stream, written to a scratch file.
pub fn content(sim: &mut Sim, len: usize) -> (Vec<u8>, Key, PathBuf) {
    let data = sim.rng().vec(len);
    let key = key_of(&data);
    let path = sim.scratch("src").unwrap().join(key.file());
    std::fs::write(&path, &data).unwrap();
    (data, key, path)
}

/// What `store` holds for `key`, read back from its object file.
pub fn stored(store: &Store, key: &Key) -> Vec<u8> {
    let path = store
        .content_path(key)
        .unwrap_or_else(|| panic!("{key} is not stored"));
    std::fs::read(path).unwrap()
}

/// Waits until the partial upload of `key` on `store` has at least `bytes`.
pub async fn wait_partial(store: &Store, key: &Key, bytes: u64) {
    simnet::wait_until("the upload to get going", STEP, || {
        store.partial_size(key) >= bytes
    })
    .await
    .unwrap();
}

/// Waits until the partial upload of `key` stops growing, and returns its size.
pub async fn settled_partial(store: &Store, key: &Key) -> u64 {
    let mut last = store.partial_size(key);
    simnet::within("the partial upload to settle", STEP, async {
        loop {
            tokio::time::sleep(ms(50)).await;
            let now = store.partial_size(key);
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await
    .unwrap()
}
