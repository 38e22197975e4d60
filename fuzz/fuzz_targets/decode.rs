//! Feeds arbitrary bytes to the line decoder and to a whole server session.
//! Run with `cargo fuzz run decode` (nightly); `cargo test -p annexmesh-protocol`
//! runs the same entry point over mutated real traffic on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let lines = protocol::fuzz::decode_input(data);
    assert!(lines <= data.len());
});
