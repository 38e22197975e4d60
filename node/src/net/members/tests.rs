#![allow(clippy::unwrap_used)]

use super::*;

fn peer(seed: u8) -> PeerId {
    let mut bytes = [seed; 32];
    let key = libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes).unwrap();
    key.public().to_peer_id()
}

#[test]
fn invitations_are_used_once_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = Invites::new(tmp.path());
    let s = inv.create([1; 32], 1000, 60).unwrap();
    assert!(!inv.consume("0".repeat(64).as_str(), 1001).unwrap());
    assert!(inv.consume(&s, 1001).unwrap());
    assert!(!inv.consume(&s, 1002).unwrap(), "used twice");
    let s = inv.create([2; 32], 1000, 60).unwrap();
    assert!(!inv.consume(&s, 1060).unwrap(), "expired");
}

#[test]
fn invitation_lines_round_trip_and_garbage_is_refused() {
    let i = Invitation {
        secret: "ab".repeat(32),
        addresses: vec![
            "/ip4/127.0.0.1/tcp/1/p2p/x".into(),
            "/ip6/::1/tcp/2/p2p/x".into(),
        ],
    };
    assert_eq!(Invitation::parse(&i.line()).unwrap(), i);
    for bad in [
        "",
        "annexmesh-invite:",
        "annexmesh-invite:abc@/ip4/1",
        &format!("annexmesh-invite:{}@", "ab".repeat(32)),
        &format!("other:{}@/ip4/1", "ab".repeat(32)),
    ] {
        assert!(Invitation::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn admission_records_both_and_removal_revokes_trust() {
    let tmp = tempfile::tempdir().unwrap();
    let a = crate::init::init(&tmp.path().join("a"), "a", [1; 16])
        .unwrap()
        .repo;
    let b = crate::init::init(&tmp.path().join("b"), "b", [2; 16])
        .unwrap()
        .repo;
    let (pa, pb) = (peer(1), peer(2));
    let ja = Journal::new(&a.git_dir);
    let jb = Journal::new(&b.git_dir);
    let invites = Invites::new(&tmp.path().join("state"));
    let secret = invites.create([9; 32], 10, 100).unwrap();
    let req = JoinRequest {
        secret: "00".repeat(32),
        uuid: b.uuid.to_string(),
    };
    let (reply, _) = admit(&invites, &ja, (&pa, a.uuid.as_str()), &pb, &req, 20).unwrap();
    assert!(matches!(reply, JoinReply::Refused(_)));
    let req = JoinRequest {
        secret,
        uuid: b.uuid.to_string(),
    };
    let (reply, changed) = admit(&invites, &ja, (&pa, a.uuid.as_str()), &pb, &req, 20).unwrap();
    let JoinReply::Joined { files } = reply else {
        panic!("refused")
    };
    assert!(!changed.is_empty());
    accept(&jb, &files).unwrap();

    let members = Members::new(pb, HashMap::new());
    let log = String::from_utf8(jb.read(MEMBERS_LOG).unwrap()).unwrap();
    members.update(log.lines());
    assert!(members.trusts(&pa) && members.trusts(&pb));
    assert_eq!(members.role(&pa), Some(ServeMode::ReadWrite));
    assert_eq!(members.others().len(), 1);

    // A removes B: B is trusted no more.
    let log = record(&ja, &pb, &Entry::Removed).unwrap();
    let text = String::from_utf8(log).unwrap();
    let a_view = Members::new(pa, HashMap::new());
    let mut f = protocol::logs::catalog::LogFile::new(protocol::logs::catalog::Family::Map);
    f.insert_content(text.as_bytes());
    let lines: Vec<String> = f.lines().map(|l| l.into_owned()).collect();
    a_view.update(lines.iter().map(String::as_str));
    assert!(!a_view.trusts(&pb));
    assert!(a_view.trusts(&pa));
}
