//! `annexmesh status` and `annexmesh recover`: the running gateway daemon's
//! repairer (`node::cluster::repair`), as `ipfs-cluster-ctl status` and
//! `recover` show and retry pins.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use node::Repo;
use node::cluster::repair::state::{self, KeyLine, Recover, SummaryLine};
use protocol::Key;
use protocol::replication::status::StateKind;

use crate::query::serde_json_lite::Json;

fn open_with_daemon(path: &Path) -> anyhow::Result<Repo> {
    let repo = Repo::open(path)
        .with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))?;
    if !crate::daemon::daemon_running(&repo) {
        bail!(
            "no daemon is running for {} (start `annexmesh daemon`): the repairer runs in it",
            repo.top.display()
        );
    }
    Ok(repo)
}

/// What `--filter` selects.
struct Filter {
    states: Vec<StateKind>,
    under: bool,
}

impl Filter {
    fn parse(text: Option<&str>) -> anyhow::Result<Filter> {
        let mut f = Filter {
            states: Vec::new(),
            under: false,
        };
        for part in text.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
            match (part, StateKind::parse(part)) {
                ("under-replicated", _) => f.under = true,
                (_, Some(k)) => f.states.push(k),
                _ => bail!(
                    "unknown state {part:?} (present, queued, transferring, error, missing, \
                     under-replicated)"
                ),
            }
        }
        Ok(f)
    }

    fn matches(&self, k: &KeyLine) -> bool {
        if self.under && !k.under_replicated {
            return false;
        }
        self.states.is_empty()
            || self.states.iter().any(|s| match s {
                StateKind::Queued => k.queued,
                StateKind::Error => k.error.is_some() || has(k, "error"),
                StateKind::Present => has(k, "present"),
                StateKind::Transferring => has(k, "transferring") || has(k, "dropping"),
                StateKind::Missing => has(k, "missing"),
            })
    }
}

fn has(k: &KeyLine, state: &str) -> bool {
    k.nodes.iter().any(|(_, s)| s == state)
}

fn summary_json(s: &SummaryLine) -> Json {
    Json::Obj(vec![
        ("cluster", Json::Str(s.cluster.clone())),
        ("keys", Json::Num(s.keys)),
        ("under_replicated", Json::Num(s.under_replicated)),
        ("queued", Json::Num(s.queued)),
        ("transferring", Json::Num(s.transferring)),
        ("errors", Json::Num(s.errors)),
        ("missing", Json::Num(s.missing)),
    ])
}

fn key_json(k: &KeyLine) -> Json {
    let nodes = k
        .nodes
        .iter()
        .map(|(u, s)| {
            Json::Obj(vec![
                ("uuid", Json::Str(u.clone())),
                ("state", Json::Str(s.clone())),
            ])
        })
        .collect();
    Json::Obj(vec![
        ("cluster", Json::Str(k.cluster.clone())),
        ("key", Json::Str(k.key.clone())),
        ("copies", Json::Num(u64::from(k.copies))),
        ("min", Json::Num(u64::from(k.min))),
        ("max", Json::Num(u64::from(k.max))),
        (
            "under_replicated",
            Json::Str(k.under_replicated.to_string()),
        ),
        ("queued", Json::Str(k.queued.to_string())),
        ("error", k.error.clone().map_or(Json::Null, Json::Str)),
        ("nodes", Json::List(nodes)),
    ])
}

/// The repositories' descriptions (uuid.log), to name nodes by.
fn descriptions(repo: &Repo) -> std::collections::BTreeMap<String, String> {
    node::branch::read_files(&repo.git_dir, &["uuid.log"])
        .map(|c| protocol::logs::view::View::new(&c).descriptions())
        .unwrap_or_default()
}

fn print_key(k: &KeyLine, names: &std::collections::BTreeMap<String, String>) {
    let mut flags = String::new();
    if k.under_replicated {
        flags.push_str(", under-replicated");
    }
    if k.queued {
        flags.push_str(", queued");
    }
    if let Some(e) = &k.error {
        flags.push_str(&format!(", error: {e}"));
    }
    println!(
        "{} in {}: {} copies (min {}, max {}){flags}",
        k.key, k.cluster, k.copies, k.min, k.max
    );
    for (u, s) in &k.nodes {
        match names.get(u.as_str()) {
            Some(d) => println!("  {u} -- {d}: {s}"),
            None => println!("  {u}: {s}"),
        }
    }
}

type Names = std::collections::BTreeMap<String, String>;

/// The repairer's view: per cluster its counts, the keys' lines, the nodes' names.
type View = (Vec<SummaryLine>, Vec<KeyLine>, Names);

/// The repairer's view from the daemon's `GET /status`; `None` when it has
/// none yet.
fn status_from_api(client: &crate::api::Client) -> anyhow::Result<Option<View>> {
    let (code, body) = client.call("GET", "/status")?;
    if code == 404 {
        return Ok(None);
    }
    if !(200..300).contains(&code) {
        bail!("the daemon's API answered {code}: {}", body.trim());
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the API's /status is not JSON")?;
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let num = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let small = |v: &serde_json::Value, k: &str| u32::try_from(num(v, k)).unwrap_or(0);
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let summaries = list("clusters")
        .iter()
        .map(|s| SummaryLine {
            cluster: text(s, "cluster"),
            keys: num(s, "keys"),
            under_replicated: num(s, "under_replicated"),
            queued: num(s, "queued"),
            transferring: num(s, "transferring"),
            errors: num(s, "errors"),
            missing: num(s, "missing"),
        })
        .collect();
    let keys = list("keys")
        .iter()
        .map(|k| KeyLine {
            cluster: text(k, "cluster"),
            key: text(k, "key"),
            copies: small(k, "copies"),
            min: small(k, "min"),
            max: small(k, "max"),
            under_replicated: k["under_replicated"].as_bool().unwrap_or(false),
            queued: k["queued"].as_bool().unwrap_or(false),
            error: k["error"].as_str().map(str::to_owned),
            nodes: k["nodes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| (text(n, "uuid"), text(n, "state")))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let names = v["descriptions"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(u, d)| Some((u.clone(), d.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some((summaries, keys, names)))
}

/// `annexmesh status [KEY] [--json] [--filter STATE,…]`.
pub fn status(
    path: &Path,
    key: Option<&str>,
    json: bool,
    filter: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let repo = open_with_daemon(path)?;
    let filter = Filter::parse(filter)?;
    let key = key
        .map(|k| Key::parse(k).with_context(|| format!("{k:?} is not a key")))
        .transpose()?;
    let no_state = || {
        anyhow::anyhow!(
            "the daemon has no repair state yet: this repository serves no cluster, or the \
             daemon has just started"
        )
    };
    let api = crate::api::Client::find(&repo);
    let (summaries, keys, names) = if let Some(client) = &api {
        eprintln!("(from the daemon's API at {})", client.url());
        status_from_api(client)?.ok_or_else(no_state)?
    } else {
        eprintln!("(the daemon's API does not answer: read the repairer's state file)");
        let (summaries, keys) =
            state::read(&node::config::state_dir(&repo)).ok_or_else(no_state)?;
        (summaries, keys, descriptions(&repo))
    };
    let keys: Vec<&KeyLine> = keys
        .iter()
        .filter(|k| key.as_ref().is_none_or(|want| k.key == want.as_str()))
        .filter(|k| filter.matches(k))
        .collect();
    if json {
        let out = Json::Obj(vec![
            (
                "clusters",
                Json::List(summaries.iter().map(summary_json).collect()),
            ),
            (
                "keys",
                Json::List(keys.iter().map(|k| key_json(k)).collect()),
            ),
        ]);
        println!("{}", out.render());
        return Ok(ExitCode::SUCCESS);
    }
    match &key {
        Some(k) if keys.is_empty() => {
            println!("{k}: at its replication in every cluster (see `annexmesh whereis {k}`)")
        }
        Some(_) => keys.iter().for_each(|k| print_key(k, &names)),
        None => {
            for s in &summaries {
                println!(
                    "cluster {}: {} keys, {} under-replicated, {} queued, {} transferring, \
                     {} errors, {} missing",
                    s.cluster,
                    s.keys,
                    s.under_replicated,
                    s.queued,
                    s.transferring,
                    s.errors,
                    s.missing
                );
            }
            if let Some(line) = api.as_ref().and_then(crate::fsck::last_job) {
                println!("{line}");
            }
            keys.iter().for_each(|k| print_key(k, &names));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `annexmesh recover KEY…|--all`: retry now what failed.
pub fn recover(path: &Path, keys: &[String], all: bool) -> anyhow::Result<ExitCode> {
    let repo = open_with_daemon(path)?;
    if keys.is_empty() && !all {
        bail!("name keys to recover, or --all");
    }
    if let Some(client) = crate::api::Client::find(&repo) {
        for k in keys {
            Key::parse(k).with_context(|| format!("{k:?} is not a key"))?;
        }
        if all {
            client.ok("POST", "/recover")?;
        }
        for k in keys {
            client.ok("POST", &format!("/keys/{k}/recover"))?;
        }
        println!(
            "asked the daemon (its API at {}) to retry {} now",
            client.url(),
            if all {
                "every key in error".to_owned()
            } else {
                format!("{} key(s)", keys.len())
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("(the daemon's API does not answer: leaving the request in its state dir)");
    let mut what = Vec::new();
    if all {
        what.push(Recover::All);
    }
    for k in keys {
        what.push(Recover::Key(
            Key::parse(k).with_context(|| format!("{k:?} is not a key"))?,
        ));
    }
    if what.is_empty() {
        bail!("name keys to recover, or --all");
    }
    state::request_recover(&node::config::state_dir(&repo), &what)?;
    println!(
        "asked the daemon to retry {} now",
        if all {
            "every key in error".to_owned()
        } else {
            format!("{} key(s)", keys.len())
        }
    );
    Ok(ExitCode::SUCCESS)
}
