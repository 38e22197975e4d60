//! Carrying out the planner's transfers: each is a few P2P sessions the
//! gateway serves to itself, in-process, on the nodes involved
//! ([`crate::proxy::serve_node`] over an in-memory pipe). So a repair goes
//! exactly where a client's request to `<gateway>/annex-uuid/<node>` would:
//! any node kind, far nodes through the gateways on their path, the
//! content verified by the receiving node, and the change recorded in the
//! gateway's location log as the proxy records what passes through it.
//!
//! * `Copy { from, to }`: `PUT` on `to` (its offset, or `ALREADY-HAVE`),
//!   `GET` from `from` at that offset, the bytes relayed as they come.
//! * `Drop { from, lock }`: `LOCKCONTENT` on every node of `lock` (each
//!   must answer `SUCCESS`: the copies that must remain are held), then
//!   `REMOVE` on `from`, then the locks are released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::message::{MAX_VERSION, Version};
use protocol::replication::fsck::Found;
use protocol::replication::repair::Action;
use protocol::verify::Verifier;
use protocol::{AssociatedFile, Key, Uuid};
use tokio::io::{BufReader, DuplexStream, ReadHalf, WriteHalf};

use crate::error::{Error, Result};
use crate::session::{ClientSession, PutOutcome, PutStart};
use crate::store::Store;

/// The in-memory pipe's buffer.
const PIPE: usize = 256 * 1024;
/// The most bytes relayed per chunk.
const CHUNK: u64 = 64 * 1024;
/// How long a node's resolution is reused.
const RESOLVED_FOR: Duration = Duration::from_secs(30);

type Session = ClientSession<BufReader<ReadHalf<DuplexStream>>, WriteHalf<DuplexStream>>;

/// Opens in-process sessions on the nodes of a gateway, resolving each node
/// at most every [`RESOLVED_FOR`].
#[derive(Clone)]
pub struct Sessions {
    gateway: Store,
    resolved: Arc<Mutex<HashMap<Uuid, (Instant, crate::gateway::GatewayNode)>>>,
}

impl Sessions {
    pub fn new(gateway: Store) -> Sessions {
        Sessions {
            gateway,
            resolved: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub(crate) async fn node(&self, uuid: &Uuid) -> Result<crate::gateway::GatewayNode> {
        {
            let cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, node)) = cache.get(uuid)
                && at.elapsed() < RESOLVED_FOR
            {
                return Ok(node.clone());
            }
        }
        let (store, want) = (self.gateway.clone(), uuid.clone());
        let served =
            tokio::task::spawn_blocking(move || crate::cluster::resolve(&store, want.as_str()))
                .await
                .map_err(|e| Error::Protocol(format!("resolving a node: {e}")))??;
        match served {
            Some(crate::cluster::Served::Node(node)) => {
                let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(uuid.clone(), (Instant::now(), (*node).clone()));
                Ok(*node)
            }
            _ => Err(Error::Node {
                node: uuid.to_string(),
                reason: "not a node this gateway reaches".into(),
            }),
        }
    }

    /// A session on `node`, served by the gateway to itself.
    async fn open(&self, node: &Uuid) -> Result<Session> {
        let served = self.node(node).await?;
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let (r, w) = tokio::io::split(theirs);
            let mode = protocol::server::ServeMode::ReadWrite;
            let reader = BufReader::new(r);
            if let Err(e) =
                crate::proxy::serve_node(served, &gateway, mode, None, None, reader, w).await
            {
                tracing::debug!("repair session: {e}");
            }
        });
        let (r, w) = tokio::io::split(ours);
        let mut session = ClientSession::new(BufReader::new(r), w);
        // A preauthenticated session greets with AUTH-SUCCESS, as p2pstdio does.
        session.expect_auth_success().await?;
        session
            .negotiate_version(Version::from(MAX_VERSION))
            .await?;
        Ok(session)
    }

    /// Carries out `action`.
    pub async fn run(&self, action: &Action) -> Result<()> {
        match action {
            Action::Copy { key, from, to } => self.copy(key, from, to).await,
            Action::Drop { key, from, lock } => self.drop_copy(key, from, lock).await,
        }
    }

    async fn copy(&self, key: &Key, from: &Uuid, to: &Uuid) -> Result<()> {
        let mut dst = self.open(to).await?;
        let offset = match dst.put_stream_start(key, AssociatedFile::none()).await? {
            PutStart::AlreadyHave(_) => return Ok(()),
            PutStart::From(o) => o,
        };
        let mut src = self.open(from).await?;
        let len = src.get_relay_start(key, offset).await?;
        dst.put_stream_data(len).await?;
        let mut left = len;
        while left > 0 {
            let chunk = src.relay_chunk(left.min(CHUNK)).await?;
            if chunk.is_empty() {
                return Err(node_error(from, "its stream ended mid-transfer"));
            }
            let n = chunk.len();
            dst.put_stream_write(chunk).await?;
            src.relay_consume(n);
            left -= n as u64;
        }
        let valid = src.relay_validity().await? == protocol::server::Validity::Valid;
        let outcome: PutOutcome = dst.put_stream_finish(valid).await?;
        src.relay_finish(outcome.stored).await?;
        let _ = src.close().await;
        let _ = dst.close().await;
        if outcome.stored || outcome.already_had {
            Ok(())
        } else {
            Err(node_error(to, "refused the copy"))
        }
    }

    async fn drop_copy(&self, key: &Key, from: &Uuid, lock: &[Uuid]) -> Result<()> {
        let mut held = Vec::new();
        for node in lock {
            let mut s = self.open(node).await?;
            if !s.lock_content(key).await? {
                return Err(node_error(node, "could not lock its copy"));
            }
            held.push(s);
        }
        let mut s = self.open(from).await?;
        let (removed, _) = s.remove(key, None).await?;
        let _ = s.close().await;
        for mut h in held {
            let _ = h.unlock_content().await;
            let _ = h.close().await;
        }
        if removed {
            Ok(())
        } else {
            Err(node_error(from, "did not remove its copy"))
        }
    }
}

impl Sessions {
    /// Reads `node`'s copy of `key` in a session, as a client's `GET`
    /// through the gateway would (with the node's deadlines), and verifies
    /// it as it streams: `CHECKPRESENT`, then `GET` from byte 0, hashed.
    /// The finding and the bytes read.
    pub async fn verify(&self, key: &Key, node: &Uuid) -> Result<(Found, u64)> {
        let mut s = self.open(node).await?;
        if !s.check_present(key).await? {
            let _ = s.close().await;
            return Ok((Found::Missing, 0));
        }
        let len = s.get_relay_start(key, 0).await?;
        let mut check = Verifier::new(key);
        let mut left = len;
        while left > 0 {
            let chunk = s.relay_chunk(left.min(CHUNK)).await?;
            if chunk.is_empty() {
                return Err(node_error(node, "its stream ended mid-transfer"));
            }
            let n = chunk.len();
            check.update(chunk);
            s.relay_consume(n);
            left -= n as u64;
        }
        // The node's own VALID/INVALID says nothing about its bytes here:
        // the hash does.
        let _ = s.relay_validity().await?;
        let found = Found::of_verdict(&check.finish());
        s.relay_finish(found == Found::Good).await?;
        let _ = s.close().await;
        Ok((found, len))
    }
}

fn node_error(node: &Uuid, reason: &str) -> Error {
    Error::Node {
        node: node.to_string(),
        reason: reason.to_owned(),
    }
}
