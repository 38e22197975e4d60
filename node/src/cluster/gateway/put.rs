//! The gateway's `PUT`, across the requests the server machine makes of it:
//! [`prepare`] gathers the facts (which nodes hold the key, which want it),
//! lets `protocol::cluster` choose the targets and `PUT-FROM`, and opens
//! every target; [`PendingPut::receive`] streams the client's bytes to them
//! all at once; [`PendingPut::commit`] applies the VALID gate, ends every
//! upload and shapes the reply (`protocol::cluster::reply`), recording the
//! holders found along the way, `ALREADY-HAVE` answers included.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use protocol::cluster::plan::{GatewayCheck, send_valid};
use protocol::cluster::reply::{Begin, Outcome, Report, put_begin, put_reply};
use protocol::cluster::{PutFacts, Routes, direct_targets, plan_put};
use protocol::logs::catalog::Catalog;
use protocol::logs::presence::Status;
use protocol::logs::view::View;
use protocol::replication::policy::{REPLICATION_LOG, Rule, override_path};
use protocol::replication::{Layout, Policy, PutCap, PutNode, Shortfall, cap_put};
use protocol::server::{PutStart, Validity};
use protocol::{Key, Uuid};

use super::remote::{self, Feed, PutBegin};
use super::{
    Gateway, GatewayNode, PARALLEL_WRITE_MIN, RemoteNode, Spool, each_parallel, each_parallel_if,
    off_runtime, spool_path,
};
use crate::backend::Done;
use crate::backend::PayloadReader;
use crate::cluster::NodeStore;
use crate::special::{DirUpload, SpecialNode};
use crate::store::{Checked, Stored, StreamCheck, Upload};

/// How deep each remote node's channel is during a PUT, in chunks of at most
/// [`crate::session::IO_BUFFER`] bytes.
const FEED_DEPTH: usize = 4;

/// An upload to one local node: its bytes start at `have` in the stream.
struct Target<'n> {
    node: &'n NodeStore,
    upload: Option<Upload>,
    have: u64,
    /// Opened with `begin_unhashed_upload`: committed with the gateway's check.
    unhashed: bool,
}

/// The nodes lacking the key, and the reports of those holding it.
#[derive(Default)]
struct Facts<'g> {
    holders: Vec<Report>,
    locals: Vec<&'g NodeStore>,
    remotes: Vec<&'g RemoteNode>,
    specials: Vec<&'g SpecialNode>,
    /// The targets cannot bring the key to the cluster's `min`.
    short: Option<Shortfall>,
}

impl Facts<'_> {
    fn lacking(&self) -> bool {
        !(self.locals.is_empty() && self.remotes.is_empty() && self.specials.is_empty())
    }

    fn holder_uuids(&self) -> Vec<Uuid> {
        put_reply(4, &self.holders).record
    }
}

/// A `PUT` between `PUT-FROM` and its result.
pub(super) struct PendingPut<'g> {
    key: Key,
    /// Reports of the nodes holding the key (checked, or answering `ALREADY-HAVE`).
    holders: Vec<Report>,
    locals: Vec<Target<'g>>,
    remotes: Vec<remote::PutTarget<'g>>,
    dirs: Vec<(&'g SpecialNode, Option<DirUpload>)>,
    externals: Vec<&'g SpecialNode>,
    spool: Option<Spool>,
    /// Lacking remote and special nodes, asked again on `DATA-PRESENT`.
    asked: (Vec<&'g RemoteNode>, Vec<&'g SpecialNode>),
    /// `PUT-FROM`.
    offset: u64,
    /// The one hash of the stream, when it starts at 0.
    check: Option<StreamCheck>,
    streaming: Option<Streaming<'g>>,
    /// Why the targets cannot reach the cluster's `min` (warned at commit).
    short: Option<Shortfall>,
    _busy: Vec<crate::busy::Busy>,
}

/// `PUT` of `key`: where the upload starts, and what it opened (`None` when
/// the answer is `ALREADY-HAVE`).
pub(super) async fn prepare<'g>(
    gw: &'g Gateway<'g>,
    catalog: &mut Option<protocol::logs::catalog::Catalog>,
    bypass: &[Uuid],
    key: &Key,
    file: Option<&str>,
) -> (PutStart, Option<PendingPut<'g>>) {
    let mut facts = gather(gw, key).await;
    gw.record(key, &facts.holder_uuids(), Status::Present);
    let mut hops = Vec::new();
    if facts.lacking() {
        match &gw.routes {
            Some(routes) => {
                hops = choose_routed(gw, routes, catalog, bypass, file, key, &mut facts)
            }
            None => choose(gw, catalog, file, key, &mut facts),
        }
    }
    let pending = open(gw, key, facts, hops).await;
    let offsets = pending.offsets();
    match put_begin(4, &pending.holders, &offsets) {
        Begin::PutFrom(offset) => (PutStart::From(offset), Some(pending)),
        Begin::NoTarget => (PutStart::From(0), Some(pending)),
        Begin::AlreadyHave(reply) => {
            gw.record(key, &reply.record, Status::Present);
            pending.abandon().await;
            (PutStart::AlreadyHave(reply.record), None)
        }
    }
}

/// Which nodes hold `key` and which lack it (local nodes without a round trip).
async fn gather<'g>(gw: &'g Gateway<'g>, key: &Key) -> Facts<'g> {
    let had = |u: &Uuid| Report::node(u.clone(), Outcome::AlreadyHad(Vec::new()));
    let mut f = Facts::default();
    for n in gw.locals() {
        if n.store.contains(key) {
            f.holders.push(had(&n.uuid));
        } else {
            f.locals.push(n);
        }
    }
    // The remote nodes all at once, each within its reply deadline.
    let shells = gw.shells();
    let me = gw.gateway.uuid();
    let answers = futures::future::join_all(shells.iter().map(|s| s.check_present(me, key))).await;
    let full = short_of_room(gw, key);
    for (s, answer) in shells.into_iter().zip(answers) {
        match answer {
            Ok(true) => f.holders.push(had(&s.uuid)),
            Ok(false) if full.contains(s.uuid.as_str()) => tracing::info!(
                "node {} skipped for {key}: its heartbeat says it lacks room",
                s.remote
            ),
            Ok(false) => f.remotes.push(s),
            Err(e) => tracing::info!("node {} left out of the PUT of {key}: {e}", s.remote),
        }
    }
    for s in gw.specials() {
        match s.contains(key) {
            Ok(true) => f.holders.push(had(&s.uuid)),
            Ok(false) => f.specials.push(s),
            Err(e) => tracing::info!("node {}: {e}", s.remote),
        }
    }
    f
}

/// The members whose last heartbeat (the daemon's health file) says they
/// have less room than `key`'s size beyond their `annex.diskreserve` and the
/// bytes their transfers in flight reserve. Unknown sizes and unknown
/// members are not short.
fn short_of_room(gw: &Gateway<'_>, key: &Key) -> std::collections::HashSet<String> {
    let Some(size) = key.size() else {
        return Default::default();
    };
    let (nodes, _) = crate::health::read_state(&crate::config::state_dir(gw.gateway.repo()));
    nodes
        .into_iter()
        .filter(|n| n.metrics_known && n.free_bytes.saturating_sub(n.reserved_bytes) < size)
        .map(|n| n.uuid)
        .collect()
}

/// Without routes: the lacking nodes that want the key, else all of them
/// (`protocol::cluster::direct_targets`).
fn choose(
    gw: &Gateway<'_>,
    catalog: &mut Option<protocol::logs::catalog::Catalog>,
    file: Option<&str>,
    key: &Key,
    f: &mut Facts<'_>,
) {
    let candidates: Vec<&Uuid> = (f.locals.iter().map(|n| &n.uuid))
        .chain(f.remotes.iter().map(|s| &s.uuid))
        .chain(f.specials.iter().map(|s| &s.uuid))
        .collect();
    let wanting = gw.wanting(
        catalog,
        file,
        key,
        &f.holder_uuids(),
        candidates.iter().copied(),
    );
    let wanted: Vec<bool> = candidates.iter().map(|u| wanting.contains(*u)).collect();
    let (chosen, _fallback) = direct_targets(&wanted);
    let planned: Vec<Uuid> = chosen.iter().map(|&i| candidates[i].clone()).collect();
    let cap = apply_policy(gw, catalog, key, &planned, &f.holder_uuids(), |_| None);
    let kept: BTreeSet<&Uuid> = cap.targets.iter().collect();
    let chosen: BTreeSet<usize> = chosen
        .into_iter()
        .filter(|&i| kept.contains(candidates[i]))
        .collect();
    f.short = cap.shortfall;
    let (nl, nr) = (f.locals.len(), f.remotes.len());
    let mut i = 0..;
    f.locals
        .retain(|_| i.next().is_some_and(|i| chosen.contains(&i)));
    let mut i = nl..;
    f.remotes
        .retain(|_| i.next().is_some_and(|i| chosen.contains(&i)));
    let mut i = nl + nr..;
    f.specials
        .retain(|_| i.next().is_some_and(|i| chosen.contains(&i)));
}

/// With routes: `protocol::cluster::plan_put`. Direct targets stay in
/// `f`; each next hop is the "cluster via" node of that gateway, with the
/// `BYPASS` the plan gives it.
fn choose_routed<'g>(
    gw: &'g Gateway<'g>,
    routes: &Routes,
    catalog: &mut Option<protocol::logs::catalog::Catalog>,
    bypass: &[Uuid],
    file: Option<&str>,
    key: &Key,
    f: &mut Facts<'g>,
) -> Vec<(&'g RemoteNode, Vec<Uuid>)> {
    let have: BTreeSet<Uuid> = f.holder_uuids().into_iter().collect();
    let reachable = routes.reachable();
    let wanted = gw.wanting(catalog, file, key, &f.holder_uuids(), reachable.iter());
    let offsets: BTreeMap<Uuid, u64> = f
        .locals
        .iter()
        .map(|n| (n.uuid.clone(), n.store.partial_size(key)))
        .collect();
    let bypass: BTreeSet<Uuid> = bypass.iter().cloned().collect();
    let mut plan = plan_put(&PutFacts {
        routes,
        wanted: &wanted,
        have: &have,
        bypass: &bypass,
        offsets: &offsets,
    });
    // The policy may cap the plan's targets: planned again over the chosen
    // ones, so each hop's share and `BYPASS` follow (a hop's gateway then
    // only ever sees its part of the capped set). A `BYPASS` means another
    // gateway planned this share (or a client narrowed the PUT): it is
    // served as it came, not capped again from this gateway's partial view
    // of the holders.
    if bypass.is_empty() {
        let planned: Vec<Uuid> = plan.targets().into_iter().collect();
        let me = routes.me().clone();
        let site = |n: &Uuid| {
            let r = routes.get(n)?;
            Some(r.hops.last().cloned().unwrap_or_else(|| me.clone()))
        };
        let cap = apply_policy(gw, catalog, key, &planned, &f.holder_uuids(), site);
        if cap.capped {
            let chosen: BTreeSet<Uuid> = cap.targets.iter().cloned().collect();
            plan = if chosen.is_empty() {
                protocol::cluster::plan::Plan::default()
            } else {
                plan_put(&PutFacts {
                    routes,
                    wanted: &chosen,
                    have: &have,
                    bypass: &bypass,
                    offsets: &offsets,
                })
            };
        }
        f.short = cap.shortfall;
    }
    let local: BTreeSet<Uuid> = plan.local.iter().map(|t| t.node.clone()).collect();
    f.locals.retain(|n| local.contains(&n.uuid));
    f.remotes
        .retain(|s| s.via.is_none() && local.contains(&s.uuid));
    f.specials.retain(|s| local.contains(&s.uuid));
    hop_nodes(gw, plan)
}

/// Each next hop of `plan` as the "cluster via" node of its gateway, with
/// the `BYPASS` the plan gives it.
fn hop_nodes<'g>(
    gw: &'g Gateway<'g>,
    plan: protocol::cluster::plan::Plan,
) -> Vec<(&'g RemoteNode, Vec<Uuid>)> {
    plan.hops
        .into_iter()
        .filter_map(|hop| {
            let via = gw.nodes.iter().find_map(|n| match n {
                GatewayNode::Remote(r) if r.via.as_ref() == Some(&hop.gateway) => Some(&**r),
                _ => None,
            });
            if via.is_none() {
                tracing::info!("no connection to gateway {} for its share", hop.gateway);
            }
            via.map(|r| (r, hop.bypass))
        })
        .collect()
}

/// The cluster's replication policy over a `PUT`'s `planned` targets
/// (`protocol::replication::cap_put`): its rule for `key`, numcopies and
/// groups from the branch (`catalog`, read by [`Gateway::wanting`]), sites
/// from `site` (the gateway a node is behind), liveness and room from the
/// daemon's health file.
fn apply_policy(
    gw: &Gateway<'_>,
    catalog: &Option<Catalog>,
    key: &Key,
    planned: &[Uuid],
    holders: &[Uuid],
    site: impl Fn(&Uuid) -> Option<Uuid>,
) -> PutCap {
    let rpl = override_path(key);
    let rule = match crate::branch::read_files(&gw.gateway.repo().git_dir, &[REPLICATION_LOG, &rpl])
    {
        Ok(c) => Policy::from_catalog(&c).rule(&gw.cluster, key),
        Err(e) => {
            tracing::info!("cannot read the replication policy: {e}");
            Rule::default()
        }
    };
    let mut layout = Layout::new();
    let mut numcopies = 1;
    if let Some(c) = catalog {
        let view = View::new(c);
        numcopies = view.numcopies().unwrap_or(1);
        for (u, gs) in view.group_map() {
            if let Ok(u) = Uuid::parse(&u) {
                layout.set_groups(u, gs);
            }
        }
    }
    for n in planned {
        if let Some(s) = site(n) {
            layout.set_site(n.clone(), s);
        }
    }
    let nodes: Vec<PutNode> = if rule.max.is_some() {
        let (health, _) = crate::health::read_state(&crate::config::state_dir(gw.gateway.repo()));
        planned
            .iter()
            .map(|u| {
                let h = health.iter().find(|h| h.uuid == u.as_str());
                PutNode {
                    node: u.clone(),
                    alive: h.is_none_or(|h| h.state != "suspected" && h.state != "down"),
                    room: h
                        .filter(|h| h.metrics_known)
                        .map(|h| h.free_bytes.saturating_sub(h.reserved_bytes)),
                }
            })
            .collect()
    } else {
        // No max: the plan stands; only the count matters.
        planned
            .iter()
            .map(|u| PutNode {
                node: u.clone(),
                alive: true,
                room: None,
            })
            .collect()
    };
    let cap = cap_put(&layout, rule, numcopies, key, &nodes, holders);
    if cap.capped {
        tracing::info!(
            "PUT of {key}: the cluster's max places it on {} of {} nodes",
            cap.targets.len(),
            planned.len()
        );
    }
    cap
}

/// Opens an upload on every target (each remote node answers our `PUT` with
/// its own offset, or that it already has the key).
async fn open<'g>(
    gw: &'g Gateway<'g>,
    key: &Key,
    f: Facts<'g>,
    hops: Vec<(&'g RemoteNode, Vec<Uuid>)>,
) -> PendingPut<'g> {
    let busy_dir = gw.busy_dir();
    let _busy = (f.locals.iter().map(|n| &n.uuid))
        .chain(f.remotes.iter().map(|s| &s.uuid))
        .chain(f.specials.iter().map(|s| &s.uuid))
        .chain(hops.iter().map(|(s, _)| &s.uuid))
        .map(|u| crate::busy::start(&busy_dir, u))
        .collect();
    let mut holders = f.holders;
    let me = gw.gateway.uuid();
    let asked: Vec<(&RemoteNode, Option<Vec<Uuid>>)> = (f.remotes.iter().map(|s| (*s, None)))
        .chain(hops.into_iter().map(|(s, b)| (s, Some(b))))
        .collect();
    let begun =
        futures::future::join_all(asked.iter().map(|(s, b)| s.put_start(me, key, b.clone())));
    let mut remotes = Vec::new();
    for ((s, _), b) in asked.iter().zip(begun.await) {
        match b {
            Ok(PutBegin::From(t)) => remotes.push(t),
            Ok(PutBegin::AlreadyHave(also)) => {
                holders.push(Report::node(s.uuid.clone(), Outcome::AlreadyHad(also)))
            }
            Err(e) => tracing::info!("node {} left out of the PUT of {key}: {e}", s.remote),
        }
    }
    let (dirs, externals) = open_specials(key, &f.specials);
    let spool = (!externals.is_empty())
        .then(|| Spool::create(spool_path(gw.gateway, key, "put")))
        .and_then(|s| {
            s.map_err(|e| tracing::info!("cannot spool {key}: {e}"))
                .ok()
        });
    PendingPut {
        key: key.clone(),
        holders,
        locals: open_locals(key, &f.locals),
        remotes,
        dirs,
        externals,
        spool,
        asked: (f.remotes, f.specials),
        offset: 0,
        check: None,
        streaming: None,
        short: f.short,
        _busy,
    }
}

/// A local node resuming a partial upload re-hashes its own prefix (the
/// gateway never saw those bytes); a node starting at 0 is written unhashed
/// and committed with the gateway's one check.
fn open_locals<'g>(key: &Key, nodes: &[&'g NodeStore]) -> Vec<Target<'g>> {
    nodes
        .iter()
        .filter_map(|n| {
            let have = n.store.partial_size(key);
            // A node without room is skipped, not filled.
            if let Some(why) = key
                .size()
                .and_then(|size| n.store.lacks_room(size.saturating_sub(have)))
            {
                tracing::info!("node {} cannot take {key}: {why}", n.remote);
                return None;
            }
            let opened = if have == 0 {
                n.store.begin_unhashed_upload(key)
            } else {
                n.store.begin_upload(key, have)
            };
            match opened {
                Ok(up) => Some(Target {
                    node: n,
                    have: up.len(),
                    unhashed: have == 0,
                    upload: Some(up),
                }),
                Err(e) => {
                    tracing::info!("node {} cannot take {key}: {e}", n.remote);
                    None
                }
            }
        })
        .collect()
}

type DirTargets<'g> = Vec<(&'g SpecialNode, Option<DirUpload>)>;

/// Directory special remotes are written in place from 0; external ones
/// get the spool (their `TRANSFER STORE` needs a file), also from 0.
fn open_specials<'g>(
    key: &Key,
    nodes: &[&'g SpecialNode],
) -> (DirTargets<'g>, Vec<&'g SpecialNode>) {
    let mut dirs = Vec::new();
    let mut externals = Vec::new();
    for s in nodes.iter().copied() {
        match s.begin_dir_upload(key) {
            Ok(Some(up)) => dirs.push((s, Some(up))),
            Ok(None) => externals.push(s),
            Err(e) => tracing::info!("node {} cannot take {key}: {e}", s.remote),
        }
    }
    (dirs, externals)
}

/// The remote nodes' halves of a streamed upload.
struct Streaming<'g> {
    feeds: Vec<(&'g RemoteNode, tokio::sync::mpsc::Sender<Feed>)>,
    /// Each remote node's uuid, in the order of `runs`' results.
    nodes: Vec<Uuid>,
    runs: BoxFuture<'g, Vec<Option<Vec<Uuid>>>>,
    /// `runs`' result, if every remote node finished (failed) early.
    done: Option<Vec<Option<Vec<Uuid>>>>,
}

impl Streaming<'_> {
    /// Sends every remote node the end of the stream and waits for their
    /// results: a node's uuids (its own first) if it stored the content.
    async fn finish(mut self, valid: Option<bool>) -> Vec<Report> {
        let results = match self.done.take() {
            Some(done) => done,
            None => {
                let mut feeds = std::mem::take(&mut self.feeds);
                let end = async move {
                    if let Some(valid) = valid {
                        feed_all(&mut feeds, Feed::End { valid }).await;
                    }
                    // Closing a channel without an end drops the node's
                    // connection: it never sees VALID.
                    drop(feeds);
                };
                futures::join!(end, self.runs).1
            }
        };
        self.nodes
            .into_iter()
            .zip(results)
            .map(|(node, r)| match r {
                Some(also) => Report::node(node, Outcome::Stored(also)),
                None => Report::node(node, Outcome::Failed(Vec::new())),
            })
            .collect()
    }
}

impl<'g> PendingPut<'g> {
    pub(super) fn key(&self) -> &Key {
        &self.key
    }

    /// Every target's offset (0 for those written from the start).
    fn offsets(&self) -> Vec<u64> {
        let from_zero = self.spool.is_some() || !self.dirs.is_empty();
        (self.locals.iter().map(|t| t.have))
            .chain(self.remotes.iter().map(|r| r.from()))
            .chain(from_zero.then_some(0))
            .collect()
    }

    /// The client's `DATA`: streams `len` bytes from `offset` (the `PUT-FROM`
    /// sent) to every target. Returns whether they all arrived; if not,
    /// every remote node's connection is dropped.
    pub(super) async fn receive<R: PayloadReader>(
        &mut self,
        reader: &mut R,
        offset: u64,
        len: u64,
    ) -> bool {
        self.offset = offset;
        // Hash once here, for every node taking the stream from 0.
        self.check = (offset == 0).then(|| StreamCheck::new(&self.key));
        let end = offset.saturating_add(len);
        let mut feeds = Vec::new();
        let mut nodes = Vec::new();
        let mut runs = Vec::new();
        for r in std::mem::take(&mut self.remotes) {
            let (tx, rx) = tokio::sync::mpsc::channel::<Feed>(FEED_DEPTH);
            feeds.push((r.node(), tx));
            nodes.push(r.node().uuid.clone());
            runs.push(r.run(end, rx));
        }
        let mut runs = futures::future::join_all(runs).boxed();
        let mut done = None;
        let complete = {
            let produce = self.fan_out(reader, &mut feeds, offset, end);
            tokio::pin!(produce);
            loop {
                tokio::select! {
                    complete = &mut produce => break complete,
                    out = &mut runs, if done.is_none() => done = Some(out),
                }
            }
        };
        let streaming = Streaming {
            feeds,
            nodes,
            runs,
            done,
        };
        if complete {
            self.streaming = Some(streaming);
        } else {
            streaming.finish(None).await;
            self.spool = None;
        }
        complete
    }

    /// Reads the payload once: each chunk goes to every local node (in
    /// parallel), every directory remote and the spool, then to each remote
    /// node's channel. The next chunk is read only when every local node has
    /// written this one and every remote channel took it.
    async fn fan_out<R: PayloadReader>(
        &mut self,
        reader: &mut R,
        feeds: &mut Vec<(&'g RemoteNode, tokio::sync::mpsc::Sender<Feed>)>,
        offset: u64,
        end: u64,
    ) -> bool {
        use tokio::io::AsyncBufReadExt;
        let mut pos = offset;
        while pos < end {
            let avail = match reader.fill_buf().await {
                Ok(a) if !a.is_empty() => a,
                _ => return false,
            };
            let n = avail
                .len()
                .min(usize::try_from(end - pos).unwrap_or(usize::MAX));
            let chunk = &avail[..n];
            self.write_chunk(chunk, pos);
            if !feeds.is_empty() {
                let shared: Arc<[u8]> = Arc::from(chunk);
                feed_all(feeds, Feed::Bytes(pos, shared)).await;
            }
            reader.consume(n);
            pos += n as u64;
        }
        true
    }

    /// Writes one chunk (at stream position `start`) to the spool, the hash,
    /// the directory remotes and the local nodes; a target that fails drops out.
    fn write_chunk(&mut self, chunk: &[u8], start: u64) {
        let key = &self.key;
        if let Some(s) = self.spool.as_mut() {
            use std::io::Write;
            if let Err(e) = s.file.write_all(chunk) {
                tracing::info!("spooling {key} to {}: {e}", s.path.display());
                self.spool = None;
            }
        }
        if let Some(c) = self.check.as_mut()
            && let Err(e) = c.update(chunk)
        {
            tracing::info!("hashing {key}: {e}");
            self.check = None;
        }
        for (s, up) in self.dirs.iter_mut() {
            if let Some(u) = up
                && let Err(e) = u.write(chunk)
            {
                tracing::info!("node {} cannot store {key}: {e}", s.remote);
                *up = None;
            }
        }
        let n = chunk.len();
        let work: Vec<&mut Target> = (self.locals.iter_mut())
            .filter(|t| t.upload.is_some() && t.have < start + n as u64)
            .collect();
        each_parallel_if(n >= PARALLEL_WRITE_MIN, work, |t| {
            let skip = usize::try_from(t.have.saturating_sub(start)).unwrap_or(0);
            let Some(up) = t.upload.as_mut() else {
                return;
            };
            let part = chunk.get(skip..).unwrap_or_default();
            if let Err(e) = up.write(part) {
                tracing::info!("node {} cannot store {}: {e}", t.node.remote, up.key());
                t.upload = None;
            } else {
                crate::net::stats::node_bytes().sent(t.node.uuid.as_str(), part.len());
            }
            t.have = start + n as u64;
        });
    }

    /// After the payload and the client's `VALID`/`INVALID`: the VALID gate
    /// for remote nodes, every target's commit, and the reply (every holder
    /// and every node that stored, recorded in the gateway's log).
    pub(super) async fn commit(mut self, gw: &Gateway<'_>, validity: Validity) -> Done {
        let key = self.key.clone();
        let checked = match self.check.take().map(StreamCheck::finish) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                tracing::info!("hashing {key}: {e}");
                None
            }
            None => None,
        };
        let gate = match &checked {
            Some(c) => GatewayCheck::Checked(c.verdict().clone()),
            None if self.offset == 0 => GatewayCheck::Failed,
            None => GatewayCheck::FromOffset,
        };
        let remote = match self.streaming.take() {
            Some(s) => s.finish(Some(send_valid(&gate, validity))).await,
            None => Vec::new(),
        };
        let mut reports = self.commit_locals(checked.as_ref(), validity);
        reports.extend(remote);
        // Directory remotes and the spool were written from 0: checked here.
        let good = checked
            .as_ref()
            .is_some_and(|c| c.verdict().accepted_given(validity));
        reports.extend(self.commit_specials(good));
        // The reply lists the nodes that stored first, then the holders.
        reports.append(&mut self.holders);
        let reply = put_reply(4, &reports);
        off_runtime(|| gw.record(&key, &reply.record, Status::Present));
        if let Some(short) = &self.short {
            let on: Vec<String> = reply.record.iter().map(Uuid::to_string).collect();
            tracing::warn!(
                "PUT of {key} is below the cluster's min: it is on [{}] ({short})",
                on.join(" ")
            );
        }
        Done {
            ok: reply.ok(),
            also: reply.record,
        }
    }

    fn commit_locals(&mut self, checked: Option<&Checked>, validity: Validity) -> Vec<Report> {
        let key = &self.key;
        each_parallel(std::mem::take(&mut self.locals), |t| {
            let uuid = t.node.uuid.clone();
            let Some(up) = t.upload else {
                return Report::node(uuid, Outcome::Failed(Vec::new()));
            };
            let done = match (t.unhashed, checked) {
                (true, Some(c)) => t.node.store.commit_checked(up, c, validity),
                (true, None) => {
                    tracing::info!(
                        "node {}: the gateway's check of {key} failed",
                        t.node.remote
                    );
                    return Report::node(uuid, Outcome::Failed(Vec::new()));
                }
                (false, _) => t.node.store.commit(up, validity),
            };
            match done {
                Ok(Stored::Stored) => Report::node(uuid, Outcome::Stored(Vec::new())),
                Ok(other) => {
                    tracing::info!("node {} refused {key}: {other:?}", t.node.remote);
                    Report::node(uuid, Outcome::Failed(Vec::new()))
                }
                Err(e) => {
                    tracing::info!("node {} storing {key}: {e}", t.node.remote);
                    Report::node(uuid, Outcome::Failed(Vec::new()))
                }
            }
        })
    }

    fn commit_specials(&mut self, good: bool) -> Vec<Report> {
        let key = &self.key;
        let mut reports = Vec::new();
        let outcome = |ok: bool| match ok {
            true => Outcome::Stored(Vec::new()),
            false => Outcome::Failed(Vec::new()),
        };
        for (s, up) in std::mem::take(&mut self.dirs) {
            let ok = match up {
                Some(up) if good => up
                    .commit()
                    .map_err(|e| tracing::info!("node {} storing {key}: {e}", s.remote))
                    .is_ok(),
                _ => false,
            };
            reports.push(Report::node(s.uuid.clone(), outcome(ok)));
        }
        let Some(spool) = self.spool.take() else {
            return reports;
        };
        let path = &spool.path;
        let externals = std::mem::take(&mut self.externals);
        reports.extend(each_parallel(externals, |s| {
            let ok = good
                && match s.store(key, path) {
                    Ok(ok) => ok,
                    Err(e) => {
                        tracing::info!("node {} storing {key}: {e}", s.remote);
                        false
                    }
                };
            Report::node(s.uuid.clone(), outcome(ok))
        }));
        drop(spool);
        reports
    }

    /// `DATA-PRESENT`: the client says the content is already here; it is
    /// if a node has it.
    pub(super) async fn confirm_present(self, gw: &Gateway<'_>) -> Done {
        let key = self.key.clone();
        let (remotes, specials) = (self.asked.0.clone(), self.asked.1.clone());
        self.abandon().await;
        let stored = |u: &Uuid| Report::node(u.clone(), Outcome::Stored(Vec::new()));
        let mut reports: Vec<Report> = (gw.locals().iter())
            .filter(|n| n.store.confirm_present(&key))
            .map(|n| stored(&n.uuid))
            .collect();
        for s in remotes {
            if matches!(s.check_present(gw.gateway.uuid(), &key).await, Ok(true)) {
                reports.push(stored(&s.uuid));
            }
        }
        for s in specials {
            if matches!(s.contains(&key), Ok(true)) {
                reports.push(stored(&s.uuid));
            }
        }
        let reply = put_reply(4, &reports);
        gw.record(&key, &reply.record, Status::Present);
        Done {
            ok: reply.ok(),
            also: reply.record,
        }
    }

    /// No `DATA` came (or the answer is `ALREADY-HAVE`): remote nodes are
    /// mid-request, so their connections are dropped; partial uploads stay.
    pub(super) async fn abandon(mut self) {
        self.remotes.drain(..).for_each(remote::PutTarget::abandon);
        if let Some(s) = self.streaming.take() {
            s.finish(None).await;
        }
    }
}

/// Sends `item` to every remote node's channel, waiting for room (a slow node
/// holds the stream back); a node whose channel closed (it failed) is dropped.
async fn feed_all(feeds: &mut Vec<(&RemoteNode, tokio::sync::mpsc::Sender<Feed>)>, item: Feed) {
    let mut i = 0;
    while i < feeds.len() {
        if feeds[i].1.send(item.clone()).await.is_ok() {
            i += 1;
        } else {
            let (node, _) = feeds.swap_remove(i);
            tracing::info!("node {} dropped out of the upload", node.remote);
        }
    }
}
