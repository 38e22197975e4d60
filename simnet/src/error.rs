//! Errors of the simulation.

use std::time::Duration;

/// Why the simulated network refused or broke a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("{0} and {1} are partitioned")]
    Partitioned(String, String),
    #[error("{0} is down")]
    Down(String),
    #[error("no simulated node listens on /memory/{0}")]
    NoListener(u64),
    #[error("unknown connection {0}")]
    UnknownConnection(u64),
    #[error("connection {0} was cut")]
    Cut(String),
}

/// Errors of a simulated connection, below noise and yamux.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("memory transport: {0}")]
    Memory(#[from] libp2p::core::transport::memory::MemoryTransportError),
    #[error("refused by the simulated network: {0}")]
    Refused(#[from] Refusal),
    #[error("link: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad link handshake")]
    Handshake,
}

/// Errors of [`crate::Sim`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error("no node named {0:?}")]
    UnknownNode(String),
    #[error("{0:?} is not a node name (use letters, digits, - and _)")]
    BadName(String),
    #[error("a node named {0:?} exists already")]
    Duplicate(String),
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("{0} is running")]
    Running(String),
    #[error("{0} is a client, not a peer with a store")]
    NotAPeer(String),
    #[error("{what} took longer than {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("identity: {0}")]
    Identity(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
