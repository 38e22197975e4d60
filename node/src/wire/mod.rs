//! The protocol's drivers over byte streams: the server driver and its
//! backends ([`session`], [`backend`]), the client session, a client over a
//! child process ([`process`]) and git services relayed over `CONNECT`
//! ([`git`]).

pub mod backend;
pub mod git;
pub mod process;
pub mod session;
pub mod stall;
