//! Mesh membership on the command line: `invite`, `join`, `peers`,
//! `peers rm`, `leave`. They read and write the repository (its journal and
//! branch); a running daemon gossips every change at once.

use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use libp2p::PeerId;
use node::Repo;
use node::config::{load_or_create_identity, state_dir};
use node::journal::Journal;
use node::members::{Invitation, Invites, ensure_member, record};
use protocol::logs::catalog::{Family, LogFile};
use protocol::logs::members::{Entry, MEMBERS_LOG, role_name};
use protocol::logs::view::ADDRESSES_LOG;
use rand::RngCore;

use crate::query::serde_json_lite::Json;

fn open(path: &Path) -> anyhow::Result<Repo> {
    Repo::open(path).with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))
}

fn me(repo: &Repo) -> anyhow::Result<PeerId> {
    Ok(load_or_create_identity(&state_dir(repo))?
        .public()
        .to_peer_id())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn invite(path: &Path, ttl: &str) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let ttl = crate::duration::parse_duration(ttl)?;
    let addresses = crate::daemon::reachable(&repo)?;
    let journal = Journal::new(&repo.git_dir);
    // The inviter is a member from its first invitation on.
    ensure_member(&journal, &me(&repo)?, repo.uuid.as_str())?;
    let mut random = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut random);
    let secret = Invites::new(&state_dir(&repo)).create(random, unix_now(), ttl)?;
    println!("{}", Invitation { secret, addresses }.line());
    eprintln!("This line lets one repository join the mesh; it expires in {ttl} s.");
    Ok(ExitCode::SUCCESS)
}

pub async fn join(path: &Path, line: &str) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let invitation = Invitation::parse(line)?;
    let key = load_or_create_identity(&state_dir(&repo))?;
    let endpoint = node::remote::Endpoint::new(key.clone(), node::net::tcp_transport(&key)?)?;
    let journal = Journal::new(&repo.git_dir);
    let inviter =
        node::members::join(&endpoint.net, &invitation, repo.uuid.as_str(), &journal).await?;
    ensure_member(&journal, &key.public().to_peer_id(), repo.uuid.as_str())?;
    println!("joined the mesh through {inviter}");
    Ok(ExitCode::SUCCESS)
}

/// One member, as listed.
struct Listed {
    peer: String,
    uuid: String,
    role: String,
    description: String,
    addresses: Vec<String>,
    state: String,
    last_seen: Option<u64>,
}

fn winning_lines(journal: &Journal, path: &str) -> anyhow::Result<Vec<String>> {
    let mut f = LogFile::new(Family::of(path));
    f.insert_content(&journal.read(path)?);
    Ok(f.lines().map(std::borrow::Cow::into_owned).collect())
}

fn listed(repo: &Repo) -> anyhow::Result<Vec<Listed>> {
    let journal = Journal::new(&repo.git_dir);
    let members = winning_lines(&journal, MEMBERS_LOG)?;
    let members = protocol::logs::members::entries(members.iter().map(String::as_str));
    let mut catalog = protocol::logs::catalog::Catalog::new();
    for p in ["uuid.log", ADDRESSES_LOG] {
        catalog.insert_content(p, &journal.read(p)?);
    }
    let view = protocol::logs::view::View::new(&catalog);
    let me = me(repo)?.to_string();
    let daemon_up = crate::daemon::daemon_running(repo);
    let seen = node::keeper::read_seen(&state_dir(repo));
    let mut out = Vec::new();
    for (peer, e) in members {
        let Entry::Member { uuid, role } = e else {
            continue;
        };
        let s = seen.get(&peer);
        let state = if peer == me {
            "self"
        } else if daemon_up && s.is_some_and(|s| s.connected) {
            "connected"
        } else {
            "disconnected"
        };
        out.push(Listed {
            description: view.description(&uuid).unwrap_or_default(),
            addresses: view.addresses(&uuid),
            state: state.to_owned(),
            last_seen: s.and_then(|s| s.last_seen),
            role: role_name(role).to_owned(),
            peer,
            uuid,
        });
    }
    Ok(out)
}

/// The members as the running daemon's `GET /peers` gives them, in the
/// membership log's order (by PeerId).
fn listed_from_api(client: &crate::api::Client) -> anyhow::Result<Vec<Listed>> {
    let v: serde_json::Value = serde_json::from_str(&client.ok("GET", "/peers")?)
        .context("the API's /peers is not JSON")?;
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut out: Vec<Listed> = v
        .as_array()
        .context("the API's /peers is not a list")?
        .iter()
        .map(|m| Listed {
            peer: text(m, "peer"),
            uuid: text(m, "uuid"),
            role: text(m, "role"),
            description: text(m, "description"),
            addresses: m["addresses"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            state: text(m, "state"),
            last_seen: m["last_seen"].as_u64(),
        })
        .collect();
    out.sort_by(|a, b| a.peer.cmp(&b.peer));
    Ok(out)
}

pub fn peers(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let list = if let Some(client) = crate::api::Client::find(&repo) {
        eprintln!("(from the daemon's API at {})", client.url());
        listed_from_api(&client)?
    } else {
        let list = listed(&repo)?;
        eprintln!(
            "(read from the repository's membership log{})",
            if crate::daemon::daemon_running(&repo) {
                "; the daemon's API does not answer: connections as it last recorded them"
            } else {
                "; no daemon is running"
            }
        );
        list
    };
    if json {
        let items = list
            .into_iter()
            .map(|l| {
                Json::Obj(vec![
                    ("peer", Json::Str(l.peer)),
                    ("uuid", Json::Str(l.uuid)),
                    ("description", Json::Str(l.description)),
                    ("role", Json::Str(l.role)),
                    ("state", Json::Str(l.state)),
                    ("last_seen", l.last_seen.map_or(Json::Null, Json::Num)),
                    (
                        "addresses",
                        Json::List(l.addresses.into_iter().map(Json::Str).collect()),
                    ),
                ])
            })
            .collect();
        println!("{}", Json::List(items).render());
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("not a member of a mesh (annexmesh invite, or annexmesh join LINE)");
    }
    for l in list {
        let seen = match (l.state.as_str(), l.last_seen) {
            ("disconnected", Some(t)) => {
                format!(" (last seen {}s ago)", unix_now().saturating_sub(t))
            }
            _ => String::new(),
        };
        println!(
            "{} {} -- {} [{}] {}{}",
            l.peer, l.uuid, l.description, l.role, l.state, seen
        );
        for a in l.addresses {
            println!("    {a}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes a member, named by PeerId, uuid or description.
pub fn remove(path: &Path, who: &str) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let list = listed(&repo)?;
    let found: Vec<&Listed> = list
        .iter()
        .filter(|l| l.peer == who || l.uuid == who || l.description == who)
        .collect();
    let peer = match found.as_slice() {
        [one] => PeerId::from_str(&one.peer).context("bad PeerId in the membership log")?,
        [] => bail!("no member {who:?} (annexmesh peers lists them)"),
        _ => bail!("{who:?} names several members: use a PeerId"),
    };
    record(&Journal::new(&repo.git_dir), &peer, &Entry::Removed)?;
    println!("removed {peer}");
    Ok(ExitCode::SUCCESS)
}

pub fn leave(path: &Path) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let peer = me(&repo)?;
    record(&Journal::new(&repo.git_dir), &peer, &Entry::Removed)?;
    println!("left the mesh ({peer})");
    Ok(ExitCode::SUCCESS)
}

/// `annexmesh git-connect --git-dir DIR SERVICE ADDRESS`: git's `ext::`
/// transport over the mesh. Dials as the repository (its identity, its
/// uuid, no token: a member's grant), through its daemon when one runs.
pub async fn git_connect(git_dir: &Path, service: &str, address: &str) -> anyhow::Result<ExitCode> {
    let repo = open(git_dir)?;
    let state = state_dir(&repo);
    let key = load_or_create_identity(&state)?;
    let address = node::net::PeerAddress::parse(address)?;
    let service = match service {
        "git-upload-pack" => protocol::Service::UploadPack,
        "git-receive-pack" => protocol::Service::ReceivePack,
        other => bail!("unknown git service {other:?}"),
    };
    let dialer = node::remote::Dialer::for_repo(&state, &key)?;
    let stream = dialer.open(&address).await?;
    let token = protocol::AuthToken::parse("").context("empty token")?;
    let code = node::git::connect_service(
        stream,
        &repo.uuid,
        &token,
        service,
        tokio::io::stdin(),
        tokio::io::stdout(),
    )
    .await?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
