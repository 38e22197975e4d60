//! The three modes of `git-annex-p2p-libp2p`, and what they share.

pub mod address;
pub mod connect;
pub mod listen;
pub mod relay;
pub mod repo;
