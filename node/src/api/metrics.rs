//! `GET /metrics`: OpenMetrics text (prometheus-client). Counters live for
//! the daemon's life; gauges are read from its state at each scrape.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Shared;

/// The daemon's counters.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub requests: Counter,
    pub unauthorized: Counter,
    pub keys_listed: Counter,
}

type Labels = Vec<(String, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The text of one scrape.
pub async fn render(st: &super::ApiState) -> String {
    let mut r = Registry::with_prefix("annexmesh");
    r.register(
        "api_requests",
        "HTTP API requests received",
        st.metrics.requests.clone(),
    );
    r.register(
        "api_unauthorized",
        "HTTP API requests refused for a missing or wrong token",
        st.metrics.unauthorized.clone(),
    );
    r.register(
        "api_keys_listed",
        "Catalog entries read by key listings",
        st.metrics.keys_listed.clone(),
    );
    gauge(
        &mut r,
        "catalog_files",
        "Files in the metadata catalog",
        count(st.meta.len()),
    );
    let keys = st.meta.count(super::keys::is_location_log);
    gauge(
        &mut r,
        "catalog_keys",
        "Keys with a location log in the catalog",
        count(keys),
    );
    let connected = st.net.connected_peers().await.unwrap_or_default();
    gauge(
        &mut r,
        "peers_connected",
        "Peers with an open connection",
        count(connected.len()),
    );
    let members = st.members.as_ref().map_or(0, |m| m.others().len());
    gauge(
        &mut r,
        "members",
        "Other members of the mesh",
        count(members),
    );
    let (nodes, alerts) = crate::health::read_state(&st.state_dir);
    let by_state: Family<Labels, Gauge> = Family::default();
    let flight: Family<Labels, Gauge> = Family::default();
    let free: Family<Labels, Gauge> = Family::default();
    for s in ["alive", "suspected", "down"] {
        let _ = by_state.get_or_create(&vec![("state".into(), s.into())]);
    }
    for n in &nodes {
        by_state
            .get_or_create(&vec![("state".into(), n.state.clone())])
            .inc();
        let node = vec![("node".to_owned(), n.uuid.clone())];
        flight
            .get_or_create(&node)
            .set(count(n.transfers_in_flight));
        free.get_or_create(&node).set(count(n.free_bytes));
    }
    r.register("nodes", "Monitored nodes by state", by_state);
    r.register(
        "node_transfers_in_flight",
        "Transfers in flight per node, as its heartbeat tells",
        flight,
    );
    r.register(
        "node_free_bytes",
        "Free space per node, as its heartbeat tells",
        free,
    );
    gauge(&mut r, "alerts", "Alerts kept", count(alerts.len()));
    if let Some((summaries, _)) = crate::cluster::repair::state::read(&st.state_dir) {
        let under: Family<Labels, Gauge> = Family::default();
        let queued: Family<Labels, Gauge> = Family::default();
        let transferring: Family<Labels, Gauge> = Family::default();
        let errors: Family<Labels, Gauge> = Family::default();
        for s in &summaries {
            let c = vec![("cluster".to_owned(), s.cluster.clone())];
            under.get_or_create(&c).set(count(s.under_replicated));
            queued.get_or_create(&c).set(count(s.queued));
            transferring.get_or_create(&c).set(count(s.transferring));
            errors.get_or_create(&c).set(count(s.errors));
        }
        r.register(
            "under_replicated_keys",
            "Keys under their minimum copies",
            under,
        );
        r.register("repair_queue", "Repairs queued", queued);
        r.register("repair_transferring", "Repairs transferring", transferring);
        r.register("repair_errors", "Keys whose repair failed", errors);
    }
    {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &st.meta.counters;
        for (name, help, v) in [
            (
                "gossip_messages_in",
                "Metadata gossip messages taken",
                &c.gossip_in,
            ),
            (
                "gossip_messages_out",
                "Metadata gossip messages published",
                &c.gossip_out,
            ),
            (
                "gossip_messages_rejected",
                "Metadata gossip messages refused (untrusted author, too large, undecodable)",
                &c.gossip_rejected,
            ),
            (
                "metadata_lines_rejected",
                "Branch lines from peers refused: their author may not write them",
                &c.lines_rejected,
            ),
            (
                "anti_entropy_rounds",
                "Anti-entropy rounds started",
                &c.sync_rounds,
            ),
            (
                "anti_entropy_failed",
                "Anti-entropy rounds that failed",
                &c.sync_failed,
            ),
        ] {
            let counter: Counter = Counter::default();
            counter.inc_by(v.load(Relaxed));
            r.register(name, help, counter);
        }
    }
    let t = st.fsck.totals();
    for (name, help, v) in [
        (
            "fsck_copies_checked",
            "Copies fsck read and verified",
            t.copies,
        ),
        (
            "fsck_bytes_checked",
            "Bytes fsck read to verify copies",
            t.bytes,
        ),
        ("fsck_bad", "Copies fsck found bad", t.bad),
        ("fsck_missing", "Copies fsck found missing", t.missing),
        (
            "fsck_repaired",
            "Bad copies fsck replaced with a good one",
            t.repaired,
        ),
        (
            "fsck_errors",
            "fsck steps that failed, and keys with no good copy",
            t.errors,
        ),
    ] {
        let counter: Counter = Counter::default();
        counter.inc_by(v);
        r.register(name, help, counter);
    }
    let bytes_in: Family<Labels, Counter> = Family::default();
    let bytes_out: Family<Labels, Counter> = Family::default();
    let sessions: Family<Labels, Counter> = Family::default();
    let open: Family<Labels, Gauge> = Family::default();
    let mut open_total = 0;
    for (peer, c) in st.stats.snapshot() {
        use std::sync::atomic::Ordering::Relaxed;
        let l = vec![("peer".to_owned(), peer)];
        bytes_in.get_or_create(&l).inc_by(c.bytes_in.load(Relaxed));
        bytes_out
            .get_or_create(&l)
            .inc_by(c.bytes_out.load(Relaxed));
        sessions.get_or_create(&l).inc_by(c.sessions.load(Relaxed));
        let now = count(c.open.load(Relaxed));
        open_total += now;
        open.get_or_create(&l).set(now);
    }
    r.register(
        "peer_bytes_in",
        "Bytes received on sessions this daemon served, per peer",
        bytes_in,
    );
    r.register(
        "peer_bytes_out",
        "Bytes sent on sessions this daemon served, per peer",
        bytes_out,
    );
    r.register(
        "peer_sessions",
        "Sessions this daemon served, per peer",
        sessions,
    );
    r.register("peer_sessions_open", "Sessions open, per peer", open);
    let node_out: Family<Labels, Counter> = Family::default();
    let node_in: Family<Labels, Counter> = Family::default();
    for (node, sent, received) in crate::net::stats::node_bytes().snapshot() {
        let l = vec![("node".to_owned(), node)];
        node_out.get_or_create(&l).inc_by(sent);
        node_in.get_or_create(&l).inc_by(received);
    }
    r.register(
        "gateway_node_bytes_out",
        "Content bytes this gateway sent to a cluster node (PUTs fanned out), per node uuid",
        node_out,
    );
    r.register(
        "gateway_node_bytes_in",
        "Content bytes this gateway received from a remote cluster node (GETs relayed), per node uuid",
        node_in,
    );
    r.register(
        "put_duration_seconds",
        "Served PUTs, from the request to the content committed",
        st.stats.timings.put.clone(),
    );
    r.register(
        "get_duration_seconds",
        "Served GETs, the sending of the content",
        st.stats.timings.get.clone(),
    );
    gauge(&mut r, "sessions_open", "Sessions open", open_total);
    {
        use std::sync::atomic::Ordering::Relaxed;
        gauge(
            &mut r,
            "streams_pending",
            "Served streams not authenticated yet (holding a pending slot)",
            count(st.stats.streams_pending.load(Relaxed)),
        );
        gauge(
            &mut r,
            "sessions_authenticated",
            "Served sessions authenticated (holding a session slot)",
            count(st.stats.sessions_authenticated.load(Relaxed)),
        );
    }
    gauge(
        &mut r,
        "runtime_tasks_alive",
        "Tasks alive in the daemon's async runtime",
        count(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        ),
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &r) {
        tracing::warn!("encoding metrics: {e}");
    }
    out
}

pub async fn serve(State(st): State<Shared>) -> Response {
    let text = render(&st).await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
