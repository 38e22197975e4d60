//! Mesh membership: who belongs to the mesh (`annexmesh/members.log`,
//! gossiped like every other log), the invitations that let a repository in,
//! and the `/annexmesh/join/1` exchange that uses one.
//!
//! * [`Members`] is the live trust set a daemon checks: gossip and
//!   anti-entropy are taken from members (and from granted or configured
//!   peers, as before), and members reach the repository with their role's
//!   access, without a grant. It is recomputed whenever the log changes, so
//!   a join or a removal takes effect in running daemons at once.
//! * An invitation is a one-use secret. Its hash and expiry are kept in
//!   `annex/annexmesh/invites` of the inviting member; the line
//!   `annexmesh-invite:<secret>@<address>,…` carries the secret and where to
//!   use it.
//! * Joining: the newcomer opens `/annexmesh/join/1` to the inviter and sends
//!   the secret and its uuid. The inviter consumes the invitation, records the
//!   newcomer (and itself) as members, and answers with the membership,
//!   addresses and uuid logs, which the newcomer writes into its journal.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{PeerId, StreamProtocol};
use protocol::logs::catalog::record_map;
use protocol::logs::members::{Entry, MEMBERS_LOG};
use protocol::server::ServeMode;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::journal::{Journal, log_clock_now};

pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/annexmesh/join/1");

/// The prefix of an invitation line.
pub const INVITE_PREFIX: &str = "annexmesh-invite:";

/// How long an invitation stays usable unless told otherwise.
pub const DEFAULT_INVITE_TTL_SECS: u64 = 24 * 3600;

/// Largest join message accepted.
const MAX_JOIN_FRAME: usize = 1 << 20;

/// Invitations kept at once (older ones are dropped past this).
const MAX_INVITES: usize = 1000;

/// The live membership of one daemon.
#[derive(Debug)]
pub struct Members {
    me: PeerId,
    /// Granted and configured peers, with the access they were given:
    /// trusted for metadata whatever the log says (a read-only one writes
    /// nothing, [`Members::fixed_role`]).
    fixed: HashMap<PeerId, ServeMode>,
    current: RwLock<BTreeMap<PeerId, (String, ServeMode)>>,
}

/// One member, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    pub uuid: String,
    pub role: ServeMode,
}

impl Members {
    pub fn new(me: PeerId, fixed: HashMap<PeerId, ServeMode>) -> Members {
        Members {
            me,
            fixed,
            current: RwLock::new(BTreeMap::new()),
        }
    }

    /// Recomputes the members from the winning lines of the log.
    pub fn update<'a>(&self, lines: impl IntoIterator<Item = &'a str>) {
        let next: BTreeMap<PeerId, (String, ServeMode)> = protocol::logs::members::entries(lines)
            .into_iter()
            .filter_map(|(peer, e)| match (peer.parse::<PeerId>(), e) {
                (Ok(p), Entry::Member { uuid, role }) => Some((p, (uuid, role))),
                _ => None,
            })
            .collect();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Whether metadata from `peer` is taken.
    pub fn trusts(&self, peer: &PeerId) -> bool {
        self.fixed.contains_key(peer)
            || self
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(peer)
    }

    /// The access a granted or configured peer was given, if it is one.
    pub fn fixed_role(&self, peer: &PeerId) -> Option<ServeMode> {
        self.fixed.get(peer).copied()
    }

    /// The access a member has to this repository.
    pub fn role(&self, peer: &PeerId) -> Option<ServeMode> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .map(|(_, r)| *r)
    }

    /// The uuid a member's membership line names.
    pub fn uuid_of(&self, peer: &PeerId) -> Option<String> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .map(|(u, _)| u.clone())
    }

    /// Every member, this daemon among them when it is one.
    pub fn all(&self) -> Vec<Member> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, (u, r))| Member {
                peer: *p,
                uuid: u.clone(),
                role: *r,
            })
            .collect()
    }

    /// This daemon's PeerId.
    pub fn me(&self) -> PeerId {
        self.me
    }

    /// Every member but this daemon.
    pub fn others(&self) -> Vec<Member> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(p, _)| **p != self.me)
            .map(|(p, (u, r))| Member {
                peer: *p,
                uuid: u.clone(),
                role: *r,
            })
            .collect()
    }
}

/// Records `peer` in the journal's membership log; returns the log's new content.
pub fn record(journal: &Journal, peer: &PeerId, entry: &Entry) -> Result<Vec<u8>> {
    let field = peer.to_string();
    let value = entry.value();
    journal.modify(MEMBERS_LOG, |old| {
        record_map(old, &field, &value, log_clock_now())
    })
}

/// Records `peer` as a read-write member unless the log already says it is one.
pub fn ensure_member(journal: &Journal, peer: &PeerId, uuid: &str) -> Result<Option<Vec<u8>>> {
    let now = journal.read(MEMBERS_LOG)?;
    let text = String::from_utf8_lossy(&now);
    let already = protocol::logs::members::entries(text.lines())
        .get(&peer.to_string())
        .is_some_and(|e| matches!(e, Entry::Member { uuid: u, .. } if u == uuid));
    if already {
        return Ok(None);
    }
    record(
        journal,
        peer,
        &Entry::Member {
            uuid: uuid.to_owned(),
            role: ServeMode::ReadWrite,
        },
    )
    .map(Some)
}

/// An invitation line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub secret: String,
    pub addresses: Vec<String>,
}

impl Invitation {
    pub fn parse(line: &str) -> Result<Invitation> {
        let bad = || Error::Usage(format!("not an invitation: {line:?}"));
        let rest = line.trim().strip_prefix(INVITE_PREFIX).ok_or_else(bad)?;
        let (secret, addrs) = rest.split_once('@').ok_or_else(bad)?;
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let addresses: Vec<String> = addrs
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if addresses.is_empty() {
            return Err(bad());
        }
        Ok(Invitation {
            secret: secret.to_owned(),
            addresses,
        })
    }

    pub fn line(&self) -> String {
        format!(
            "{INVITE_PREFIX}{}@{}",
            self.secret,
            self.addresses.join(",")
        )
    }
}

/// The invitations a member has handed out (`annex/annexmesh/invites`:
/// `<blake3 of the secret> <expiry, unix seconds>` per line).
pub struct Invites {
    path: PathBuf,
}

/// Consumption is serialized in a process (the daemon is the only consumer).
static INVITES: Mutex<()> = Mutex::new(());

fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

impl Invites {
    pub fn new(state_dir: &Path) -> Invites {
        Invites {
            path: state_dir.join("invites"),
        }
    }

    fn load(&self, now: u64) -> Result<Vec<(String, u64)>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(Error::Io {
                    context: format!("reading {}", self.path.display()),
                    source: e,
                });
            }
        };
        Ok(text
            .lines()
            .filter_map(|l| {
                let (h, t) = l.split_once(' ')?;
                let t: u64 = t.parse().ok()?;
                (t > now).then(|| (h.to_owned(), t))
            })
            .collect())
    }

    fn save(&self, entries: &[(String, u64)]) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        }
        let text: String = entries.iter().map(|(h, t)| format!("{h} {t}\n")).collect();
        crate::store::write_atomic(&self.path, text.as_bytes())
    }

    /// Makes a new invitation valid until `now + ttl`; returns its secret.
    pub fn create(&self, random: [u8; 32], now: u64, ttl: u64) -> Result<String> {
        let _g = INVITES.lock().unwrap_or_else(|p| p.into_inner());
        let secret = protocol::hex::encode(&random);
        let mut entries = self.load(now)?;
        entries.push((secret_hash(&secret), now.saturating_add(ttl)));
        if entries.len() > MAX_INVITES {
            entries.drain(..entries.len() - MAX_INVITES);
        }
        self.save(&entries)?;
        Ok(secret)
    }

    /// Uses up the invitation with `secret`: true if it was valid.
    pub fn consume(&self, secret: &str, now: u64) -> Result<bool> {
        let _g = INVITES.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries = self.load(now)?;
        let h = secret_hash(secret);
        let before = entries.len();
        entries.retain(|(e, _)| *e != h);
        if entries.len() == before {
            return Ok(false);
        }
        self.save(&entries)?;
        Ok(true)
    }
}

/// A branch file: its path and whole content.
pub type BranchFile = (String, Vec<u8>);

/// What a newcomer sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: String,
    pub uuid: String,
}

/// What the inviter answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum JoinReply {
    /// Welcome: the branch files the newcomer needs to find the mesh.
    Joined {
        files: Vec<(String, Vec<u8>)>,
    },
    Refused(String),
}

/// The branch files handed to a newcomer.
pub const JOIN_FILES: [&str; 3] = [MEMBERS_LOG, protocol::logs::view::ADDRESSES_LOG, "uuid.log"];

pub async fn write_message<W: futures::AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<()> {
    let mut buf = Vec::new();
    ciborium::into_writer(msg, &mut buf).map_err(|e| Error::Protocol(format!("cbor: {e}")))?;
    if buf.len() > MAX_JOIN_FRAME {
        return Err(Error::Protocol("join message too large".into()));
    }
    let len = u32::try_from(buf.len()).map_err(|_| Error::Protocol("too large".into()))?;
    let io = |e: std::io::Error| Error::Protocol(format!("join: {e}"));
    w.write_all(&len.to_be_bytes()).await.map_err(io)?;
    w.write_all(&buf).await.map_err(io)?;
    w.flush().await.map_err(io)
}

pub async fn read_message<R: futures::AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    r: &mut R,
) -> Result<T> {
    let io = |e: std::io::Error| Error::Protocol(format!("join: {e}"));
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_JOIN_FRAME {
        return Err(Error::Protocol(format!(
            "join message of {len} bytes refused"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(io)?;
    ciborium::from_reader(&buf[..]).map_err(|e| Error::Protocol(format!("join: bad message: {e}")))
}

/// The inviter's side of one join: checks and consumes the invitation,
/// records both as members. Returns the reply and the changed branch files
/// (for gossip).
pub fn admit(
    invites: &Invites,
    journal: &Journal,
    me: (&PeerId, &str),
    newcomer: &PeerId,
    request: &JoinRequest,
    now: u64,
) -> Result<(JoinReply, Vec<BranchFile>)> {
    if protocol::Uuid::parse(&request.uuid).is_err() {
        return Ok((JoinReply::Refused("bad uuid".into()), Vec::new()));
    }
    if !invites.consume(&request.secret, now)? {
        return Ok((
            JoinReply::Refused("the invitation is unknown, used or expired".into()),
            Vec::new(),
        ));
    }
    let mut changed = Vec::new();
    if let Some(c) = ensure_member(journal, me.0, me.1)? {
        changed.push((MEMBERS_LOG.to_owned(), c));
    }
    let c = record(
        journal,
        newcomer,
        &Entry::Member {
            uuid: request.uuid.clone(),
            role: ServeMode::ReadWrite,
        },
    )?;
    changed.push((MEMBERS_LOG.to_owned(), c));
    let files = JOIN_FILES
        .iter()
        .map(|p| Ok(((*p).to_owned(), journal.read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok((JoinReply::Joined { files }, changed))
}

/// The newcomer's side after a welcome: joins the files into its journal.
pub fn accept(journal: &Journal, files: &[BranchFile]) -> Result<()> {
    for (path, content) in files {
        if !JOIN_FILES.contains(&path.as_str()) {
            continue;
        }
        journal.modify(path, |now| crate::branch::merge_file(path, &[now, content]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// How long a join exchange may take before the stream is dropped.
const JOIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the join server hands the files a join changed (path, content).
pub type Spread = Box<dyn Fn(&str, &[u8]) + Send + Sync>;

/// What the join server needs.
pub struct JoinServer {
    pub invites: Invites,
    pub journal: Journal,
    pub me: PeerId,
    pub uuid: String,
    /// Hands the membership files a join changed to gossip (the daemon's
    /// metadata service), so members hear of the newcomer at once.
    pub spread: Spread,
}

/// Serves `/annexmesh/join/1`: one exchange at a time, each within
/// ten seconds.
pub async fn serve_joins(server: JoinServer, mut incoming: libp2p_stream::IncomingStreams) {
    use futures::StreamExt;
    let server = std::sync::Arc::new(server);
    while let Some((peer, stream)) = incoming.next().await {
        let done = tokio::time::timeout(JOIN_DEADLINE, join_one(&server, peer, stream)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::info!("join from {peer}: {e}"),
            Err(_) => tracing::info!("join from {peer}: timed out"),
        }
    }
}

async fn join_one(
    server: &std::sync::Arc<JoinServer>,
    peer: PeerId,
    mut stream: libp2p::Stream,
) -> Result<()> {
    let request: JoinRequest = read_message(&mut stream).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = server.clone();
    let (reply, changed) = tokio::task::spawn_blocking(move || {
        admit(
            &s.invites,
            &s.journal,
            (&s.me, &s.uuid),
            &peer,
            &request,
            now,
        )
    })
    .await
    .map_err(|e| Error::Protocol(format!("join: {e}")))??;
    for (path, content) in &changed {
        (server.spread)(path, content);
    }
    match &reply {
        JoinReply::Joined { .. } => tracing::info!("{peer} joined the mesh"),
        JoinReply::Refused(why) => tracing::info!("refused a join from {peer}: {why}"),
    }
    write_message(&mut stream, &reply).await?;
    stream
        .close()
        .await
        .map_err(|e| Error::Protocol(format!("join: {e}")))
}

/// The newcomer's whole join: dials each address of the invitation in turn,
/// sends the secret, and writes the welcome into `journal`. Returns the
/// inviter's PeerId.
pub async fn join(
    net: &crate::net::Net,
    invitation: &Invitation,
    uuid: &str,
    journal: &Journal,
) -> Result<PeerId> {
    let mut last = Error::Usage("the invitation names no address".into());
    for a in &invitation.addresses {
        let addr: libp2p::Multiaddr = match a.parse() {
            Ok(m) => m,
            Err(e) => {
                last = Error::Usage(format!("bad address {a}: {e}"));
                continue;
            }
        };
        let attempt = async {
            let peer = crate::net::peer_of(&addr)?;
            let mut stream = net.open(&addr, JOIN_PROTOCOL).await?;
            let request = JoinRequest {
                secret: invitation.secret.clone(),
                uuid: uuid.to_owned(),
            };
            write_message(&mut stream, &request).await?;
            let reply: JoinReply = read_message(&mut stream).await?;
            Ok::<_, Error>((peer, reply))
        };
        match tokio::time::timeout(JOIN_DEADLINE, attempt).await {
            Ok(Ok((peer, JoinReply::Joined { files }))) => {
                let j = journal.clone();
                tokio::task::spawn_blocking(move || accept(&j, &files))
                    .await
                    .map_err(|e| Error::Protocol(format!("join: {e}")))??;
                return Ok(peer);
            }
            Ok(Ok((_, JoinReply::Refused(why)))) => {
                return Err(Error::Usage(format!(
                    "the mesh refused to let us in: {why}"
                )));
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = Error::Usage(format!("{a} did not answer in time")),
        }
    }
    Err(last)
}

/// A member found by [`find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub peer: PeerId,
    pub uuid: String,
    pub description: String,
    /// Its announced addresses, each ending in `/p2p/<peer>`.
    pub addresses: Vec<String>,
}

/// The member `who` names: its PeerId, its uuid, or its description, from
/// the membership, uuid and addresses logs as gossip brought them. An error
/// when several members match.
pub fn find(git_dir: &Path, who: &str) -> Result<Option<Found>> {
    let catalog = crate::branch::read_files(
        git_dir,
        &[MEMBERS_LOG, "uuid.log", protocol::logs::view::ADDRESSES_LOG],
    )?;
    let lines: Vec<String> = catalog
        .file(MEMBERS_LOG)
        .map(|f| f.lines().map(std::borrow::Cow::into_owned).collect())
        .unwrap_or_default();
    let view = protocol::logs::view::View::new(&catalog);
    let mut found = Vec::new();
    for (peer, e) in protocol::logs::members::entries(lines.iter().map(String::as_str)) {
        let Entry::Member { uuid, .. } = e else {
            continue;
        };
        let Ok(peer_id) = peer.parse::<PeerId>() else {
            continue;
        };
        let description = view.description(&uuid).unwrap_or_default();
        if peer != who && uuid != who && description != who {
            continue;
        }
        let addresses = view
            .addresses(&uuid)
            .into_iter()
            .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
            .map(|m| match crate::net::peer_of(&m) {
                Ok(_) => m,
                Err(_) => crate::net::with_peer(m, peer_id),
            })
            .filter(|m| crate::net::peer_of(m).ok() == Some(peer_id))
            .map(|m| m.to_string())
            .collect();
        found.push(Found {
            peer: peer_id,
            uuid,
            description,
            addresses,
        });
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::Usage(format!(
            "{who:?} names several members: use a PeerId"
        ))),
    }
}
