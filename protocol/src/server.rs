//! The server side of a P2P connection, as a sans-IO state machine.
//!
//! It follows `serveAuth`/`serveAuthed` in git-annex's `P2P/Protocol.hs` line for
//! line: which inputs get `ERROR unknown command` (unparsable), which get `ERROR
//! unexpected command` (well-formed but not a request), which end the session
//! (`ERROR` from the client, `CONNECT`, EOF, over-long lines).
//!
//! # Calling contract
//!
//! The driver owns the I/O and the store. It loops:
//!
//! 1. Drain [`Server::poll_output`]. [`ServerOutput::Send`] is a line to write. The
//!    other outputs are requests: the driver performs each one and answers it with
//!    the matching `handle_*` method *before* polling again (`CheckPresent` →
//!    [`Server::handle_present`], and so on; each variant's doc names its answer).
//!    [`ServerOutput::ReceivePayload`] and [`ServerOutput::SendPayload`] are the
//!    raw `DATA` bytes, which never pass through the machine. A few outputs
//!    need no answer: `Send`, [`ServerOutput::Unlock`],
//!    [`ServerOutput::Bypass`], [`ServerOutput::AbandonPut`] and `Close`.
//! 2. When `poll_output` returns `None`: stop if [`Server::is_closed`]; otherwise
//!    read one line (at most [`crate::message::MAX_LINE`] bytes) and pass it to
//!    [`Server::handle_line`], or call [`Server::handle_eof`] at end of input. An
//!    over-long line is a protocol error: call [`Server::handle_protocol_error`].
//!
//! # Backends with several repositories (a cluster gateway)
//!
//! The same machine serves a cluster: `BYPASS` comes out as
//! [`ServerOutput::Bypass`], and the answers to `PUT`, `DATA`/`DATA-PRESENT`
//! and `REMOVE` can name other repositories
//! ([`PutStart::AlreadyHave`], [`Server::handle_stored_plus`],
//! [`Server::handle_removed_plus`]): the machine sends them as
//! `ALREADY-HAVE-PLUS`/`SUCCESS-PLUS`/`FAILURE-PLUS` to a client at v2+ (the
//! plain form below v2, or with an empty list).

use std::collections::VecDeque;

use crate::key::Key;
use crate::message::{AssociatedFile, MAX_VERSION, Message, Service, Version};
use crate::uuid::{AuthToken, Uuid};
pub use crate::verify::Validity;

/// What a client may do (`ServerMode` in git-annex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServeMode {
    ReadOnly,
    AppendOnly,
    ReadWrite,
}

pub const READ_ONLY_ERROR: &str = "this repository is read-only; write access denied";
pub const APPEND_ONLY_ERROR: &str = "this repository is append-only; removal denied";

/// How a session starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The transport already authenticated the client (`git-annex-shell p2pstdio`):
    /// send `AUTH-SUCCESS` at once, unprompted.
    Preauthenticated { mode: ServeMode },
    /// The client must send `AUTH <uuid> <token>` first (tor, generic P2P, libp2p).
    RequireAuth,
}

/// What the server does with `CONNECT` and `NOTIFYCHANGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitAccess {
    /// Relay git services and wait for ref changes (the remotedaemon's behaviour).
    Served,
    /// As `git-annex-shell p2pstdio` 10.20261026: both end the session without a
    /// reply ("relaying to git not supported on this connection").
    Refused,
    /// As git-annex's proxies and cluster gateways: `CONNECT` as [`Refused`],
    /// `NOTIFYCHANGE` a protocol error (`ERROR protocol error`, then the end).
    ///
    /// [`Refused`]: GitAccess::Refused
    Proxied,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The UUID announced in `AUTH-SUCCESS`.
    pub uuid: Uuid,
    pub start: Start,
    pub git: GitAccess,
    /// Highest version to agree to (normally [`MAX_VERSION`]).
    pub max_version: Version,
}

/// Authentication attempts allowed on one connection before it is closed.
pub const MAX_AUTH_ATTEMPTS: u32 = 8;

/// Where to start an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutStart {
    /// The content is here; a gateway lists the repositories that have it
    /// (`ALREADY-HAVE-PLUS` at v2+), others pass an empty list.
    AlreadyHave(Vec<Uuid>),
    /// Bytes `[0, offset)` are already in the partial file.
    From(u64),
    /// The repository cannot take it (no room: `annex.diskreserve`):
    /// `ERROR <why>`, and the session goes on.
    Refused(String),
}

/// Why a `DATA` was refused: see [`data_fits`].
pub const DATA_TOO_LONG: &str = "DATA longer than the key's size";

/// Whether `len` payload bytes from `offset` fit in `key`'s size (its `-s`
/// field; a key without one fits anything). A `DATA` that does not is
/// refused before a byte of it is written.
pub fn data_fits(key: &Key, offset: u64, len: u64) -> bool {
    match key.size() {
        Some(size) => offset.checked_add(len).is_some_and(|end| end <= size),
        None => true,
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Client closed the connection between requests.
    Eof,
    /// Client sent `ERROR`.
    ClientError(String),
    /// The connection broke mid-request (EOF inside a request, short `DATA`,
    /// over-long line); git-annex exits non-zero here.
    ProtocolError(String),
    /// `CONNECT` finished (or was refused); the P2P session does not continue.
    AfterConnect,
    /// A request this transport does not offer (`CONNECT`/`NOTIFYCHANGE` over
    /// p2pstdio): git-annex exits non-zero without replying.
    Unsupported(&'static str),
    TooManyAuthAttempts,
}

/// Everything the machine asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Write this line.
    Send(Message),
    /// Is this token valid for this client? Answer with [`Server::handle_auth`].
    CheckAuth {
        uuid: Option<Uuid>,
        token: AuthToken,
    },
    /// Is the whole content present? Answer with [`Server::handle_present`].
    CheckPresent { key: Key },
    /// `BYPASS`: repositories (gateways) the client asks the server not to
    /// reach on its behalf. No answer; only a gateway has a use for it.
    Bypass(Vec<Uuid>),
    /// Lock the content against removal. Answer with [`Server::handle_locked`].
    Lock { key: Key },
    /// Release the lock taken by the last successful `Lock`. `connection_lost`
    /// asks the driver to keep it for the retention period (git-annex: 10 min).
    Unlock { connection_lost: bool },
    /// Remove the content (absent content counts as removed). With `before`, only
    /// if the monotonic clock is still below it. Answer with [`Server::handle_removed`].
    Remove { key: Key, before: Option<i64> },
    /// Answer with [`Server::handle_timestamp`] (monotonic seconds).
    GetTimestamp,
    /// Is the content here, or how much of it is in the partial file? Answer with
    /// [`Server::handle_put_start`].
    PreparePut { key: Key, file: AssociatedFile },
    /// The client answered `PUT-FROM` with something other than `DATA`: drop
    /// what `PreparePut` set up (a gateway's node connections). No answer.
    AbandonPut { key: Key },
    /// Read exactly `len` raw bytes from the connection and append them to the
    /// key's partial file, which must then hold `offset` bytes before them. Answer
    /// with [`Server::handle_payload_received`].
    ReceivePayload { key: Key, offset: u64, len: u64 },
    /// Verify the partial file against the key and, if it is good, make it the
    /// content (atomically) and record the change. With `Validity::Invalid` an
    /// unverifiable key must be rejected. Answer with [`Server::handle_stored`].
    CommitPut { key: Key, validity: Validity },
    /// `DATA-PRESENT`: the client stored the content out of band; check it is there
    /// and record it. Answer with [`Server::handle_stored`].
    ConfirmPresent { key: Key },
    /// How big is the content? The client asked for it from `offset` (a
    /// backend that fetches the content from elsewhere starts there). Answer
    /// with [`Server::handle_content_size`].
    ContentSize { key: Key, offset: u64 },
    /// Write `len` bytes of the content starting at `offset` (`len` may be 0:
    /// this always follows a `Some` size, so a backend can end what
    /// `ContentSize` opened). If the content cannot give that many bytes the
    /// driver must close the connection (there is no in-band abort): call
    /// [`Server::handle_protocol_error`]. Answer with [`Server::handle_payload_sent`].
    SendPayload { key: Key, offset: u64, len: u64 },
    /// Relay a git service over `DATA` frames until it exits, then the session ends.
    Connect { service: Service },
    /// Wait until refs change; answer with [`Server::handle_changed`].
    WaitRefChange,
    /// The session is over: flush and close.
    Close(CloseReason),
}

#[derive(Debug)]
enum State {
    Unauthenticated {
        failures: u32,
    },
    Ready,
    /// A driver answer is outstanding.
    Waiting(Pending),
    /// `LOCKCONTENT` succeeded; the next message must be `UNLOCKCONTENT`.
    Locked,
    /// `PUT-FROM` sent; the next message must be `DATA` (or `DATA-PRESENT`).
    AwaitData {
        key: Key,
        offset: u64,
    },
    /// Payload received; v1+ expects `VALID`/`INVALID`.
    AwaitValidity {
        key: Key,
    },
    /// Content sent; the client answers `SUCCESS`/`FAILURE`.
    AwaitGetResult,
    Closed,
}

#[derive(Debug)]
enum Pending {
    Auth { uuid: Option<Uuid>, failures: u32 },
    Present,
    Lock,
    Remove,
    Timestamp,
    PutStart { key: Key },
    Payload { key: Key },
    Stored,
    ContentSize { key: Key, offset: u64 },
    PayloadSent,
    Changed,
}

/// One server-side P2P session.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    mode: ServeMode,
    authenticated: bool,
    version: Version,
    client: Option<Uuid>,
    state: State,
    out: VecDeque<ServerOutput>,
}

impl Server {
    pub fn new(config: ServerConfig) -> Server {
        let mut out = VecDeque::new();
        let authenticated = matches!(config.start, Start::Preauthenticated { .. });
        let (state, mode) = match config.start {
            Start::Preauthenticated { mode } => {
                out.push_back(ServerOutput::Send(Message::AuthSuccess(
                    config.uuid.clone(),
                )));
                (State::Ready, mode)
            }
            Start::RequireAuth => (State::Unauthenticated { failures: 0 }, ServeMode::ReadOnly),
        };
        Server {
            config,
            mode,
            authenticated,
            version: 0,
            client: None,
            state,
            out,
        }
    }

    /// The next line to write or request to perform.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.out.pop_front()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed) && self.out.is_empty()
    }

    /// The negotiated protocol version (0 until `VERSION`).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The client's UUID once it authenticated with `AUTH`.
    pub fn client_uuid(&self) -> Option<&Uuid> {
        self.client.as_ref()
    }

    pub fn mode(&self) -> ServeMode {
        self.mode
    }

    /// Whether the client is authenticated (at once when preauthenticated):
    /// a relay that serves the rest of the session itself stops driving the
    /// machine here.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether an answer from the driver is outstanding (lines are not acted
    /// on meanwhile).
    pub fn awaiting_driver(&self) -> bool {
        matches!(self.state, State::Waiting(_))
    }

    /// Whether a `LOCKCONTENT` holds (until `UNLOCKCONTENT` or the end).
    pub fn is_locked(&self) -> bool {
        matches!(self.state, State::Locked)
    }

    fn send(&mut self, m: Message) {
        self.out.push_back(ServerOutput::Send(m));
    }

    fn request(&mut self, pending: Pending, output: ServerOutput) {
        self.state = State::Waiting(pending);
        self.out.push_back(output);
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.out.push_back(ServerOutput::Close(reason));
    }

    fn success(&mut self, ok: bool) {
        self.send(if ok {
            Message::Success
        } else {
            Message::Failure
        });
    }

    /// One line from the client, without its `\n`.
    pub fn handle_line(&mut self, line: &[u8]) {
        let msg = Message::parse(line).ok();
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Closed => {}
            State::Waiting(p) => {
                // A driver bug, not a peer's: keep the machine consistent anyway.
                self.state = State::Waiting(p);
            }
            State::Unauthenticated { failures } => self.unauthenticated(msg, failures),
            State::Ready => self.ready(msg),
            State::Locked => {
                self.state = State::Ready;
                self.out.push_back(ServerOutput::Unlock {
                    connection_lost: false,
                });
                if msg != Some(Message::UnlockContent) {
                    self.send(Message::Error("expected UNLOCKCONTENT".into()));
                }
            }
            State::AwaitData { key, offset } => match msg {
                Some(Message::Data(len)) if !data_fits(&key, offset, len) => {
                    // Refused before a byte is read: the payload that
                    // follows cannot be skipped safely, so the session ends.
                    self.out.push_back(ServerOutput::AbandonPut { key });
                    self.send(Message::Error(DATA_TOO_LONG.into()));
                    self.close(CloseReason::ProtocolError(DATA_TOO_LONG.into()));
                }
                Some(Message::Data(len)) => self.request(
                    Pending::Payload { key: key.clone() },
                    ServerOutput::ReceivePayload { key, offset, len },
                ),
                Some(Message::DataPresent) if self.version >= 4 => {
                    self.request(Pending::Stored, ServerOutput::ConfirmPresent { key })
                }
                _ => {
                    self.state = State::Ready;
                    self.out.push_back(ServerOutput::AbandonPut { key });
                    self.send(Message::Error("expected DATA".into()));
                }
            },
            State::AwaitValidity { key } => {
                let validity = match msg {
                    Some(Message::Valid) => Validity::Valid,
                    Some(Message::Invalid) => Validity::Invalid,
                    _ => {
                        self.send(Message::Error("expected VALID or INVALID".into()));
                        Validity::Unknown
                    }
                };
                self.request(Pending::Stored, ServerOutput::CommitPut { key, validity });
            }
            State::AwaitGetResult => {
                self.state = State::Ready;
                match msg {
                    Some(
                        Message::Success
                        | Message::Failure
                        | Message::SuccessPlus(_)
                        | Message::FailurePlus(_),
                    ) => {}
                    _ => self.send(Message::Error("expected SUCCESS or FAILURE".into())),
                }
            }
        }
    }

    /// The client closed its side (or the line was too long: pass
    /// `protocol_error = true`).
    pub fn handle_eof(&mut self) {
        self.handle_broken(None)
    }

    /// The connection broke (over-long line, I/O error).
    pub fn handle_protocol_error(&mut self, what: &str) {
        self.handle_broken(Some(what.to_owned()))
    }

    fn handle_broken(&mut self, error: Option<String>) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        if matches!(state, State::Closed) {
            return;
        }
        if matches!(state, State::Locked) {
            self.out.push_back(ServerOutput::Unlock {
                connection_lost: true,
            });
        }
        let between_requests = matches!(state, State::Ready | State::Unauthenticated { .. });
        let reason = match error {
            Some(e) => CloseReason::ProtocolError(e),
            None if between_requests => CloseReason::Eof,
            None => CloseReason::ProtocolError("connection closed mid-request".into()),
        };
        self.close(reason);
    }

    fn unauthenticated(&mut self, msg: Option<Message>, failures: u32) {
        self.state = State::Unauthenticated { failures };
        match msg {
            None => self.send(Message::Error("unknown command".into())),
            Some(Message::Error(e)) => self.close(CloseReason::ClientError(e)),
            Some(Message::Auth(uuid, token)) => self.request(
                Pending::Auth {
                    uuid: uuid.clone(),
                    failures,
                },
                ServerOutput::CheckAuth { uuid, token },
            ),
            Some(_) => self.send(Message::Error("unexpected command".into())),
        }
    }

    fn ready(&mut self, msg: Option<Message>) {
        self.state = State::Ready;
        let Some(msg) = msg else {
            self.send(Message::Error("unknown command".into()));
            return;
        };
        use Message as M;
        match msg {
            M::Error(e) => self.close(CloseReason::ClientError(e)),
            M::Version(v) => {
                let v = v.min(self.config.max_version.min(Version::from(MAX_VERSION)));
                self.version = v;
                self.send(M::Version(v));
            }
            M::Bypass(uuids) => self.out.push_back(ServerOutput::Bypass(uuids)),
            M::CheckPresent(key) => {
                self.request(Pending::Present, ServerOutput::CheckPresent { key })
            }
            M::LockContent(key) => self.request(Pending::Lock, ServerOutput::Lock { key }),
            M::Remove(key) => self.remove(key, None),
            M::RemoveBefore(ts, key) => self.remove(key, Some(ts)),
            M::GetTimestamp => self.request(Pending::Timestamp, ServerOutput::GetTimestamp),
            M::Put(file, key) => {
                if self.mode == ServeMode::ReadOnly {
                    self.send(M::Error(READ_ONLY_ERROR.into()));
                } else {
                    self.request(
                        Pending::PutStart { key: key.clone() },
                        ServerOutput::PreparePut { key, file },
                    );
                }
            }
            M::Get(offset, _file, key) => self.request(
                Pending::ContentSize {
                    key: key.clone(),
                    offset,
                },
                ServerOutput::ContentSize { key, offset },
            ),
            M::Connect(service) => {
                // git-annex checks the mode before anything else (p2p-16): a push
                // to a read-only or append-only server is refused in words.
                if service == Service::ReceivePack && self.mode != ServeMode::ReadWrite {
                    self.send(M::Error(READ_ONLY_ERROR.into()));
                    self.close(CloseReason::AfterConnect);
                } else if self.config.git != GitAccess::Served {
                    self.close(CloseReason::Unsupported(
                        "relaying to git not supported on this connection",
                    ));
                } else {
                    self.state = State::Closed;
                    self.out.push_back(ServerOutput::Connect { service });
                    self.out
                        .push_back(ServerOutput::Close(CloseReason::AfterConnect));
                }
            }
            M::NotifyChange => match self.config.git {
                GitAccess::Served => self.request(Pending::Changed, ServerOutput::WaitRefChange),
                GitAccess::Refused => self.close(CloseReason::Unsupported(
                    "NOTIFYCHANGE unsupported on this connection",
                )),
                GitAccess::Proxied => {
                    self.send(M::Error("protocol error".into()));
                    self.close(CloseReason::ProtocolError("NOTIFYCHANGE".into()));
                }
            },
            _ => self.send(M::Error("unexpected command".into())),
        }
    }

    fn remove(&mut self, key: Key, before: Option<i64>) {
        match self.mode {
            ServeMode::ReadWrite => {
                self.request(Pending::Remove, ServerOutput::Remove { key, before })
            }
            ServeMode::AppendOnly => self.send(Message::Error(APPEND_ONLY_ERROR.into())),
            ServeMode::ReadOnly => self.send(Message::Error(READ_ONLY_ERROR.into())),
        }
    }

    /// The outstanding request, if `this` is the answer it awaits. Any other
    /// answer (a driver's mistake) is ignored and the request stays
    /// outstanding: dropping it would leave the client without a reply and
    /// the machine in `Ready` in the middle of a transfer.
    fn take_pending(&mut self, this: fn(&Pending) -> bool) -> Option<Pending> {
        match std::mem::replace(&mut self.state, State::Ready) {
            State::Waiting(p) if this(&p) => Some(p),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Answer to [`ServerOutput::CheckAuth`]: the mode granted, or `None` to refuse.
    pub fn handle_auth(&mut self, grant: Option<ServeMode>) {
        let Some(Pending::Auth { uuid, failures }) =
            self.take_pending(|p| matches!(p, Pending::Auth { .. }))
        else {
            return;
        };
        match grant {
            Some(mode) => {
                self.mode = mode;
                self.authenticated = true;
                self.client = uuid;
                self.send(Message::AuthSuccess(self.config.uuid.clone()));
            }
            None => {
                self.send(Message::AuthFailure);
                let failures = failures + 1;
                if failures >= MAX_AUTH_ATTEMPTS {
                    self.close(CloseReason::TooManyAuthAttempts);
                } else {
                    self.state = State::Unauthenticated { failures };
                }
            }
        }
    }

    /// Answer to [`ServerOutput::CheckPresent`]: `Err` gives `ERROR <text>`.
    pub fn handle_present(&mut self, present: Result<bool, String>) {
        if let Some(Pending::Present) = self.take_pending(|p| matches!(p, Pending::Present)) {
            match present {
                Ok(p) => self.success(p),
                Err(e) => self.send(Message::Error(e)),
            }
        }
    }

    /// Answer to [`ServerOutput::Lock`].
    pub fn handle_locked(&mut self, locked: bool) {
        if let Some(Pending::Lock) = self.take_pending(|p| matches!(p, Pending::Lock)) {
            self.success(locked);
            if locked {
                self.state = State::Locked;
            }
        }
    }

    /// Answer to [`ServerOutput::Remove`]: `Ok(false)` is `FAILURE`, `Err` `ERROR`.
    pub fn handle_removed(&mut self, removed: Result<bool, String>) {
        self.handle_removed_plus(removed, Vec::new())
    }

    /// [`Server::handle_removed`] for a gateway: `also` are the repositories
    /// that did remove it (`SUCCESS-PLUS`/`FAILURE-PLUS` at v2+).
    pub fn handle_removed_plus(&mut self, removed: Result<bool, String>, also: Vec<Uuid>) {
        if let Some(Pending::Remove) = self.take_pending(|p| matches!(p, Pending::Remove)) {
            match removed {
                Ok(ok) => self.success_plus(ok, also),
                Err(e) => self.send(Message::Error(e)),
            }
        }
    }

    /// `SUCCESS`/`FAILURE`, as `-PLUS` with `also` at v2+ when it is not empty.
    fn success_plus(&mut self, ok: bool, also: Vec<Uuid>) {
        let plain = if ok {
            Message::Success
        } else {
            Message::Failure
        };
        self.send(crate::cluster::reply::plus_or(self.version, plain, also));
    }

    /// Answer to [`ServerOutput::GetTimestamp`].
    pub fn handle_timestamp(&mut self, seconds: i64) {
        if let Some(Pending::Timestamp) = self.take_pending(|p| matches!(p, Pending::Timestamp)) {
            self.send(Message::Timestamp(seconds));
        }
    }

    /// Answer to [`ServerOutput::PreparePut`].
    pub fn handle_put_start(&mut self, start: PutStart) {
        if let Some(Pending::PutStart { key }) =
            self.take_pending(|p| matches!(p, Pending::PutStart { .. }))
        {
            match start {
                PutStart::AlreadyHave(also) => self.send(crate::cluster::reply::plus_or(
                    self.version,
                    Message::AlreadyHave,
                    also,
                )),
                PutStart::From(offset) => {
                    self.send(Message::PutFrom(offset));
                    self.state = State::AwaitData { key, offset };
                }
                PutStart::Refused(why) => self.send(Message::Error(why)),
            }
        }
    }

    /// Answer to [`ServerOutput::ReceivePayload`]: `complete` is false when the
    /// connection ended before all bytes arrived (what did arrive stays in the
    /// partial file, so the next `PUT` resumes).
    pub fn handle_payload_received(&mut self, complete: bool) {
        if let Some(Pending::Payload { key }) =
            self.take_pending(|p| matches!(p, Pending::Payload { .. }))
        {
            if !complete {
                // git-annex answers FAILURE, then finds the connection gone (v4-04).
                self.send(Message::Failure);
                self.close(CloseReason::ProtocolError("short DATA".into()));
            } else if self.version >= 1 {
                self.state = State::AwaitValidity { key };
            } else {
                self.request(
                    Pending::Stored,
                    ServerOutput::CommitPut {
                        key,
                        validity: Validity::Unknown,
                    },
                );
            }
        }
    }

    /// Answer to [`ServerOutput::CommitPut`] and [`ServerOutput::ConfirmPresent`].
    pub fn handle_stored(&mut self, stored: bool) {
        self.handle_stored_plus(stored, Vec::new())
    }

    /// [`Server::handle_stored`] for a gateway: `also` are the repositories
    /// that have the content now (`SUCCESS-PLUS`/`FAILURE-PLUS` at v2+).
    pub fn handle_stored_plus(&mut self, stored: bool, also: Vec<Uuid>) {
        if let Some(Pending::Stored) = self.take_pending(|p| matches!(p, Pending::Stored)) {
            self.success_plus(stored, also);
        }
    }

    /// Answer to [`ServerOutput::ContentSize`]: `None` when the content is absent.
    pub fn handle_content_size(&mut self, size: Option<u64>) {
        let Some(Pending::ContentSize { key, offset }) =
            self.take_pending(|p| matches!(p, Pending::ContentSize { .. }))
        else {
            return;
        };
        match size {
            None => {
                self.send(Message::Data(0));
                if self.version >= 1 {
                    self.send(Message::Invalid);
                }
                self.state = State::AwaitGetResult;
            }
            Some(total) => {
                let len = total.saturating_sub(offset);
                self.send(Message::Data(len));
                self.request(
                    Pending::PayloadSent,
                    ServerOutput::SendPayload { key, offset, len },
                );
            }
        }
    }

    /// Answer to [`ServerOutput::SendPayload`]: `valid` is false if the content
    /// changed while it was read.
    pub fn handle_payload_sent(&mut self, valid: bool) {
        if let Some(Pending::PayloadSent) = self.take_pending(|p| matches!(p, Pending::PayloadSent))
        {
            self.payload_sent(valid);
        }
    }

    fn payload_sent(&mut self, valid: bool) {
        if self.version >= 1 {
            self.send(if valid {
                Message::Valid
            } else {
                Message::Invalid
            });
        }
        self.state = State::AwaitGetResult;
    }

    /// Answer to [`ServerOutput::WaitRefChange`].
    pub fn handle_changed(&mut self, shas: Vec<String>) {
        if let Some(Pending::Changed) = self.take_pending(|p| matches!(p, Pending::Changed)) {
            self.send(Message::Changed(shas));
        }
    }
}

#[cfg(test)]
mod tests;
