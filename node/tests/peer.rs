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

async fn server_with(
    dir: &std::path::Path,
    grants: Vec<(libp2p::PeerId, ServeMode)>,
    limits: Limits,
) -> Peer {
    let init = node::init::init(dir, "server", [9; 16]).unwrap();
    let key = Keypair::generate_ed25519();
    Peer::start(PeerOptions {
        store: Store::new(init.repo),
        transport: memory_transport(&key).unwrap(),
        keypair: key,
        listen: vec!["/memory/0".parse().unwrap()],
        grants,
        limits,
        serve_git: false,
        members: None,
    })
    .await
    .unwrap()
}

/// Reads from `stream` until the peer closes it (EOF or a reset); panics
/// if it stays open past a generous bound.
async fn until_closed(stream: &mut tokio_util::compat::Compat<libp2p::Stream>) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server left an idle stream open");
}

#[tokio::test]
async fn idle_unauthenticated_streams_lock_no_one_out() {
    let tmp = tempfile::tempdir().unwrap();
    let client_key = Keypair::generate_ed25519();
    let limits = Limits {
        auth_timeout: std::time::Duration::from_secs(3),
        ..Limits::default()
    };
    let peer = server_with(
        &tmp.path().join("server"),
        vec![(client_key.public().to_peer_id(), ServeMode::ReadWrite)],
        limits,
    )
    .await;
    let net = client_net(client_key);
    let me = Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap();
    let key = key_of(b"absent");
    // A session authenticated before the flood.
    let mut early = open(&net, &peer.addrs[0]).await;
    early
        .auth(me.clone(), AuthToken::parse("").unwrap())
        .await
        .unwrap()
        .unwrap();
    early.negotiate_version(4).await.unwrap();

    // 100 streams from 4 peers that never send a byte: as many as the
    // sessions' limit.
    let mut idle = Vec::new();
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let attacker = client_net(Keypair::generate_ed25519());
        for _ in 0..25 {
            if let Ok(s) = attacker.open(&peer.addrs[0], P2P_PROTOCOL).await {
                idle.push(s.compat());
            }
        }
        attackers.push(attacker);
    }
    assert!(idle.len() >= 32, "{}", idle.len());

    // A real client still gets in, and is served, while they are open.
    let mut late = open(&net, &peer.addrs[0]).await;
    let their = late.auth(me, AuthToken::parse("").unwrap()).await.unwrap();
    assert_eq!(their.as_ref(), Some(peer.store.uuid()));
    late.negotiate_version(4).await.unwrap();
    assert!(!late.check_present(&key).await.unwrap());

    // The server closes every one of them at the authentication deadline.
    for s in &mut idle {
        until_closed(s).await;
    }
    // Authenticated sessions outlive it: `early` opened before them all.
    assert!(!early.check_present(&key).await.unwrap());
    assert!(!late.check_present(&key).await.unwrap());
}

/// Fresh PeerIds cost nothing: streams not yet authenticated are bounded per
/// IP address too. Three "peers" on 127.0.0.1 open 12 idle streams against a
/// limit of 8 per address: 8 are held (they get an answer to `AUTH`), the
/// other 4 are refused at once (closed before any answer).
#[tokio::test]
async fn unauthenticated_streams_are_bounded_per_address() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let init = node::init::init(&tmp.path().join("server"), "server", [9; 16]).unwrap();
    let key = Keypair::generate_ed25519();
    let peer = Peer::start(PeerOptions {
        store: Store::new(init.repo),
        transport: node::net::tcp_transport(&key).unwrap(),
        keypair: key,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        grants: Vec::new(),
        limits: Limits {
            pending_per_address: 8,
            auth_timeout: std::time::Duration::from_secs(60),
            ..Limits::default()
        },
        serve_git: false,
        members: None,
    })
    .await
    .unwrap();
    let mut streams = Vec::new();
    let mut nets = Vec::new();
    for _ in 0..3 {
        let k = Keypair::generate_ed25519();
        let net =
            Net::spawn(build_swarm(k.clone(), node::net::tcp_transport(&k).unwrap()).unwrap());
        for _ in 0..4 {
            let s = net.open(&peer.addrs[0], P2P_PROTOCOL).await.unwrap();
            streams.push(tokio::io::BufReader::new(s.compat()));
        }
        nets.push(net);
    }
    let (mut answered, mut refused) = (0, 0);
    for s in &mut streams {
        // A refused stream may already be reset: writing then fails too.
        let _ = s
            .get_mut()
            .write_all(b"AUTH aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa 0\n")
            .await;
        let _ = s.get_mut().flush().await;
        let mut line = String::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(60), s.read_line(&mut line))
            .await
            .expect("every stream is answered or closed");
        match read {
            Ok(n) if n > 0 => {
                assert!(line.starts_with("AUTH-FAILURE"), "{line:?}");
                answered += 1;
            }
            _ => refused += 1,
        }
    }
    assert_eq!((answered, refused), (8, 4));
}

#[tokio::test]
async fn an_idle_session_is_closed() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let client_key = Keypair::generate_ed25519();
    let limits = Limits {
        idle_timeout: std::time::Duration::from_secs(2),
        ..Limits::default()
    };
    let peer = server_with(
        &tmp.path().join("server"),
        vec![(client_key.public().to_peer_id(), ServeMode::ReadWrite)],
        limits,
    )
    .await;
    let net = client_net(client_key);
    let mut stream = tokio::io::BufReader::new(
        net.open(&peer.addrs[0], P2P_PROTOCOL)
            .await
            .unwrap()
            .compat(),
    );
    stream
        .get_mut()
        .write_all(b"AUTH aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa \n")
        .await
        .unwrap();
    stream.get_mut().flush().await.unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("AUTH-SUCCESS "), "{line:?}");
    // Then silence: the server ends the session.
    until_closed(stream.get_mut()).await;
}

/// A client that stops reading mid-`GET` without closing its stream (its
/// window stays full, so the server's writes wait) loses its session at the
/// idle deadline: its slot is free again, its stream is reset, and others
/// are served.
#[tokio::test]
async fn a_client_that_stops_reading_mid_get_loses_its_session() {
    use std::sync::atomic::Ordering::Relaxed;
    let tmp = tempfile::tempdir().unwrap();
    let client_key = Keypair::generate_ed25519();
    let limits = Limits {
        idle_timeout: std::time::Duration::from_secs(2),
        ..Limits::default()
    };
    let peer = server_with(
        &tmp.path().join("server"),
        vec![(client_key.public().to_peer_id(), ServeMode::ReadWrite)],
        limits,
    )
    .await;
    let net = client_net(client_key);
    let me = Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap();
    // 16 MiB: far more than the stream's window and the server's buffers.
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 253) as u8).collect();
    let src = tmp.path().join("src");
    std::fs::write(&src, &data).unwrap();
    let key = key_of(&data);
    let mut s = open(&net, &peer.addrs[0]).await;
    s.auth(me.clone(), AuthToken::parse("").unwrap())
        .await
        .unwrap()
        .unwrap();
    s.negotiate_version(4).await.unwrap();
    assert!(
        s.put(&key, AssociatedFile::none(), &src, &mut |_| {})
            .await
            .unwrap()
            .stored
    );
    s.close().await.unwrap();

    let mut stuck = open(&net, &peer.addrs[0]).await;
    stuck
        .auth(me.clone(), AuthToken::parse("").unwrap())
        .await
        .unwrap()
        .unwrap();
    stuck.negotiate_version(4).await.unwrap();
    let len = stuck.get_relay_start(&key, 0).await.unwrap();
    assert_eq!(len, data.len() as u64);
    let first = stuck.relay_chunk(len).await.unwrap().len();
    assert!(first > 0);
    stuck.relay_consume(first);
    // Then it reads nothing more, and keeps the stream open.
    let authenticated = || peer.stats.sessions_authenticated.load(Relaxed);
    assert!(authenticated() >= 1);
    let freed = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while authenticated() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the session of a client not reading stayed");
    let open_now: u64 = peer
        .stats
        .snapshot()
        .iter()
        .map(|(_, c)| c.open.load(Relaxed))
        .sum();
    assert_eq!(open_now, 0);
    // Its stream ends short of the content (reset, or closed).
    let mut got = first as u64;
    loop {
        match stuck.relay_chunk(len - got).await {
            Ok([]) | Err(_) => break,
            Ok(b) => {
                let n = b.len();
                stuck.relay_consume(n);
                got += n as u64;
            }
        }
    }
    assert!(got < len, "the whole content came through: {got}");
    // Others are served.
    let mut fresh = open(&net, &peer.addrs[0]).await;
    fresh
        .auth(me, AuthToken::parse("").unwrap())
        .await
        .unwrap()
        .unwrap();
    fresh.negotiate_version(4).await.unwrap();
    assert!(fresh.check_present(&key).await.unwrap());
}

/// A read-write member of the mesh (a gateway, carrying its clients'
/// sessions to this node over its one identity) is bounded by the sessions'
/// total only; a granted peer that is no member, by the per-peer limit.
#[tokio::test]
async fn a_gateway_member_may_hold_more_sessions_than_one_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let gateway = Keypair::generate_ed25519();
    let other = Keypair::generate_ed25519();
    let init = node::init::init(&tmp.path().join("server"), "server", [9; 16]).unwrap();
    let key = Keypair::generate_ed25519();
    let members = std::sync::Arc::new(node::members::Members::new(
        key.public().to_peer_id(),
        Default::default(),
    ));
    let line = format!(
        "1700000000s {} member aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa read-write",
        gateway.public().to_peer_id()
    );
    members.update([line.as_str()]);
    let limits = Limits::default();
    let peer = Peer::start(PeerOptions {
        store: Store::new(init.repo),
        transport: memory_transport(&key).unwrap(),
        keypair: key,
        listen: vec!["/memory/0".parse().unwrap()],
        grants: vec![(other.public().to_peer_id(), ServeMode::ReadWrite)],
        limits,
        serve_git: false,
        members: Some(members),
    })
    .await
    .unwrap();
    let me = Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap();
    let token = AuthToken::parse("").unwrap();
    let wanted = limits.streams_per_peer + 8;
    for (who, member) in [(gateway, true), (other, false)] {
        let net = client_net(who);
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..wanted {
            let mut s = open(&net, &peer.addrs[0]).await;
            match s.auth(me.clone(), token.clone()).await {
                Ok(Some(_)) => held.push(s),
                _ => refused += 1,
            }
        }
        if member {
            assert_eq!((held.len(), refused), (wanted, 0));
        } else {
            assert_eq!(held.len(), limits.streams_per_peer);
        }
        for s in held {
            s.close().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_lying_data_is_refused_before_a_byte_is_written() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let client_key = Keypair::generate_ed25519();
    let peer = server(
        &tmp.path().join("server"),
        vec![(client_key.public().to_peer_id(), ServeMode::ReadWrite)],
    )
    .await;
    let net = client_net(client_key);
    let stream = net
        .open(&peer.addrs[0], P2P_PROTOCOL)
        .await
        .unwrap()
        .compat();
    let (r, mut w) = tokio::io::split(stream);
    let data = b"twenty-six bytes of stuff\n";
    let key = key_of(data);
    // The key says 26 bytes; DATA says a million, and sends them (the server
    // may stop reading them: the sender runs on its own).
    let mut msg = format!(
        "AUTH aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa \nVERSION 4\nPUT x {key}\nDATA 1000000\n"
    )
    .into_bytes();
    msg.extend(std::iter::repeat_n(b'x', 1_000_000));
    let sender = tokio::spawn(async move {
        let _ = w.write_all(&msg).await;
        let _ = w.flush().await;
        w
    });
    let mut reader = tokio::io::BufReader::new(r);
    let mut replies = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => replies.push(line),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never closed: {replies:?}");
    sender.abort();
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert!(replies[0].starts_with("AUTH-SUCCESS "));
    assert_eq!(
        replies[1..],
        [
            "VERSION 4\n",
            "PUT-FROM 0\n",
            "ERROR DATA longer than the key's size\n"
        ]
    );
    assert_eq!(peer.store.partial_size(&key), 0);
    assert!(!peer.store.contains(&key));
}

#[tokio::test]
async fn a_put_that_would_eat_the_disk_reserve_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let client_key = Keypair::generate_ed25519();
    let peer = server(
        &tmp.path().join("server"),
        vec![(client_key.public().to_peer_id(), ServeMode::ReadWrite)],
    )
    .await;
    let net = client_net(client_key);
    let mut s = open(&net, &peer.addrs[0]).await;
    let me = Uuid::parse("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa").unwrap();
    s.auth(me, AuthToken::parse("").unwrap()).await.unwrap();
    s.negotiate_version(4).await.unwrap();
    let src = tmp.path().join("f");
    std::fs::write(&src, b"some data").unwrap();
    let key = key_of(b"some data");
    // No filesystem here has a petabyte free beyond the reserve.
    node::cluster::config_set(&peer.store.repo().top, "annex.diskreserve", "1000 TB").unwrap();
    let err = s.put(&key, AssociatedFile::none(), &src, &mut |_| {}).await;
    assert!(
        format!("{err:?}").contains("not enough free space"),
        "{err:?}"
    );
    assert_eq!(peer.store.partial_size(&key), 0);
    // The session goes on; with the reserve back to 0 the same PUT stores.
    node::cluster::config_set(&peer.store.repo().top, "annex.diskreserve", "0").unwrap();
    let put = s
        .put(&key, AssociatedFile::none(), &src, &mut |_| {})
        .await
        .unwrap();
    assert!(put.stored);
}
