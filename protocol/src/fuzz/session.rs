//! The server and client machines under arbitrary peers and arbitrary
//! drivers: lines from a vocabulary of real messages (with lying numbers)
//! or raw bytes, answers of every kind at any time (right, wrong, repeated,
//! late). Each harness asserts the machine's invariants and panics on a
//! violation, which is what the fuzzers look for.

use super::input::Input;
use crate::client::{Client, ClientOutput, Reply};
use crate::key::Key;
use crate::message::{AssociatedFile, Message};
use crate::server::{GitAccess, PutStart, ServeMode, Server, ServerConfig, ServerOutput, Start};
use crate::uuid::{AuthToken, Uuid};

const KEYS: &[&str] = &[
    "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt",
    "SHA256E-s26--808b73473846350b7de5ac8e0c3d12318d9da9fa5ad1e37d161b3dd640381043.txt",
    "WORM-s0-m0--x",
    "SHA256E-s1048576-S65536-C2--aaaa",
];
const UUIDS: &[&str] = &[
    "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
    "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
    "acae2ff6-6c1e-8bec-b8b9-397a3755f397",
];

fn key(i: &mut Input<'_>) -> Key {
    let text = i.pick(KEYS);
    Key::parse(text).unwrap_or_else(|_| Key::parse(KEYS[0]).expect("valid literal"))
}

fn uuid(i: &mut Input<'_>) -> Uuid {
    Uuid::parse(i.pick(UUIDS)).expect("valid literal")
}

fn uuids(i: &mut Input<'_>) -> Vec<Uuid> {
    (0..i.below(4)).map(|_| uuid(i)).collect()
}

fn file(i: &mut Input<'_>) -> &'static str {
    i.pick(&["", "a.txt", "dir/b", "%"])
}

/// One line a client could send (without its `\n`).
fn client_line(i: &mut Input<'_>) -> Vec<u8> {
    let k = key(i);
    let k = k.as_str();
    let line = match i.byte() % 22 {
        0 => format!("VERSION {}", i.number()),
        1 => format!("CHECKPRESENT {k}"),
        2 => format!("LOCKCONTENT {k}"),
        3 => "UNLOCKCONTENT".into(),
        4 => format!("REMOVE {k}"),
        5 => format!("REMOVE-BEFORE {} {k}", i.number()),
        6 => "GETTIMESTAMP".into(),
        7 | 8 => format!("PUT {} {k}", file(i)),
        9 => format!("GET {} {} {k}", i.number(), file(i)),
        10..=12 => format!("DATA {}", i.number()),
        13 => "DATA-PRESENT".into(),
        14 => "VALID".into(),
        15 => "INVALID".into(),
        16 => i.pick(&["SUCCESS", "FAILURE"]).to_string(),
        17 => format!("BYPASS {}", UUIDS[i.below(UUIDS.len())]),
        18 => format!("AUTH {} token{}", UUIDS[i.below(UUIDS.len())], i.byte()),
        19 => i
            .pick(&[
                "CONNECT git-upload-pack",
                "CONNECT git-receive-pack",
                "NOTIFYCHANGE",
            ])
            .to_string(),
        20 => "ERROR bye".into(),
        _ => {
            return i
                .bytes(40)
                .iter()
                .copied()
                .filter(|b| *b != b'\n')
                .collect();
        }
    };
    line.into_bytes()
}

/// One line a server could send.
fn server_line(i: &mut Input<'_>) -> Vec<u8> {
    let us = |i: &mut Input<'_>| {
        uuids(i)
            .iter()
            .map(|u| u.as_str().to_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let line = match i.byte() % 19 {
        0 => format!("AUTH-SUCCESS {}", UUIDS[i.below(UUIDS.len())]),
        1 => "AUTH-FAILURE".into(),
        2 => format!("VERSION {}", i.number()),
        3 | 4 => "SUCCESS".into(),
        5 => "FAILURE".into(),
        6 => format!("SUCCESS-PLUS {}", us(i)),
        7 => format!("FAILURE-PLUS {}", us(i)),
        8 => format!("TIMESTAMP {}", i.number()),
        9 | 10 => format!("PUT-FROM {}", i.number()),
        11 => "ALREADY-HAVE".into(),
        12 => format!("ALREADY-HAVE-PLUS {}", us(i)),
        13 | 14 => format!("DATA {}", i.number()),
        15 => i.pick(&["VALID", "INVALID"]).to_string(),
        16 => "CHANGED 0123456789abcdef0123456789abcdef01234567".into(),
        17 => "ERROR no".into(),
        _ => {
            return i
                .bytes(40)
                .iter()
                .copied()
                .filter(|b| *b != b'\n')
                .collect();
        }
    };
    line.into_bytes()
}

/// The driver answers the server has, one per request output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Auth,
    Present,
    Locked,
    Removed,
    Timestamp,
    PutStart,
    PayloadReceived,
    Stored,
    ContentSize,
    PayloadSent,
    Changed,
}

const ANSWERS: &[Answer] = &[
    Answer::Auth,
    Answer::Present,
    Answer::Locked,
    Answer::Removed,
    Answer::Timestamp,
    Answer::PutStart,
    Answer::PayloadReceived,
    Answer::Stored,
    Answer::ContentSize,
    Answer::PayloadSent,
    Answer::Changed,
];

fn expected_answer(out: &ServerOutput) -> Option<Answer> {
    Some(match out {
        ServerOutput::CheckAuth { .. } => Answer::Auth,
        ServerOutput::CheckPresent { .. } => Answer::Present,
        ServerOutput::Lock { .. } => Answer::Locked,
        ServerOutput::Remove { .. } => Answer::Removed,
        ServerOutput::GetTimestamp => Answer::Timestamp,
        ServerOutput::PreparePut { .. } => Answer::PutStart,
        ServerOutput::ReceivePayload { .. } => Answer::PayloadReceived,
        ServerOutput::CommitPut { .. } | ServerOutput::ConfirmPresent { .. } => Answer::Stored,
        ServerOutput::ContentSize { .. } => Answer::ContentSize,
        ServerOutput::SendPayload { .. } => Answer::PayloadSent,
        ServerOutput::WaitRefChange => Answer::Changed,
        _ => return None,
    })
}

fn give(server: &mut Server, a: Answer, i: &mut Input<'_>) {
    let mode = i.pick(&[
        ServeMode::ReadOnly,
        ServeMode::AppendOnly,
        ServeMode::ReadWrite,
    ]);
    match a {
        Answer::Auth => server.handle_auth(i.bool().then_some(mode)),
        Answer::Present => server.handle_present(if i.one_in(4) {
            Err("disk on fire".into())
        } else {
            Ok(i.bool())
        }),
        Answer::Locked => server.handle_locked(i.bool()),
        Answer::Removed => match i.byte() % 3 {
            0 => server.handle_removed(Err("cannot".into())),
            1 => server.handle_removed(Ok(i.bool())),
            _ => server.handle_removed_plus(Ok(i.bool()), uuids(i)),
        },
        Answer::Timestamp => server.handle_timestamp(i.number() as i64),
        Answer::PutStart => server.handle_put_start(if i.one_in(3) {
            PutStart::AlreadyHave(uuids(i))
        } else {
            PutStart::From(i.number())
        }),
        Answer::PayloadReceived => server.handle_payload_received(!i.one_in(4)),
        Answer::Stored => {
            if i.bool() {
                server.handle_stored(i.bool())
            } else {
                server.handle_stored_plus(i.bool(), uuids(i))
            }
        }
        Answer::ContentSize => {
            server.handle_content_size(if i.one_in(4) { None } else { Some(i.number()) })
        }
        Answer::PayloadSent => server.handle_payload_sent(i.bool()),
        Answer::Changed => server.handle_changed(Vec::new()),
    }
}

/// A reply that ends a request (at most one per line the client sends).
fn is_final(m: &Message) -> bool {
    matches!(
        m,
        Message::Success
            | Message::Failure
            | Message::SuccessPlus(_)
            | Message::FailurePlus(_)
            | Message::AlreadyHave
            | Message::AlreadyHavePlus(_)
            | Message::Timestamp(_)
            | Message::AuthSuccess(_)
            | Message::AuthFailure
            | Message::Version(_)
            | Message::PutFrom(_)
            | Message::Changed(_)
    )
}

/// What the server harness checks between steps.
#[derive(Default)]
struct Watch {
    /// The driver request outstanding, if any.
    outstanding: Option<Answer>,
    closed: bool,
    locked: bool,
    /// Lines and final replies since the last line fed.
    sent_since_line: usize,
    final_since_line: usize,
    /// The last `PUT-FROM` the server sent and the last `DATA n` it was fed.
    put_from: Option<u64>,
    data_len: Option<u64>,
}

impl Watch {
    /// Checks and records everything the server asked since the last call.
    fn drain(&mut self, server: &mut Server, i: &mut Input<'_>) {
        let mut rounds = 0usize;
        while let Some(out) = server.poll_output() {
            rounds += 1;
            assert!(rounds < 10_000, "the server keeps producing output");
            assert!(!self.closed, "output after Close: {out:?}");
            if let Some(a) = expected_answer(&out) {
                assert!(
                    self.outstanding.is_none(),
                    "{out:?} while {:?} is unanswered",
                    self.outstanding
                );
                assert!(server.awaiting_driver(), "{out:?} but not waiting");
                if let ServerOutput::ReceivePayload { offset, len, .. } = &out {
                    assert_eq!(
                        Some(*len),
                        self.data_len,
                        "reads other than the DATA length"
                    );
                    assert_eq!(Some(*offset), self.put_from, "appends at the wrong offset");
                }
                self.outstanding = Some(a);
                continue;
            }
            match out {
                ServerOutput::Send(m) => {
                    self.sent_since_line += 1;
                    if is_final(&m) {
                        self.final_since_line += 1;
                    }
                    if let Message::PutFrom(n) = m {
                        self.put_from = Some(n);
                    }
                    assert!(self.sent_since_line <= 2, "more than two lines for one");
                    assert!(self.final_since_line <= 1, "two replies to one request");
                }
                ServerOutput::Unlock { .. } => {
                    assert!(self.locked, "unlock without a lock");
                    self.locked = false;
                }
                ServerOutput::Close(_) => {
                    self.closed = true;
                    self.outstanding = None;
                }
                _ => {}
            }
        }
        let _ = i;
    }
}

/// The server session: arbitrary client lines and arbitrary driver answers.
pub fn server_session(data: &[u8]) {
    let mut i = Input::new(data);
    let mode = i.pick(&[
        ServeMode::ReadOnly,
        ServeMode::AppendOnly,
        ServeMode::ReadWrite,
    ]);
    let start = if i.bool() {
        Start::Preauthenticated { mode }
    } else {
        Start::RequireAuth
    };
    let git = i.pick(&[GitAccess::Served, GitAccess::Refused, GitAccess::Proxied]);
    let mut server = Server::new(ServerConfig {
        uuid: Uuid::parse(UUIDS[1]).expect("valid literal"),
        start,
        git,
        max_version: i.number() as i64,
    });
    let mut w = Watch::default();
    w.drain(&mut server, &mut i);
    let mut steps = 0;
    while !i.is_empty() && steps < 4096 {
        steps += 1;
        match i.byte() % 8 {
            0..=2 => {
                let line = client_line(&mut i);
                let before_waiting = w.outstanding.is_some();
                w.sent_since_line = 0;
                w.final_since_line = 0;
                w.data_len = match Message::parse(&line) {
                    Ok(Message::Data(n)) => Some(n),
                    _ => None,
                };
                server.handle_line(&line);
                if before_waiting {
                    // A line while the driver works is not acted on.
                    assert!(
                        server.poll_output().is_none(),
                        "acted on a line while waiting"
                    );
                }
            }
            3..=5 => {
                // The right answer, or most often so.
                let a = match w.outstanding {
                    Some(a) if !i.one_in(8) => a,
                    _ => i.pick(ANSWERS),
                };
                let right = w.outstanding == Some(a);
                let was_lock = a == Answer::Locked;
                give(&mut server, a, &mut i);
                if right {
                    w.outstanding = None;
                    if was_lock && server.is_locked() {
                        w.locked = true;
                    }
                } else {
                    // A wrong or spurious answer changes nothing.
                    assert!(
                        server.poll_output().is_none(),
                        "acted on a wrong answer {a:?}"
                    );
                    assert_eq!(
                        server.awaiting_driver(),
                        w.outstanding.is_some(),
                        "a wrong answer {a:?} changed what is awaited"
                    );
                }
            }
            6 => server.handle_eof(),
            _ => server.handle_protocol_error("broken"),
        }
        w.drain(&mut server, &mut i);
        if w.closed {
            assert!(server.is_closed());
            assert!(!w.locked, "the lock outlives the session");
        }
    }
}

/// The client session: arbitrary requests, arbitrary server lines.
pub fn client_session(data: &[u8]) {
    let mut i = Input::new(data);
    let mut client = Client::new();
    // The request outstanding and, for a PUT, the content's size.
    let mut asked = false;
    let mut put_size: Option<u64> = None;
    // For a GET: the most bytes the content can have from its offset.
    let mut get_limit: Option<u64> = None;
    let mut broken = false;
    let mut steps = 0;
    while !i.is_empty() && steps < 4096 {
        steps += 1;
        if client.is_idle() && !asked && i.one_in(2) {
            let k = key(&mut i);
            let f = AssociatedFile::new(file(&mut i));
            asked = true;
            put_size = None;
            get_limit = None;
            match i.byte() % 14 {
                0 => client.auth(
                    uuid(&mut i),
                    AuthToken::parse("t0k3n").expect("valid literal"),
                ),
                1 => client.expect_auth_success(),
                2 => client.negotiate_version(i.number() as i64),
                3 => client.bypass(uuids(&mut i)),
                4 => client.check_present(k),
                5 => client.lock_content(k),
                6 => client.unlock_content(),
                7 => client.remove(k),
                8 => client.remove_before(i.number() as i64, k),
                9 => client.get_timestamp(),
                10 => {
                    let size = i.number();
                    put_size = Some(size);
                    client.put(k, f, size, i.bool())
                }
                11 => client.put_stream(k, f),
                12 => {
                    let offset = i.number();
                    get_limit = k.size().map(|s| s.saturating_sub(offset));
                    client.get(k, f, offset)
                }
                _ => client.notify_change(),
            }
        } else {
            match i.byte() % 8 {
                0 => client.handle_eof(),
                1 => client.put_stream_data(i.number()),
                2 => client.handle_payload_sent(i.bool()),
                3 => client.handle_payload_received(i.bool()),
                4 => client.handle_get_verified(i.bool()),
                _ => {
                    let line = server_line(&mut i);
                    client.handle_line(&line);
                }
            }
        }
        let mut rounds = 0usize;
        while let Some(out) = client.poll_output() {
            rounds += 1;
            assert!(rounds < 10_000, "the client keeps producing output");
            match out {
                ClientOutput::Done(r) => {
                    assert!(asked, "a reply to no request: {r:?}");
                    asked = matches!(r, Ok(Reply::PutFrom(_)));
                }
                ClientOutput::SendPayload { offset, len } => {
                    assert!(!broken, "sends after the connection broke");
                    let size = put_size.expect("SendPayload only for a sized PUT");
                    assert!(
                        offset.checked_add(len).is_some_and(|end| end <= size),
                        "sends {len} bytes from {offset} of content of {size}"
                    );
                }
                ClientOutput::Send(_) => {
                    assert!(!broken, "sends after the connection broke");
                }
                ClientOutput::Close(_) => {
                    broken = true;
                    asked = false;
                }
                ClientOutput::ReceivePayload { len } => {
                    assert!(!broken, "reads after the connection broke");
                    if let Some(limit) = get_limit {
                        assert!(len <= limit, "accepts DATA {len} beyond the key's {limit}");
                    }
                }
                ClientOutput::VerifyGet { .. } => {}
            }
        }
        if broken {
            assert!(client.is_broken() && !client.wants_line());
            return;
        }
    }
}
