//! Keeps a daemon connected to every member of its mesh: members that are
//! not connected are dialled at the addresses the addresses log gives for
//! their uuid, with exponential backoff per member (1 s doubling to
//! [`MAX_BACKOFF`]), reset when a connection is up. What it sees is written
//! to `annex/annexmesh/peers-seen` (`<PeerId> <connected 0|1> <last seen,
//! unix seconds or ->` per line) for `annexmesh peers`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use protocol::logs::view::ADDRESSES_LOG;

use crate::members::Members;
use crate::meta::Meta;
use crate::net::Net;

pub const TICK: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const DIAL_DEADLINE: Duration = Duration::from_secs(5);

/// The file `annexmesh peers` reads.
pub fn seen_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("peers-seen")
}

/// One member's connection state, as the keeper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub connected: bool,
    pub last_seen: Option<u64>,
}

/// Reads what a keeper wrote (missing or garbled lines are skipped).
pub fn read_seen(state_dir: &std::path::Path) -> HashMap<String, Seen> {
    let text = std::fs::read_to_string(seen_file(state_dir)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let peer = w.next()?.to_owned();
            let connected = w.next()? == "1";
            let last_seen = w.next()?.parse().ok();
            Some((
                peer,
                Seen {
                    connected,
                    last_seen,
                },
            ))
        })
        .collect()
}

struct Backoff {
    next: Instant,
    wait: Duration,
}

/// The addresses the log gives for `uuid`, each ending in `/p2p/<peer>`.
fn addresses_of(meta: &Meta, uuid: &str, peer: PeerId) -> Vec<Multiaddr> {
    let lines = meta.file_lines(ADDRESSES_LOG);
    let mut out = Vec::new();
    for l in &lines {
        let mut w = l.split_whitespace();
        let (Some(_clock), Some(field)) = (w.next(), w.next()) else {
            continue;
        };
        if field != uuid {
            continue;
        }
        for a in w {
            if let Ok(m) = a.parse::<Multiaddr>() {
                let m = if crate::net::peer_of(&m).is_ok() {
                    m
                } else {
                    crate::net::with_peer(m, peer)
                };
                if crate::net::peer_of(&m).ok() == Some(peer) {
                    out.push(m);
                }
            }
        }
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs until the metadata service goes away.
pub async fn keep(net: Net, members: Arc<Members>, meta: Weak<Meta>, state_dir: PathBuf) {
    let mut backoff: HashMap<PeerId, Backoff> = HashMap::new();
    let mut seen: HashMap<PeerId, Seen> = HashMap::new();
    let mut written = String::new();
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(m) = meta.upgrade() else { return };
        let connected = net.connected_peers().await.unwrap_or_default();
        let now = Instant::now();
        let others = members.others();
        for member in &others {
            let is_up = connected.contains(&member.peer);
            let entry = seen.entry(member.peer).or_insert(Seen {
                connected: false,
                last_seen: None,
            });
            entry.connected = is_up;
            if is_up {
                // Coarse, so the file is not rewritten every tick.
                entry.last_seen = Some(unix_now() / 10 * 10);
                backoff.remove(&member.peer);
                continue;
            }
            let b = backoff.entry(member.peer).or_insert(Backoff {
                next: now,
                wait: TICK,
            });
            if b.next > now {
                continue;
            }
            b.next = now + b.wait;
            b.wait = (b.wait * 2).min(MAX_BACKOFF);
            let addrs = addresses_of(&m, &member.uuid, member.peer);
            let net = net.clone();
            tokio::spawn(async move {
                for a in addrs {
                    match tokio::time::timeout(DIAL_DEADLINE, net.dial(&a)).await {
                        Ok(Ok(_)) => return,
                        Ok(Err(e)) => tracing::debug!("dialling member at {a}: {e}"),
                        Err(_) => tracing::debug!("dialling member at {a}: timed out"),
                    }
                }
            });
        }
        seen.retain(|p, _| others.iter().any(|o| o.peer == *p));
        backoff.retain(|p, _| others.iter().any(|o| o.peer == *p));
        let mut text: Vec<String> = seen
            .iter()
            .map(|(p, s)| {
                let last = s.last_seen.map_or("-".to_owned(), |t| t.to_string());
                format!("{p} {} {last}\n", u8::from(s.connected))
            })
            .collect();
        text.sort();
        let text = text.concat();
        // Rewritten when a state changes, and every tick while connected
        // (last seen moves): a small file, written atomically.
        if text != written {
            if let Err(e) = std::fs::create_dir_all(&state_dir)
                .map_err(|e| crate::error::Error::Io {
                    context: format!("creating {}", state_dir.display()),
                    source: e,
                })
                .and_then(|()| crate::store::write_atomic(&seen_file(&state_dir), text.as_bytes()))
            {
                tracing::debug!("writing the peers' state: {e}");
            }
            written = text;
        }
    }
}
