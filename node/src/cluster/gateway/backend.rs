//! The gateway as a [`Backend`]: one client session over the cluster's
//! nodes. The requests without payload are answered here; PUT and GET keep
//! their state between requests in [`put::PendingPut`] and [`get::PendingGet`].

use protocol::cluster::reply::{RemoveReport, Reporter, remove_reply};
use protocol::logs::catalog::Catalog;
use protocol::logs::presence::Status;
use protocol::server::{PutStart, Validity};
use protocol::{AssociatedFile, Key, Uuid};

use super::{Gateway, each_parallel, get, put};
use crate::backend::{Backend, Done, PayloadReader, PayloadWriter, Sent};
use crate::error::Result;

/// One client session of a gateway.
pub(crate) struct GatewaySession<'g> {
    gw: &'g Gateway<'g>,
    /// The gateway's branch, read on the first PUT (for the nodes' preferred
    /// content) and kept for the session.
    catalog: Option<Catalog>,
    /// The client's `BYPASS`.
    bypass: Vec<Uuid>,
    put: Option<put::PendingPut<'g>>,
    get: Option<get::PendingGet<'g>>,
}

impl<'g> GatewaySession<'g> {
    pub(crate) fn new(gw: &'g Gateway<'g>) -> GatewaySession<'g> {
        gw.set_bypass(Vec::new());
        GatewaySession {
            gw,
            catalog: None,
            bypass: Vec::new(),
            put: None,
            get: None,
        }
    }

    /// Ends what an earlier request left open (the machine never leaves
    /// one open, but a node connection must not stay mid-request).
    async fn settle(&mut self) {
        if let Some(p) = self.put.take() {
            p.abandon().await;
        }
        if let Some(g) = self.get.take() {
            g.abandon();
        }
    }
}

impl Backend for GatewaySession<'_> {
    async fn check_present(&mut self, key: &Key) -> Result<bool, String> {
        self.settle().await;
        Ok(self.gw.any_has(key).await)
    }

    /// Never fans out: clients lock individual nodes (git-annex's rule).
    async fn lock(&mut self, _key: &Key) -> bool {
        false
    }

    async fn unlock(&mut self, _connection_lost: bool) {}

    async fn remove(&mut self, key: &Key, before: Option<i64>) -> Result<Done, String> {
        self.settle().await;
        let reply = remove_reply(4, &remove_all(self.gw, key, before).await);
        self.gw.record(key, &reply.record, Status::Absent);
        Ok(Done {
            ok: reply.ok(),
            also: reply.record,
        })
    }

    async fn timestamp(&mut self) -> i64 {
        crate::clock::monotonic_seconds()
    }

    async fn bypass(&mut self, uuids: Vec<Uuid>) {
        self.gw.set_bypass(uuids.clone());
        self.bypass = uuids;
    }

    async fn prepare_put(&mut self, key: &Key, file: &AssociatedFile) -> PutStart {
        self.settle().await;
        let (start, pending) = put::prepare(
            self.gw,
            &mut self.catalog,
            &self.bypass,
            key,
            file.as_deref(),
        )
        .await;
        self.put = pending;
        start
    }

    async fn abandon_put(&mut self, _key: &Key) {
        self.settle().await;
    }

    async fn receive_payload<R: PayloadReader>(
        &mut self,
        reader: &mut R,
        key: &Key,
        offset: u64,
        len: u64,
    ) -> bool {
        match self.put.as_mut() {
            Some(p) if p.key() == key => p.receive(reader, offset, len).await,
            // Nothing prepared (a machine bug): keep the stream in step.
            _ => crate::backend::consume_payload(reader, len, |_| {}).await,
        }
    }

    async fn commit(&mut self, key: &Key, validity: Validity) -> Done {
        match self.put.take() {
            Some(p) if p.key() == key => p.commit(self.gw, validity).await,
            other => {
                self.put = other;
                self.settle().await;
                Done::plain(false)
            }
        }
    }

    async fn confirm_present(&mut self, key: &Key) -> Done {
        match self.put.take() {
            Some(p) if p.key() == key => p.confirm_present(self.gw).await,
            other => {
                self.put = other;
                self.settle().await;
                Done::plain(false)
            }
        }
    }

    async fn content_size(&mut self, key: &Key, offset: u64) -> Option<u64> {
        self.settle().await;
        let (size, pending) = get::start(self.gw, key, offset).await;
        self.get = pending;
        size
    }

    async fn send_payload<W: PayloadWriter>(
        &mut self,
        writer: &mut W,
        key: &Key,
        _offset: u64,
        _len: u64,
    ) -> Result<Sent> {
        match self.get.take() {
            Some(mut g) if g.key() == key => g.send(self.gw, writer).await,
            other => {
                self.get = other;
                self.settle().await;
                Ok(Sent::Broken(format!("{key} was not fetched")))
            }
        }
    }
}

/// `REMOVE` on every node (annex-spec §4.8): each node's report.
async fn remove_all(gw: &Gateway<'_>, key: &Key, before: Option<i64>) -> Vec<RemoveReport> {
    let report = |uuid: &Uuid, removed: bool, also: Vec<Uuid>| RemoveReport {
        from: Reporter::Node(uuid.clone()),
        removed,
        also,
    };
    let mut reports = each_parallel(gw.locals(), |n| {
        let r = n.store.remove(key, before);
        if let Err(e) = &r {
            tracing::info!("remove {key} from node {}: {e}", n.remote);
        }
        report(&n.uuid, matches!(r, Ok(true)), Vec::new())
    });
    let me = gw.gateway.uuid();
    let shells = gw.shells();
    reports.extend(
        futures::future::join_all(shells.iter().map(|s| async {
            match s.remove(me, key, before).await {
                Ok((ok, also)) => report(&s.uuid, ok, also),
                Err(_) => report(&s.uuid, false, Vec::new()),
            }
        }))
        .await,
    );
    reports.extend(each_parallel(gw.specials(), |s| {
        // No clock on a special remote: a passed deadline refuses.
        let late = before.is_some_and(|d| crate::clock::monotonic_seconds() >= d);
        let r = if late { Ok(false) } else { s.remove(key) };
        if let Err(e) = &r {
            tracing::info!("remove {key} from node {}: {e}", s.remote);
        }
        report(&s.uuid, matches!(r, Ok(true)), Vec::new())
    }));
    reports
}
