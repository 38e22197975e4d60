//! The gateway's `GET`, driven by `protocol::cluster::GetCursor`: the nodes
//! ranked by cost, then idleness, then at random; the first that can serve
//! gives the size ([`start`]); its bytes are relayed as they come
//! ([`PendingGet::send`]), and a node failing after k bytes is replaced by
//! the next holder from byte k.

use std::io::{Read, Seek, SeekFrom};

use protocol::cluster::{Cost, GetCursor, GetStep, Holder};
use protocol::server::Validity;
use protocol::{Key, Uuid};
use tokio::io::AsyncWriteExt;

use super::remote::Fetch;
use super::{Gateway, GatewayNode, Spool, spool_path};
use crate::backend::{PayloadWriter, Sent};
use crate::error::{IoContext, Result};
use crate::session::IO_BUFFER;
use crate::special::Special;

/// A node's content being sent.
enum Source<'g> {
    File {
        file: std::fs::File,
        node: &'g str,
        /// An external special remote's content is fetched to a spool first.
        _spool: Option<Spool>,
        _busy: crate::busy::Busy,
    },
    Remote {
        fetch: Fetch<'g>,
        _busy: crate::busy::Busy,
    },
}

impl Source<'_> {
    /// The source is given up mid-request.
    fn fail(self, why: &str) {
        match self {
            Source::File { node, .. } => tracing::info!("node {node}: {why}"),
            Source::Remote { fetch, .. } => fetch.fail(why),
        }
    }
}

/// A `GET` between `DATA` and the last byte.
pub(super) struct PendingGet<'g> {
    key: Key,
    cursor: GetCursor,
    /// The candidates, each with whether it was tried (several "cluster via"
    /// nodes share the cluster's uuid).
    nodes: Vec<(&'g GatewayNode, bool)>,
    source: Option<Source<'g>>,
    buf: Vec<u8>,
}

/// What [`PendingGet::advance`] found.
enum Next {
    /// A node is ready to send from the cursor's offset.
    Opened,
    Complete {
        valid: bool,
    },
    /// No holder left.
    Exhausted,
}

/// The candidates for a GET: every node but a "cluster via" a gateway the
/// client bypasses, as holders for the cursor (cost, transfers in flight).
pub(super) fn candidates<'g>(
    nodes: &'g [GatewayNode],
    busy_dir: &std::path::Path,
) -> (Vec<&'g GatewayNode>, Vec<Holder>) {
    let usable: Vec<&GatewayNode> = nodes
        .iter()
        .filter(|n| !matches!(n, GatewayNode::Remote(r) if r.bypassed()))
        .collect();
    let holders = usable
        .iter()
        .map(|n| Holder {
            node: n.uuid().clone(),
            cost: Cost::from_f64(n.cost().0).unwrap_or(Cost::from_hundredths(u64::MAX)),
            busy: u32::try_from(crate::busy::count(busy_dir, n.uuid())).unwrap_or(u32::MAX),
        })
        .collect();
    (usable, holders)
}

/// `GET` of `key` from `offset`: its size, from the first node that can
/// send it, and the transfer (`None` when no node has it).
pub(super) async fn start<'g>(
    gw: &'g Gateway<'g>,
    key: &Key,
    offset: u64,
) -> (Option<u64>, Option<PendingGet<'g>>) {
    let (usable, holders) = candidates(&gw.nodes, &gw.busy_dir());
    let mut get = PendingGet {
        key: key.clone(),
        cursor: GetCursor::new(&holders, offset, key.size(), rand::random()),
        nodes: usable.into_iter().map(|n| (n, false)).collect(),
        source: None,
        buf: Vec::new(),
    };
    match get.advance(gw).await {
        Next::Opened | Next::Complete { .. } => (get.cursor.total(), Some(get)),
        Next::Exhausted => (None, None),
    }
}

impl<'g> PendingGet<'g> {
    pub(super) fn key(&self) -> &Key {
        &self.key
    }

    /// The client went on to another request: a node still sending is given up.
    pub(super) fn abandon(mut self) {
        if let Some(s) = self.source.take() {
            s.fail("the client moved on");
        }
    }

    /// Sends the rest of the content, failing over from node to node.
    /// `Err` is the client's stream failing.
    pub(super) async fn send<W: PayloadWriter>(
        &mut self,
        gw: &'g Gateway<'g>,
        writer: &mut W,
    ) -> Result<Sent> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; IO_BUFFER];
        }
        loop {
            if let Some(source) = self.source.take() {
                self.relay(source, writer).await?;
            }
            match self.advance(gw).await {
                Next::Opened => {}
                Next::Complete { valid } => return Ok(Sent::Complete { valid }),
                Next::Exhausted => {
                    return Ok(Sent::Broken(format!(
                        "no node could send all of {}",
                        self.key
                    )));
                }
            }
        }
    }

    /// Opens the next node the cursor names, until one can send.
    async fn advance(&mut self, gw: &'g Gateway<'g>) -> Next {
        loop {
            let (node, offset) = match self.cursor.next() {
                GetStep::Try { node, offset } => (node, offset),
                GetStep::Complete { valid, .. } => return Next::Complete { valid },
                GetStep::NoHolderLeft { .. } => return Next::Exhausted,
            };
            let Some(n) = self.take_node(&node) else {
                self.cursor.on_failure();
                continue;
            };
            let Some((source, len)) = open(gw, n, &self.key, offset).await else {
                self.cursor.on_failure();
                continue;
            };
            match self.cursor.on_start(len) {
                Ok(_) => {
                    self.source = Some(source);
                    return Next::Opened;
                }
                Err(e) => {
                    source.fail(&format!("{}: {e}", self.key));
                    self.cursor.on_failure();
                }
            }
        }
    }

    /// The first untried candidate with this uuid.
    fn take_node(&mut self, uuid: &Uuid) -> Option<&'g GatewayNode> {
        let (n, tried) = self
            .nodes
            .iter_mut()
            .find(|(n, tried)| !*tried && n.uuid() == uuid)?;
        *tried = true;
        Some(*n)
    }

    /// Relays one node's bytes from the cursor's offset to its end; a node
    /// failing midway leaves the cursor where it stopped.
    async fn relay<W: PayloadWriter>(&mut self, source: Source<'g>, writer: &mut W) -> Result<()> {
        let total = self.cursor.total().unwrap_or(0);
        match source {
            Source::File { mut file, node, .. } => {
                let stable = self.relay_file(&mut file, node, total, writer).await?;
                if let Some(stable) = stable {
                    let after = file.metadata().map(|m| m.len()).unwrap_or(0);
                    let valid = stable && after == total;
                    self.cursor.on_end(if valid {
                        Validity::Valid
                    } else {
                        Validity::Invalid
                    });
                }
            }
            Source::Remote { mut fetch, .. } => {
                let mut failed = None;
                while self.cursor.offset() < total {
                    let chunk = match fetch.chunk(total - self.cursor.offset()).await {
                        Ok(c) if !c.is_empty() => c,
                        Ok(_) => {
                            failed = Some("its stream ended".to_owned());
                            break;
                        }
                        Err(e) => {
                            failed = Some(e.to_string());
                            break;
                        }
                    };
                    writer
                        .write_all(chunk)
                        .await
                        .context(|| "p2p stream".into())?;
                    let n = chunk.len();
                    fetch.consume(n);
                    self.cursor.on_data(n as u64);
                }
                match failed {
                    Some(why) => {
                        fetch.fail(&why);
                        self.cursor.on_failure();
                    }
                    None => match fetch.finish().await {
                        Ok(v) => self.cursor.on_end(v),
                        Err(_) => self.cursor.on_end(Validity::Unknown),
                    },
                }
            }
        }
        Ok(())
    }

    /// Sends a node's file from the cursor's offset: `Some(true)` when all
    /// was sent, `None` when the node failed (the cursor then fails over).
    async fn relay_file<W: PayloadWriter>(
        &mut self,
        file: &mut std::fs::File,
        node: &str,
        total: u64,
        writer: &mut W,
    ) -> Result<Option<bool>> {
        let key = &self.key;
        if let Err(e) = file.seek(SeekFrom::Start(self.cursor.offset())) {
            tracing::info!("node {node} failed sending {key}: {e}");
            self.cursor.on_failure();
            return Ok(None);
        }
        while self.cursor.offset() < total {
            let n = self
                .buf
                .len()
                .min(usize::try_from(total - self.cursor.offset()).unwrap_or(usize::MAX));
            let got = match file.read(&mut self.buf[..n]) {
                Ok(0) | Err(_) => {
                    tracing::info!("node {node} failed sending {key}");
                    self.cursor.on_failure();
                    return Ok(None);
                }
                Ok(got) => got,
            };
            writer
                .write_all(&self.buf[..got])
                .await
                .context(|| "p2p stream".into())?;
            self.cursor.on_data(got as u64);
        }
        Ok(Some(true))
    }
}

/// Opens node `n`'s content of `key` from `offset`: the source and the
/// number of bytes it offers from there (`None` if it does not have it).
async fn open<'g>(
    gw: &'g Gateway<'g>,
    n: &'g GatewayNode,
    key: &Key,
    offset: u64,
) -> Option<(Source<'g>, u64)> {
    let busy = crate::busy::start(&gw.busy_dir(), n.uuid());
    let opened = match n {
        GatewayNode::Local(l, _) => match l.store.contains(key) {
            true => l.store.open_content(key).map_err(|e| e.to_string()),
            false => Ok(None),
        },
        GatewayNode::Special(s) => match &s.special {
            Special::Directory(_) => s.open_dir_content(key).map_err(|e| e.to_string()),
            Special::External { .. } => {
                let spool = fetch_external(gw, s, key)?;
                let file = spool.file.try_clone().ok()?;
                let len = file.metadata().ok()?.len();
                let source = Source::File {
                    file,
                    node: &s.remote,
                    _spool: Some(spool),
                    _busy: busy,
                };
                return Some((source, len.saturating_sub(offset)));
            }
        },
        GatewayNode::Remote(r) => {
            return match r.get_start(gw.gateway.uuid(), key, offset).await {
                Ok(Some((fetch, len))) => Some((Source::Remote { fetch, _busy: busy }, len)),
                Ok(None) => None,
                Err(e) => {
                    tracing::info!("node {} cannot send {key}: {e}", r.remote);
                    None
                }
            };
        }
    };
    match opened {
        Ok(Some((file, len))) => Some((
            Source::File {
                file,
                node: n.remote(),
                _spool: None,
                _busy: busy,
            },
            len.saturating_sub(offset),
        )),
        Ok(None) => None,
        Err(e) => {
            tracing::info!("node {} cannot send {key}: {e}", n.remote());
            None
        }
    }
}

/// `TRANSFER RETRIEVE` from an external special remote into a spool file.
fn fetch_external(gw: &Gateway<'_>, s: &crate::special::SpecialNode, key: &Key) -> Option<Spool> {
    if !matches!(s.contains(key), Ok(true)) {
        return None;
    }
    let mut spool = Spool::create(spool_path(gw.gateway, key, "get")).ok()?;
    // The remote writes its own file at the path.
    let _ = std::fs::remove_file(&spool.path);
    match s.retrieve(key, &spool.path) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            tracing::info!("node {} cannot send {key}: {e}", s.remote);
            return None;
        }
    }
    spool.file = std::fs::File::open(&spool.path).ok()?;
    Some(spool)
}
