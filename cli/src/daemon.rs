//! `annexmesh init`, `daemon`, `p2p --gen-addresses`, `grant`, `add-peer`.

use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use libp2p::Multiaddr;
use libp2p::PeerId;
use node::Repo;
use node::auth::{AccessRules, NETNAME};
use node::config::{Config, Grant, PeerEntry, load_or_create_identity, parse_mode, state_dir};
use node::mesh::Mesh;
use node::meta::{Allowed, MetaOptions};
use node::net::tcp_transport;
use node::peer::{Limits, PeerOptions};
use node::store::{Store, write_atomic};
use protocol::AuthToken;
use protocol::server::ServeMode;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::Arc;

use node::members::Members;

pub fn init(path: &Path, description: &str) -> anyhow::Result<ExitCode> {
    let mut random = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut random);
    let done = node::init::init(path, description, random)?;
    println!(
        "{} {} (uuid {}, peer {})",
        if done.created { "created" } else { "adopted" },
        done.repo.top.display(),
        done.repo.uuid,
        done.peer_id
    );
    Ok(ExitCode::SUCCESS)
}

fn open(path: &Path) -> anyhow::Result<Repo> {
    Repo::open(path).with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))
}

/// Whether a daemon seems to run for `repo` (it keeps its addresses file
/// while it runs).
pub(crate) fn daemon_running(repo: &Repo) -> bool {
    addresses_file(repo).exists()
}

/// The file where a running daemon records its addresses.
fn addresses_file(repo: &Repo) -> std::path::PathBuf {
    state_dir(repo).join("addresses")
}

/// The file where a running daemon records its API's address.
pub(crate) fn api_file(repo: &Repo) -> std::path::PathBuf {
    state_dir(repo).join("api")
}

pub async fn run(
    path: &Path,
    listen: Vec<String>,
    peers: Vec<String>,
    serve_git: bool,
    suspect_after: &str,
    api_listen: Option<String>,
) -> anyhow::Result<ExitCode> {
    let suspect_after_ms = crate::duration::parse_duration(suspect_after)?.saturating_mul(1000);
    let repo = open(path)?;
    let config = Config::load(&repo)?;
    let key = load_or_create_identity(&state_dir(&repo))?;
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for a in config.listen.iter().chain(listen.iter()) {
        addrs.push(Multiaddr::from_str(a).with_context(|| format!("bad listen address {a}"))?);
    }
    if addrs.is_empty() {
        addrs.push(Multiaddr::from_str("/ip4/127.0.0.1/tcp/0")?);
    }
    let grants = config.peer_grants()?;
    // Metadata is taken from granted and configured peers only.
    // A configured peer (`--peer`, annexmesh.peer) is trusted read-write;
    // a grant, with its mode (a read-only one writes no metadata).
    let mut trusted: HashMap<PeerId, ServeMode> = HashMap::new();
    for p in &config.peers {
        if let Ok(addr) = node::net::PeerAddress::parse(&p.address)
            && let Ok(peer) = node::net::peer_of(&addr.addr)
        {
            trusted.insert(peer, ServeMode::ReadWrite);
        }
    }
    trusted.extend(grants.iter().copied());
    // Members of the mesh (the membership log) are trusted too, and reach
    // the repository with their roles; the set follows the log as it changes.
    let members = Arc::new(Members::new(key.public().to_peer_id(), trusted));
    let mesh = Mesh::start(
        PeerOptions {
            store: Store::new(repo.clone()),
            transport: tcp_transport(&key)?,
            keypair: key,
            listen: addrs,
            grants,
            limits: Limits::default(),
            serve_git,
            members: Some(members.clone()),
        },
        MetaOptions {
            allowed: Allowed::Members(members),
            sync_interval: std::time::Duration::from_secs(5),
            ..MetaOptions::default()
        },
        node::mesh::Services {
            monitor: protocol::replication::MonitorConfig {
                suspect_after_ms,
                ..protocol::replication::MonitorConfig::default()
            },
            branch_sync: std::env::current_exe()
                .ok()
                .map(node::cluster::heads::Helper),
            relay: true,
        },
    )
    .await?;
    let mut mesh = mesh;
    let api = api_listen
        .or(config.api_listen.clone())
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let api: std::net::SocketAddr = api
        .parse()
        .with_context(|| format!("bad API address {api} (IP:PORT)"))?;
    let api = mesh.start_api(api).await?;
    let peer = &mesh.peer;
    let mut text = String::new();
    for a in &peer.addrs {
        println!("listening on {a}");
        text.push_str(&format!("{a}\n"));
    }
    write_atomic(&addresses_file(&repo), text.as_bytes())?;
    write_atomic(&api_file(&repo), format!("http://{api}\n").as_bytes())?;
    println!("api listening on http://{api}");
    for p in &peers {
        let addr = config.resolve_peer(p)?;
        match peer.net.dial(&addr).await {
            Ok(id) => println!("connected to {id}"),
            Err(e) => eprintln!("annexmesh: cannot connect to {p}: {e}"),
        }
    }
    wait_for_signal().await?;
    let cut = mesh.shutdown().await;
    let _ = std::fs::remove_file(addresses_file(&repo));
    let _ = std::fs::remove_file(api_file(&repo));
    eprintln!("annexmesh: stopped ({cut} session(s) interrupted)");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The addresses other peers can reach: the running daemon's, else configured
/// listen addresses with fixed ports.
pub(crate) fn reachable(repo: &Repo) -> anyhow::Result<Vec<String>> {
    if let Ok(text) = std::fs::read_to_string(addresses_file(repo)) {
        let addrs: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if !addrs.is_empty() {
            return Ok(addrs);
        }
    }
    let config = Config::load(repo)?;
    let peer = load_or_create_identity(&state_dir(repo))?
        .public()
        .to_peer_id();
    let fixed: Vec<String> = config
        .listen
        .iter()
        .filter(|a| !a.ends_with("/tcp/0") && !a.ends_with("/udp/0/quic-v1"))
        .map(|a| format!("{a}/p2p/{peer}"))
        .collect();
    if fixed.is_empty() {
        bail!("no known address: start `annexmesh daemon`, or configure a fixed listen port");
    }
    Ok(fixed)
}

pub fn gen_addresses(path: &Path) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let me = load_or_create_identity(&state_dir(&repo))?
        .public()
        .to_peer_id();
    let rules = AccessRules::new(&repo.git_dir, me, vec![]);
    for addr in reachable(&repo)? {
        let mut random = [0u8; 512];
        rand::thread_rng().fill_bytes(&mut random);
        let token = AuthToken::generate(&random);
        let address = format!("p2p-annex::{NETNAME}:{addr}");
        rules.add_token(&token, &address)?;
        println!("{address}:{}", token.as_str());
    }
    eprintln!(
        "These addresses allow access to this repository. Only share them with people you trust."
    );
    Ok(ExitCode::SUCCESS)
}

pub fn grant(path: &Path, peer: &str, mode: &str) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    parse_mode(mode)?;
    libp2p::PeerId::from_str(peer).with_context(|| format!("bad PeerId {peer}"))?;
    let mut config = Config::load(&repo)?;
    config.grants.retain(|g| g.peer != peer);
    config.grants.push(Grant {
        peer: peer.to_owned(),
        mode: mode.to_owned(),
    });
    config.save(&repo)?;
    Ok(ExitCode::SUCCESS)
}

pub fn add_peer(path: &Path, name: &str, address: &str) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    node::net::PeerAddress::parse(address)?;
    let mut config = Config::load(&repo)?;
    config.peers.retain(|p| p.name != name);
    config.peers.push(PeerEntry {
        name: name.to_owned(),
        address: address.to_owned(),
    });
    config.save(&repo)?;
    Ok(ExitCode::SUCCESS)
}
