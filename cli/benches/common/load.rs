//! The load driver shared by `benches/load.rs` and `tests/load.rs`: many
//! clients, each with its own libp2p identity and connection, doing `PUT`s
//! of new content and `GET`s of stored content against one address (a
//! gateway's cluster) for a bounded time, a share of the transfers killed in
//! the middle of their `DATA`: the stream reset, or the whole connection
//! dropped (as a killed client process's would be). Content is in memory
//! and checked against its key.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use node::net::PeerAddress;
use node::remote::{Endpoint, StreamSession};
use node::session::PutStart;
use protocol::verify::{Hash, Verifier};
use protocol::{AssociatedFile, AuthToken, Key, Uuid};
use rand::{Rng, SeedableRng};

/// Content with its `SHA256E` key.
#[derive(Clone)]
pub struct Object {
    pub key: Key,
    pub data: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Object({})", self.key)
    }
}

/// `size` pseudo-random bytes (xorshift64* from `seed`) and their key.
pub fn object(seed: u64, size: usize) -> Object {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x1000_0000_01B3);
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    data.truncate(size);
    let mut h = Hash::Sha256.hasher();
    h.update(&data);
    let key = Key::from_hash("SHA256E", size as u64, &h.finish_hex(), ".bin")
        .unwrap_or_else(|e| panic!("building a key: {e}"));
    Object {
        key,
        data: Arc::new(data),
    }
}

/// What one transfer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
}

/// How one transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Completed: stored (PUT), or received and verified (GET).
    Done,
    /// Killed by us mid-`DATA`, after this many bytes.
    Killed(u64),
    /// Failed on its own (an error, a refusal, bad content).
    Failed(String),
}

/// One transfer of the run.
#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub op: Op,
    pub key: Key,
    pub end: End,
    /// From the request to its outcome (for killed ones, to the kill).
    pub latency: Duration,
    /// The content of a `PUT`, with [`Plan::keep`].
    pub object: Option<Object>,
}

/// One run's shape.
#[derive(Clone)]
pub struct Plan {
    pub target: PeerAddress,
    /// Each client's identity (granted on the gateway).
    pub identities: Vec<libp2p::identity::Keypair>,
    pub duration: Duration,
    /// The share of transfers killed mid-`DATA` (0.0 to 1.0).
    pub kill_share: f64,
    /// Sizes of new content, uniform in this range (bytes).
    pub sizes: (usize, usize),
    /// Stored content the `GET`s read, at random.
    pub stored: Arc<Vec<Object>>,
    pub seed: u64,
    /// The most transfers per client (`None`: until the duration is over).
    pub max_per_client: Option<usize>,
    /// Keep each `PUT`'s content in its record (for checking it afterwards).
    pub keep: bool,
}

/// What a run gives back: every transfer, and how many connects failed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub records: Vec<Record>,
    pub connects: u64,
    pub connect_failures: Vec<String>,
}

/// A client: one identity, one connection (its own swarm), one session at a
/// time.
pub struct Client {
    index: usize,
    identity: libp2p::identity::Keypair,
    uuid: Uuid,
    target: PeerAddress,
    endpoint: Option<Endpoint>,
    session: Option<StreamSession>,
}

/// The most bytes written or read at a time.
const CHUNK: usize = 64 * 1024;

impl Client {
    pub fn new(index: usize, identity: libp2p::identity::Keypair, target: PeerAddress) -> Client {
        let uuid = Uuid::parse(&format!("cccccccc-cccc-4ccc-8ccc-{index:012x}"))
            .unwrap_or_else(|e| panic!("a client uuid: {e}"));
        Client {
            index,
            identity,
            uuid,
            target,
            endpoint: None,
            session: None,
        }
    }

    /// The session, opened (with a new connection if there is none) when
    /// there is none.
    pub async fn session(&mut self) -> node::Result<&mut StreamSession> {
        if self.endpoint.is_none() {
            let transport = node::net::tcp_transport(&self.identity)?;
            self.endpoint = Some(Endpoint::new(self.identity.clone(), transport)?);
        }
        if self.session.is_none()
            && let Some(endpoint) = &self.endpoint
        {
            let token = AuthToken::parse("")
                .ok_or_else(|| node::Error::Protocol("the empty token".into()))?;
            let (s, _) = endpoint
                .connect(&self.target, self.uuid.clone(), token)
                .await?;
            self.session = Some(s);
        }
        self.session
            .as_mut()
            .ok_or_else(|| node::Error::Protocol("no session".into()))
    }

    /// Drops the session mid-request: its stream is reset; with `connection`
    /// the whole connection goes too (the client's swarm is dropped).
    pub fn kill(&mut self, connection: bool) {
        self.session = None;
        if connection {
            self.endpoint = None;
        }
    }

    /// `PUT` of `obj`; with `kill_at`, the session is killed once that many
    /// bytes of `DATA` are sent.
    pub async fn put(&mut self, obj: &Object, kill_at: Option<u64>) -> node::Result<End> {
        let s = self.session().await?;
        let data = &obj.data;
        let offset = match s.put_stream_start(&obj.key, AssociatedFile::none()).await? {
            PutStart::AlreadyHave(_) => return Ok(End::Failed("already had".into())),
            PutStart::From(o) => usize::try_from(o).unwrap_or(usize::MAX).min(data.len()),
        };
        s.put_stream_data((data.len() - offset) as u64).await?;
        let mut sent = offset;
        for chunk in data[offset..].chunks(CHUNK) {
            if let Some(at) = kill_at
                && sent as u64 >= at
            {
                s.flush().await?;
                return Ok(End::Killed(sent as u64));
            }
            s.put_stream_write(chunk).await?;
            sent += chunk.len();
        }
        let out = s.put_stream_finish(true).await?;
        Ok(if out.stored {
            End::Done
        } else {
            End::Failed(format!("not stored: {out:?}"))
        })
    }

    /// `GET` of `obj`, checked against its key; with `kill_at`, the session
    /// is killed once that many bytes arrived.
    pub async fn get(&mut self, obj: &Object, kill_at: Option<u64>) -> node::Result<End> {
        let s = self.session().await?;
        let len = s.get_relay_start(&obj.key, 0).await?;
        let mut verifier = Verifier::new(&obj.key);
        let mut got = 0u64;
        while got < len {
            if let Some(at) = kill_at
                && got >= at
            {
                return Ok(End::Killed(got));
            }
            let chunk = s.relay_chunk((len - got).min(CHUNK as u64)).await?;
            if chunk.is_empty() {
                return Ok(End::Failed(format!(
                    "the stream ended after {got} of {len}"
                )));
            }
            verifier.update(chunk);
            let n = chunk.len();
            s.relay_consume(n);
            got += n as u64;
        }
        let validity = s.relay_validity().await?;
        let ok = verifier.finish().accepted_given(validity);
        s.relay_finish(ok).await?;
        Ok(if ok {
            End::Done
        } else {
            End::Failed("content does not match its key".into())
        })
    }
}

/// Runs the plan: every client at once, each alternating a `PUT` of new
/// content and a `GET` of stored content until the time is up. A transfer
/// is killed with the plan's share; a killed or failed transfer's session
/// is dropped and the next one opens a new one.
pub async fn run(plan: Plan) -> Outcome {
    let deadline = Instant::now() + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, identity) in plan.identities.iter().cloned().enumerate() {
        let plan = plan.clone();
        tasks.spawn(async move { client_loop(index, identity, plan, deadline).await });
    }
    let mut all = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(o) => {
                all.records.extend(o.records);
                all.connects += o.connects;
                all.connect_failures.extend(o.connect_failures);
            }
            Err(e) => all
                .connect_failures
                .push(format!("a client task failed: {e}")),
        }
    }
    all
}

async fn client_loop(
    index: usize,
    identity: libp2p::identity::Keypair,
    plan: Plan,
    deadline: Instant,
) -> Outcome {
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed ^ (index as u64).wrapping_mul(7919));
    let mut client = Client::new(index, identity, plan.target.clone());
    let mut out = Outcome::default();
    let mut n = 0usize;
    while Instant::now() < deadline && plan.max_per_client.is_none_or(|m| n < m) {
        let op = if n.is_multiple_of(2) || plan.stored.is_empty() {
            Op::Put
        } else {
            Op::Get
        };
        let obj = match op {
            Op::Put => {
                let size = rng.gen_range(plan.sizes.0..=plan.sizes.1);
                object(plan.seed ^ ((index as u64) << 32) ^ n as u64, size)
            }
            Op::Get => plan.stored[rng.gen_range(0..plan.stored.len())].clone(),
        };
        n += 1;
        let kill = rng.gen_bool(plan.kill_share.clamp(0.0, 1.0));
        let size = obj.data.len() as u64;
        let kill_at = kill.then(|| rng.gen_range(size / 10..=size * 9 / 10));
        let whole_connection = rng.gen_bool(0.5);
        if client.session.is_none() {
            out.connects += 1;
            if let Err(e) = client.session().await {
                out.connect_failures.push(format!("client {index}: {e}"));
                client.kill(true);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let start = Instant::now();
        let done = match op {
            Op::Put => client.put(&obj, kill_at).await,
            Op::Get => client.get(&obj, kill_at).await,
        };
        let latency = start.elapsed();
        let end = done.unwrap_or_else(|e| End::Failed(e.to_string()));
        match &end {
            End::Done => {}
            End::Killed(_) => client.kill(whole_connection),
            End::Failed(_) => client.kill(true),
        }
        out.records.push(Record {
            client: index,
            op,
            key: obj.key.clone(),
            end,
            latency,
            object: (plan.keep && op == Op::Put).then_some(obj),
        });
    }
    if let Some(s) = client.session.take() {
        let _ = s.close().await;
    }
    out
}

/// The `q` quantile (0.0 to 1.0) of `v`, nearest rank; zero when empty.
pub fn quantile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The latencies of the completed transfers of `records` (`op`: only those).
pub fn completed(records: &[Record], op: Option<Op>) -> Vec<Duration> {
    records
        .iter()
        .filter(|r| r.end == End::Done && op.is_none_or(|o| r.op == o))
        .map(|r| r.latency)
        .collect()
}

/// `PUT`s every object over one session of a new client; how each ended.
pub async fn store_all(
    target: &PeerAddress,
    identity: libp2p::identity::Keypair,
    objects: &[Object],
) -> Vec<End> {
    let mut client = Client::new(usize::MAX >> 16, identity, target.clone());
    let mut ends = Vec::new();
    for o in objects {
        let end = client
            .put(o, None)
            .await
            .unwrap_or_else(|e| End::Failed(e.to_string()));
        if end != End::Done {
            client.kill(true);
        }
        ends.push(end);
    }
    if let Some(s) = client.session.take() {
        let _ = s.close().await;
    }
    ends
}

/// The body of `GET /metrics` from a daemon's API (`http://IP:PORT`).
pub fn scrape(api: &str, token: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let host = api.trim().trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(dechunk(body))
}

/// A chunked body's content (or the body itself if it is not chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 || after.len() < n {
            return out;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// The value of an unlabelled sample `name` in a metrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// A process's open file descriptors.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A `/proc/PID/status` field's number (`Threads`, `VmRSS` in KiB, …).
pub fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let v = l.strip_prefix(field)?.strip_prefix(':')?;
                v.trim().trim_end_matches("kB").trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

/// What a daemon holds at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    pub fds: usize,
    pub threads: u64,
    pub rss_kib: u64,
    pub sessions_open: f64,
    pub streams_pending: f64,
    pub sessions_authenticated: f64,
    pub tasks: f64,
}

impl Held {
    /// Samples process `pid` and its API.
    pub fn sample(pid: u32, api: &str, token: &str) -> Held {
        let text = scrape(api, token).unwrap_or_default();
        let m = |n: &str| metric(&text, n).unwrap_or(f64::NAN);
        Held {
            fds: fds(pid),
            threads: status_field(pid, "Threads"),
            rss_kib: status_field(pid, "VmRSS"),
            sessions_open: m("annexmesh_sessions_open"),
            streams_pending: m("annexmesh_streams_pending"),
            sessions_authenticated: m("annexmesh_sessions_authenticated"),
            tasks: m("annexmesh_runtime_tasks_alive"),
        }
    }

    /// The larger of each figure.
    pub fn max(self, o: Held) -> Held {
        Held {
            fds: self.fds.max(o.fds),
            threads: self.threads.max(o.threads),
            rss_kib: self.rss_kib.max(o.rss_kib),
            sessions_open: self.sessions_open.max(o.sessions_open),
            streams_pending: self.streams_pending.max(o.streams_pending),
            sessions_authenticated: self.sessions_authenticated.max(o.sessions_authenticated),
            tasks: self.tasks.max(o.tasks),
        }
    }

    /// No session, pending stream or authenticated session left.
    pub fn idle(&self) -> bool {
        self.sessions_open == 0.0
            && self.streams_pending == 0.0
            && self.sessions_authenticated == 0.0
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fds {:>4}  threads {:>3}  RSS {:>6.1} MiB  sessions open {:>3}  pending {:>2}  authenticated {:>3}  tasks {:>5}",
            self.fds,
            self.threads,
            self.rss_kib as f64 / 1024.0,
            self.sessions_open,
            self.streams_pending,
            self.sessions_authenticated,
            self.tasks
        )
    }
}
