//! `GET /keys` (every key the catalog knows with its holders, streamed as
//! NDJSON a page at a time: memory stays flat whatever the count),
//! `GET /keys/{key}` and `POST /keys/{key}/recover`.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::Key;
use protocol::logs::catalog::{Family, LogFile};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Shared, bad_request, not_found};
use crate::cluster::repair::state::{self, KeyLine, Recover};

/// Catalog files copied per page of a listing.
const PAGE: usize = 1024;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    /// A cluster's uuid or name: keys held by one of its nodes.
    pub cluster: Option<String>,
    /// A node's uuid: keys it holds.
    pub node: Option<String>,
    /// `present` (held somewhere), `missing` (held nowhere), or a repairer
    /// state: `under-replicated`, `queued`, `transferring`, `error`.
    pub state: Option<String>,
}

const STATES: [&str; 6] = [
    "present",
    "missing",
    "under-replicated",
    "queued",
    "transferring",
    "error",
];

/// Whether `path` is a key's location log.
pub fn is_location_log(path: &str) -> bool {
    Family::of(path) == Family::Presence && path.ends_with(".log")
}

fn key_of(path: &str) -> Option<Key> {
    let file = path.rsplit('/').next()?.strip_suffix(".log")?;
    Key::from_file(file).ok()
}

fn holders(file: &LogFile) -> Vec<String> {
    protocol::logs::presence::present(&file.content())
}

/// The repairer's lines by key (bounded: the state file lists at most
/// `state::MAX_KEY_LINES`).
fn repair_lines(st: &super::ApiState) -> HashMap<String, Vec<KeyLine>> {
    let mut out: HashMap<String, Vec<KeyLine>> = HashMap::new();
    if let Some((_, keys)) = state::read(&st.state_dir) {
        for k in keys {
            out.entry(k.key.clone()).or_default().push(k);
        }
    }
    out
}

fn states_of(holders: &[String], repair: &[KeyLine]) -> BTreeSet<&'static str> {
    let mut s = BTreeSet::new();
    s.insert(if holders.is_empty() {
        "missing"
    } else {
        "present"
    });
    for k in repair {
        if k.under_replicated {
            s.insert("under-replicated");
        }
        if k.queued {
            s.insert("queued");
        }
        if k.error.is_some() || k.nodes.iter().any(|(_, n)| n == "error") {
            s.insert("error");
        }
        if k.nodes
            .iter()
            .any(|(_, n)| n == "transferring" || n == "dropping")
        {
            s.insert("transferring");
        }
        if k.nodes.iter().any(|(_, n)| n == "missing") {
            s.insert("missing");
        }
    }
    s
}

fn repair_json(k: &KeyLine) -> Value {
    let nodes: serde_json::Map<String, Value> = k
        .nodes
        .iter()
        .map(|(u, s)| (u.clone(), Value::String(s.clone())))
        .collect();
    json!({
        "cluster": k.cluster,
        "copies": k.copies,
        "min": k.min,
        "max": k.max,
        "under_replicated": k.under_replicated,
        "queued": k.queued,
        "error": k.error,
        "nodes": nodes,
    })
}

fn key_json(key: &str, holders: &[String], repair: &[KeyLine]) -> Value {
    json!({
        "key": key,
        "holders": holders,
        "states": states_of(holders, repair),
        "repair": repair.iter().map(repair_json).collect::<Vec<_>>(),
    })
}

/// The nodes of the cluster named `name` (uuid or name), from cluster.log.
fn cluster_nodes(st: &super::ApiState, name: &str) -> Option<BTreeSet<String>> {
    let mut catalog = protocol::logs::catalog::Catalog::new();
    for f in ["cluster.log", "uuid.log"] {
        if let Some(file) = st.meta.file(f) {
            catalog.insert_content(f, &file.content());
        }
    }
    let view = protocol::logs::view::View::new(&catalog);
    let names = view.descriptions();
    view.clusters()
        .into_iter()
        .find(|(c, _)| {
            c == name
                || names
                    .get(c)
                    .is_some_and(|d| d == name || d.strip_prefix("cluster ") == Some(name))
        })
        .map(|(_, nodes)| nodes.into_iter().collect())
}

/// What a listing selects, prepared once.
struct Selection {
    cluster: Option<BTreeSet<String>>,
    node: Option<String>,
    state: Option<String>,
    repair: HashMap<String, Vec<KeyLine>>,
}

impl Selection {
    /// The key's line, when selected.
    fn line(&self, path: &str, file: &LogFile) -> Option<Vec<u8>> {
        let key = key_of(path)?;
        let key = key.as_str();
        let holders = holders(file);
        if let Some(n) = &self.node
            && !holders.iter().any(|h| h == n)
        {
            return None;
        }
        if let Some(c) = &self.cluster
            && !holders.iter().any(|h| c.contains(h))
        {
            return None;
        }
        let repair = self.repair.get(key).map_or(&[][..], Vec::as_slice);
        if let Some(s) = &self.state
            && !states_of(&holders, repair).contains(s.as_str())
        {
            return None;
        }
        let mut line = serde_json::to_vec(&key_json(key, &holders, repair)).ok()?;
        line.push(b'\n');
        Some(line)
    }
}

pub async fn list(
    State(st): State<Shared>,
    Query(f): Query<Filters>,
) -> Result<Response, ApiError> {
    if let Some(s) = &f.state
        && !STATES.contains(&s.as_str())
    {
        return Err(bad_request(format!(
            "unknown state {s:?} (one of {})",
            STATES.join(", ")
        )));
    }
    let cluster = match &f.cluster {
        Some(c) => Some(cluster_nodes(&st, c).ok_or_else(|| not_found(format!("no cluster {c}")))?),
        None => None,
    };
    let sel = Arc::new(Selection {
        cluster,
        node: f.node.clone(),
        state: f.state.clone(),
        repair: repair_lines(&st),
    });
    // Each pull copies one page of the catalog; hyper pulls the next only
    // when the last is written, so a slow reader holds one page at most.
    let stream = futures::stream::unfold(Some(None::<String>), move |cursor| {
        let st = st.clone();
        let sel = sel.clone();
        async move {
            let mut after = cursor?;
            loop {
                let page = st.meta.page(after.as_deref(), PAGE, is_location_log);
                let (last, _) = page.last()?;
                let next = last.clone();
                let mut chunk = Vec::new();
                for (path, file) in &page {
                    if let Some(line) = sel.line(path, file) {
                        chunk.extend_from_slice(&line);
                    }
                }
                st.metrics.keys_listed.inc_by(page.len() as u64);
                after = Some(next);
                if !chunk.is_empty() {
                    return Some((Ok::<_, Infallible>(Bytes::from(chunk)), Some(after)));
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

fn parse_key(key: &str) -> Result<Key, ApiError> {
    Key::parse(key).map_err(|e| bad_request(format!("bad key {key:?}: {e}")))
}

pub async fn one(
    State(st): State<Shared>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let k = parse_key(&key)?;
    let file = st
        .meta
        .file(&protocol::logs::presence::location_log_path(&k));
    let repair = repair_lines(&st).remove(k.as_str()).unwrap_or_default();
    if file.is_none() && repair.is_empty() {
        return Err(not_found(format!("no key {key} is known")));
    }
    let holders = file.as_ref().map(holders).unwrap_or_default();
    Ok(Json(key_json(k.as_str(), &holders, &repair)))
}

/// Asks the running repairer to retry the key now (it takes the request
/// on its next look, as `annexmesh recover` does).
pub async fn recover(
    State(st): State<Shared>,
    Path(key): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let k = parse_key(&key)?;
    if state::read(&st.state_dir).is_none() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no repairer runs in this daemon (it is no cluster's gateway)".into(),
        ));
    }
    state::request_recover(&st.state_dir, &[Recover::Key(k.clone())])?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "recover": k.as_str(), "requested": true })),
    ))
}

/// Asks the running repairer to retry every key in error now.
pub async fn recover_all(State(st): State<Shared>) -> Result<(StatusCode, Json<Value>), ApiError> {
    if state::read(&st.state_dir).is_none() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no repairer runs in this daemon (it is no cluster's gateway)".into(),
        ));
    }
    state::request_recover(&st.state_dir, &[Recover::All])?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "recover": "*", "requested": true })),
    ))
}
