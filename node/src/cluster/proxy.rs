//! The single-node proxy: a gateway serving ONE repository it proxies, as
//! `p2pstdio --uuid NODE` or a libp2p stream whose target is `NODE`
//! (annex-spec §4.4, git-annex's `performProxy` and `proxySpecialRemote`).
//! Stock git-annex reaches it as the remote `<gateway>-<node>`.
//!
//! Each kind of node is served its own way:
//! - a local repository: the plain server on the node's own store, in this
//!   process (no `git-annex-shell` per node);
//! - a git-annex repository behind `git-annex-shell p2pstdio`, or an annexmesh
//!   peer on the mesh: a message-level relay. The client and the node speak the
//!   same protocol version end to end (the node is offered the client's;
//!   `AUTH` is answered by the server machine first, as in every session);
//!   requests go to the node as they are, and replies and `DATA` come back as
//!   they are, so `LOCKCONTENT` really locks on the node. After a `SUCCESS` to a
//!   `PUT`, or to a `REMOVE`, the gateway records the change in its own
//!   journal, as git-annex's gateway does;
//! - a special remote: the one server driver ([`crate::session::serve_backend`])
//!   with the remote as its [`Backend`].
//!   As in git-annex, `LOCKCONTENT` is `FAILURE`, an upload starts at 0 (no
//!   resume), is received into a spool file, hashed as it arrives and stored
//!   only if it verifies; a download is fetched into a spool file and sent from
//!   there (the client verifies it).

use protocol::logs::presence::Status;
use protocol::message::{MAX_VERSION, Message, Version};
use protocol::server::{
    APPEND_ONLY_ERROR, CloseReason, GitAccess, PutStart, READ_ONLY_ERROR, ServeMode, Server,
    ServerConfig, Start, Validity,
};
use protocol::{AssociatedFile, Key, Uuid};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::backend::{Backend, Done, PayloadReader, PayloadWriter, Sent};
use crate::error::{Error, Result};
use crate::gateway::{Conn, GatewayNode, RemoteNode, Spool};
use crate::session::{
    Authenticator, IO_BUFFER, LineRead, ServeContext, authenticate, read_line, serve, serve_backend,
};
use crate::special::SpecialNode;
use crate::store::{Store, StreamCheck};

/// Serves one session for `node`, proxied by the gateway whose repository is
/// `gateway`. With `auth`, the client must `AUTH` first and its grant replaces
/// `mode`; without, the transport authenticated it (`p2pstdio`).
pub async fn serve_node<R, W>(
    node: GatewayNode,
    gateway: &Store,
    mode: ServeMode,
    auth: Option<&dyn Authenticator>,
    git: Option<&dyn crate::session::GitService>,
    reader: R,
    writer: W,
) -> Result<CloseReason>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let server = Server::new(ServerConfig {
        uuid: node.uuid().clone(),
        start: match auth {
            None => Start::Preauthenticated { mode },
            Some(_) => Start::RequireAuth,
        },
        // `CONNECT` reaches the gateway's own repository where `git` is
        // given (a daemon serving git), as git-annex's proxies do.
        git: if git.is_some() {
            GitAccess::Served
        } else {
            GitAccess::Proxied
        },
        max_version: i64::from(MAX_VERSION),
    });
    let ctx = ServeContext {
        auth,
        git,
        timings: None,
    };
    match node {
        GatewayNode::Local(n, _) => {
            let mut store = n.store.clone();
            store.set_observer(std::sync::Arc::new(Recorder {
                gateway: gateway.journal().clone(),
                node: n.uuid.clone(),
            }));
            serve(server, reader, writer, &store, &ctx).await
        }
        GatewayNode::Special(s) => {
            let mut backend = SpecialBackend::new(&s, gateway);
            serve_backend(server, reader, writer, &mut backend, &ctx).await
        }
        GatewayNode::Remote(r) => {
            let mut io = Io::new(reader, writer);
            let reason = match authenticate(server, &mut io.reader, &mut io.writer, auth).await {
                Ok(Ok(mode)) => {
                    Relay {
                        node: &r,
                        gateway,
                        io: &mut io,
                    }
                    .run(mode)
                    .await
                }
                Ok(Err(reason)) => Ok(reason),
                Err(e) => Err(e),
            };
            let _ = io.writer.flush().await;
            let _ = io.writer.shutdown().await;
            reason
        }
    }
}

/// Copies a local node's location changes into the gateway's journal, as
/// git-annex's gateway records what passes through it.
struct Recorder {
    gateway: crate::journal::Journal,
    node: Uuid,
}

impl crate::store::StoreObserver for Recorder {
    fn changed(&self, path: &str, content: &[u8]) {
        let status = if protocol::logs::presence::present(content)
            .iter()
            .any(|u| u == self.node.as_str())
        {
            Status::Present
        } else {
            Status::Absent
        };
        let now = crate::journal::log_clock_now();
        if let Err(e) = self.gateway.modify(path, |old| {
            protocol::logs::presence::record(old, self.node.as_str(), status, now)
        }) {
            tracing::info!("cannot record {path} in the gateway: {e}");
        }
    }
}

/// The client's side of a relayed session.
struct Io<R, W> {
    reader: BufReader<R>,
    writer: BufWriter<W>,
    line: Vec<u8>,
}

/// What the client sent next.
enum Next {
    Message(Message),
    Unparsable,
    Eof,
    /// The client broke the protocol (over-long line): the session ends.
    Broken(String),
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> Io<R, W> {
    fn new(reader: R, writer: W) -> Self {
        Io {
            reader: BufReader::with_capacity(IO_BUFFER, reader),
            writer: BufWriter::with_capacity(IO_BUFFER, writer),
            line: Vec::with_capacity(256),
        }
    }

    async fn send(&mut self, m: &Message) -> Result<()> {
        self.writer
            .write_all(&m.to_line())
            .await
            .map_err(stream_err)
    }

    /// Flushes what was written, then reads the client's next message.
    async fn next(&mut self) -> Result<Next> {
        self.writer.flush().await.map_err(stream_err)?;
        Ok(match read_line(&mut self.reader, &mut self.line).await {
            Ok(LineRead::Line) => match Message::parse(&self.line) {
                Ok(m) => Next::Message(m),
                Err(_) => Next::Unparsable,
            },
            Ok(LineRead::Eof) => Next::Eof,
            Ok(LineRead::TooLong) => Next::Broken("over-long line".into()),
            Err(e) => return Err(stream_err(e)),
        })
    }
}

fn stream_err(e: std::io::Error) -> Error {
    Error::Io {
        context: "p2p stream".into(),
        source: e,
    }
}

/// How long a relayed node may take to exit once its session is over.
const NODE_EXIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A relay between one client and one node (git-annex's `performProxy`).
struct Relay<'a, R, W> {
    node: &'a RemoteNode,
    gateway: &'a Store,
    io: &'a mut Io<R, W>,
}

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> Relay<'_, R, W> {
    async fn run(&mut self, mode: ServeMode) -> Result<CloseReason> {
        // The client's VERSION decides what the node is offered.
        let first = self.io.next().await?;
        let offer = match &first {
            Next::Message(Message::Version(v)) => Some((*v).clamp(0, i64::from(MAX_VERSION))),
            _ => None,
        };
        let mut conn = match self.node.open(self.gateway.uuid(), offer).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!("proxying to node {}: {e}", self.node.remote);
                let refusal = format!("cannot reach repository {}", self.node.remote);
                self.io.send(&Message::Error(refusal)).await?;
                return Ok(CloseReason::ProtocolError(format!(
                    "node {} unreachable: {e}",
                    self.node.remote
                )));
            }
        };
        let reason = self.relay_all(&mut conn, mode, first).await;
        // Let the node finish (an UNLOCKCONTENT just sent, say) and exit; one
        // that does not is killed when its connection is dropped.
        match tokio::time::timeout(NODE_EXIT, conn.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::info!("closing node {}: {e}", self.node.remote),
            Err(_) => tracing::info!("node {} did not exit; killed", self.node.remote),
        }
        reason
    }

    async fn relay_all(
        &mut self,
        conn: &mut Conn,
        mode: ServeMode,
        first: Next,
    ) -> Result<CloseReason> {
        let version = conn.version();
        let mut pending = match first {
            Next::Message(Message::Version(_)) => {
                self.io.send(&Message::Version(version)).await?;
                None
            }
            other => Some(other),
        };
        loop {
            let next = match pending.take() {
                Some(n) => n,
                None => self.io.next().await?,
            };
            let msg = match next {
                Next::Message(m) => m,
                Next::Unparsable => {
                    self.io
                        .send(&Message::Error("unknown command".into()))
                        .await?;
                    continue;
                }
                Next::Eof => return Ok(CloseReason::Eof),
                Next::Broken(why) => return Ok(CloseReason::ProtocolError(why)),
            };
            match self.relay_request(conn, mode, version, msg).await {
                Ok(None) => {}
                Ok(Some(reason)) => return Ok(reason),
                Err(e) => {
                    // A side failed mid-request; the protocol has no in-band
                    // way to abandon a request, so the session ends.
                    tracing::info!("proxying to node {}: {e}", self.node.remote);
                    return Ok(CloseReason::ProtocolError(format!(
                        "relaying to {}: {e}",
                        self.node.remote
                    )));
                }
            }
        }
    }

    /// Relays one request and its whole exchange. `Some` ends the session.
    async fn relay_request(
        &mut self,
        conn: &mut Conn,
        mode: ServeMode,
        version: Version,
        msg: Message,
    ) -> Result<Option<CloseReason>> {
        use Message as M;
        let refused = match (&msg, mode) {
            (M::Put(..) | M::Remove(_) | M::RemoveBefore(..), ServeMode::ReadOnly) => {
                Some(READ_ONLY_ERROR)
            }
            (M::Remove(_) | M::RemoveBefore(..), ServeMode::AppendOnly) => Some(APPEND_ONLY_ERROR),
            _ => None,
        };
        if let Some(e) = refused {
            self.io.send(&M::Error(e.into())).await?;
            return Ok(None);
        }
        match msg {
            M::Error(e) => {
                conn.send(&M::Error(e.clone())).await?;
                Ok(Some(CloseReason::ClientError(e)))
            }
            // git is not relayed to a node (git-annex does not proxy it either).
            M::Connect(_) => Ok(Some(CloseReason::Unsupported(
                "relaying to git not supported on this connection",
            ))),
            M::NotifyChange => {
                self.io.send(&M::Error("protocol error".into())).await?;
                Ok(Some(CloseReason::ProtocolError("NOTIFYCHANGE".into())))
            }
            // No reply to these.
            M::UnlockContent | M::Bypass(_) => {
                if version >= 2 || matches!(msg, M::UnlockContent) {
                    conn.send(&msg).await?;
                    conn.flush().await?;
                }
                Ok(None)
            }
            M::Put(file, key) => self.relay_put(conn, version, file, key).await,
            M::Get(offset, file, key) => self.relay_get(conn, version, offset, file, key).await,
            M::Remove(ref key) | M::RemoveBefore(_, ref key) => {
                let key = key.clone();
                self.relay_remove(conn, &msg, &key).await
            }
            // One request, one reply: CHECKPRESENT, LOCKCONTENT, GETTIMESTAMP,
            // and anything the node will refuse itself.
            other => {
                conn.send(&other).await?;
                let reply = conn.reply().await?;
                self.io.send(&reply).await?;
                Ok(None)
            }
        }
    }

    async fn relay_put(
        &mut self,
        conn: &mut Conn,
        version: Version,
        file: AssociatedFile,
        key: Key,
    ) -> Result<Option<CloseReason>> {
        use Message as M;
        conn.send(&M::Put(file, key.clone())).await?;
        let reply = conn.reply().await?;
        self.io.send(&reply).await?;
        let M::PutFrom(offset) = reply else {
            return Ok(None);
        };
        match self.io.next().await? {
            Next::Message(M::Data(len)) if !protocol::server::data_fits(&key, offset, len) => {
                // Nothing reaches the node; its connection, left waiting
                // for DATA, ends with the session.
                let why = protocol::server::DATA_TOO_LONG;
                self.io.send(&M::Error(why.into())).await?;
                return Ok(Some(CloseReason::ProtocolError(why.into())));
            }
            Next::Message(M::Data(len)) => {
                conn.send(&M::Data(len)).await?;
                let sent = conn.payload_from(&mut self.io.reader, len).await?;
                if sent < len {
                    return Ok(Some(CloseReason::ProtocolError("short DATA".into())));
                }
                if version >= 1 {
                    match self.io.next().await? {
                        Next::Message(v @ (M::Valid | M::Invalid)) => conn.send(&v).await?,
                        Next::Eof => return Ok(Some(CloseReason::Eof)),
                        _ => {
                            return Ok(Some(CloseReason::ProtocolError(
                                "expected VALID or INVALID".into(),
                            )));
                        }
                    }
                }
            }
            Next::Message(M::DataPresent) if version >= 4 => conn.send(&M::DataPresent).await?,
            Next::Eof => return Ok(Some(CloseReason::Eof)),
            _ => return Ok(Some(CloseReason::ProtocolError("expected DATA".into()))),
        }
        let result = conn.reply().await?;
        self.io.send(&result).await?;
        match &result {
            M::Success => self.record(&key, Vec::new(), Status::Present),
            M::SuccessPlus(also) => self.record(&key, also.clone(), Status::Present),
            _ => {}
        }
        Ok(None)
    }

    async fn relay_get(
        &mut self,
        conn: &mut Conn,
        version: Version,
        offset: u64,
        file: AssociatedFile,
        key: Key,
    ) -> Result<Option<CloseReason>> {
        use Message as M;
        conn.send(&M::Get(offset, file, key)).await?;
        let reply = conn.reply().await?;
        self.io.send(&reply).await?;
        let M::Data(len) = reply else {
            return Ok(None);
        };
        let sent = conn.payload_to(&mut self.io.writer, len).await?;
        if sent < len {
            // No in-band abort: the client sees the stream end.
            return Err(Error::Node {
                node: self.node.remote.clone(),
                reason: "its DATA came up short".into(),
            });
        }
        if version >= 1 {
            let v = conn.reply().await?;
            self.io.send(&v).await?;
        }
        match self.io.next().await? {
            Next::Message(m) => conn.send(&m).await?,
            Next::Eof => return Ok(Some(CloseReason::Eof)),
            Next::Unparsable | Next::Broken(_) => {
                return Ok(Some(CloseReason::ProtocolError(
                    "expected SUCCESS or FAILURE".into(),
                )));
            }
        }
        Ok(None)
    }

    async fn relay_remove(
        &mut self,
        conn: &mut Conn,
        msg: &Message,
        key: &Key,
    ) -> Result<Option<CloseReason>> {
        use Message as M;
        conn.send(msg).await?;
        let reply = conn.reply().await?;
        self.io.send(&reply).await?;
        match &reply {
            M::Success => self.record(key, Vec::new(), Status::Absent),
            M::SuccessPlus(also) => self.record(key, also.clone(), Status::Absent),
            // Only the listed repositories changed.
            M::FailurePlus(also) if !also.is_empty() => {
                record(self.gateway, key, also, Status::Absent)
            }
            _ => {}
        }
        Ok(None)
    }

    /// Records the node (and `also`) in the gateway's journal.
    fn record(&self, key: &Key, mut also: Vec<Uuid>, status: Status) {
        also.retain(|u| u != &self.node.uuid);
        also.push(self.node.uuid.clone());
        record(self.gateway, key, &also, status);
    }
}

/// Records `uuids` for `key` in the gateway's journal.
fn record(gateway: &Store, key: &Key, uuids: &[Uuid], status: Status) {
    if let Err(e) = gateway.record_presence_many(key, uuids, status) {
        tracing::info!("cannot record location of {key}: {e}");
    }
}

/// A fresh spool path under the gateway's `annex/tmp/annexmesh-proxy`.
fn spool_path(gateway: &Store, key: &Key, what: &str) -> std::path::PathBuf {
    crate::gateway::spool_path_in(gateway, "annexmesh-proxy", key, what)
}

/// An upload to a special remote in progress.
struct SpecialUpload {
    key: Key,
    spool: Spool,
    check: StreamCheck,
}

/// A special remote as the backend of a session (git-annex's
/// `proxySpecialRemote`): `LOCKCONTENT` is `FAILURE`, an upload starts at 0
/// (no resume) and is spooled, hashed as it arrives and stored only if it
/// verifies; a download is fetched into a spool file and sent from there.
struct SpecialBackend<'a> {
    node: &'a SpecialNode,
    gateway: &'a Store,
    upload: Option<SpecialUpload>,
    download: Option<Spool>,
    buf: Vec<u8>,
}

impl<'a> SpecialBackend<'a> {
    fn new(node: &'a SpecialNode, gateway: &'a Store) -> SpecialBackend<'a> {
        SpecialBackend {
            node,
            gateway,
            upload: None,
            download: None,
            buf: Vec::new(),
        }
    }

    fn logged(&self, what: &str, key: &Key, e: &Error) {
        tracing::info!("special remote {}: {what} {key}: {e}", self.node.remote);
    }

    fn record(&self, key: &Key, status: Status) {
        record(
            self.gateway,
            key,
            std::slice::from_ref(&self.node.uuid),
            status,
        );
    }

    /// Verifies the spooled upload and hands it to the remote.
    fn store(&mut self, key: &Key, validity: Validity) -> bool {
        let Some(u) = self.upload.take().filter(|u| &u.key == key) else {
            return false;
        };
        match u.check.finish() {
            Ok(c) if c.verdict().accepted_given(validity) => {
                match self.node.store(key, &u.spool.path) {
                    Ok(stored) => stored,
                    Err(e) => {
                        self.logged("storing", key, &e);
                        false
                    }
                }
            }
            Ok(_) => {
                tracing::info!("refused bad content for {key}");
                false
            }
            Err(e) => {
                self.logged("hashing", key, &e);
                false
            }
        }
    }

    /// `TRANSFER RETRIEVE` into a spool: its size.
    fn fetch(&mut self, key: &Key) -> Option<u64> {
        self.download = None;
        let fetched = Spool::create(spool_path(self.gateway, key, "get")).and_then(|s| {
            // The remote writes its own file at the path.
            let _ = std::fs::remove_file(&s.path);
            Ok((self.node.retrieve(key, &s.path)?, s))
        });
        match fetched {
            Ok((true, mut s)) => match std::fs::File::open(&s.path) {
                Ok(f) => {
                    let len = f.metadata().map(|m| m.len()).ok();
                    s.file = f;
                    self.download = Some(s);
                    len
                }
                Err(e) => {
                    tracing::info!("reading fetched {key}: {e}");
                    None
                }
            },
            Ok((false, _)) => None,
            Err(e) => {
                self.logged("retrieving", key, &e);
                None
            }
        }
    }
}

impl Backend for SpecialBackend<'_> {
    async fn check_present(&mut self, key: &Key) -> Result<bool, String> {
        self.node.contains(key).map_err(|e| {
            self.logged("checking", key, &e);
            e.to_string()
        })
    }

    async fn lock(&mut self, _key: &Key) -> bool {
        false
    }

    async fn unlock(&mut self, _connection_lost: bool) {}

    async fn remove(&mut self, key: &Key, before: Option<i64>) -> Result<Done, String> {
        // No clock on a special remote: a passed deadline refuses.
        let late = before.is_some_and(|d| crate::clock::monotonic_seconds() >= d);
        let r = if late {
            Ok(false)
        } else {
            self.node.remove(key)
        };
        match r {
            Ok(ok) => {
                if ok {
                    self.record(key, Status::Absent);
                }
                Ok(Done::plain(ok))
            }
            Err(e) => {
                self.logged("removing", key, &e);
                Err(format!("proxied special remote reports: {e}"))
            }
        }
    }

    async fn timestamp(&mut self) -> i64 {
        crate::clock::monotonic_seconds()
    }

    async fn prepare_put(&mut self, key: &Key, _file: &AssociatedFile) -> PutStart {
        match self.node.contains(key) {
            Ok(true) => PutStart::AlreadyHave(Vec::new()),
            _ => PutStart::From(0),
        }
    }

    async fn abandon_put(&mut self, _key: &Key) {}

    async fn receive_payload<Rd: PayloadReader>(
        &mut self,
        reader: &mut Rd,
        key: &Key,
        _offset: u64,
        len: u64,
    ) -> bool {
        let mut up = match Spool::create(spool_path(self.gateway, key, "put")) {
            Ok(spool) => Some(SpecialUpload {
                check: StreamCheck::new(key),
                key: key.clone(),
                spool,
            }),
            Err(e) => {
                self.logged("spooling", key, &e);
                None
            }
        };
        let remote = &self.node.remote;
        let complete = crate::backend::consume_payload(reader, len, |chunk| {
            use std::io::Write;
            if let Some(u) = up.as_mut() {
                let wrote = u
                    .spool
                    .file
                    .write_all(chunk)
                    .map_err(|e| Error::Io {
                        context: "writing spool".into(),
                        source: e,
                    })
                    .and_then(|()| u.check.update(chunk));
                if let Err(e) = wrote {
                    tracing::info!("special remote {remote}: spooling {key}: {e}");
                    up = None;
                }
            }
        })
        .await;
        self.upload = up;
        complete
    }

    async fn commit(&mut self, key: &Key, validity: Validity) -> Done {
        let ok = self.store(key, validity);
        if ok {
            self.record(key, Status::Present);
        }
        Done::plain(ok)
    }

    async fn confirm_present(&mut self, key: &Key) -> Done {
        let ok = matches!(self.node.contains(key), Ok(true));
        if ok {
            self.record(key, Status::Present);
        }
        Done::plain(ok)
    }

    async fn content_size(&mut self, key: &Key, _offset: u64) -> Option<u64> {
        self.fetch(key)
    }

    async fn send_payload<Wr: PayloadWriter>(
        &mut self,
        writer: &mut Wr,
        key: &Key,
        offset: u64,
        len: u64,
    ) -> Result<Sent> {
        let Some(s) = self.download.take() else {
            return Ok(Sent::Broken(format!("{key} was not fetched")));
        };
        let Ok(file) = s.file.try_clone() else {
            return Ok(Sent::Broken(format!("{key}: spool unreadable")));
        };
        if self.buf.is_empty() {
            self.buf = vec![0u8; IO_BUFFER];
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // The client verifies what it gets; the spool is not rechecked.
        match crate::backend::send_file(writer, (file, size), key, offset, len, &mut self.buf)
            .await?
        {
            Sent::Complete { .. } => Ok(Sent::Complete { valid: true }),
            broken => Ok(broken),
        }
    }
}
