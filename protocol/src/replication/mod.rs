//! Replication: how many copies of each key a cluster keeps, which nodes are
//! alive, where new copies go, and the repair plans that restore the counts.
//! Pure: time (`now`, milliseconds on whatever monotonic clock the caller
//! keeps, except the policy's `grace`, in seconds) and random numbers come in
//! as arguments.
//!
//! * [`policy`]: `annexmesh/replication.log` (per cluster `min`, `max`,
//!   `grace`) and per-key overrides (`<hashdir>/<keyFile>.log.rpl`), and the
//!   resolver [`policy::effective`].
//! * [`monitor`]: heartbeats in, `Suspected`/`Down`/`Recovered`/`Alive` out;
//!   the informers' metrics (free space, transfers in flight) with a TTL.
//! * [`alloc`]: where copies go: wanting, alive, room; spread over gateways
//!   (sites) first, groups next, then the emptiest.
//! * [`repair`]: the planner over an incremental index (node → keys, key →
//!   holders): `Copy` plans when a node is down and keys fell below `min`,
//!   `Drop` plans above `max` once it is back, one coordinator gateway per
//!   key, bounded transfers in flight, retries with backoff.
//! * [`status`]: per key and node, for `annexmesh status`.
//! * [`fsck`]: what to do with a checked copy (missing, bad, with or
//!   without a good copy elsewhere), for `annexmesh fsck --cluster`.
//!
//! # What others do, and where we differ
//!
//! * **ipfs-cluster** keeps `replication_factor_min`/`_max` per pin (default
//!   −1: everywhere), allocates with the `balanced` allocator over informer
//!   metrics (`tag:group`, then `freespace`; metric TTL 30 s) and detects
//!   failures by a ping metric (TTL 30 s, checked every 15 s). Repinning is
//!   **off** by default (`disable_repinning = true`): when on, the first alert
//!   makes every peer scan the whole pinset and re-allocate everything the
//!   lost peer held, with no grace period, so a peer that is down for a minute
//!   causes the relocation of all its pins (ipfs-cluster#369, #277). Here a
//!   node is *suspected* after `suspect_after` (10 s) and *down* only after
//!   `grace` more (300 s by default, per cluster); a node back within grace
//!   causes no transfer at all; a down node's keys come from an index, not a
//!   scan; nothing moves between `min` and `max`; and copies above `max` are
//!   dropped once the node is back (what #277 asks for).
//! * **Ceph** marks an OSD down after 20 s without heartbeats and *out*
//!   (re-replication starts) after `mon_osd_down_out_interval` = 600 s. Our
//!   `grace` is that interval, shorter by default because our repair is
//!   per key and bounded by transfers in flight, not a PG remap.
//! * **Garage** declares a node down after about 60 s (4 failed pings every
//!   15 s) and leaves re-replication to an operator's layout change; its
//!   resync retries start at 60 s and double up to 64 min, which is our
//!   backoff.
//! * **git-annex** has `numcopies`/`mincopies` (drop safety: numcopies
//!   verified copies, mincopies of them locked), preferred and required
//!   content, and `balanced=` placement, but nothing that re-creates copies
//!   by itself. Here `min` defaults to numcopies, `max` to the nodes whose
//!   preferred content wants the key, required content is always honoured
//!   (those nodes get the key whatever `max` says, and never lose it to a
//!   drop), and a drop locks as many other copies as it must leave
//!   (`max(min, numcopies)`).

pub mod alloc;
pub mod fsck;
pub mod monitor;
pub mod policy;
pub mod repair;
pub mod status;

pub use alloc::{
    Candidate, Layout, PutCap, PutNode, Request, Shortfall, Skip, allocate, cap_put, put_targets,
};
pub use monitor::{Alert, Event, Liveness, Metrics, Monitor, MonitorConfig};
pub use policy::{Effective, Policy, PreferredPlacement, REPLICATION_LOG, Rule, effective};
pub use repair::{Action, Env, Needs, Placement, Planner, RepairConfig, Transfer, coordinator};
pub use status::{Filter, KeyStatus, NodeState, NodeStatus, StateKind, Summary};

/// A stable 64-bit hash (FNV-1a over the parts, each followed by a 0xff
/// separator, then the splitmix64 finaliser). Stable across builds,
/// platforms and versions, so every gateway computes the same value; not
/// meant to resist chosen inputs (a peer who picks key names can at most
/// make one gateway coordinate more keys than the others).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: u64 = 3_123_777_839_383_944_015;

    #[test]
    fn stable_hash_is_stable_and_separates_parts() {
        // Pinned: gateways running different builds must agree.
        assert_eq!(stable_hash(&[b"a", b"b"]), stable_hash(&[b"a", b"b"]));
        assert_ne!(stable_hash(&[b"ab", b""]), stable_hash(&[b"a", b"b"]));
        assert_eq!(stable_hash(&[b"gw", b"key"]), PINNED);
    }
}
