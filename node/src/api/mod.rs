//! The daemon's HTTP API (axum), shaped after ipfs-cluster's REST API: JSON
//! everywhere, errors as `{"error": …}` with a status code, every request
//! with `Authorization: Bearer <token>` ([`token`]). Loopback by default.
//!
//! What it tells comes from the daemon's own state: the catalog ([`Meta`]),
//! the membership, the health file (`meta::health`) and the repairer's
//! state file (`cluster::repair::state`); a recover request goes to the
//! running repairer, an fsck request starts a job of `cluster::fsck`.

pub mod fsck;
pub mod keys;
pub mod metrics;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use libp2p::PeerId;
use serde_json::{Value, json};

use crate::members::Members;
use crate::meta::Meta;
use crate::net::Net;
use crate::store::Store;

/// What the handlers read.
pub struct ApiState {
    pub meta: Arc<Meta>,
    pub net: Net,
    pub store: Store,
    pub members: Option<Arc<Members>>,
    /// `<git dir>/annex/annexmesh`.
    pub state_dir: PathBuf,
    pub addrs: Vec<String>,
    pub metrics: metrics::Metrics,
    /// What the served sessions moved, per peer.
    pub stats: Arc<crate::net::stats::Stats>,
    /// `annexmesh fsck --cluster`'s jobs.
    pub fsck: Arc<crate::cluster::fsck::Fsck>,
}

type Shared = Arc<ApiState>;

/// An error answer: a status and a message, sent as JSON.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1, "status": self.0.as_u16() });
        (self.0, Json(body)).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn not_found(what: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, what.into())
}

fn bad_request(what: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, what.into())
}

type Answer = Result<Json<Value>, ApiError>;

/// The routes, behind the token check.
pub fn router(state: Shared) -> axum::Router {
    axum::Router::new()
        .route("/id", get(id))
        .route("/version", get(version))
        .route("/peers", get(peers))
        .route("/peers/{peer}", delete(remove_peer))
        .route("/clusters", get(clusters))
        .route("/clusters/{name}", get(cluster))
        .route("/keys", get(keys::list))
        .route("/keys/{key}", get(keys::one))
        .route("/keys/{key}/recover", post(keys::recover))
        .route("/health/alerts", get(alerts))
        .route("/health/metrics", get(health_metrics))
        .route("/health/graph", get(graph))
        .route("/recover", post(keys::recover_all))
        .route("/fsck", post(fsck::start).get(fsck::status))
        .route("/status", get(status))
        .route("/metrics", get(metrics::serve))
        .fallback(|| async { not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: Shared) {
    if let Err(e) = axum::serve(listener, router(state)).await {
        tracing::warn!("the HTTP API stopped: {e}");
    }
}

async fn authorize(State(st): State<Shared>, req: Request, next: Next) -> Response {
    st.metrics.requests.inc();
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let git_dir = st.store.repo().git_dir.clone();
    let ok = match (token::read(&git_dir), given) {
        (Some(expected), Some(given)) => token::matches(&expected, given),
        _ => false,
    };
    if !ok {
        st.metrics.unauthorized.inc();
        let mut r = ApiError(
            StatusCode::UNAUTHORIZED,
            "a bearer token is needed (annexmesh api token)".into(),
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    next.run(req).await
}

async fn id(State(st): State<Shared>) -> Answer {
    Ok(Json(json!({
        "peer": st.net.peer_id().to_string(),
        "uuid": st.store.uuid().to_string(),
        "addresses": st.addrs,
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

async fn version() -> Answer {
    Ok(Json(json!({ "version": env!("CARGO_PKG_VERSION") })))
}

/// The members (this daemon among them, `"state": "self"`), each with its
/// role, description, addresses, whether it is connected now, and when the
/// keeper last saw it (unix seconds).
async fn peers(State(st): State<Shared>) -> Answer {
    let connected = st.net.connected_peers().await.unwrap_or_default();
    let mut catalog = protocol::logs::catalog::Catalog::new();
    for p in ["uuid.log", protocol::logs::view::ADDRESSES_LOG] {
        if let Some(f) = st.meta.file(p) {
            catalog.insert_content(p, &f.content());
        }
    }
    let view = protocol::logs::view::View::new(&catalog);
    let descriptions = view.descriptions();
    let seen = crate::keeper::read_seen(&st.state_dir);
    let me = st.net.peer_id();
    let members = st.members.as_ref().map(|m| m.all()).unwrap_or_default();
    let list: Vec<Value> = members
        .iter()
        .map(|m| {
            let peer = m.peer.to_string();
            let state = if m.peer == me {
                "self"
            } else if connected.contains(&m.peer) {
                "connected"
            } else {
                "disconnected"
            };
            json!({
                "peer": peer,
                "uuid": m.uuid,
                "description": descriptions.get(&m.uuid),
                "role": protocol::logs::members::role_name(m.role),
                "connected": connected.contains(&m.peer),
                "state": state,
                "last_seen": seen.get(&peer).and_then(|s| s.last_seen),
                "addresses": view.addresses(&m.uuid),
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// The repairer's view (its state file): per cluster its counts, and every
/// key not simply at its replication with each node's state; the nodes'
/// descriptions to name them by.
async fn status(State(st): State<Shared>) -> Answer {
    let Some((summaries, keys)) = crate::cluster::repair::state::read(&st.state_dir) else {
        return Err(not_found(
            "no repair state yet: this daemon serves no cluster, or has just started",
        ));
    };
    let names = descriptions(&st.meta);
    let clusters: Vec<Value> = summaries
        .iter()
        .map(|s| {
            json!({
                "cluster": s.cluster,
                "keys": s.keys,
                "under_replicated": s.under_replicated,
                "queued": s.queued,
                "transferring": s.transferring,
                "errors": s.errors,
                "missing": s.missing,
            })
        })
        .collect();
    let mut named = serde_json::Map::new();
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            for (u, _) in &k.nodes {
                if let Some(d) = names.get(u) {
                    named.insert(u.clone(), Value::String(d.clone()));
                }
            }
            json!({
                "cluster": k.cluster,
                "key": k.key,
                "copies": k.copies,
                "min": k.min,
                "max": k.max,
                "under_replicated": k.under_replicated,
                "queued": k.queued,
                "error": k.error,
                "nodes": k.nodes.iter().map(|(u, s)| json!({ "uuid": u, "state": s })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(
        json!({ "clusters": clusters, "keys": keys, "descriptions": named }),
    ))
}

async fn remove_peer(State(st): State<Shared>, Path(peer): Path<String>) -> Answer {
    let id: PeerId = peer
        .parse()
        .map_err(|_| bad_request(format!("not a PeerId: {peer}")))?;
    let known = st
        .members
        .as_ref()
        .is_some_and(|m| m.others().iter().any(|o| o.peer == id));
    if !known {
        return Err(not_found(format!("no member {peer}")));
    }
    let content = crate::members::record(
        st.store.journal(),
        &id,
        &protocol::logs::members::Entry::Removed,
    )?;
    st.meta
        .record_local(protocol::logs::members::MEMBERS_LOG, &content);
    Ok(Json(json!({ "removed": peer })))
}

fn descriptions(meta: &Meta) -> std::collections::BTreeMap<String, String> {
    let mut catalog = protocol::logs::catalog::Catalog::new();
    if let Some(f) = meta.file("uuid.log") {
        catalog.insert_content("uuid.log", &f.content());
    }
    protocol::logs::view::View::new(&catalog).descriptions()
}

/// Every cluster the catalog knows: uuid, name, nodes, gateways, policy.
fn cluster_list(st: &ApiState) -> Result<Vec<Value>, ApiError> {
    let (topo, catalog) = crate::topology::topology(&st.store)?;
    let view = protocol::logs::view::View::new(&catalog);
    let names = descriptions(&st.meta);
    let policies = st
        .meta
        .file(protocol::replication::policy::REPLICATION_LOG)
        .map(|f| protocol::replication::policy::read_clusters(&f.content()))
        .unwrap_or_default();
    let proxies = view.proxies();
    let mut out = Vec::new();
    for (c, nodes) in view.clusters() {
        let Ok(uuid) = protocol::Uuid::parse(&c) else {
            continue;
        };
        let name = names
            .get(&c)
            .map(|d| d.strip_prefix("cluster ").unwrap_or(d).to_owned());
        let gateways: Vec<String> = proxies
            .iter()
            .filter(|(_, list)| list.iter().any(|(u, _)| *u == c))
            .map(|(g, _)| g.clone())
            .collect();
        let routes = if topo.gateways().any(|g| g == st.store.uuid()) {
            crate::topology::routes(&st.store, &uuid)?
        } else {
            None
        };
        let paths: Vec<Value> = routes
            .iter()
            .flat_map(|r| r.iter())
            .map(|r| {
                json!({
                    "node": r.node.to_string(),
                    "hops": r.hops.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "cost": format!("{:?}", r.cost),
                    "name": r.name,
                })
            })
            .collect();
        let rule = policies.get(&uuid).copied().unwrap_or_default();
        out.push(json!({
            "uuid": c,
            "name": name,
            "nodes": nodes,
            "gateways": gateways,
            "paths": paths,
            "replication": {
                "min": rule.min,
                "max": rule.max,
                "grace_s": rule.grace,
            },
        }));
    }
    Ok(out)
}

async fn clusters(State(st): State<Shared>) -> Answer {
    let s = st.clone();
    let list = tokio::task::spawn_blocking(move || cluster_list(&s))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(Value::Array(list)))
}

async fn cluster(State(st): State<Shared>, Path(name): Path<String>) -> Answer {
    let s = st.clone();
    let list = tokio::task::spawn_blocking(move || cluster_list(&s))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    list.into_iter()
        .find(|c| c["uuid"] == name.as_str() || c["name"] == name.as_str())
        .map(Json)
        .ok_or_else(|| not_found(format!("no cluster {name}")))
}

async fn alerts(State(st): State<Shared>) -> Answer {
    let (nodes, alerts) = crate::health::read_state(&st.state_dir);
    if st.members.is_none() {
        return Err(not_found("this daemon has no peer monitor"));
    }
    let nodes: Vec<Value> = nodes.iter().map(node_json).collect();
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|a| json!({ "at_unix_ms": a.at_unix_ms, "kind": a.kind, "uuid": a.uuid }))
        .collect();
    Ok(Json(json!({ "nodes": nodes, "alerts": alerts })))
}

async fn health_metrics(State(st): State<Shared>) -> Answer {
    let (nodes, _) = crate::health::read_state(&st.state_dir);
    Ok(Json(Value::Array(nodes.iter().map(node_json).collect())))
}

/// One node as the monitor sees it; metrics not heard yet are `null`, not
/// zeros (which would read as a full disk).
fn node_json(n: &crate::health::NodeHealth) -> Value {
    let known = |v: u64| {
        if n.metrics_known {
            json!(v)
        } else {
            Value::Null
        }
    };
    json!({
        "uuid": n.uuid,
        "state": n.state,
        "last_seen_unix_ms": n.last_seen_unix_ms,
        "free_bytes": known(n.free_bytes),
        "transfers_in_flight": known(n.transfers_in_flight),
        "reserved_bytes": known(n.reserved_bytes),
    })
}

/// The mesh as dot: members (with the monitor's states), gateways and
/// their links, cluster nodes, clusters, and this gateway's paths in use.
fn mesh_graph(st: &ApiState) -> Result<String, ApiError> {
    use protocol::cluster::graph::{Edge, Graph, Kind};
    let mut g = Graph::new();
    let names = descriptions(&st.meta);
    let name = |u: &str| names.get(u).map(String::as_str);
    let (nodes, _) = crate::health::read_state(&st.state_dir);
    let states: std::collections::BTreeMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.uuid.as_str(), n.state.as_str()))
        .collect();
    let me = st.store.uuid().to_string();
    g.vertex(&me, Kind::Member, name(&me), Some("self"));
    for m in st.members.as_ref().map(|m| m.others()).unwrap_or_default() {
        g.vertex(
            &m.uuid,
            Kind::Member,
            name(&m.uuid),
            states.get(m.uuid.as_str()).copied(),
        );
    }
    let (topo, catalog) = crate::topology::topology(&st.store)?;
    let edge = |from: String, to: String, label: String| Edge {
        from,
        to,
        label,
        in_use: false,
        membership: false,
    };
    let gateways: Vec<protocol::Uuid> = topo.gateways().cloned().collect();
    for gw in &gateways {
        let id = gw.to_string();
        g.vertex(
            &id,
            Kind::Gateway,
            name(&id),
            states.get(id.as_str()).copied(),
        );
        for (to, cost) in topo.links(gw) {
            let to_s = to.to_string();
            g.vertex(&to_s, Kind::Gateway, name(&to_s), None);
            g.edge(edge(id.clone(), to_s, format!("{:.2}", cost.to_f64())));
        }
        for (node, cost) in topo.direct_nodes(gw) {
            let n = node.to_string();
            g.vertex(&n, Kind::Node, name(&n), states.get(n.as_str()).copied());
            g.edge(edge(id.clone(), n, format!("{:.2}", cost.to_f64())));
        }
    }
    let view = protocol::logs::view::View::new(&catalog);
    let serving = gateways.iter().any(|g| g == st.store.uuid());
    for (c, members) in view.clusters() {
        let label = name(&c).map(|d| d.strip_prefix("cluster ").unwrap_or(d).to_owned());
        g.vertex(&c, Kind::Cluster, label.as_deref(), None);
        for n in &members {
            g.vertex(n, Kind::Node, name(n), states.get(n.as_str()).copied());
            g.edge(Edge {
                membership: true,
                ..edge(c.clone(), n.clone(), String::new())
            });
        }
        let Ok(uuid) = protocol::Uuid::parse(&c) else {
            continue;
        };
        if !serving {
            continue;
        }
        let Some(routes) = crate::topology::routes(&st.store, &uuid)? else {
            continue;
        };
        for r in routes.iter() {
            let mut from = me.clone();
            for hop in r
                .hops
                .iter()
                .map(ToString::to_string)
                .chain([r.node.to_string()])
            {
                g.edge(Edge {
                    in_use: true,
                    ..edge(from.clone(), hop.clone(), String::new())
                });
                from = hop;
            }
        }
    }
    Ok(g.render())
}

async fn graph(State(st): State<Shared>) -> Result<Response, ApiError> {
    let s = st.clone();
    let dot = tokio::task::spawn_blocking(move || mesh_graph(&s))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((
        [(header::CONTENT_TYPE, "text/vnd.graphviz; charset=utf-8")],
        dot,
    )
        .into_response())
}
