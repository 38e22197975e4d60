//! Many real annexmesh peers in one process, on simulated links.
//!
//! # Model
//!
//! A [`Sim`] runs real [`node::peer::Peer`]s (their stores in a temporary
//! directory, the real session drivers, libp2p swarms with noise and yamux)
//! and dial-only clients ([`node::remote::Endpoint`]). What is simulated is
//! only the wire: every node's swarm gets a [`LinkTransport`], libp2p's
//! in-process memory transport wrapped *below* noise and yamux, so each raw
//! connection passes through a link whose behaviour is looked up, per
//! direction, in a shared [`Network`] table:
//!
//! * **latency**: every write becomes a frame stamped with a delivery time
//!   (now + a delay drawn from the link's range); the reader holds it back
//!   until then. Frames stay in order, as on TCP. tokio's timer ticks in
//!   milliseconds, so a delay may come out up to a millisecond longer.
//! * **bandwidth** (optional): frames are serialized at the link's rate, and a
//!   writer whose send buffer (256 KiB) is full waits.
//! * **cut** ([`Sim::cut`]): live connections between two nodes fail at both
//!   ends with `ConnectionReset`; new dials succeed.
//! * **partition** ([`Sim::partition`] / [`Sim::heal`]): a cut, and new dials
//!   between the two fail until healed. On a reliable byte stream a lost packet
//!   can only show as a broken connection, so there is no packet loss knob.
//! * **crash** ([`Sim::crash`] / [`Sim::restart`]): the node's connections are
//!   cut, dials to it fail, its peer is shut down and its swarm dropped; its
//!   repository stays. A restart serves the same repository under the same
//!   identity (on a new `/memory/N` address).
//!
//! The dialer tells the listener who it is in a small hello before the
//! connection is handed to noise (the memory transport only reports a random
//! port); listen addresses are mapped to nodes as they are announced.
//!
//! Every node's ed25519 identity and repository UUID derive from the seed and
//! the node's name ([`SimRng::derive`]); so do each connection's latency draws
//! (from the seed, the two nodes' names and how many connections that dialer
//! made to that listener before), which makes them independent of scheduling.
//! Access: every node is granted read-write on every peer (PeerId grants for
//! the nodes that exist when a peer starts, the simulation's token in its
//! `p2pauth` for later ones).
//!
//! # Seeds
//!
//! [`Sim::from_env`] takes the seed from `SIMNET_SEED` or picks one at random
//! and prints it; a `Sim` dropped while its thread panics (a failing test)
//! prints `SIMNET_SEED=<n>` to replay.
//!
//! # Limits: what is and is not deterministic
//!
//! This is not a discrete-event simulator. The peers run on a real tokio
//! runtime with real threads, real files and real noise (whose ephemeral keys
//! come from OS entropy), and libp2p's internal timers (idle connections,
//! upgrade timeouts, ping) use the wall clock through `futures-timer`. Link
//! delays use `tokio::time`, so they could follow paused time, but the rest of
//! the stack would not.
//!
//! Deterministic for a given seed: identities, UUIDs, the test's random
//! stream ([`Sim::rng`]), the network's decisions (which dials are refused,
//! which connections a partition or crash cuts, each connection's sequence of
//! latency draws) and so the [`Sim::trace`], as long as the test drives the
//! scenario step by step (awaiting each operation). Not deterministic: the
//! interleaving of tasks, how writes are chunked into frames (so where a
//! latency change lands mid-connection), exactly how many bytes a transfer
//! had moved when a partition struck, and wall-clock timeouts.

pub mod cluster;
mod error;
mod link;
pub mod metadata;
mod network;
pub mod repair;
mod rng;
mod sim;

pub use error::{Error, LinkError, Refusal, Result};
pub use link::{Link, LinkTransport, MAX_FRAME};
pub use network::{LinkConfig, Network, NodeId, TRACED_FRAMES};
pub use rng::SimRng;
pub use sim::{
    CONNECT_TIMEOUT, PeerHandle, SEED_VAR, STOP_TIMEOUT, SeedGuard, Sim, seed_from_env, transport,
    wait_until, within,
};

/// A benchmark binary's `main`: nothing unless run with `--bench` (`cargo
/// test --benches` runs bench binaries without it), then the seed printed
/// (`SIMNET_SEED` replays) and `bench(seed)` run on a multi-threaded
/// runtime; an error is printed and exits 1.
pub fn bench_main<F, Fut>(name: &str, bench: F)
where
    F: FnOnce(u64) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), Box<dyn std::error::Error>>>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name} benchmark: run with `cargo bench -p annexmesh-simnet --bench {name}`");
        return;
    }
    let seed = seed_from_env();
    println!("seed {seed} (SIMNET_SEED={seed} replays)");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(bench(seed)) {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
