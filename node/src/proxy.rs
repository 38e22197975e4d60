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
//!   same protocol version end to end (the node is offered the client's);
//!   requests go to the node as they are, and replies and `DATA` come back as
//!   they are, so `LOCKCONTENT` really locks on the node. After a `SUCCESS` to a
//!   `PUT`, or to a `REMOVE`, the gateway records the change in its own
//!   journal, as git-annex's gateway does;
//! - a special remote: the protocol's server machine in front of the remote.
//!   As in git-annex, `LOCKCONTENT` is `FAILURE`, an upload starts at 0 (no
//!   resume), is received into a spool file, hashed as it arrives and stored
//!   only if it verifies; a download is fetched into a spool file and sent from
//!   there (the client verifies it).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use protocol::logs::presence::Status;
use protocol::message::{MAX_VERSION, Message, Version};
use protocol::server::{
    APPEND_ONLY_ERROR, CloseReason, GitAccess, PutStart, READ_ONLY_ERROR, ServeMode, Server,
    ServerConfig, ServerOutput, Start,
};
use protocol::{Key, Uuid};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::error::{Error, Result};
use crate::gateway::{Conn, GatewayNode, Io, RemoteNode, authenticate, io_err};
use crate::session::{Authenticator, IO_BUFFER, LineRead, ServeContext, read_line, serve};
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
    reader: R,
    writer: W,
) -> Result<CloseReason>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let start = match auth {
        None => Start::Preauthenticated { mode },
        Some(_) => Start::RequireAuth,
    };
    match node {
        GatewayNode::Local(n, _) => {
            let server = Server::new(ServerConfig {
                uuid: n.uuid.clone(),
                start,
                git: GitAccess::Refused,
                max_version: i64::from(MAX_VERSION),
            });
            let ctx = ServeContext { auth, git: None };
            let mut store = n.store.clone();
            store.set_observer(std::sync::Arc::new(Recorder {
                gateway: gateway.journal().clone(),
                node: n.uuid.clone(),
            }));
            serve(server, reader, writer, &store, &ctx).await
        }
        GatewayNode::Special(s) => {
            let server = Server::new(ServerConfig {
                uuid: s.uuid.clone(),
                start,
                git: GitAccess::Refused,
                max_version: i64::from(MAX_VERSION),
            });
            serve_special(server, &s, gateway, auth, reader, writer).await
        }
        GatewayNode::Remote(r) => {
            let mut io = Io::new(reader, writer);
            let reason = Relay {
                node: &r,
                gateway,
                io: &mut io,
            }
            .run(mode, auth)
            .await;
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

/// What the client sent next.
enum Next {
    Message(Message),
    Unparsable,
    Eof,
    /// The client broke the protocol (over-long line): the session ends.
    Broken(String),
}

/// The client's next message, as [`Next`].
async fn next<R, W>(io: &mut Io<R, W>) -> Result<Next>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    Ok(match io.next().await {
        Ok(Some(Some(m))) => Next::Message(m),
        Ok(Some(None)) => Next::Unparsable,
        Ok(None) => Next::Eof,
        Err(Error::Protocol(why)) => Next::Broken(why),
        Err(e) => return Err(e),
    })
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
    async fn run(
        &mut self,
        mode: ServeMode,
        auth: Option<&dyn Authenticator>,
    ) -> Result<CloseReason> {
        let mode = match auth {
            None => {
                self.io
                    .send(&Message::AuthSuccess(self.node.uuid.clone()))
                    .await?;
                mode
            }
            Some(auth) => match authenticate(self.io, auth, &self.node.uuid).await? {
                Ok(mode) => mode,
                Err(reason) => return Ok(reason),
            },
        };
        // The client's VERSION decides what the node is offered.
        let first = next(self.io).await?;
        let offer = match &first {
            Next::Message(Message::Version(v)) => Some((*v).clamp(0, i64::from(MAX_VERSION))),
            _ => None,
        };
        let mut conn = match self.node.open(self.gateway.uuid(), offer).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!("proxying to node {}: {e}", self.node.remote);
                self.io
                    .send(&Message::Error(format!(
                        "cannot reach repository {}",
                        self.node.remote
                    )))
                    .await?;
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
                None => next(self.io).await?,
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
            M::Put(file, key) => {
                conn.send(&M::Put(file, key.clone())).await?;
                let reply = conn.reply().await?;
                self.io.send(&reply).await?;
                if !matches!(reply, M::PutFrom(_)) {
                    return Ok(None);
                }
                match next(self.io).await? {
                    Next::Message(M::Data(len)) => {
                        conn.send(&M::Data(len)).await?;
                        let sent = conn.payload_from(&mut self.io.reader, len).await?;
                        if sent < len {
                            return Ok(Some(CloseReason::ProtocolError("short DATA".into())));
                        }
                        if version >= 1 {
                            match next(self.io).await? {
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
                    Next::Message(M::DataPresent) if version >= 4 => {
                        conn.send(&M::DataPresent).await?
                    }
                    Next::Eof => return Ok(Some(CloseReason::Eof)),
                    _ => {
                        return Ok(Some(CloseReason::ProtocolError("expected DATA".into())));
                    }
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
            M::Get(offset, file, key) => {
                conn.send(&M::Get(offset, file, key)).await?;
                let reply = conn.reply().await?;
                self.io.send(&reply).await?;
                let M::Data(len) = reply else {
                    return Ok(None);
                };
                let sent = conn.payload_to(&mut self.io.writer, len).await?;
                if sent < len {
                    // No in-band abort: the client sees the stream end.
                    return Err(Error::Protocol("the node's DATA came up short".into()));
                }
                if version >= 1 {
                    let v = conn.reply().await?;
                    self.io.send(&v).await?;
                }
                match next(self.io).await? {
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
            M::Remove(ref key) | M::RemoveBefore(_, ref key) => {
                let key = key.clone();
                conn.send(&msg).await?;
                let reply = conn.reply().await?;
                self.io.send(&reply).await?;
                match &reply {
                    M::Success => self.record(&key, Vec::new(), Status::Absent),
                    M::SuccessPlus(also) => self.record(&key, also.clone(), Status::Absent),
                    // Only the listed repositories changed.
                    M::FailurePlus(also) if !also.is_empty() => {
                        self.record_only(&key, also, Status::Absent)
                    }
                    _ => {}
                }
                Ok(None)
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

    /// Records the node (and `also`) in the gateway's journal.
    fn record(&self, key: &Key, mut also: Vec<Uuid>, status: Status) {
        also.retain(|u| u != &self.node.uuid);
        also.push(self.node.uuid.clone());
        self.record_only(key, &also, status);
    }

    fn record_only(&self, key: &Key, uuids: &[Uuid], status: Status) {
        if let Err(e) = self
            .gateway
            .journal()
            .record_presence_many(key, uuids, status)
        {
            tracing::info!("cannot record location of {key}: {e}");
        }
    }
}

/// A fresh spool path under the gateway's `annex/tmp/annexmesh-proxy`.
fn spool_path(gateway: &Store, key: &Key, what: &str) -> PathBuf {
    crate::gateway::spool_path_in(gateway, "annexmesh-proxy", key, what)
}

/// A spool file, removed when dropped.
struct Spool {
    path: PathBuf,
    file: std::fs::File,
}

impl Spool {
    fn create(path: PathBuf) -> Result<Spool> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                context: format!("creating {}", dir.display()),
                source: e,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::Io {
                context: format!("creating {}", path.display()),
                source: e,
            })?;
        Ok(Spool { path, file })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An upload to a special remote in progress.
struct SpecialUpload {
    key: Key,
    spool: Spool,
    check: StreamCheck,
}

/// Runs the protocol's server machine in front of a special remote (git-annex's
/// `proxySpecialRemote`).
async fn serve_special<R, W>(
    mut server: Server,
    node: &SpecialNode,
    gateway: &Store,
    auth: Option<&dyn Authenticator>,
    reader: R,
    writer: W,
) -> Result<CloseReason>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut reader = BufReader::with_capacity(IO_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(IO_BUFFER, writer);
    let mut line = Vec::with_capacity(256);
    let mut upload: Option<SpecialUpload> = None;
    let mut download: Option<Spool> = None;
    let mut buf = vec![0u8; IO_BUFFER];
    let logged = |what: &str, key: &Key, e: &Error| {
        tracing::info!("special remote {}: {what} {key}: {e}", node.remote);
    };
    loop {
        while let Some(out) = server.poll_output() {
            match out {
                ServerOutput::Send(m) => writer.write_all(&m.to_line()).await.map_err(io_err)?,
                ServerOutput::CheckAuth { uuid, token } => {
                    server.handle_auth(auth.and_then(|a| a.check(uuid.as_ref(), &token)))
                }
                ServerOutput::CheckPresent { key } => {
                    server.handle_present(node.contains(&key).map_err(|e| {
                        logged("checking", &key, &e);
                        e.to_string()
                    }))
                }
                ServerOutput::Lock { .. } => server.handle_locked(false),
                ServerOutput::Unlock { .. } => {}
                ServerOutput::Remove { key, before } => {
                    // No clock on a special remote: a passed deadline refuses.
                    let late = before.is_some_and(|d| crate::clock::monotonic_seconds() >= d);
                    let r = if late { Ok(false) } else { node.remove(&key) };
                    if matches!(r, Ok(true)) {
                        record(gateway, &key, &node.uuid, Status::Absent);
                    }
                    server.handle_removed(r.map_err(|e| {
                        logged("removing", &key, &e);
                        format!("proxied special remote reports: {e}")
                    }))
                }
                ServerOutput::GetTimestamp => {
                    server.handle_timestamp(crate::clock::monotonic_seconds())
                }
                ServerOutput::PreparePut { key, .. } => {
                    let start = match node.contains(&key) {
                        Ok(true) => PutStart::AlreadyHave,
                        _ => PutStart::From(0),
                    };
                    server.handle_put_start(start);
                }
                ServerOutput::ReceivePayload { key, len, .. } => {
                    let mut up = match Spool::create(spool_path(gateway, &key, "put")) {
                        Ok(spool) => Some(SpecialUpload {
                            check: StreamCheck::new(&key),
                            key: key.clone(),
                            spool,
                        }),
                        Err(e) => {
                            logged("spooling", &key, &e);
                            None
                        }
                    };
                    let mut left = len;
                    while left > 0 {
                        let avail = reader.fill_buf().await.map_err(io_err)?;
                        if avail.is_empty() {
                            break;
                        }
                        let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        if let Some(u) = up.as_mut() {
                            let wrote = u
                                .spool
                                .file
                                .write_all(&avail[..n])
                                .map_err(|e| Error::Io {
                                    context: "writing spool".into(),
                                    source: e,
                                })
                                .and_then(|()| u.check.update(&avail[..n]));
                            if let Err(e) = wrote {
                                logged("spooling", &key, &e);
                                up = None;
                            }
                        }
                        reader.consume(n);
                        left -= n as u64;
                    }
                    upload = up;
                    server.handle_payload_received(left == 0);
                }
                ServerOutput::CommitPut { key, validity } => {
                    let ok = match upload.take() {
                        Some(u) if u.key == key => match u.check.finish() {
                            Ok(c) if c.verdict().accepted_given(validity) => {
                                match node.store(&key, &u.spool.path) {
                                    Ok(stored) => stored,
                                    Err(e) => {
                                        logged("storing", &key, &e);
                                        false
                                    }
                                }
                            }
                            Ok(_) => {
                                tracing::info!("refused bad content for {key}");
                                false
                            }
                            Err(e) => {
                                logged("hashing", &key, &e);
                                false
                            }
                        },
                        _ => false,
                    };
                    if ok {
                        record(gateway, &key, &node.uuid, Status::Present);
                    }
                    server.handle_stored(ok);
                }
                ServerOutput::ConfirmPresent { key } => {
                    let ok = matches!(node.contains(&key), Ok(true));
                    if ok {
                        record(gateway, &key, &node.uuid, Status::Present);
                    }
                    server.handle_stored(ok)
                }
                ServerOutput::ContentSize { key } => {
                    download = None;
                    let fetched = Spool::create(spool_path(gateway, &key, "get")).and_then(|s| {
                        // The remote writes its own file at the path.
                        let _ = std::fs::remove_file(&s.path);
                        Ok((node.retrieve(&key, &s.path)?, s))
                    });
                    let size = match fetched {
                        Ok((true, mut s)) => match std::fs::File::open(&s.path) {
                            Ok(f) => {
                                let len = f.metadata().map(|m| m.len()).ok();
                                s.file = f;
                                download = Some(s);
                                len
                            }
                            Err(e) => {
                                tracing::info!("reading fetched {key}: {e}");
                                None
                            }
                        },
                        Ok((false, _)) => None,
                        Err(e) => {
                            logged("retrieving", &key, &e);
                            None
                        }
                    };
                    server.handle_content_size(size)
                }
                ServerOutput::SendPayload { key, offset, len } => {
                    let Some(mut s) = download.take() else {
                        return Err(Error::Protocol(format!("{key} was not fetched")));
                    };
                    s.file
                        .seek(SeekFrom::Start(offset))
                        .map_err(|e| Error::Io {
                            context: "seeking spool".into(),
                            source: e,
                        })?;
                    let mut left = len;
                    while left > 0 {
                        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let got = s.file.read(&mut buf[..n]).map_err(|e| Error::Io {
                            context: "reading spool".into(),
                            source: e,
                        })?;
                        if got == 0 {
                            return Err(Error::Protocol(format!("{key} shrank while sent")));
                        }
                        writer.write_all(&buf[..got]).await.map_err(io_err)?;
                        left -= got as u64;
                    }
                    server.handle_payload_sent(true);
                }
                // GitAccess::Refused: the machine never asks for these.
                ServerOutput::Connect { .. } => {}
                ServerOutput::WaitRefChange => server.handle_changed(Vec::new()),
                ServerOutput::Close(reason) => {
                    let _ = writer.flush().await;
                    let _ = writer.shutdown().await;
                    return Ok(reason);
                }
            }
        }
        writer.flush().await.map_err(io_err)?;
        match read_line(&mut reader, &mut line).await {
            Ok(LineRead::Line) => server.handle_line(&line),
            Ok(LineRead::Eof) => server.handle_eof(),
            Ok(LineRead::TooLong) => server.handle_protocol_error("protocol error"),
            Err(e) => server.handle_protocol_error(&e.to_string()),
        }
    }
}

fn record(gateway: &Store, key: &Key, uuid: &Uuid, status: Status) {
    if let Err(e) = gateway
        .journal()
        .record_presence_many(key, std::slice::from_ref(uuid), status)
    {
        tracing::info!("cannot record location of {key}: {e}");
    }
}
