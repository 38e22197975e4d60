//! The client side of a P2P connection, as a sans-IO state machine.
//!
//! The protocol is strictly one request at a time, so the client is a small
//! machine per request, mirroring `P2P/Protocol.hs` (`auth`, `negotiateProtocolVersion`,
//! `checkPresent`, `lockContentWhile`, `remove`, `get`, `put`, `checkSuccess`),
//! including the `ERROR expected …` replies git-annex sends on a bad answer.
//!
//! # Calling contract
//!
//! Start a request with one of the request methods (only while [`Client::is_idle`]),
//! then drain [`Client::poll_output`]: write every [`ClientOutput::Send`], perform
//! [`ClientOutput::SendPayload`] / [`ClientOutput::ReceivePayload`] /
//! [`ClientOutput::VerifyGet`] and answer them with the named `handle_*` method,
//! and when the machine waits for the server read one line and pass it to
//! [`Client::handle_line`] (or [`Client::handle_eof`]). The request ends with
//! exactly one [`ClientOutput::Done`]; [`ClientOutput::Close`] means the connection
//! can no longer be used.

use std::collections::VecDeque;

use crate::key::Key;
use crate::message::{AssociatedFile, Message, Service, Version};
use crate::server::Validity;
use crate::uuid::{AuthToken, Uuid};

/// Why a `GET`'s `DATA` was refused.
const DATA_TOO_LONG: &str = "DATA longer than the key's size";

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `AUTH-SUCCESS`: the server's (or proxied repository's) UUID.
    Authenticated(Uuid),
    AuthFailed,
    /// The agreed version (0 when the server predates `VERSION`).
    Version(Version),
    /// Requests with no reply (`BYPASS`, `UNLOCKCONTENT`).
    Sent,
    Present(bool),
    Locked(bool),
    /// `SUCCESS`/`FAILURE`, with the `-PLUS` UUIDs of a gateway.
    Removed {
        ok: bool,
        plus: Vec<Uuid>,
    },
    Timestamp(i64),
    /// `PUT-FROM offset` of a streamed upload ([`Client::put_stream`]): call
    /// [`Client::put_stream_data`] next.
    PutFrom(u64),
    /// `ALREADY-HAVE[-PLUS]`, or the result of sending the content.
    Put {
        stored: bool,
        already: bool,
        plus: Vec<Uuid>,
    },
    /// The content arrived and the caller accepted it.
    Got {
        ok: bool,
    },
    /// `CONNECT` was sent; relay `DATA` frames now.
    Connected,
    Changed(Vec<String>),
}

/// A failed request: the server's `ERROR` text, or what we objected to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("remote error: {0}")]
    Remote(String),
    #[error("protocol violation: {0}")]
    Unexpected(String),
    #[error("connection closed")]
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    Send(Message),
    /// Write `len` raw bytes of the content starting at `offset`, then call
    /// [`Client::handle_payload_sent`] (or close the connection if the content
    /// cannot give that many bytes).
    SendPayload {
        offset: u64,
        len: u64,
    },
    /// Read exactly `len` raw bytes and append them to the download, then call
    /// [`Client::handle_payload_received`].
    ReceivePayload {
        len: u64,
    },
    /// Verify the downloaded content, then call [`Client::handle_get_verified`].
    VerifyGet {
        validity: Validity,
    },
    Done(Result<Reply, RequestError>),
    Close(String),
}

#[derive(Debug)]
enum Await {
    Idle,
    AuthReply,
    VersionReply,
    SuccessFailure {
        lock: bool,
    },
    RemoveReply,
    TimestampReply,
    PutReply {
        size: u64,
        data_present: bool,
    },
    /// A streamed upload's `PUT-FROM`/`ALREADY-HAVE`.
    PutStreamReply,
    /// Streamed upload: `PUT-FROM` arrived; the caller sends `DATA` next.
    PutStreamData,
    PutResult,
    SendingPayload,
    /// `GET` sent; `limit` is the most bytes the content can have from the
    /// offset asked (the key's size minus it), if the key has a size.
    DataHeader {
        limit: Option<u64>,
    },
    ReceivingPayload,
    GetValidity,
    Verifying,
    ChangedReply,
    Broken,
}

/// One client-side P2P session.
#[derive(Debug)]
pub struct Client {
    version: Version,
    state: Await,
    out: VecDeque<ClientOutput>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            version: 0,
            state: Await::Idle,
            out: VecDeque::new(),
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.state, Await::Idle)
    }

    pub fn is_broken(&self) -> bool {
        matches!(self.state, Await::Broken)
    }

    /// True while the machine waits for a line from the server.
    pub fn wants_line(&self) -> bool {
        self.out.is_empty()
            && !matches!(
                self.state,
                Await::Idle
                    | Await::Broken
                    | Await::SendingPayload
                    | Await::PutStreamData
                    | Await::ReceivingPayload
                    | Await::Verifying
            )
    }

    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    fn send(&mut self, m: Message) {
        self.out.push_back(ClientOutput::Send(m));
    }

    fn done(&mut self, r: Result<Reply, RequestError>) {
        self.state = Await::Idle;
        self.out.push_back(ClientOutput::Done(r));
    }

    fn begin(&mut self, m: Message, wait: Await) {
        self.send(m);
        self.state = wait;
    }

    /// `AUTH`, for transports where the client authenticates.
    pub fn auth(&mut self, me: Uuid, token: AuthToken) {
        self.begin(Message::Auth(Some(me), token), Await::AuthReply);
    }

    /// Wait for the unprompted `AUTH-SUCCESS` of `git-annex-shell p2pstdio`.
    pub fn expect_auth_success(&mut self) {
        self.state = Await::AuthReply;
    }

    pub fn negotiate_version(&mut self, offer: Version) {
        self.begin(Message::Version(offer), Await::VersionReply);
    }

    /// `BYPASS` (only sent at v2+, and only when non-empty, as git-annex does).
    pub fn bypass(&mut self, uuids: Vec<Uuid>) {
        if self.version >= 2 && !uuids.is_empty() {
            self.send(Message::Bypass(uuids));
        }
        self.done(Ok(Reply::Sent));
    }

    pub fn check_present(&mut self, key: Key) {
        self.begin(
            Message::CheckPresent(key),
            Await::SuccessFailure { lock: false },
        );
    }

    pub fn lock_content(&mut self, key: Key) {
        self.begin(
            Message::LockContent(key),
            Await::SuccessFailure { lock: true },
        );
    }

    /// Ends a lock taken by a successful `lock_content`.
    pub fn unlock_content(&mut self) {
        self.send(Message::UnlockContent);
        self.done(Ok(Reply::Sent));
    }

    pub fn remove(&mut self, key: Key) {
        self.begin(Message::Remove(key), Await::RemoveReply);
    }

    /// `REMOVE-BEFORE` at v3+, plain `REMOVE` below (git-annex's fallback).
    pub fn remove_before(&mut self, deadline: i64, key: Key) {
        if self.version >= 3 {
            self.begin(Message::RemoveBefore(deadline, key), Await::RemoveReply);
        } else {
            self.remove(key);
        }
    }

    pub fn get_timestamp(&mut self) {
        self.begin(Message::GetTimestamp, Await::TimestampReply);
    }

    /// Upload content of `size` bytes. With `data_present` (v4+ only) the content
    /// was stored out of band and only `DATA-PRESENT` is sent.
    pub fn put(&mut self, key: Key, file: AssociatedFile, size: u64, data_present: bool) {
        let data_present = data_present && self.version >= 4;
        self.begin(
            Message::Put(file, key),
            Await::PutReply { size, data_present },
        );
    }

    /// Upload content whose length is not known yet (a relay): the request
    /// ends with [`Reply::PutFrom`] (or `ALREADY-HAVE`, as [`Reply::Put`]);
    /// then [`Client::put_stream_data`] sends `DATA len`, the caller writes
    /// `len` raw bytes and answers with [`Client::handle_payload_sent`].
    pub fn put_stream(&mut self, key: Key, file: AssociatedFile) {
        self.begin(Message::Put(file, key), Await::PutStreamReply);
    }

    /// After [`Reply::PutFrom`]: sends `DATA len`. No
    /// [`ClientOutput::SendPayload`] follows: the caller writes the bytes.
    pub fn put_stream_data(&mut self, len: u64) {
        if matches!(self.state, Await::PutStreamData) {
            self.send(Message::Data(len));
            self.state = Await::SendingPayload;
        }
    }

    /// Download from `offset` (the size of the caller's partial file).
    pub fn get(&mut self, key: Key, file: AssociatedFile, offset: u64) {
        let limit = key.size().map(|size| size.saturating_sub(offset));
        self.begin(Message::Get(offset, file, key), Await::DataHeader { limit });
    }

    pub fn connect(&mut self, service: Service) {
        self.send(Message::Connect(service));
        self.done(Ok(Reply::Connected));
    }

    pub fn notify_change(&mut self) {
        self.begin(Message::NotifyChange, Await::ChangedReply);
    }

    fn protocol_violation(&mut self, expected: &str) {
        self.send(Message::Error(format!("expected {expected}")));
        self.done(Err(RequestError::Unexpected(format!(
            "expected {expected}"
        ))));
    }

    pub fn handle_eof(&mut self) {
        if !matches!(self.state, Await::Idle | Await::Broken) {
            self.out
                .push_back(ClientOutput::Done(Err(RequestError::Closed)));
        }
        self.state = Await::Broken;
        self.out
            .push_back(ClientOutput::Close("connection closed by peer".into()));
    }

    /// One line from the server, without its `\n`.
    pub fn handle_line(&mut self, line: &[u8]) {
        let msg = Message::parse(line).ok();
        use Message as M;
        match std::mem::replace(&mut self.state, Await::Idle) {
            Await::AuthReply => match msg {
                Some(M::AuthSuccess(u)) => self.done(Ok(Reply::Authenticated(u))),
                Some(M::AuthFailure) => self.done(Ok(Reply::AuthFailed)),
                _ => {
                    self.send(M::Error("auth failed".into()));
                    self.done(Err(RequestError::Unexpected("auth failed".into())));
                }
            },
            Await::VersionReply => match msg {
                Some(M::Version(v)) => {
                    self.version = v;
                    self.done(Ok(Reply::Version(v)));
                }
                Some(M::Error(_)) => {
                    self.version = 0;
                    self.done(Ok(Reply::Version(0)));
                }
                _ => self.protocol_violation("VERSION"),
            },
            Await::SuccessFailure { lock } => match msg {
                Some(M::Success) => self.done(Ok(if lock {
                    Reply::Locked(true)
                } else {
                    Reply::Present(true)
                })),
                Some(M::Failure) => self.done(Ok(if lock {
                    Reply::Locked(false)
                } else {
                    Reply::Present(false)
                })),
                Some(M::Error(e)) => self.done(Err(RequestError::Remote(e))),
                _ => self.protocol_violation("SUCCESS or FAILURE"),
            },
            Await::RemoveReply => match msg {
                Some(M::Success) => self.done(Ok(Reply::Removed {
                    ok: true,
                    plus: vec![],
                })),
                Some(M::SuccessPlus(plus)) => self.done(Ok(Reply::Removed { ok: true, plus })),
                Some(M::Failure) => self.done(Ok(Reply::Removed {
                    ok: false,
                    plus: vec![],
                })),
                Some(M::FailurePlus(plus)) => self.done(Ok(Reply::Removed { ok: false, plus })),
                Some(M::Error(e)) => self.done(Err(RequestError::Remote(e))),
                _ => self.protocol_violation("SUCCESS or FAILURE"),
            },
            Await::TimestampReply => match msg {
                Some(M::Timestamp(t)) => self.done(Ok(Reply::Timestamp(t))),
                Some(M::Error(e)) => self.done(Err(RequestError::Remote(e))),
                _ => self.protocol_violation("TIMESTAMP"),
            },
            Await::PutReply { size, data_present } => match msg {
                Some(M::PutFrom(offset)) => {
                    if data_present {
                        self.send(M::DataPresent);
                        self.state = Await::PutResult;
                    } else {
                        let len = size.saturating_sub(offset);
                        self.send(M::Data(len));
                        if len == 0 {
                            self.finish_payload(true);
                        } else {
                            self.state = Await::SendingPayload;
                            self.out
                                .push_back(ClientOutput::SendPayload { offset, len });
                        }
                    }
                }
                Some(M::AlreadyHave) => self.done(Ok(Reply::Put {
                    stored: true,
                    already: true,
                    plus: vec![],
                })),
                Some(M::AlreadyHavePlus(plus)) => self.done(Ok(Reply::Put {
                    stored: true,
                    already: true,
                    plus,
                })),
                Some(M::Error(e)) => self.done(Err(RequestError::Remote(e))),
                _ => self.protocol_violation("PUT_FROM or ALREADY_HAVE"),
            },
            Await::PutStreamReply => match msg {
                Some(M::PutFrom(offset)) => {
                    self.done(Ok(Reply::PutFrom(offset)));
                    self.state = Await::PutStreamData;
                }
                Some(M::AlreadyHave) => self.done(Ok(Reply::Put {
                    stored: true,
                    already: true,
                    plus: vec![],
                })),
                Some(M::AlreadyHavePlus(plus)) => self.done(Ok(Reply::Put {
                    stored: true,
                    already: true,
                    plus,
                })),
                Some(M::Error(e)) => self.done(Err(RequestError::Remote(e))),
                _ => self.protocol_violation("PUT_FROM or ALREADY_HAVE"),
            },
            Await::PutResult => match msg {
                Some(M::Success) => self.put_done(true, vec![]),
                Some(M::SuccessPlus(plus)) => self.put_done(true, plus),
                Some(M::Failure) => self.put_done(false, vec![]),
                Some(M::FailurePlus(plus)) => self.put_done(false, plus),
                Some(M::Error(e)) => self.done(Err(RequestError::Remote(e))),
                _ => self.protocol_violation("SUCCESS or FAILURE"),
            },
            Await::DataHeader { limit } => match msg {
                Some(M::Data(len)) if limit.is_some_and(|l| len > l) => {
                    // More than the key's size: refused before a byte is
                    // read. The bytes that follow cannot be skipped safely,
                    // so the connection ends.
                    self.send(M::Error(DATA_TOO_LONG.into()));
                    self.out
                        .push_back(ClientOutput::Done(Err(RequestError::Unexpected(
                            DATA_TOO_LONG.into(),
                        ))));
                    self.state = Await::Broken;
                    self.out
                        .push_back(ClientOutput::Close(DATA_TOO_LONG.into()));
                }
                Some(M::Data(len)) => {
                    self.state = Await::ReceivingPayload;
                    self.out.push_back(ClientOutput::ReceivePayload { len });
                }
                Some(M::Error(e)) => self.done(Err(RequestError::Remote(e))),
                _ => self.protocol_violation("DATA"),
            },
            Await::GetValidity => {
                let validity = match msg {
                    Some(M::Valid) => Validity::Valid,
                    Some(M::Invalid) => Validity::Invalid,
                    _ => {
                        self.send(M::Error("expected VALID or INVALID".into()));
                        Validity::Unknown
                    }
                };
                self.state = Await::Verifying;
                self.out.push_back(ClientOutput::VerifyGet { validity });
            }
            Await::ChangedReply => match msg {
                Some(M::Changed(shas)) => self.done(Ok(Reply::Changed(shas))),
                _ => self.protocol_violation("CHANGED"),
            },
            other @ (Await::Idle
            | Await::Broken
            | Await::SendingPayload
            | Await::PutStreamData
            | Await::ReceivingPayload
            | Await::Verifying) => {
                // Nothing was asked: the server is out of step with us.
                let _ = other;
                self.state = Await::Broken;
                self.out
                    .push_back(ClientOutput::Close("unexpected line from server".into()));
            }
        }
    }

    fn put_done(&mut self, stored: bool, plus: Vec<Uuid>) {
        self.done(Ok(Reply::Put {
            stored,
            already: false,
            plus,
        }));
    }

    fn finish_payload(&mut self, valid: bool) {
        if self.version >= 1 {
            self.send(if valid {
                Message::Valid
            } else {
                Message::Invalid
            });
        }
        self.state = Await::PutResult;
    }

    /// Answer to [`ClientOutput::SendPayload`].
    pub fn handle_payload_sent(&mut self, valid: bool) {
        if matches!(self.state, Await::SendingPayload) {
            self.finish_payload(valid);
        }
    }

    /// Answer to [`ClientOutput::ReceivePayload`]; `complete` is false when the
    /// connection ended early (the partial download is kept for a resume).
    pub fn handle_payload_received(&mut self, complete: bool) {
        if !matches!(self.state, Await::ReceivingPayload) {
            return;
        }
        if !complete {
            self.handle_eof();
        } else if self.version >= 1 {
            self.state = Await::GetValidity;
        } else {
            self.state = Await::Verifying;
            self.out.push_back(ClientOutput::VerifyGet {
                validity: Validity::Unknown,
            });
        }
    }

    /// Answer to [`ClientOutput::VerifyGet`]: whether the content was accepted.
    pub fn handle_get_verified(&mut self, ok: bool) {
        if matches!(self.state, Await::Verifying) {
            self.send(if ok {
                Message::Success
            } else {
                Message::Failure
            });
            self.done(Ok(Reply::Got { ok }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str =
        "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt";

    fn drain(c: &mut Client) -> Vec<ClientOutput> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn key() -> Key {
        Key::parse(HELLO).unwrap()
    }

    #[test]
    fn handshake_and_put_with_resume() {
        let mut c = Client::new();
        c.expect_auth_success();
        assert!(c.wants_line());
        c.handle_line(b"AUTH-SUCCESS bbbb");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Ok(Reply::Authenticated(
                Uuid::parse("bbbb").unwrap()
            )))]
        );
        c.negotiate_version(4);
        assert_eq!(drain(&mut c), vec![ClientOutput::Send(Message::Version(4))]);
        c.handle_line(b"VERSION 3");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Ok(Reply::Version(3)))]
        );
        c.put(key(), AssociatedFile::new("hello.txt"), 6, false);
        drain(&mut c);
        c.handle_line(b"PUT-FROM 2");
        assert_eq!(
            drain(&mut c),
            vec![
                ClientOutput::Send(Message::Data(4)),
                ClientOutput::SendPayload { offset: 2, len: 4 }
            ]
        );
        c.handle_payload_sent(true);
        assert_eq!(drain(&mut c), vec![ClientOutput::Send(Message::Valid)]);
        c.handle_line(b"SUCCESS-PLUS u1 u2");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Ok(Reply::Put {
                stored: true,
                already: false,
                plus: vec![Uuid::parse("u1").unwrap(), Uuid::parse("u2").unwrap()]
            }))]
        );
        assert!(c.is_idle());
    }

    #[test]
    fn streamed_put() {
        let mut c = Client::new();
        c.negotiate_version(4);
        drain(&mut c);
        c.handle_line(b"VERSION 4");
        drain(&mut c);
        c.put_stream(key(), AssociatedFile::none());
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Send(Message::Put(
                AssociatedFile::none(),
                key()
            ))]
        );
        c.handle_line(b"PUT-FROM 2");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Ok(Reply::PutFrom(2)))]
        );
        assert!(!c.wants_line());
        c.put_stream_data(4);
        assert_eq!(drain(&mut c), vec![ClientOutput::Send(Message::Data(4))]);
        c.handle_payload_sent(false);
        assert_eq!(drain(&mut c), vec![ClientOutput::Send(Message::Invalid)]);
        c.handle_line(b"FAILURE");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Ok(Reply::Put {
                stored: false,
                already: false,
                plus: vec![]
            }))]
        );
        c.put_stream(key(), AssociatedFile::none());
        drain(&mut c);
        c.handle_line(b"ALREADY-HAVE-PLUS u1");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Ok(Reply::Put {
                stored: true,
                already: true,
                plus: vec![Uuid::parse("u1").unwrap()]
            }))]
        );
        assert!(c.is_idle());
    }

    #[test]
    fn get_and_bad_replies() {
        let mut c = Client::new();
        c.negotiate_version(1);
        drain(&mut c);
        c.handle_line(b"VERSION 1");
        drain(&mut c);
        c.get(key(), AssociatedFile::none(), 0);
        drain(&mut c);
        c.handle_line(b"DATA 6");
        assert_eq!(drain(&mut c), vec![ClientOutput::ReceivePayload { len: 6 }]);
        c.handle_payload_received(true);
        c.handle_line(b"VALID");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::VerifyGet {
                validity: Validity::Valid
            }]
        );
        c.handle_get_verified(true);
        assert_eq!(
            drain(&mut c),
            vec![
                ClientOutput::Send(Message::Success),
                ClientOutput::Done(Ok(Reply::Got { ok: true }))
            ]
        );
        c.check_present(key());
        drain(&mut c);
        c.handle_line(b"PUT-FROM 0");
        assert_eq!(
            drain(&mut c),
            vec![
                ClientOutput::Send(Message::Error("expected SUCCESS or FAILURE".into())),
                ClientOutput::Done(Err(RequestError::Unexpected(
                    "expected SUCCESS or FAILURE".into()
                )))
            ]
        );
        c.remove_before(10, key());
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Send(Message::Remove(key()))]
        );
        c.handle_line(b"ERROR this repository is append-only; removal denied");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Err(RequestError::Remote(
                "this repository is append-only; removal denied".into()
            )))]
        );
        c.handle_eof();
        assert!(c.is_broken());
    }

    /// A server announcing more bytes than the key's size (found by the
    /// client fuzzer, which checks that no `DATA` beyond it is accepted):
    /// refused before a byte is read, and the connection ends.
    #[test]
    fn get_refuses_data_longer_than_the_key() {
        let mut c = Client::new();
        c.get(key(), AssociatedFile::none(), 2);
        drain(&mut c);
        c.handle_line(b"DATA 5");
        assert_eq!(
            drain(&mut c),
            vec![
                ClientOutput::Send(Message::Error(DATA_TOO_LONG.into())),
                ClientOutput::Done(Err(RequestError::Unexpected(DATA_TOO_LONG.into()))),
                ClientOutput::Close(DATA_TOO_LONG.into()),
            ]
        );
        assert!(c.is_broken());
        // Exactly the rest of the content is fine.
        let mut c = Client::new();
        c.get(key(), AssociatedFile::none(), 2);
        drain(&mut c);
        c.handle_line(b"DATA 4");
        assert_eq!(drain(&mut c), vec![ClientOutput::ReceivePayload { len: 4 }]);
    }

    #[test]
    fn old_server_without_version() {
        let mut c = Client::new();
        c.negotiate_version(4);
        drain(&mut c);
        c.handle_line(b"ERROR unknown command");
        assert_eq!(
            drain(&mut c),
            vec![ClientOutput::Done(Ok(Reply::Version(0)))]
        );
        c.bypass(vec![Uuid::parse("g").unwrap()]);
        assert_eq!(drain(&mut c), vec![ClientOutput::Done(Ok(Reply::Sent))]);
    }
}
