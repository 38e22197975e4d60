//! The shared table every simulated link consults: which node listens where,
//! each directed link's latency and bandwidth, partitions, crashed nodes, the
//! live connections (so a partition or crash can cut them), and the trace of
//! what the network decided.
//!
//! Everything is kept in ordered maps, so iterating it never depends on hash
//! seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::time::Instant;

use crate::error::{Error, Refusal};
use crate::rng::SimRng;

/// A simulated node (a peer or a client), numbered in the order it was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// How one direction of a link behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// One-way delay of every chunk written, drawn uniformly from this range.
    /// Delivery stays in order: a chunk never overtakes an earlier one.
    pub latency: RangeInclusive<Duration>,
    /// Bytes per second, or unlimited.
    pub bandwidth: Option<NonZeroU64>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::ZERO..=Duration::ZERO,
            bandwidth: None,
        }
    }
}

/// The most events the trace keeps (later ones are counted, not kept).
const MAX_EVENTS: usize = 100_000;

/// How many latency draws per connection direction the trace keeps.
pub const TRACED_FRAMES: usize = 8;

/// The link table, shared by every transport of one simulation. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    seed: u64,
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    names: Vec<String>,
    by_name: BTreeMap<String, NodeId>,
    ports: BTreeMap<u64, NodeId>,
    /// Ports that were listened on once, by whom (to tell a crashed node from
    /// an address nobody ever had).
    former_ports: BTreeMap<u64, NodeId>,
    links: BTreeMap<(NodeId, NodeId), LinkConfig>,
    partitions: BTreeSet<(NodeId, NodeId)>,
    down: BTreeSet<NodeId>,
    conns: BTreeMap<u64, Weak<Conn>>,
    next_conn: u64,
    ordinals: BTreeMap<(NodeId, NodeId), u64>,
    transports: BTreeMap<NodeId, usize>,
    events: Vec<String>,
    events_dropped: u64,
    samples: BTreeMap<String, Vec<Duration>>,
    sent: BTreeMap<(NodeId, NodeId), u64>,
}

impl State {
    fn name(&self, id: NodeId) -> &str {
        self.names.get(id.0 as usize).map_or("?", String::as_str)
    }

    fn event(&mut self, text: String) {
        tracing::debug!(target: "simnet", "{text}");
        if self.events.len() < MAX_EVENTS {
            self.events.push(text);
        } else {
            self.events_dropped += 1;
        }
    }

    fn refusal(&self, from: NodeId, to: NodeId) -> Option<Refusal> {
        for node in [to, from] {
            if self.down.contains(&node) {
                return Some(Refusal::Down(self.name(node).to_owned()));
            }
        }
        if self.partitions.contains(&pair(from, to)) {
            return Some(Refusal::Partitioned(
                self.name(from).to_owned(),
                self.name(to).to_owned(),
            ));
        }
        None
    }

    /// Cuts every live connection for which `matches` holds; returns how many.
    fn cut_where(&mut self, matches: impl Fn(&Conn) -> bool) -> usize {
        let mut cut = 0;
        self.conns.retain(|_, weak| {
            let Some(conn) = weak.upgrade() else {
                return false;
            };
            if matches(&conn) && !conn.is_cut() {
                conn.cut();
                cut += 1;
            }
            true
        });
        cut
    }
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Network {
    pub fn new(seed: u64) -> Network {
        Network {
            inner: Arc::new(Inner {
                seed,
                epoch: Instant::now(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Time since the network was made (tokio time).
    pub fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.inner.epoch)
    }

    /// The instant `since_epoch` after the network was made.
    pub fn instant(&self, since_epoch: Duration) -> Instant {
        self.inner.epoch + since_epoch
    }

    /// Adds a node. Names are ASCII letters, digits, `-` and `_` (they name
    /// directories and appear in the trace).
    pub fn add_node(&self, name: &str) -> Result<NodeId, Error> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::BadName(name.to_owned()));
        }
        let mut s = self.state();
        if s.by_name.contains_key(name) {
            return Err(Error::Duplicate(name.to_owned()));
        }
        let id = NodeId(u32::try_from(s.names.len()).unwrap_or(u32::MAX));
        s.names.push(name.to_owned());
        s.by_name.insert(name.to_owned(), id);
        s.event(format!("add {name}"));
        Ok(id)
    }

    pub fn node(&self, name: &str) -> Result<NodeId, Error> {
        self.state()
            .by_name
            .get(name)
            .copied()
            .ok_or_else(|| Error::UnknownNode(name.to_owned()))
    }

    pub fn name(&self, id: NodeId) -> String {
        self.state().name(id).to_owned()
    }

    /// Appends a line to the trace (the simulation's own decisions, or a test's).
    pub fn note(&self, text: impl Into<String>) {
        self.state().event(text.into());
    }

    pub(crate) fn register_port(&self, port: u64, node: NodeId) {
        let mut s = self.state();
        s.former_ports.remove(&port);
        s.ports.insert(port, node);
    }

    pub(crate) fn unregister_port(&self, port: u64, node: NodeId) {
        let mut s = self.state();
        if s.ports.get(&port) == Some(&node) {
            s.ports.remove(&port);
            s.former_ports.insert(port, node);
        }
    }

    /// The node listening on `port`.
    pub fn node_at(&self, port: u64) -> Option<NodeId> {
        self.state().ports.get(&port).copied()
    }

    /// The node to dial at `port` from `from`: the listener, or a refusal (a
    /// crashed node's old address is refused as down, and traced).
    pub(crate) fn resolve(&self, from: NodeId, port: u64) -> Result<NodeId, Refusal> {
        let mut s = self.state();
        if let Some(node) = s.ports.get(&port) {
            return Ok(*node);
        }
        match s.former_ports.get(&port).copied() {
            Some(node) if s.down.contains(&node) => {
                let r = Refusal::Down(s.name(node).to_owned());
                let text = format!("dial {}->{} refused: {r}", s.name(from), s.name(node));
                s.event(text);
                Err(r)
            }
            _ => Err(Refusal::NoListener(port)),
        }
    }

    pub(crate) fn transport_created(&self, node: NodeId) {
        *self.state().transports.entry(node).or_default() += 1;
    }

    pub(crate) fn transport_dropped(&self, node: NodeId) {
        let mut s = self.state();
        if let Some(n) = s.transports.get_mut(&node) {
            *n = n.saturating_sub(1);
        }
    }

    /// How many transports (so swarms) of `node` are alive.
    pub fn live_transports(&self, node: NodeId) -> usize {
        self.state().transports.get(&node).copied().unwrap_or(0)
    }

    /// The behaviour of the link `from → to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> LinkConfig {
        self.state()
            .links
            .get(&(from, to))
            .cloned()
            .unwrap_or_default()
    }

    /// Changes the link `from → to`; live connections follow from their next write.
    pub fn set_link(&self, from: NodeId, to: NodeId, config: LinkConfig) {
        let mut s = self.state();
        let text = format!(
            "link {}->{}: latency {:?}..={:?}, bandwidth {:?}",
            s.name(from),
            s.name(to),
            config.latency.start(),
            config.latency.end(),
            config.bandwidth
        );
        s.event(text);
        s.links.insert((from, to), config);
    }

    /// Cuts every connection between `a` and `b` and refuses new ones until
    /// [`Network::heal`].
    pub fn partition(&self, a: NodeId, b: NodeId) -> usize {
        let mut s = self.state();
        s.partitions.insert(pair(a, b));
        let cut = s.cut_where(|c| pair(c.dialer, c.listener) == pair(a, b));
        let text = format!("partition {}|{}: {cut} cut", s.name(a), s.name(b));
        s.event(text);
        cut
    }

    pub fn heal(&self, a: NodeId, b: NodeId) {
        let mut s = self.state();
        s.partitions.remove(&pair(a, b));
        let text = format!("heal {}|{}", s.name(a), s.name(b));
        s.event(text);
    }

    /// Cuts every connection between `a` and `b` (new ones are allowed).
    pub fn cut(&self, a: NodeId, b: NodeId) -> usize {
        let mut s = self.state();
        let cut = s.cut_where(|c| pair(c.dialer, c.listener) == pair(a, b));
        let text = format!("cut {}|{}: {cut} cut", s.name(a), s.name(b));
        s.event(text);
        cut
    }

    /// Marks `node` down: its connections are cut and dials to or from it fail.
    pub fn crash(&self, node: NodeId) -> usize {
        let mut s = self.state();
        s.down.insert(node);
        let cut = s.cut_where(|c| c.dialer == node || c.listener == node);
        let text = format!("crash {}: {cut} cut", s.name(node));
        s.event(text);
        cut
    }

    pub fn restart(&self, node: NodeId) {
        let mut s = self.state();
        s.down.remove(&node);
        let text = format!("restart {}", s.name(node));
        s.event(text);
    }

    /// Whether `from` may dial `to` now; a refusal is traced.
    pub(crate) fn admit(&self, from: NodeId, to: NodeId) -> Result<(), Refusal> {
        let mut s = self.state();
        match s.refusal(from, to) {
            None => Ok(()),
            Some(r) => {
                let text = format!("dial {}->{} refused: {r}", s.name(from), s.name(to));
                s.event(text);
                Err(r)
            }
        }
    }

    /// Registers a new connection from `dialer` to `listener`.
    pub(crate) fn open_conn(&self, dialer: NodeId, listener: NodeId) -> Result<Arc<Conn>, Refusal> {
        let mut s = self.state();
        if let Some(r) = s.refusal(dialer, listener) {
            let text = format!("dial {}->{} refused: {r}", s.name(dialer), s.name(listener));
            s.event(text);
            return Err(r);
        }
        let id = s.next_conn;
        s.next_conn += 1;
        let ordinal = {
            let n = s.ordinals.entry((dialer, listener)).or_default();
            *n += 1;
            *n - 1
        };
        let label = format!("{}->{}#{ordinal}", s.name(dialer), s.name(listener));
        let conn = Arc::new(Conn {
            id,
            dialer,
            listener,
            label: label.clone(),
            cut: AtomicBool::new(false),
            wakers: Default::default(),
        });
        s.conns.insert(id, Arc::downgrade(&conn));
        s.event(format!("connect {label}"));
        Ok(conn)
    }

    /// The listener's half of connection `id`.
    pub(crate) fn accept_conn(&self, id: u64, local: NodeId) -> Result<Arc<Conn>, Refusal> {
        let s = self.state();
        let conn = s
            .conns
            .get(&id)
            .and_then(Weak::upgrade)
            .ok_or(Refusal::UnknownConnection(id))?;
        if conn.listener != local {
            return Err(Refusal::UnknownConnection(id));
        }
        if conn.is_cut() {
            return Err(Refusal::Cut(conn.label.clone()));
        }
        Ok(conn)
    }

    /// Accounts for one chunk written `from → to` on `conn`: draws its latency
    /// from the writer's stream, and traces the first few draws.
    pub(crate) fn frame(
        &self,
        conn: &Conn,
        from: NodeId,
        to: NodeId,
        len: usize,
        index: u64,
        rng: &mut SimRng,
    ) -> (Duration, Option<NonZeroU64>) {
        let mut s = self.state();
        let config = s.links.get(&(from, to)).cloned().unwrap_or_default();
        let latency = rng.duration_in(&config.latency);
        *s.sent.entry((from, to)).or_default() += len as u64;
        if (index as usize) < TRACED_FRAMES {
            let key = format!("{} {}=>{}", conn.label, s.name(from), s.name(to));
            s.samples.entry(key).or_default().push(latency);
        }
        (latency, config.bandwidth)
    }

    /// Payload bytes written `from → to` so far, over all connections.
    pub fn bytes_sent(&self, from: NodeId, to: NodeId) -> u64 {
        self.state().sent.get(&(from, to)).copied().unwrap_or(0)
    }

    /// Live (not yet dropped) connections between `a` and `b` that are not cut.
    pub fn open_connections(&self, a: NodeId, b: NodeId) -> usize {
        self.state()
            .conns
            .values()
            .filter_map(Weak::upgrade)
            .filter(|c| pair(c.dialer, c.listener) == pair(a, b) && !c.is_cut())
            .count()
    }

    /// The trace: every event in order, then the first latency draws of every
    /// connection direction, sorted by connection.
    pub fn trace(&self) -> Vec<String> {
        let s = self.state();
        let mut out = s.events.clone();
        if s.events_dropped > 0 {
            out.push(format!("({} more events)", s.events_dropped));
        }
        for (key, draws) in &s.samples {
            let draws: Vec<String> = draws.iter().map(|d| format!("{d:?}")).collect();
            out.push(format!("latency {key}: {}", draws.join(" ")));
        }
        out
    }
}

/// Which end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Dialer,
    Listener,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Io {
    Read,
    Write,
}

/// One raw connection between two nodes, shared by both of its ends.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) dialer: NodeId,
    pub(crate) listener: NodeId,
    pub(crate) label: String,
    cut: AtomicBool,
    /// Dialer read, dialer write, listener read, listener write.
    wakers: [AtomicWaker; 4],
}

impl Conn {
    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for w in &self.wakers {
            w.wake();
        }
    }

    pub(crate) fn register(&self, side: Side, io: Io, waker: &Waker) {
        let i = match (side, io) {
            (Side::Dialer, Io::Read) => 0,
            (Side::Dialer, Io::Write) => 1,
            (Side::Listener, Io::Read) => 2,
            (Side::Listener, Io::Write) => 3,
        };
        self.wakers[i].register(waker);
    }

    /// (local, remote) as seen from `side`.
    pub(crate) fn ends(&self, side: Side) -> (NodeId, NodeId) {
        match side {
            Side::Dialer => (self.dialer, self.listener),
            Side::Listener => (self.listener, self.dialer),
        }
    }
}
