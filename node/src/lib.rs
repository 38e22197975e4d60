//! The annexmesh runtime: repositories and their object stores, the P2P protocol
//! sessions of `protocol` driven over real streams, and the `annex-shell` server.
//!
//! Everything that touches a disk, a socket, a process or the clock lives here;
//! decisions live in `protocol`.

pub mod annex_shell;
pub mod auth;
pub mod backend;
pub mod branch;
pub mod busy;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fs;
pub mod gateway;
pub mod git;
pub mod health;
pub mod init;
pub mod journal;
pub mod keeper;

pub mod members;
pub mod mesh;
pub mod meta;
pub mod net;
pub mod peer;
pub mod process;
pub mod proxy;
pub mod remote;
pub mod repo;
pub mod session;
pub mod special;
pub mod store;
pub mod sys;
pub mod topology;
pub mod watch;

pub use error::{Error, Result};
pub use repo::Repo;
pub use store::Store;
