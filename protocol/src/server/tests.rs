use super::*;
use crate::fuzz::{MemoryDriver, MemoryStore};

const HELLO: &str =
    "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt";
const WORLD: &str =
    "SHA256E-s26--808b73473846350b7de5ac8e0c3d12318d9da9fa5ad1e37d161b3dd640381043.txt";
const AUTH: &str = "AUTH-SUCCESS bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb\n";

fn with_hello() -> MemoryStore {
    let mut s = MemoryStore::default();
    s.objects
        .insert(Key::parse(HELLO).unwrap(), b"hello\n".to_vec());
    s
}

fn session(mode: ServeMode, store: MemoryStore, input: &str) -> (String, MemoryDriver) {
    let mut d = MemoryDriver::new(mode, store);
    d.run(input.as_bytes());
    let sent = String::from_utf8_lossy(&d.sent).into_owned();
    (sent, d)
}

fn expect(mode: ServeMode, store: MemoryStore, input: &str, output: &str) -> MemoryDriver {
    let (sent, d) = session(mode, store, input);
    assert_eq!(sent, format!("{AUTH}{output}"), "input:\n{input}");
    d
}

#[test]
fn version_negotiation() {
    expect(
        ServeMode::ReadWrite,
        MemoryStore::default(),
        "VERSION 4\nVERSION 5\nVERSION 99\nVERSION 3\nVERSION 0\nVERSION -1\nVERSION\n",
        "VERSION 4\nVERSION 4\nVERSION 4\nVERSION 3\nVERSION 0\nVERSION -1\nERROR unknown command\n",
    );
}

#[test]
fn put_verifies_and_stores() {
    let d = expect(
        ServeMode::ReadWrite,
        MemoryStore::default(),
        &format!(
            "VERSION 1\nPUT world.txt {WORLD}\nDATA 26\nworld, this is a P2P test\nVALID\nPUT world.txt {WORLD}\n"
        ),
        "VERSION 1\nPUT-FROM 0\nSUCCESS\nALREADY-HAVE\n",
    );
    assert!(d.store.objects.contains_key(&Key::parse(WORLD).unwrap()));
    assert_eq!(d.closed, Some(CloseReason::Eof));
}

#[test]
fn wrong_content_is_refused_and_not_kept() {
    let d = expect(
        ServeMode::ReadWrite,
        MemoryStore::default(),
        &format!(
            "VERSION 1\nPUT world.txt {WORLD}\nDATA 26\nXXXXXXXXXXXXXXXXXXXXXXXXXXVALID\nPUT world.txt {WORLD}\n"
        ),
        "VERSION 1\nPUT-FROM 0\nFAILURE\nPUT-FROM 0\n",
    );
    assert!(d.store.objects.is_empty());
}

#[test]
fn data_longer_than_the_key_is_refused_before_a_byte_is_written() {
    let (sent, d) = session(
        ServeMode::ReadWrite,
        MemoryStore::default(),
        &format!("VERSION 4\nPUT r {WORLD}\nDATA 27\nworld, this is a P2P test!\nVALID\n"),
    );
    assert_eq!(
        sent,
        format!("{AUTH}VERSION 4\nPUT-FROM 0\nERROR {DATA_TOO_LONG}\n")
    );
    assert_eq!(
        d.closed,
        Some(CloseReason::ProtocolError(DATA_TOO_LONG.into()))
    );
    assert!(d.store.partial.is_empty() && d.store.objects.is_empty());
    // From an offset too, and past u64.
    let key = Key::parse(WORLD).unwrap();
    assert!(data_fits(&key, 0, 26) && data_fits(&key, 20, 6) && data_fits(&key, 0, 3));
    assert!(!data_fits(&key, 20, 7) && !data_fits(&key, u64::MAX, 2));
    assert!(data_fits(&Key::parse("WORM--x").unwrap(), 0, u64::MAX));
}

#[test]
fn short_data_keeps_partial_and_resumes() {
    let (sent, d) = session(
        ServeMode::ReadWrite,
        MemoryStore::default(),
        &format!("VERSION 4\nPUT r {WORLD}\nDATA 26\nworld, this"),
    );
    assert_eq!(sent, format!("{AUTH}VERSION 4\nPUT-FROM 0\nFAILURE\n"));
    assert!(matches!(d.closed, Some(CloseReason::ProtocolError(_))));
    let store = d.store;
    assert_eq!(store.partial.values().next().map(Vec::len), Some(11));
    expect(
        ServeMode::ReadWrite,
        store,
        &format!(
            "VERSION 4\nPUT r {WORLD}\nDATA 15\n is a P2P test\nVALID\nCHECKPRESENT {WORLD}\n"
        ),
        "VERSION 4\nPUT-FROM 11\nSUCCESS\nSUCCESS\n",
    );
}

#[test]
fn get_with_offsets_and_absent_content() {
    expect(
        ServeMode::ReadOnly,
        with_hello(),
        &format!(
            "VERSION 4\nGET 0 hello.txt {HELLO}\nSUCCESS\nGET 2 hello.txt {HELLO}\nSUCCESS\nGET 100 hello.txt {HELLO}\nSUCCESS\nGET 0  {WORLD}\nFAILURE\n"
        ),
        "VERSION 4\nDATA 6\nhello\nVALID\nDATA 4\nllo\nVALID\nDATA 0\nVALID\nDATA 0\nINVALID\n",
    );
    // Version 0: no VALID/INVALID at all.
    expect(
        ServeMode::ReadOnly,
        with_hello(),
        &format!("GET 0 hello.txt {HELLO}\nSUCCESS\n"),
        "DATA 6\nhello\n",
    );
}

#[test]
fn lock_then_anything_but_unlock_is_an_error() {
    let d = expect(
        ServeMode::ReadWrite,
        with_hello(),
        &format!(
            "VERSION 1\nLOCKCONTENT {HELLO}\nUNLOCKCONTENT {HELLO}\nLOCKCONTENT {HELLO}\nCHECKPRESENT {HELLO}\nUNLOCKCONTENT\nLOCKCONTENT {HELLO}\nUNLOCKCONTENT\n"
        ),
        "VERSION 1\nSUCCESS\nERROR expected UNLOCKCONTENT\nSUCCESS\nERROR expected UNLOCKCONTENT\nERROR unexpected command\nSUCCESS\n",
    );
    assert_eq!(d.store.locked, None);
}

#[test]
fn server_modes() {
    expect(
        ServeMode::ReadOnly,
        with_hello(),
        &format!(
            "VERSION 1\nPUT w {WORLD}\nREMOVE {HELLO}\nREMOVE-BEFORE 9 {HELLO}\nCHECKPRESENT {HELLO}\n"
        ),
        &format!(
            "VERSION 1\nERROR {READ_ONLY_ERROR}\nERROR {READ_ONLY_ERROR}\nERROR {READ_ONLY_ERROR}\nSUCCESS\n"
        ),
    );
    expect(
        ServeMode::AppendOnly,
        with_hello(),
        &format!("VERSION 1\nREMOVE {HELLO}\n"),
        &format!("VERSION 1\nERROR {APPEND_ONLY_ERROR}\n"),
    );
}

#[test]
fn remove_before_respects_the_clock() {
    let mut store = with_hello();
    store.now = 100;
    expect(
        ServeMode::ReadWrite,
        store,
        &format!(
            "VERSION 1\nGETTIMESTAMP\nREMOVE-BEFORE 99 {HELLO}\nCHECKPRESENT {HELLO}\nREMOVE-BEFORE 160 {HELLO}\nCHECKPRESENT {HELLO}\nREMOVE {HELLO}\n"
        ),
        "VERSION 1\nTIMESTAMP 100\nFAILURE\nSUCCESS\nSUCCESS\nFAILURE\nSUCCESS\n",
    );
}

#[test]
fn unknown_and_unexpected_commands() {
    expect(
        ServeMode::ReadWrite,
        with_hello(),
        &format!(
            "VERSION 4\nFROBNICATE x\ncheckpresent {HELLO}\nSUCCESS-PLUS u\nDATA-PRESENT\nTIMESTAMP 5\nPUT-FROM 0\nALREADY-HAVE-PLUS\nREMOVE-BEFORE abc {HELLO}\nBYPASS a b\nCHECKPRESENT {HELLO}\n"
        ),
        "VERSION 4\nERROR unknown command\nERROR unknown command\nERROR unexpected command\nERROR unexpected command\nERROR unexpected command\nERROR unexpected command\nERROR unexpected command\nERROR unknown command\nSUCCESS\n",
    );
}

#[test]
fn data_present_needs_v4() {
    expect(
        ServeMode::ReadWrite,
        with_hello(),
        &format!(
            "VERSION 4\nPUT w {WORLD}\nDATA-PRESENT\nVERSION 3\nPUT w {WORLD}\nDATA-PRESENT\n"
        ),
        "VERSION 4\nPUT-FROM 0\nFAILURE\nVERSION 3\nPUT-FROM 0\nERROR expected DATA\n",
    );
}

#[test]
fn client_error_ends_the_session() {
    let d = expect(
        ServeMode::ReadWrite,
        with_hello(),
        &format!("VERSION 1\nERROR oops\nCHECKPRESENT {HELLO}\n"),
        "VERSION 1\n",
    );
    assert_eq!(d.closed, Some(CloseReason::ClientError("oops".into())));
}

#[test]
fn push_to_read_only_is_refused_in_words_first() {
    for mode in [ServeMode::ReadOnly, ServeMode::AppendOnly] {
        let d = expect(
            mode,
            with_hello(),
            "VERSION 1\nCONNECT git-receive-pack\n",
            &format!("VERSION 1\nERROR {READ_ONLY_ERROR}\n"),
        );
        assert_eq!(d.closed, Some(CloseReason::AfterConnect));
    }
}

#[test]
fn connect_is_refused_over_p2pstdio() {
    let d = expect(
        ServeMode::ReadWrite,
        with_hello(),
        "VERSION 1\nCONNECT git-upload-pack\nDATA 4\n0000",
        "VERSION 1\n",
    );
    assert!(matches!(d.closed, Some(CloseReason::Unsupported(_))));
}

#[test]
fn auth_required_before_anything() {
    let config = ServerConfig {
        uuid: Uuid::parse("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb").unwrap(),
        start: Start::RequireAuth,
        git: GitAccess::Served,
        max_version: 4,
    };
    let mut s = Server::new(config);
    assert_eq!(s.poll_output(), None);
    s.handle_line(b"VERSION 4");
    assert_eq!(
        s.poll_output(),
        Some(ServerOutput::Send(Message::Error(
            "unexpected command".into()
        )))
    );
    s.handle_line(b"AUTH aaaa badtoken");
    assert!(matches!(
        s.poll_output(),
        Some(ServerOutput::CheckAuth { .. })
    ));
    s.handle_auth(None);
    assert_eq!(
        s.poll_output(),
        Some(ServerOutput::Send(Message::AuthFailure))
    );
    s.handle_line(b"AUTH aaaa goodtoken");
    assert!(matches!(
        s.poll_output(),
        Some(ServerOutput::CheckAuth { .. })
    ));
    s.handle_auth(Some(ServeMode::AppendOnly));
    assert_eq!(
        s.poll_output(),
        Some(ServerOutput::Send(Message::AuthSuccess(
            Uuid::parse("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb").unwrap()
        )))
    );
    assert_eq!(s.client_uuid().map(Uuid::as_str), Some("aaaa"));
    assert_eq!(s.mode(), ServeMode::AppendOnly);
    for _ in 0..MAX_AUTH_ATTEMPTS {
        s.handle_line(b"AUTH x y");
        while s.poll_output().is_some() {}
    }
    // Authenticated sessions treat AUTH as unexpected, never as a retry.
    assert!(!s.is_closed());
}

#[test]
fn bypass_goes_to_the_driver() {
    let (sent, d) = session(
        ServeMode::ReadWrite,
        with_hello(),
        "VERSION 2\nBYPASS 11111111-1111-4111-8111-111111111111 22222222-2222-4222-8222-222222222222\n",
    );
    assert_eq!(sent, format!("{AUTH}VERSION 2\n"));
    let got: Vec<&str> = d.bypass.iter().map(Uuid::as_str).collect();
    assert_eq!(
        got,
        [
            "11111111-1111-4111-8111-111111111111",
            "22222222-2222-4222-8222-222222222222"
        ]
    );
}

/// A server driven by hand, as a gateway's driver does.
fn gateway_server(version: &[u8]) -> Server {
    let mut s = Server::new(ServerConfig {
        uuid: Uuid::parse("ac525812-b24e-81d5-ad3f-c2acde9c9b05").unwrap(),
        start: Start::Preauthenticated {
            mode: ServeMode::ReadWrite,
        },
        git: GitAccess::Proxied,
        max_version: 4,
    });
    assert!(s.is_authenticated());
    s.handle_line(version);
    while s.poll_output().is_some() {}
    s
}

fn uuids(list: &[&str]) -> Vec<Uuid> {
    list.iter().map(|u| Uuid::parse(u).unwrap()).collect()
}

fn drain(s: &mut Server) -> Vec<ServerOutput> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

#[test]
fn plus_answers_at_v2_and_plain_below() {
    let n = uuids(&[
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
    ]);
    for (version, plus) in [(&b"VERSION 4"[..], true), (&b"VERSION 1"[..], false)] {
        let mut s = gateway_server(version);
        // PUT answered ALREADY-HAVE with holders.
        s.handle_line(format!("PUT x {HELLO}").as_bytes());
        assert!(matches!(
            drain(&mut s)[..],
            [ServerOutput::PreparePut { .. }]
        ));
        s.handle_put_start(PutStart::AlreadyHave(n.clone()));
        let want = if plus {
            Message::AlreadyHavePlus(n.clone())
        } else {
            Message::AlreadyHave
        };
        assert_eq!(drain(&mut s), [ServerOutput::Send(want)]);
        // PUT stored on the nodes.
        s.handle_line(format!("PUT x {WORLD}").as_bytes());
        drain(&mut s);
        s.handle_put_start(PutStart::From(0));
        assert_eq!(drain(&mut s), [ServerOutput::Send(Message::PutFrom(0))]);
        s.handle_line(b"DATA 26");
        drain(&mut s);
        s.handle_payload_received(true);
        s.handle_line(b"VALID");
        assert!(matches!(
            drain(&mut s)[..],
            [ServerOutput::CommitPut {
                validity: Validity::Valid,
                ..
            }]
        ));
        s.handle_stored_plus(true, n.clone());
        let want = if plus {
            Message::SuccessPlus(n.clone())
        } else {
            Message::Success
        };
        assert_eq!(drain(&mut s), [ServerOutput::Send(want)]);
        // REMOVE that removed from some nodes only.
        s.handle_line(format!("REMOVE {HELLO}").as_bytes());
        drain(&mut s);
        s.handle_removed_plus(Ok(false), n[..1].to_vec());
        let want = if plus {
            Message::FailurePlus(n[..1].to_vec())
        } else {
            Message::Failure
        };
        assert_eq!(drain(&mut s), [ServerOutput::Send(want)]);
        // An empty list is the plain answer.
        s.handle_line(format!("REMOVE {HELLO}").as_bytes());
        drain(&mut s);
        s.handle_removed_plus(Ok(true), Vec::new());
        assert_eq!(drain(&mut s), [ServerOutput::Send(Message::Success)]);
    }
}

#[test]
fn no_data_after_put_from_abandons_the_put() {
    let mut s = gateway_server(b"VERSION 4");
    s.handle_line(format!("PUT x {WORLD}").as_bytes());
    drain(&mut s);
    s.handle_put_start(PutStart::From(3));
    drain(&mut s);
    s.handle_line(b"CHECKPRESENT x");
    assert_eq!(
        drain(&mut s),
        [
            ServerOutput::AbandonPut {
                key: Key::parse(WORLD).unwrap()
            },
            ServerOutput::Send(Message::Error("expected DATA".into()))
        ]
    );
}

#[test]
fn get_always_asks_for_the_payload_with_the_offset() {
    let mut s = gateway_server(b"VERSION 4");
    s.handle_line(format!("GET 6 x {HELLO}").as_bytes());
    let key = Key::parse(HELLO).unwrap();
    assert_eq!(
        drain(&mut s),
        [ServerOutput::ContentSize {
            key: key.clone(),
            offset: 6
        }]
    );
    s.handle_content_size(Some(6));
    assert_eq!(
        drain(&mut s),
        [
            ServerOutput::Send(Message::Data(0)),
            ServerOutput::SendPayload {
                key,
                offset: 6,
                len: 0
            }
        ]
    );
    s.handle_payload_sent(true);
    assert_eq!(drain(&mut s), [ServerOutput::Send(Message::Valid)]);
}

#[test]
fn proxied_git_access() {
    let mut s = gateway_server(b"VERSION 4");
    s.handle_line(b"NOTIFYCHANGE");
    assert_eq!(
        drain(&mut s),
        [
            ServerOutput::Send(Message::Error("protocol error".into())),
            ServerOutput::Close(CloseReason::ProtocolError("NOTIFYCHANGE".into()))
        ]
    );
    let mut s = gateway_server(b"VERSION 4");
    s.handle_line(b"CONNECT git-upload-pack");
    assert!(matches!(
        drain(&mut s)[..],
        [ServerOutput::Close(CloseReason::Unsupported(_))]
    ));
}

#[test]
fn authentication_is_visible_to_relays() {
    let mut s = Server::new(ServerConfig {
        uuid: Uuid::parse("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb").unwrap(),
        start: Start::RequireAuth,
        git: GitAccess::Proxied,
        max_version: 4,
    });
    assert!(!s.is_authenticated());
    s.handle_line(b"AUTH aaaa t");
    drain(&mut s);
    s.handle_auth(None);
    assert!(!s.is_authenticated());
    s.handle_line(b"AUTH aaaa t");
    drain(&mut s);
    s.handle_auth(Some(ServeMode::ReadOnly));
    assert!(s.is_authenticated());
}

/// Found by the server fuzzer: an answer of the wrong kind (a driver's
/// mistake) used to drop the outstanding request, so the client never got
/// its reply and the machine went back to `Ready` mid-transfer (the raw
/// `DATA` bytes that followed would have been read as commands).
#[test]
fn a_wrong_answer_keeps_the_request_outstanding() {
    let mut s = Server::new(ServerConfig {
        uuid: Uuid::parse("bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb").unwrap(),
        start: Start::Preauthenticated {
            mode: ServeMode::ReadWrite,
        },
        git: GitAccess::Refused,
        max_version: 4,
    });
    while s.poll_output().is_some() {}
    s.handle_line(format!("PUT file {HELLO}").as_bytes());
    assert!(matches!(
        s.poll_output(),
        Some(ServerOutput::PreparePut { .. })
    ));
    s.handle_put_start(PutStart::From(0));
    assert_eq!(
        s.poll_output(),
        Some(ServerOutput::Send(Message::PutFrom(0)))
    );
    s.handle_line(b"DATA 6");
    assert!(matches!(
        s.poll_output(),
        Some(ServerOutput::ReceivePayload { len: 6, .. })
    ));
    // Wrong answers: nothing happens, the payload is still awaited.
    s.handle_stored(true);
    s.handle_present(Ok(true));
    s.handle_content_size(Some(6));
    assert_eq!(s.poll_output(), None);
    assert!(s.awaiting_driver());
    s.handle_payload_received(true);
    s.handle_line(b"VALID");
    assert!(matches!(
        s.poll_output(),
        Some(ServerOutput::CommitPut { .. })
    ));
    s.handle_stored(true);
    assert_eq!(s.poll_output(), Some(ServerOutput::Send(Message::Success)));
    assert!(!s.awaiting_driver());
}
