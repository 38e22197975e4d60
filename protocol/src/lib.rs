//! The annex P2P protocol and everything around it that is pure computation.
//!
//! # Goals
//!
//! * Speak git-annex's P2P protocol (versions 0–4) byte for byte as git-annex
//!   10.20261026 does, as a server and as a client.
//! * Parse and format keys, hash directories and (later) branch logs exactly as
//!   git-annex does, so stock git-annex and annexmesh share repositories.
//!
//! # Non-goals
//!
//! * I/O of any kind. This crate reads no clock, no file, no socket and no OS
//!   randomness, and depends on no async runtime or libp2p (checked by a test).
//!   Sessions are state machines: inputs go in through `handle_*`, outputs come
//!   out of `poll_*`; the `node` crate drives them over real streams and stores.
//!
//! # Grammar (annex-spec §1)
//!
//! ```text
//! line    = command [" " args] "\n"      ; at most 32767 bytes before "\n"
//! payload = "DATA " len "\n" <len raw bytes> ["VALID\n" | "INVALID\n"]   ; v1+
//! ```

pub mod client;
pub mod cluster;
pub mod deadline;
pub mod fuzz;
pub mod hex;
pub mod key;
pub mod logs;
pub mod message;
pub mod preferred;
pub mod replication;
pub mod routing;
pub mod server;
pub mod uuid;
pub mod verify;

pub use key::Key;
pub use message::{AssociatedFile, Message, Service, Version};
pub use uuid::{AuthToken, Uuid};
