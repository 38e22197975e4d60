#![allow(clippy::unwrap_used)]
//! Two real annexmesh peers in one process on libp2p's memory transport: the
//! annex P2P protocol over `/annex/p2p/1`, with authentication.

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use node::net::{Net, P2P_PROTOCOL, build_swarm, memory_transport};
use node::peer::{Limits, Peer, PeerOptions};
use node::session::ClientSession;
use node::store::Store;
use protocol::server::ServeMode;
use protocol::verify::Hash;
use protocol::{AssociatedFile, AuthToken, Key, Uuid};
use tokio_util::compat::FuturesAsyncReadCompatExt;

fn key_of(data: &[u8]) -> Key {
    let mut h = Hash::Sha256.hasher();
    h.update(data);
    Key::from_hash("SHA256E", data.len() as u64, &h.finish_hex(), ".bin").unwrap()
}

async fn server(dir: &std::path::Path, grants: Vec<(libp2p::PeerId, ServeMode)>) -> Peer {
    let init = node::init::init(dir, "server", [9; 16]).unwrap();
    let key = Keypair::generate_ed25519();
    Peer::start(PeerOptions {
        store: Store::new(init.repo),
        transport: memory_transport(&key).unwrap(),
        keypair: key,
        listen: vec!["/memory/0".parse().unwrap()],
        grants,
        limits: Limits::default(),
        serve_git: true,
        members: None,
    })
    .await
    .unwrap()
}

fn client_net(key: Keypair) -> Net {
    Net::spawn(build_swarm(key.clone(), memory_transport(&key).unwrap()).unwrap())
}

type Session = ClientSession<
    tokio::io::ReadHalf<tokio_util::compat::Compat<libp2p::Stream>>,
    tokio::io::WriteHalf<tokio_util::compat::Compat<libp2p::Stream>>,
>;

async fn open(net: &Net, addr: &Multiaddr) -> Session {
    let stream = net.open(addr, P2P_PROTOCOL).await.unwrap();
    let (r, w) = tokio::io::split(stream.compat());
    ClientSession::new(r, w)
}

#[tokio::test]
async fn granted_peer_puts_and_gets() {
    let tmp = tempfile::tempdir().unwrap();
    let client_key = Keypair::generate_ed25519();
    let peer = server(
        &tmp.path().join("server"),
        vec![(client_key.public().to_peer_id(), ServeMode::ReadWrite)],
    )
    .await;
    assert!(
        peer.addrs[0]
            .to_string()
            .ends_with(&format!("/p2p/{}", peer.peer_id()))
    );
    let net = client_net(client_key);
    let mut s = open(&net, &peer.addrs[0]).await;
    let me = Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap();
    let their = s.auth(me, AuthToken::parse("").unwrap()).await.unwrap();
    assert_eq!(their.as_ref(), Some(peer.store.uuid()));
    assert_eq!(s.negotiate_version(4).await.unwrap(), 4);

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let src = tmp.path().join("src");
    std::fs::write(&src, &data).unwrap();
    let key = key_of(&data);
    let put = s
        .put(&key, AssociatedFile::none(), &src, &mut |_| {})
        .await
        .unwrap();
    assert!(put.stored);
    assert!(peer.store.contains(&key));
    assert!(s.check_present(&key).await.unwrap());
    let dest = tmp.path().join("dest");
    assert!(
        s.get(
            &key,
            AssociatedFile::none(),
            &tmp.path().join("part"),
            &dest,
            &mut |_| {}
        )
        .await
        .unwrap()
    );
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        peer.store.journal().locations(&key).unwrap(),
        vec![peer.store.uuid().to_string()]
    );
    assert_eq!(s.remove(&key, None).await.unwrap(), (true, vec![]));
    assert!(!peer.store.contains(&key));
    assert_eq!(peer.shutdown().await, 1, "the open session was cut");
}

#[tokio::test]
async fn tokens_from_p2pauth_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let peer = server(&tmp.path().join("server"), vec![]).await;
    let net = client_net(Keypair::generate_ed25519());
    let me = Uuid::parse("cccccccc-cccc-4ccc-8ccc-cccccccccccc").unwrap();

    // No grant, no token: AUTH-FAILURE, and nothing else is served.
    let mut s = open(&net, &peer.addrs[0]).await;
    assert_eq!(
        s.auth(me.clone(), AuthToken::parse("nope").unwrap())
            .await
            .unwrap(),
        None
    );
    assert!(
        s.check_present(&key_of(b"x")).await.is_err(),
        "only AUTH before auth"
    );

    // A token written to git-annex's p2pauth for this peer's address works.
    let token = AuthToken::generate(&[5; 512]);
    let rules = node::auth::AccessRules::new(&peer.store.repo().git_dir, peer.peer_id(), vec![]);
    rules
        .add_token(&token, &format!("p2p-annex::libp2p:{}", peer.addrs[0]))
        .unwrap();
    let mut s = open(&net, &peer.addrs[0]).await;
    assert!(s.auth(me, token).await.unwrap().is_some());
    assert_eq!(s.negotiate_version(4).await.unwrap(), 4);
}

#[tokio::test]
async fn read_only_grant() {
    let tmp = tempfile::tempdir().unwrap();
    let client_key = Keypair::generate_ed25519();
    let peer = server(
        &tmp.path().join("server"),
        vec![(client_key.public().to_peer_id(), ServeMode::ReadOnly)],
    )
    .await;
    let net = client_net(client_key);
    let mut s = open(&net, &peer.addrs[0]).await;
    let me = Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap();
    s.auth(me, AuthToken::parse("").unwrap()).await.unwrap();
    s.negotiate_version(4).await.unwrap();
    let src = tmp.path().join("f");
    std::fs::write(&src, b"data").unwrap();
    let err = s
        .put(&key_of(b"data"), AssociatedFile::none(), &src, &mut |_| {})
        .await;
    assert!(format!("{err:?}").contains("read-only"), "{err:?}");
}
