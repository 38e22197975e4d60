//! Drives the sans-IO sessions of `protocol` over real byte streams: the
//! server side over any [`Backend`] ([`serve_backend`]; a [`Store`], a
//! cluster gateway, a special remote), and our client ([`ClientSession`]).
//! Any `AsyncRead`/`AsyncWrite` pair works: a process's stdio (`annex-shell
//! p2pstdio`), a child process's pipes (our client against
//! `git-annex-shell`), or a libp2p stream.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::backend::{Backend, Sent, StoreBackend};

use protocol::client::{Client, ClientOutput, Reply, RequestError};
use protocol::message::{MAX_LINE, Message, Version};
use protocol::server::{CloseReason, ServeMode, Server, ServerOutput, Validity};
use protocol::verify::Verifier;
use protocol::{AssociatedFile, AuthToken, Key, Uuid};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use crate::error::{Error, IoContext, Result};
use crate::store::Store;

pub use crate::backend::IO_BUFFER;

/// One line read from a peer.
pub(crate) enum LineRead {
    Line,
    Eof,
    TooLong,
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (without the `\n`).
/// Never buffers more than that, whatever the peer sends.
pub(crate) async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    buf.clear();
    loop {
        let avail = reader.fill_buf().await?;
        if avail.is_empty() {
            return Ok(LineRead::Eof);
        }
        match avail.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if buf.len() + i > MAX_LINE {
                    return Ok(LineRead::TooLong);
                }
                buf.extend_from_slice(&avail[..i]);
                reader.consume(i + 1);
                return Ok(LineRead::Line);
            }
            None => {
                let n = avail.len();
                if buf.len() + n > MAX_LINE {
                    return Ok(LineRead::TooLong);
                }
                buf.extend_from_slice(avail);
                reader.consume(n);
            }
        }
    }
}

/// Decides whether an `AUTH` is good, and with which rights.
pub trait Authenticator: Send + Sync {
    /// `client` is `None` for a client without a uuid yet (a new clone).
    fn check(&self, client: Option<&Uuid>, token: &AuthToken) -> Option<ServeMode>;
}

/// Serves git requests (`CONNECT`, `NOTIFYCHANGE`) for transports that offer them.
pub trait GitService: Send + Sync {
    /// Relays `service` over the session's `DATA` frames until it ends.
    fn relay<'a>(
        &'a self,
        service: protocol::Service,
        io: &'a mut (dyn RelayIo + Send),
    ) -> futures::future::BoxFuture<'a, Result<()>>;
}

/// The byte stream of a session, as seen by a [`GitService`] relay.
pub trait RelayIo {
    #[allow(clippy::type_complexity)]
    fn split(
        &mut self,
    ) -> (
        &mut (dyn tokio::io::AsyncBufRead + Unpin + Send),
        &mut (dyn AsyncWrite + Unpin + Send),
    );
}

/// What a served session may use besides the store.
#[derive(Default)]
pub struct ServeContext<'a> {
    pub auth: Option<&'a dyn Authenticator>,
    pub git: Option<&'a dyn GitService>,
    /// Where the served `PUT`s and `GET`s are timed, if anywhere.
    pub timings: Option<&'a Timings>,
}

/// How long the served requests took: a `PUT` from the request to its
/// content committed, a `GET` the sending of its content (seconds).
#[derive(Debug, Clone)]
pub struct Timings {
    pub put: prometheus_client::metrics::histogram::Histogram,
    pub get: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        // 1 ms to about 65 s.
        let buckets = || prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17);
        Timings {
            put: prometheus_client::metrics::histogram::Histogram::new(buckets()),
            get: prometheus_client::metrics::histogram::Histogram::new(buckets()),
        }
    }
}

struct Stream<R, W> {
    reader: BufReader<R>,
    writer: BufWriter<W>,
}

impl<R, W> RelayIo for Stream<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    fn split(
        &mut self,
    ) -> (
        &mut (dyn tokio::io::AsyncBufRead + Unpin + Send),
        &mut (dyn AsyncWrite + Unpin + Send),
    ) {
        (&mut self.reader, &mut self.writer)
    }
}

/// Runs a server session over one repository's [`Store`] to its end (see
/// [`serve_backend`]).
pub async fn serve<R, W>(
    server: Server,
    reader: R,
    writer: W,
    store: &Store,
    ctx: &ServeContext<'_>,
) -> Result<CloseReason>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut backend = StoreBackend::new(store);
    serve_backend(server, reader, writer, &mut backend, ctx).await
}

/// Runs a server session to its end: the machine's requests are performed
/// on `backend`. Returns why it ended; I/O errors on the stream end it too,
/// and are returned as errors. A failure of the backend is answered on the
/// wire (`ERROR`/`FAILURE`) and never loses stored content; content that
/// cannot be sent in full ends the session ([`Sent::Broken`]).
pub async fn serve_backend<R, W, B>(
    mut server: Server,
    reader: R,
    writer: W,
    backend: &mut B,
    ctx: &ServeContext<'_>,
) -> Result<CloseReason>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    B: Backend,
{
    let mut io = Stream {
        reader: BufReader::with_capacity(IO_BUFFER, reader),
        writer: BufWriter::with_capacity(IO_BUFFER, writer),
    };
    let mut line = Vec::with_capacity(256);
    let mut put_since = None;
    loop {
        while let Some(out) = server.poll_output() {
            if let Some(reason) =
                perform(&mut server, out, &mut io, backend, ctx, &mut put_since).await?
            {
                let _ = io.writer.flush().await;
                let _ = io.writer.shutdown().await;
                return Ok(reason);
            }
        }
        io.writer.flush().await.map_err(stream_err)?;
        next_line(&mut server, &mut io.reader, &mut line).await;
    }
}

fn stream_err(e: std::io::Error) -> Error {
    Error::Io {
        context: "p2p stream".into(),
        source: e,
    }
}

/// Reads the client's next line into the machine (or its end, or why the
/// stream broke).
async fn next_line<R: AsyncRead + Unpin>(
    server: &mut Server,
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) {
    match read_line(reader, line).await {
        Ok(LineRead::Line) => server.handle_line(line),
        Ok(LineRead::Eof) => server.handle_eof(),
        Ok(LineRead::TooLong) => server.handle_protocol_error("protocol error"),
        Err(e) => server.handle_protocol_error(&e.to_string()),
    }
}

/// Performs one of the machine's outputs and answers it. `Some` ends the
/// session.
async fn perform<R, W, B>(
    server: &mut Server,
    out: ServerOutput,
    io: &mut Stream<R, W>,
    backend: &mut B,
    ctx: &ServeContext<'_>,
    put_since: &mut Option<std::time::Instant>,
) -> Result<Option<CloseReason>>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
    B: Backend,
{
    match out {
        ServerOutput::Send(m) => io
            .writer
            .write_all(&m.to_line())
            .await
            .map_err(stream_err)?,
        ServerOutput::CheckAuth { uuid, token } => {
            server.handle_auth(ctx.auth.and_then(|a| a.check(uuid.as_ref(), &token)))
        }
        ServerOutput::CheckPresent { key } => {
            server.handle_present(backend.check_present(&key).await)
        }
        ServerOutput::Bypass(uuids) => backend.bypass(uuids).await,
        ServerOutput::Lock { key } => server.handle_locked(backend.lock(&key).await),
        ServerOutput::Unlock { connection_lost } => backend.unlock(connection_lost).await,
        ServerOutput::Remove { key, before } => match backend.remove(&key, before).await {
            Ok(done) => server.handle_removed_plus(Ok(done.ok), done.also),
            Err(e) => server.handle_removed(Err(e)),
        },
        ServerOutput::GetTimestamp => server.handle_timestamp(backend.timestamp().await),
        ServerOutput::PreparePut { key, file } => {
            *put_since = Some(std::time::Instant::now());
            server.handle_put_start(backend.prepare_put(&key, &file).await)
        }
        ServerOutput::AbandonPut { key } => {
            *put_since = None;
            backend.abandon_put(&key).await
        }
        ServerOutput::ReceivePayload { key, offset, len } => {
            let complete = backend
                .receive_payload(&mut io.reader, &key, offset, len)
                .await;
            server.handle_payload_received(complete);
        }
        ServerOutput::CommitPut { key, validity } => {
            let done = backend.commit(&key, validity).await;
            observe(ctx.timings.map(|t| &t.put), put_since.take());
            server.handle_stored_plus(done.ok, done.also);
        }
        ServerOutput::ConfirmPresent { key } => {
            let done = backend.confirm_present(&key).await;
            observe(ctx.timings.map(|t| &t.put), put_since.take());
            server.handle_stored_plus(done.ok, done.also);
        }
        ServerOutput::ContentSize { key, offset } => {
            server.handle_content_size(backend.content_size(&key, offset).await)
        }
        ServerOutput::SendPayload { key, offset, len } => {
            let since = std::time::Instant::now();
            let sent = backend
                .send_payload(&mut io.writer, &key, offset, len)
                .await?;
            observe(ctx.timings.map(|t| &t.get), Some(since));
            match sent {
                Sent::Complete { valid } => server.handle_payload_sent(valid),
                Sent::Broken(why) => {
                    tracing::info!("sending {key}: {why}");
                    server.handle_protocol_error(&why);
                }
            }
        }
        ServerOutput::Connect { service } => match ctx.git {
            Some(git) => {
                io.writer.flush().await.map_err(stream_err)?;
                git.relay(service, io).await?;
            }
            None => {
                let refusal = Message::Error("git is not served here".into()).to_line();
                let _ = io.writer.write_all(&refusal).await;
            }
        },
        // Only transports with a GitService reach this; without ref watching
        // the honest answer is that nothing changed yet.
        ServerOutput::WaitRefChange => server.handle_changed(Vec::new()),
        ServerOutput::Close(reason) => return Ok(Some(reason)),
    }
    Ok(None)
}

/// Records the time since `since` in `histogram`.
fn observe(
    histogram: Option<&prometheus_client::metrics::histogram::Histogram>,
    since: Option<std::time::Instant>,
) {
    if let (Some(h), Some(t)) = (histogram, since) {
        h.observe(t.elapsed().as_secs_f64());
    }
}

/// Drives `server` only until the client is authenticated (at once when it
/// was started preauthenticated), for a relay that serves the rest of the
/// session itself: the machine answers `AUTH` as in any session. Returns the
/// mode granted, or why the session ended first.
pub(crate) async fn authenticate<R, W>(
    mut server: Server,
    reader: &mut BufReader<R>,
    writer: &mut BufWriter<W>,
    auth: Option<&dyn Authenticator>,
) -> Result<std::result::Result<ServeMode, CloseReason>>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut line = Vec::with_capacity(256);
    loop {
        while let Some(out) = server.poll_output() {
            match out {
                ServerOutput::Send(m) => {
                    writer.write_all(&m.to_line()).await.map_err(stream_err)?
                }
                ServerOutput::CheckAuth { uuid, token } => {
                    server.handle_auth(auth.and_then(|a| a.check(uuid.as_ref(), &token)))
                }
                ServerOutput::Close(reason) => return Ok(Err(reason)),
                // Nothing else is asked before authentication.
                _ => {}
            }
        }
        if server.is_authenticated() {
            return Ok(Ok(server.mode()));
        }
        writer.flush().await.map_err(stream_err)?;
        next_line(&mut server, reader, &mut line).await;
    }
}

/// Progress reports for transfers: total bytes done so far.
pub type Progress<'a> = &'a mut (dyn FnMut(u64) + Send);

/// The outcome of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub stored: bool,
    pub already_had: bool,
    /// Other repositories a gateway reports as holding the content.
    pub also: Vec<Uuid>,
}

/// How the server answered a streamed upload's `PUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutStart {
    /// `PUT-FROM offset`.
    From(u64),
    /// `ALREADY-HAVE`, with the `-PLUS` uuids of a gateway.
    AlreadyHave(Vec<Uuid>),
}

/// Where [`ClientSession::step`] stopped.
enum Step {
    Done(Reply),
    Receive(u64),
    Verify(Validity),
}

/// The outcome of a `PUT` from the client machine's reply.
fn put_outcome(reply: Reply) -> Result<PutOutcome> {
    match reply {
        Reply::Put {
            stored,
            already,
            plus,
        } => Ok(PutOutcome {
            stored,
            already_had: already,
            also: plus,
        }),
        other => Err(Error::Protocol(format!("unexpected {other:?}"))),
    }
}

/// Our client side of a P2P connection over any byte stream.
///
/// With [`ClientSession::set_deadlines`], every wait on the server is
/// bounded: a reply to a request without payload within the reply deadline,
/// payload by the stall rule (see [`crate::stall`]). A request that fails
/// so leaves the session mid-request: the caller drops it.
pub struct ClientSession<R, W> {
    client: Client,
    reader: BufReader<crate::stall::Watched<R>>,
    writer: BufWriter<crate::stall::Watched<W>>,
    line: Vec<u8>,
    buf: Vec<u8>,
    reply_timeout: Option<std::time::Duration>,
}

enum Payload<'a> {
    None,
    /// A relay: payload and verification requests go back to the caller.
    Relay,
    Upload {
        file: &'a mut std::fs::File,
        progress: Progress<'a>,
    },
    Download {
        file: &'a mut std::fs::File,
        verifier: &'a mut Verifier,
        progress: Progress<'a>,
        done: u64,
        key: &'a Key,
    },
}

impl<R, W> ClientSession<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    pub fn new(reader: R, writer: W) -> Self {
        ClientSession {
            client: Client::new(),
            reader: BufReader::with_capacity(IO_BUFFER, crate::stall::Watched::new(reader)),
            writer: BufWriter::with_capacity(IO_BUFFER, crate::stall::Watched::new(writer)),
            line: Vec::with_capacity(256),
            buf: vec![0u8; IO_BUFFER],
            reply_timeout: None,
        }
    }

    /// Bounds every wait on the server from now on: replies within `reply`,
    /// payload by `stall`.
    pub fn set_deadlines(
        &mut self,
        stall: protocol::deadline::StallRule,
        reply: std::time::Duration,
    ) {
        let watch = crate::stall::Watch::new(stall);
        self.reader.get_mut().set_watch(watch.clone());
        self.writer.get_mut().set_watch(watch);
        self.reply_timeout = Some(reply);
    }

    pub fn version(&self) -> Version {
        self.client.version()
    }

    /// Runs the current request to its `Done`.
    async fn run(&mut self, payload: Payload<'_>) -> Result<Reply> {
        match self.step(payload).await? {
            Step::Done(r) => Ok(r),
            Step::Receive(_) | Step::Verify(_) => Err(Error::Protocol("unexpected payload".into())),
        }
    }

    /// Runs the current request to its `Done`, or (for [`Payload::Relay`]) to
    /// the next payload or verification request; within the reply deadline
    /// when there is one and no payload goes through this call.
    async fn step(&mut self, payload: Payload<'_>) -> Result<Step> {
        match self.reply_timeout {
            Some(t) if matches!(payload, Payload::None | Payload::Relay) => {
                tokio::time::timeout(t, self.step_inner(payload))
                    .await
                    .map_err(|_| Error::Peer(format!("no reply within {}s", t.as_secs())))?
            }
            _ => self.step_inner(payload).await,
        }
    }

    async fn step_inner(&mut self, mut payload: Payload<'_>) -> Result<Step> {
        let io_err = stream_err;
        loop {
            while let Some(out) = self.client.poll_output() {
                match out {
                    ClientOutput::Send(m) => {
                        self.writer.write_all(&m.to_line()).await.map_err(io_err)?
                    }
                    ClientOutput::SendPayload { offset, len } => {
                        let Payload::Upload { file, progress } = &mut payload else {
                            return Err(Error::Protocol("unexpected payload request".into()));
                        };
                        self.upload(file, progress, offset, len).await?;
                        self.client.handle_payload_sent(true);
                    }
                    ClientOutput::ReceivePayload { len } => {
                        if let Payload::Relay = payload {
                            self.writer.flush().await.map_err(io_err)?;
                            return Ok(Step::Receive(len));
                        }
                        let Payload::Download {
                            file,
                            verifier,
                            progress,
                            done,
                            ..
                        } = &mut payload
                        else {
                            return Err(Error::Protocol("unexpected payload".into()));
                        };
                        let complete = self.download(file, verifier, progress, done, len).await?;
                        self.client.handle_payload_received(complete);
                    }
                    ClientOutput::VerifyGet { validity } => {
                        if let Payload::Relay = payload {
                            return Ok(Step::Verify(validity));
                        }
                        let Payload::Download { verifier, key, .. } = &mut payload else {
                            return Err(Error::Protocol("unexpected verification".into()));
                        };
                        let v = std::mem::replace(*verifier, Verifier::new(key));
                        let ok = v.finish().accepted_given(validity);
                        self.client.handle_get_verified(ok);
                    }
                    ClientOutput::Done(r) => {
                        self.writer.flush().await.map_err(io_err)?;
                        return r.map(Step::Done).map_err(|e| match e {
                            RequestError::Closed => Error::Peer("connection closed".into()),
                            other => Error::Peer(other.to_string()),
                        });
                    }
                    ClientOutput::Close(why) => return Err(Error::Peer(why)),
                }
            }
            self.writer.flush().await.map_err(io_err)?;
            match read_line(&mut self.reader, &mut self.line)
                .await
                .map_err(io_err)?
            {
                LineRead::Line => self.client.handle_line(&self.line),
                LineRead::Eof => self.client.handle_eof(),
                LineRead::TooLong => {
                    return Err(Error::Peer("over-long line from peer".into()));
                }
            }
        }
    }

    /// Sends `len` bytes of `file` from `offset` as an upload's payload.
    async fn upload(
        &mut self,
        file: &mut std::fs::File,
        progress: &mut Progress<'_>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        file.seek(SeekFrom::Start(offset))
            .context(|| "seeking content".into())?;
        let mut left = len;
        let mut done = offset;
        while left > 0 {
            let n = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let got = file
                .read(&mut self.buf[..n])
                .context(|| "reading content".into())?;
            if got == 0 {
                return Err(Error::Protocol("content shrank while being sent".into()));
            }
            self.writer
                .write_all(&self.buf[..got])
                .await
                .map_err(stream_err)?;
            left -= got as u64;
            done += got as u64;
            progress(done);
        }
        Ok(())
    }

    /// Receives `len` payload bytes of a download into `file`, hashing them;
    /// returns whether they all arrived.
    async fn download(
        &mut self,
        file: &mut std::fs::File,
        verifier: &mut Verifier,
        progress: &mut Progress<'_>,
        done: &mut u64,
        len: u64,
    ) -> Result<bool> {
        use std::io::Write;
        let mut left = len;
        while left > 0 {
            let avail = self.reader.fill_buf().await.map_err(stream_err)?;
            if avail.is_empty() {
                return Ok(false);
            }
            let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            file.write_all(&avail[..n])
                .context(|| "writing download".into())?;
            verifier.update(&avail[..n]);
            self.reader.consume(n);
            left -= n as u64;
            *done += n as u64;
            progress(*done);
        }
        Ok(true)
    }

    /// For `git-annex-shell p2pstdio`: read the unprompted `AUTH-SUCCESS`.
    pub async fn expect_auth_success(&mut self) -> Result<Uuid> {
        self.client.expect_auth_success();
        match self.run(Payload::None).await? {
            Reply::Authenticated(u) => Ok(u),
            other => Err(Error::Protocol(format!(
                "expected AUTH-SUCCESS, got {other:?}"
            ))),
        }
    }

    /// `AUTH`; `Ok(None)` on `AUTH-FAILURE`.
    pub async fn auth(&mut self, me: Uuid, token: AuthToken) -> Result<Option<Uuid>> {
        self.client.auth(me, token);
        match self.run(Payload::None).await? {
            Reply::Authenticated(u) => Ok(Some(u)),
            _ => Ok(None),
        }
    }

    pub async fn negotiate_version(&mut self, offer: Version) -> Result<Version> {
        self.client.negotiate_version(offer);
        match self.run(Payload::None).await? {
            Reply::Version(v) => Ok(v),
            other => Err(Error::Protocol(format!("expected VERSION, got {other:?}"))),
        }
    }

    pub async fn bypass(&mut self, uuids: Vec<Uuid>) -> Result<()> {
        self.client.bypass(uuids);
        self.run(Payload::None).await.map(|_| ())
    }

    pub async fn check_present(&mut self, key: &Key) -> Result<bool> {
        self.client.check_present(key.clone());
        match self.run(Payload::None).await? {
            Reply::Present(p) => Ok(p),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    pub async fn lock_content(&mut self, key: &Key) -> Result<bool> {
        self.client.lock_content(key.clone());
        match self.run(Payload::None).await? {
            Reply::Locked(l) => Ok(l),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    pub async fn unlock_content(&mut self) -> Result<()> {
        self.client.unlock_content();
        self.run(Payload::None).await.map(|_| ())
    }

    /// `REMOVE` (or `REMOVE-BEFORE deadline` at v3+): whether it was removed, and
    /// any other repositories a gateway reports as changed.
    pub async fn remove(&mut self, key: &Key, before: Option<i64>) -> Result<(bool, Vec<Uuid>)> {
        match before {
            Some(ts) => self.client.remove_before(ts, key.clone()),
            None => self.client.remove(key.clone()),
        }
        match self.run(Payload::None).await? {
            Reply::Removed { ok, plus } => Ok((ok, plus)),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    pub async fn get_timestamp(&mut self) -> Result<i64> {
        self.client.get_timestamp();
        match self.run(Payload::None).await? {
            Reply::Timestamp(t) => Ok(t),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Uploads the file at `source` as `key`, resuming where the server says.
    pub async fn put(
        &mut self,
        key: &Key,
        file: AssociatedFile,
        source: &Path,
        progress: Progress<'_>,
    ) -> Result<PutOutcome> {
        let mut f =
            std::fs::File::open(source).context(|| format!("opening {}", source.display()))?;
        let size = f
            .metadata()
            .context(|| format!("stat {}", source.display()))?
            .len();
        self.client.put(key.clone(), file, size, false);
        let reply = self
            .run(Payload::Upload {
                file: &mut f,
                progress,
            })
            .await?;
        put_outcome(reply)
    }

    /// Downloads `key` into `partial` (resuming from its current size), verifying
    /// it. On success the verified file is renamed to `dest`. Returns false when
    /// the server does not have it or the content was bad (the partial file is
    /// then removed, as git-annex does).
    pub async fn get(
        &mut self,
        key: &Key,
        file: AssociatedFile,
        partial: &Path,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<bool> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
            .context(|| format!("opening {}", partial.display()))?;
        let have = f
            .metadata()
            .context(|| format!("stat {}", partial.display()))?
            .len();
        let mut verifier = Verifier::new(key);
        let mut buf = vec![0u8; IO_BUFFER];
        let mut left = have;
        while left > 0 {
            let n = buf.len().min(left as usize);
            f.read_exact(&mut buf[..n])
                .context(|| "re-reading partial download".into())?;
            verifier.update(&buf[..n]);
            left -= n as u64;
        }
        f.seek(SeekFrom::End(0))
            .context(|| "seeking partial download".into())?;
        self.client.get(key.clone(), file, have);
        let reply = self
            .run(Payload::Download {
                file: &mut f,
                verifier: &mut verifier,
                progress,
                done: have,
                key,
            })
            .await?;
        match reply {
            Reply::Got { ok: true } => {
                f.sync_all()
                    .context(|| format!("fsync {}", partial.display()))?;
                drop(f);
                std::fs::rename(partial, dest)
                    .context(|| format!("moving to {}", dest.display()))?;
                Ok(true)
            }
            Reply::Got { ok: false } => {
                drop(f);
                let _ = std::fs::remove_file(partial);
                Ok(false)
            }
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// Starts a streamed upload (a relay, whose bytes arrive as it goes):
    /// `PUT`, then the server's offset or `ALREADY-HAVE[-PLUS]`.
    pub async fn put_stream_start(&mut self, key: &Key, file: AssociatedFile) -> Result<PutStart> {
        self.client.put_stream(key.clone(), file);
        match self.run(Payload::None).await? {
            Reply::PutFrom(o) => Ok(PutStart::From(o)),
            Reply::Put {
                already: true,
                plus,
                ..
            } => Ok(PutStart::AlreadyHave(plus)),
            other => Err(Error::Protocol(format!("unexpected {other:?}"))),
        }
    }

    /// After [`PutStart::From`]: `DATA len`; `len` bytes follow with
    /// [`ClientSession::put_stream_write`].
    pub async fn put_stream_data(&mut self, len: u64) -> Result<()> {
        self.client.put_stream_data(len);
        self.write_pending().await
    }

    /// Raw payload bytes of a streamed upload.
    pub async fn put_stream_write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer
            .write_all(bytes)
            .await
            .context(|| "p2p stream".into())
    }

    /// Ends a streamed upload with `VALID`/`INVALID` and reads the result.
    pub async fn put_stream_finish(&mut self, valid: bool) -> Result<PutOutcome> {
        self.client.handle_payload_sent(valid);
        let reply = self.run(Payload::None).await?;
        put_outcome(reply)
    }

    /// Starts a relayed download from `offset`: returns the `DATA` length.
    /// The bytes are then read with [`ClientSession::relay_chunk`] and
    /// [`ClientSession::relay_consume`], and the request ended with
    /// [`ClientSession::relay_validity`] and [`ClientSession::relay_finish`].
    pub async fn get_relay_start(&mut self, key: &Key, offset: u64) -> Result<u64> {
        self.client.get(key.clone(), AssociatedFile::none(), offset);
        match self.step(Payload::Relay).await? {
            Step::Receive(len) => Ok(len),
            Step::Done(r) => Err(Error::Protocol(format!("unexpected {r:?}"))),
            Step::Verify(_) => Err(Error::Protocol("unexpected verification".into())),
        }
    }

    /// Up to `max` payload bytes as they arrive (empty at EOF); consume what
    /// was used with [`ClientSession::relay_consume`].
    pub async fn relay_chunk(&mut self, max: u64) -> Result<&[u8]> {
        let avail = self
            .reader
            .fill_buf()
            .await
            .context(|| "p2p stream".into())?;
        let n = avail.len().min(usize::try_from(max).unwrap_or(usize::MAX));
        Ok(&avail[..n])
    }

    pub fn relay_consume(&mut self, n: usize) {
        self.reader.consume(n);
    }

    /// All payload bytes were relayed: the server's `VALID`/`INVALID`.
    pub async fn relay_validity(&mut self) -> Result<Validity> {
        self.client.handle_payload_received(true);
        match self.step(Payload::Relay).await? {
            Step::Verify(v) => Ok(v),
            Step::Done(r) => Err(Error::Protocol(format!("unexpected {r:?}"))),
            Step::Receive(_) => Err(Error::Protocol("unexpected payload".into())),
        }
    }

    /// Answers a relayed download with `SUCCESS` (`ok`) or `FAILURE`.
    pub async fn relay_finish(&mut self, ok: bool) -> Result<()> {
        self.client.handle_get_verified(ok);
        self.run(Payload::None).await.map(|_| ())
    }

    /// Writes the messages the client machine queued (no reply expected).
    async fn write_pending(&mut self) -> Result<()> {
        while let Some(out) = self.client.poll_output() {
            match out {
                ClientOutput::Send(m) => self
                    .writer
                    .write_all(&m.to_line())
                    .await
                    .context(|| "p2p stream".into())?,
                other => return Err(Error::Protocol(format!("unexpected {other:?}"))),
            }
        }
        Ok(())
    }

    /// Ends the session cleanly (closes our side).
    pub async fn close(mut self) -> Result<()> {
        self.writer.flush().await.context(|| "p2p stream".into())?;
        self.writer.shutdown().await.context(|| "p2p stream".into())
    }
}

/// Where a download in progress lives: `<dir>/<keyFile>`.
pub fn partial_download_path(dir: &Path, key: &Key) -> PathBuf {
    dir.join(key.file())
}

/// Message-level access for relays ([`crate::proxy`]): the session's own
/// request machine is bypassed, so the relay must keep both sides in step.
impl<R, W> ClientSession<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Writes one message (buffered until the next read or flush).
    pub async fn send_message(&mut self, m: &Message) -> Result<()> {
        self.writer
            .write_all(&m.to_line())
            .await
            .context(|| "p2p stream".into())
    }

    /// Sends what was written.
    pub async fn flush(&mut self) -> Result<()> {
        self.writer.flush().await.context(|| "p2p stream".into())
    }

    /// Flushes what was written, then reads the peer's next message: `None` at
    /// end of stream; an unparsable or over-long line is an error.
    pub async fn read_message(&mut self) -> Result<Option<Message>> {
        self.writer.flush().await.context(|| "p2p stream".into())?;
        match read_line(&mut self.reader, &mut self.line)
            .await
            .context(|| "p2p stream".into())?
        {
            LineRead::Line => Message::parse(&self.line).map(Some).map_err(|_| {
                Error::Peer(format!(
                    "unparsable line from peer: {:?}",
                    String::from_utf8_lossy(&self.line[..self.line.len().min(80)])
                ))
            }),
            LineRead::Eof => Ok(None),
            LineRead::TooLong => Err(Error::Peer("over-long line from peer".into())),
        }
    }

    /// Copies `len` payload bytes from the peer to `to`. Returns how many were
    /// copied: fewer than `len` when the peer's stream ended first.
    pub async fn relay_payload_to<T: AsyncWrite + Unpin>(
        &mut self,
        to: &mut T,
        len: u64,
    ) -> Result<u64> {
        let mut done = 0;
        while done < len {
            let avail = self
                .reader
                .fill_buf()
                .await
                .context(|| "p2p stream".into())?;
            if avail.is_empty() {
                break;
            }
            let n = avail
                .len()
                .min(usize::try_from(len - done).unwrap_or(usize::MAX));
            to.write_all(&avail[..n])
                .await
                .context(|| "relaying payload".into())?;
            self.reader.consume(n);
            done += n as u64;
        }
        Ok(done)
    }

    /// Copies `len` payload bytes from `from` to the peer. Returns how many
    /// were copied: fewer than `len` when `from` ended first.
    pub async fn relay_payload_from<T: tokio::io::AsyncBufRead + Unpin>(
        &mut self,
        from: &mut T,
        len: u64,
    ) -> Result<u64> {
        let mut done = 0;
        while done < len {
            let avail = from
                .fill_buf()
                .await
                .context(|| "relaying payload".into())?;
            if avail.is_empty() {
                break;
            }
            let n = avail
                .len()
                .min(usize::try_from(len - done).unwrap_or(usize::MAX));
            self.writer
                .write_all(&avail[..n])
                .await
                .context(|| "p2p stream".into())?;
            from.consume(n);
            done += n as u64;
        }
        Ok(done)
    }
}

/// A running daemon's journal committer, woken when a session ends
/// ([`record_state`]); set once by `mesh::Mesh::start`.
pub static COMMITTER: std::sync::OnceLock<std::sync::Arc<tokio::sync::Notify>> =
    std::sync::OnceLock::new();

/// Commits what this process wrote to journals ([`crate::branch::commit_written`]),
/// off the runtime: what a session does when it ends. A failure is a warning: the journal keeps every line.
pub async fn record_state(message: &'static str) {
    // In a daemon its committer does it: soon, and once for every session
    // that ended meanwhile.
    if let Some(nudge) = COMMITTER.get()
        && crate::journal::any_written()
    {
        nudge.notify_one();
        return;
    }
    let done = tokio::task::spawn_blocking(move || crate::branch::commit_written(message)).await;
    match done {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("recording state in git: {e}"),
        Err(e) => tracing::warn!("recording state in git: {e}"),
    }
}

/// The clock of a served stream's half: how long it has been kept waiting
/// on the client ([`IdleReader`], [`IdleWriter`]).
struct IdleClock {
    idle: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleClock {
    fn new(idle: std::time::Duration) -> IdleClock {
        IdleClock { idle, timer: None }
    }

    /// The client moved: the wait is over.
    fn moved(&mut self) {
        self.timer = None;
    }

    /// The client keeps us waiting: `Ready` with the error once it has for
    /// `idle` (`what` the half's wait: reading, its taking our bytes).
    fn waiting(
        &mut self,
        cx: &mut std::task::Context<'_>,
        what: &str,
    ) -> std::task::Poll<std::io::Error> {
        use std::future::Future;
        let idle = self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match timer.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                self.timer = None;
                std::task::Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{what} for {}s", idle.as_secs()),
                ))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    /// `poll` of an inner half, with the deadline.
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        what: &str,
        poll: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match poll {
            std::task::Poll::Ready(r) => {
                self.moved();
                std::task::Poll::Ready(r)
            }
            std::task::Poll::Pending => self.waiting(cx, what).map(Err),
        }
    }
}

/// A served stream's reader with the idle-session deadline: a read that
/// waits longer than `idle` for the client's next bytes fails with
/// `TimedOut`, which ends the session like a broken stream. Only waiting
/// on the client counts: while the server works (a fan-out, a send), the
/// reader is not polled and the clock does not run.
pub struct IdleReader<R> {
    inner: R,
    clock: IdleClock,
}

impl<R> IdleReader<R> {
    pub fn new(inner: R, idle: std::time::Duration) -> Self {
        IdleReader {
            inner,
            clock: IdleClock::new(idle),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        this.clock.guard(cx, "idle", poll)
    }
}

/// A served stream's writer with the same deadline: a write, flush or
/// shutdown that waits longer than `idle` for the client to take bytes
/// (a client that stopped reading mid-`GET` without closing: its stream's
/// window stays full) fails with `TimedOut` and ends the session, so such a
/// client cannot hold a session slot, and the node sessions a gateway
/// relays from, for ever. Only waiting on the client counts.
pub struct IdleWriter<W> {
    inner: W,
    clock: IdleClock,
}

impl<W> IdleWriter<W> {
    pub fn new(inner: W, idle: std::time::Duration) -> Self {
        IdleWriter {
            inner,
            clock: IdleClock::new(idle),
        }
    }
}

const NOT_READING: &str = "client not reading";

impl<W: AsyncWrite + Unpin> AsyncWrite for IdleWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.clock.guard(cx, NOT_READING, poll)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.clock.guard(cx, NOT_READING, poll)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_shutdown(cx);
        this.clock.guard(cx, NOT_READING, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader never reads fails once kept waiting `idle`;
    /// one that is read goes on.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_takes_times_out() {
        let idle = std::time::Duration::from_secs(5);
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = IdleWriter::new(a, idle);
        w.write_all(b"0123456789abcdef").await.expect("fits");
        let start = tokio::time::Instant::now();
        let err = w.write_all(b"more").await.expect_err("not read");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= idle, "{:?}", start.elapsed());
        let mut got = [0u8; 16];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut got)
            .await
            .expect("read");
        w.write_all(b"more").await.expect("read now");
    }
}
