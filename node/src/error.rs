//! The node crate's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: not a git repository", .0.display())]
    NotARepository(PathBuf),
    #[error("{}: not a git-annex or annexmesh repository (no annex.uuid)", .0.display())]
    NoUuid(PathBuf),
    #[error("git: {0}")]
    Git(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer broke the protocol: an over-long or unparsable line, a reply
    /// out of turn, its stream ending mid-request. The session with it ends.
    #[error("peer broke the protocol: {0}")]
    Peer(String),
    /// A node a gateway (or proxy) reaches failed; the gateway leaves it out
    /// of the operation.
    #[error("node {node}: {reason}")]
    Node { node: String, reason: String },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a description of what was being done to an I/O error.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}
