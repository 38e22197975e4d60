//! `protocol::fuzz::get_cursor` under libFuzzer: the entry point asserts the
//! machine's invariants itself. Run with `cargo fuzz run get_cursor` (nightly);
//! `scripts/fuzz-campaign` runs it on stable, the tests boundedly.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol::fuzz::get_cursor(data);
});
