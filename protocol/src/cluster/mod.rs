//! The cluster gateway's decisions, as pure functions and small state
//! machines: plain data in, plain data out, no I/O (annex-spec §4).
//!
//! git-annex's gateway (`Annex/Cluster.hs`, `P2P/Proxy.hs`) takes these
//! decisions in between its I/O: which nodes a `PUT` goes to, which node serves
//! a `GET`, what the `-PLUS` replies list, and (with several gateways) what
//! `BYPASS` says. annexmesh takes them here, so that the async gateway in
//! `node` only gathers facts, moves bytes and applies the answers.
//!
//! * [`topology`]: `annexmesh/topology.log` (each gateway's nodes and links,
//!   with costs) and the single cheapest path from a gateway to every node.
//!   git-annex has no hop-aware routing (§10.1 #1).
//! * [`plan`]: the `PUT` fan-out. git-annex sends a `PUT` down every path to
//!   a node (§10.1 #5, one copy loses the transfer lock); here each wanted
//!   node is reached exactly once, `BYPASS` naming everything a hop must not
//!   serve.
//! * [`get`]: the `GET` cursor. git-annex picks one node at random among the
//!   cheapest and does not fail over (§4.7); here holders are ranked by path
//!   cost and load, and a failure continues on the next one from the same byte.
//! * [`reply`]: `SUCCESS-PLUS`/`FAILURE-PLUS`/`ALREADY-HAVE-PLUS` shaping and
//!   what the gateway records in its location log. git-annex does not record
//!   the nodes that answered `ALREADY-HAVE` (§4.6 step 7); here they are.
//! * [`graph`]: the mesh as a Graphviz dot graph (pure rendering).
//! * [`heads`]: the gateways' git branches, kept in step over the mesh
//!   (git-annex: "a branch pushed to one gateway will not be able to be
//!   pulled from another").

pub mod get;
pub mod graph;
pub mod heads;
pub mod plan;
pub mod reply;
pub mod topology;

pub use get::{GetCursor, GetStep, Holder};
pub use plan::{Hop, LocalTarget, Plan, PutFacts, direct_targets, plan_put, put_from};
pub use reply::{Outcome, Report, Reporter};
pub use topology::{Cost, Entry, Link, Route, Routes, TOPOLOGY_LOG, Topology};
