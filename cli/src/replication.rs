//! `annexmesh replication` (a cluster's replication policy, gossiped like
//! every log) and `annexmesh alerts` (the running daemon's peer monitor).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use node::Repo;
use node::journal::{Journal, log_clock_now};
use protocol::logs::catalog::{Family, LogFile};
use protocol::replication::Rule;
use protocol::replication::policy::{
    REPLICATION_LOG, override_path, read_clusters, read_overrides, record_cluster, record_override,
};
use protocol::{Key, Uuid};

use crate::query::serde_json_lite::Json;

/// What `annexmesh replication` was asked to set.
pub struct Settings<'a> {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub grace: Option<&'a str>,
    pub key: Option<&'a str>,
    pub clear: bool,
}

fn open(path: &Path) -> anyhow::Result<Repo> {
    Repo::open(path).with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))
}

/// A cluster named by its name (this gateway's `annex.cluster.NAME`, or a
/// `cluster NAME` description from gossip) or its uuid.
fn cluster_uuid(repo: &Repo, name: &str) -> anyhow::Result<Uuid> {
    if let Ok(u) = Uuid::parse(name)
        && u.is_cluster()
    {
        return Ok(u);
    }
    if let Some(u) = node::cluster::config_get(&repo.top, &format!("annex.cluster.{name}"))? {
        return Uuid::parse(u.trim()).context("bad cluster uuid in git config");
    }
    let catalog = node::branch::read_files(&repo.git_dir, &["uuid.log"])?;
    let view = protocol::logs::view::View::new(&catalog);
    for (u, d) in view.descriptions() {
        if d == format!("cluster {name}")
            && let Ok(u) = Uuid::parse(&u)
            && u.is_cluster()
        {
            return Ok(u);
        }
    }
    bail!("no cluster named {name} is known here")
}

fn rule_json(rule: &Rule) -> Json {
    let num = |n: Option<u64>| n.map_or(Json::Null, Json::Num);
    Json::Obj(vec![
        ("min", num(rule.min.map(u64::from))),
        ("max", num(rule.max.map(u64::from))),
        ("grace", num(rule.grace)),
    ])
}

fn show(rule: &Rule) -> String {
    let or = |v: Option<String>, d: &str| v.unwrap_or_else(|| d.to_owned());
    format!(
        "min {} max {} grace {}",
        or(rule.min.map(|n| n.to_string()), "numcopies"),
        or(rule.max.map(|n| n.to_string()), "every wanting node"),
        or(rule.grace.map(|s| format!("{s}s")), "300s"),
    )
}

pub fn replication(
    path: &Path,
    cluster: &str,
    set: &Settings<'_>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let cluster = cluster_uuid(&repo, cluster)?;
    let journal = Journal::new(&repo.git_dir);
    let key = set
        .key
        .map(|k| Key::parse(k).map_err(|e| anyhow::anyhow!("bad key {k}: {e}")))
        .transpose()?;
    let grace = set.grace.map(crate::duration::parse_duration).transpose()?;
    if let (Some(min), Some(max)) = (set.min, set.max)
        && min > max
    {
        bail!("--min {min} is above --max {max}");
    }
    let change = Rule {
        min: set.min,
        max: set.max,
        grace,
    };
    let path = match &key {
        Some(k) => override_path(k),
        None => REPLICATION_LOG.to_owned(),
    };
    let current = |content: &[u8]| -> Rule {
        match &key {
            None => read_clusters(content).remove(&cluster).unwrap_or_default(),
            Some(_) => {
                let mut f = LogFile::new(Family::Map);
                f.insert_content(content);
                let lines: Vec<String> = f.lines().map(std::borrow::Cow::into_owned).collect();
                read_overrides(lines.iter().map(String::as_str))
                    .remove(&cluster)
                    .unwrap_or_default()
            }
        }
    };
    let mut rule = current(&journal.read(&path)?);
    if set.clear || !change.is_empty() {
        rule = if set.clear { change } else { change.over(rule) };
        let now = log_clock_now();
        journal.modify(&path, |old| match &key {
            None => record_cluster(old, &cluster, &rule, now),
            Some(_) => record_override(old, &cluster, (!rule.is_empty()).then_some(&rule), now),
        })?;
    }
    if json {
        println!("{}", rule_json(&rule).render());
    } else {
        let what = key.map_or_else(
            || format!("cluster {cluster}"),
            |k| format!("{k} in cluster {cluster}"),
        );
        println!("{what}: {}", show(&rule));
    }
    Ok(ExitCode::SUCCESS)
}

/// The monitor's view from the daemon's API.
fn alerts_from_api(
    client: &crate::api::Client,
) -> anyhow::Result<(Vec<node::health::NodeHealth>, Vec<node::health::AlertLine>)> {
    let v: serde_json::Value = serde_json::from_str(&client.ok("GET", "/health/alerts")?)
        .context("the API's /health/alerts is not JSON")?;
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let nodes = list("nodes")
        .iter()
        .map(|n| node::health::NodeHealth {
            uuid: text(n, "uuid"),
            state: text(n, "state"),
            last_seen_unix_ms: num(n, "last_seen_unix_ms"),
            free_bytes: num(n, "free_bytes"),
            transfers_in_flight: num(n, "transfers_in_flight"),
            reserved_bytes: num(n, "reserved_bytes"),
            metrics_known: n["free_bytes"].is_u64(),
        })
        .collect();
    let alerts = list("alerts")
        .iter()
        .map(|a| node::health::AlertLine {
            at_unix_ms: num(a, "at_unix_ms"),
            kind: text(a, "kind"),
            uuid: text(a, "uuid"),
        })
        .collect();
    Ok((nodes, alerts))
}

pub fn alerts(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let repo = open(path)?;
    let (nodes, alerts) = if let Some(client) = crate::api::Client::find(&repo) {
        eprintln!("(from the daemon's API at {})", client.url());
        alerts_from_api(&client)?
    } else if crate::daemon::daemon_running(&repo) {
        eprintln!("(the daemon's API does not answer: read its health file)");
        node::health::read_state(&node::config::state_dir(&repo))
    } else {
        bail!(
            "no daemon is running for {} (start `annexmesh daemon`)",
            repo.top.display()
        );
    };
    if json {
        let nodes = nodes
            .into_iter()
            .map(|n| {
                Json::Obj(vec![
                    ("uuid", Json::Str(n.uuid)),
                    ("state", Json::Str(n.state)),
                    ("last_seen_ms", Json::Num(n.last_seen_unix_ms)),
                    ("free_bytes", Json::Num(n.free_bytes)),
                    ("transfers_in_flight", Json::Num(n.transfers_in_flight)),
                ])
            })
            .collect();
        let alerts = alerts
            .into_iter()
            .map(|a| {
                Json::Obj(vec![
                    ("at_ms", Json::Num(a.at_unix_ms)),
                    ("kind", Json::Str(a.kind)),
                    ("uuid", Json::Str(a.uuid)),
                ])
            })
            .collect();
        println!(
            "{}",
            Json::Obj(vec![
                ("nodes", Json::List(nodes)),
                ("alerts", Json::List(alerts))
            ])
            .render()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for n in &nodes {
        println!(
            "{} {} (free {} bytes, {} transfers)",
            n.uuid, n.state, n.free_bytes, n.transfers_in_flight
        );
    }
    for a in &alerts {
        println!("{} {} {}", a.at_unix_ms / 1000, a.kind, a.uuid);
    }
    Ok(ExitCode::SUCCESS)
}
