//! Entry points shared by the fuzz target (`fuzz/fuzz_targets/decode.rs`) and the
//! bounded fuzz runs in the tests, plus an in-memory driver for the server
//! machine. The driver is real code over a real (in-memory) store, not a mock:
//! it verifies content with [`crate::verify::Verifier`] exactly as the disk store
//! does, so unit tests and fuzzing exercise the same paths as production.
//!
//! The state machines have entry points of their own ([`TARGETS`]): each
//! draws every decision (lines, driver answers, events, time) from its input
//! bytes and asserts the machine's invariants, panicking on a violation. The
//! cargo-fuzz targets in `fuzz/`, the seeded campaign
//! (`examples/fuzz_campaign.rs`, `scripts/fuzz-campaign`) and the bounded
//! property tests below all run these same functions.

mod cluster;
mod input;
mod session;

pub use cluster::{get_cursor, put_plan, repair_planner, replies};
pub use session::{client_session, server_session};

/// A fuzz entry point: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every fuzz entry point, by the name of its cargo-fuzz target.
pub const TARGETS: &[(&str, Target)] = &[
    ("decode", decode_target),
    ("server", server_session),
    ("client", client_session),
    ("put_plan", put_plan),
    ("get_cursor", get_cursor),
    ("replies", replies),
    ("repair", repair_planner),
];

fn decode_target(input: &[u8]) {
    let lines = decode_input(input);
    assert!(lines <= input.len());
}

use std::collections::BTreeMap;

use crate::key::Key;
use crate::message::{Decoded, LineDecoder, MAX_VERSION};
use crate::server::{
    CloseReason, GitAccess, PutStart, ServeMode, Server, ServerConfig, ServerOutput, Start,
};
use crate::uuid::Uuid;
use crate::verify::Verifier;

/// Content held by [`MemoryDriver`].
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    pub objects: BTreeMap<Key, Vec<u8>>,
    pub partial: BTreeMap<Key, Vec<u8>>,
    pub locked: Option<Key>,
    /// Monotonic clock, in seconds.
    pub now: i64,
}

/// Runs a [`Server`] over a byte string of client input and collects its output.
pub struct MemoryDriver {
    pub server: Server,
    pub store: MemoryStore,
    pub sent: Vec<u8>,
    pub closed: Option<CloseReason>,
    /// The last `BYPASS` the client sent.
    pub bypass: Vec<Uuid>,
}

impl MemoryDriver {
    pub fn new(mode: ServeMode, store: MemoryStore) -> MemoryDriver {
        let config = ServerConfig {
            uuid: Uuid::parse("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb").expect("valid literal"),
            start: Start::Preauthenticated { mode },
            git: GitAccess::Refused,
            max_version: i64::from(MAX_VERSION),
        };
        MemoryDriver {
            server: Server::new(config),
            store,
            sent: Vec::new(),
            closed: None,
            bypass: Vec::new(),
        }
    }

    /// Feeds all of `input`, then end of input. Returns how many input bytes were
    /// consumed (everything unless the session closed early).
    pub fn run(&mut self, mut input: &[u8]) -> usize {
        let total = input.len();
        loop {
            if let Some(rest) = self.drain(input) {
                input = rest;
            } else {
                return total - input.len();
            }
            if self.server.is_closed() {
                return total - input.len();
            }
            match LineDecoder::decode(input) {
                Decoded::Line { consumed } => {
                    self.server.handle_line(&input[..consumed - 1]);
                    input = &input[consumed..];
                }
                Decoded::Incomplete => self.server.handle_eof(),
                Decoded::TooLong => self.server.handle_protocol_error("line too long"),
            }
        }
    }

    /// Performs queued outputs; payload reads consume `input`. `None` once closed.
    fn drain<'a>(&mut self, mut input: &'a [u8]) -> Option<&'a [u8]> {
        while let Some(out) = self.server.poll_output() {
            match out {
                ServerOutput::Send(m) => m.encode_into(&mut self.sent),
                ServerOutput::CheckAuth { .. } => self.server.handle_auth(None),
                ServerOutput::CheckPresent { key } => {
                    let p = self.store.objects.contains_key(&key);
                    self.server.handle_present(Ok(p));
                }
                ServerOutput::Lock { key } => {
                    let ok = self.store.objects.contains_key(&key);
                    if ok {
                        self.store.locked = Some(key);
                    }
                    self.server.handle_locked(ok);
                }
                ServerOutput::Unlock { .. } => self.store.locked = None,
                ServerOutput::Bypass(uuids) => self.bypass = uuids,
                ServerOutput::AbandonPut { .. } => {}
                ServerOutput::Remove { key, before } => {
                    let ok = if self.store.locked.as_ref() == Some(&key)
                        || before.is_some_and(|b| self.store.now >= b)
                    {
                        false
                    } else {
                        self.store.objects.remove(&key);
                        true
                    };
                    self.server.handle_removed(Ok(ok));
                }
                ServerOutput::GetTimestamp => self.server.handle_timestamp(self.store.now),
                ServerOutput::PreparePut { key, .. } => {
                    let start = if self.store.objects.contains_key(&key) {
                        PutStart::AlreadyHave(Vec::new())
                    } else {
                        let have = self.store.partial.get(&key).map_or(0, Vec::len);
                        PutStart::From(have as u64)
                    };
                    self.server.handle_put_start(start);
                }
                ServerOutput::ReceivePayload { key, offset, len } => {
                    let want = usize::try_from(len).unwrap_or(usize::MAX);
                    let n = want.min(input.len());
                    let partial = self.store.partial.entry(key).or_default();
                    partial.truncate(usize::try_from(offset).unwrap_or(usize::MAX));
                    partial.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.server.handle_payload_received(n == want);
                }
                ServerOutput::CommitPut { key, validity } => {
                    let data = self.store.partial.remove(&key).unwrap_or_default();
                    let mut v = Verifier::new(&key);
                    v.update(&data);
                    let ok = v.finish().accepted_given(validity);
                    if ok {
                        self.store.objects.insert(key, data);
                    }
                    self.server.handle_stored(ok);
                }
                ServerOutput::ConfirmPresent { key } => {
                    let ok = self.store.objects.contains_key(&key);
                    self.server.handle_stored(ok);
                }
                ServerOutput::ContentSize { key, .. } => {
                    let size = self.store.objects.get(&key).map(|d| d.len() as u64);
                    self.server.handle_content_size(size);
                }
                ServerOutput::SendPayload { key, offset, len } => {
                    let data = self.store.objects.get(&key).cloned().unwrap_or_default();
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let end = start
                        .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                        .min(data.len());
                    self.sent.extend_from_slice(&data[start..end]);
                    self.server.handle_payload_sent(true);
                }
                ServerOutput::Connect { .. } => {}
                ServerOutput::WaitRefChange => self.server.handle_changed(Vec::new()),
                ServerOutput::Close(reason) => {
                    self.closed = Some(reason);
                    return None;
                }
            }
        }
        Some(input)
    }
}

/// Fuzz entry point: decode `input` as lines, then run it as a whole client
/// session against a server with one object. Returns the number of decoded
/// lines (always at most `input.len()`).
pub fn decode_input(input: &[u8]) -> usize {
    let lines = crate::message::decode_all(input).len();
    let mut store = MemoryStore::default();
    if let Ok(key) = Key::parse(
        "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt",
    ) {
        store.objects.insert(key, b"hello\n".to_vec());
    }
    let mut driver = MemoryDriver::new(ServeMode::ReadWrite, store);
    let consumed = driver.run(input);
    debug_assert!(consumed <= input.len());
    lines
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn server_session_holds(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            super::server_session(&data);
        }

        #[test]
        fn client_session_holds(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            super::client_session(&data);
        }

        #[test]
        fn put_plan_holds(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            super::put_plan(&data);
        }

        #[test]
        fn get_cursor_holds(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            super::get_cursor(&data);
        }

        #[test]
        fn replies_hold(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            super::replies(&data);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn repair_planner_holds(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            super::repair_planner(&data);
        }
    }
}
