//! `protocol::fuzz::put_plan` under libFuzzer: the entry point asserts the
//! machine's invariants itself. Run with `cargo fuzz run put_plan` (nightly);
//! `scripts/fuzz-campaign` runs it on stable, the tests boundedly.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    protocol::fuzz::put_plan(data);
});
