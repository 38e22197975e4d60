#![allow(clippy::unwrap_used)]
//! simnet scenarios: real annexmesh peers on simulated links. Each test takes
//! its seed from `SIMNET_SEED` (or a random one) and prints it if it fails.

mod cluster;
mod crash;
mod determinism;
mod metadata;
mod partition;
mod repair;
mod transfer;
mod util;
