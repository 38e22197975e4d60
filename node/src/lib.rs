//! The annexmesh runtime: repositories and their object stores, the P2P protocol
//! sessions of `protocol` driven over real streams, the mesh, and the cluster
//! gateway.
//!
//! Everything that touches a disk, a socket, a process or the clock lives here;
//! decisions live in `protocol`. The modules are layers, each using only the
//! ones before it:
//!
//! 1. [`fs`]: system calls, atomic writes, the clock;
//! 2. [`repo`]: a repository, its object store, journal, branch, config;
//! 3. [`wire`]: the protocol drivers over byte streams and child processes;
//! 4. [`net`]: the libp2p swarm, dialling, access rules, membership;
//! 5. [`meta`]: gossip and anti-entropy of the branch, liveness, reconnection;
//! 6. [`cluster`]: clusters, their topology, the gateway and the proxy;
//! 7. the entry points: [`annex_shell`], [`peer`] (serving streams) and
//!    [`mesh`] (the daemon).
//!
//! The inner modules are also re-exported here by name (`node::store`,
//! `node::gateway`, …).

pub mod annex_shell;
pub mod api;
pub mod cluster;
pub mod error;
pub mod fs;
pub mod mesh;
pub mod meta;
pub mod net;
pub mod peer;
pub mod repo;
pub mod wire;

pub use cluster::{gateway, proxy, special, topology};
pub use error::{Error, Result};
pub use fs::{clock, sys};
pub use meta::{health, keeper};
pub use net::{auth, members, remote};
pub use repo::{Repo, branch, busy, config, init, journal, store, watch};
pub use store::Store;
pub use wire::{backend, git, process, session, stall};
