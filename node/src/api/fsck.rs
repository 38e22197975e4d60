//! `POST /fsck` (start checking a cluster's copies in the background) and
//! `GET /fsck` (the running or last job: its counts and findings).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Shared, bad_request, not_found};
use crate::cluster::fsck::{JobView, StartError};

#[derive(Debug, Default, Deserialize)]
pub struct Request {
    /// A cluster's name or uuid.
    pub cluster: String,
    /// Only these keys (every key the cluster's nodes hold when empty).
    #[serde(default)]
    pub keys: Vec<String>,
}

/// A job as JSON.
pub fn job_json(j: &JobView) -> Value {
    let p = &j.progress;
    json!({
        "id": j.id,
        "cluster": j.cluster,
        "state": if j.running { "running" } else { "done" },
        "started_unix_ms": j.started_unix_ms,
        "finished_unix_ms": j.finished_unix_ms,
        "keys_total": p.keys_total,
        "keys_checked": p.keys_checked,
        "copies": p.copies,
        "bytes": p.bytes,
        "good": p.good,
        "bad": p.bad,
        "missing": p.missing,
        "repaired": p.repaired,
        "unchecked": p.unchecked,
        "errors": p.errors,
        "error": j.error,
        "findings": j.findings.iter().map(|f| json!({
            "key": f.key,
            "node": f.node,
            "found": f.found,
            "message": f.message,
            "action": f.action,
        })).collect::<Vec<_>>(),
        "findings_dropped": j.findings_dropped,
    })
}

/// Starts a job: 202 with it; 409 with the running one; 404 for a cluster
/// this gateway does not serve.
pub async fn start(
    State(st): State<Shared>,
    Json(req): Json<Request>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let keys = req
        .keys
        .iter()
        .map(|k| protocol::Key::parse(k).map_err(|_| bad_request(format!("not a key: {k}"))))
        .collect::<Result<Vec<_>, _>>()?;
    match st.fsck.start(&req.cluster, keys).await {
        Ok(job) => Ok((StatusCode::ACCEPTED, Json(job_json(&job)))),
        Err(StartError::Running(job)) => Ok((StatusCode::CONFLICT, Json(job_json(&job)))),
        Err(StartError::NoCluster(e)) => Err(not_found(e)),
        Err(StartError::Failed(e)) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// The running job, else the last one (404 before any).
pub async fn status(State(st): State<Shared>) -> Result<Json<Value>, ApiError> {
    st.fsck
        .view()
        .map(|j| Json(job_json(&j)))
        .ok_or_else(|| not_found("no fsck job has run since the daemon started"))
}
