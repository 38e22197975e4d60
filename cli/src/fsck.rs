//! `annexmesh fsck --cluster CLUSTER`: the running gateway daemon checks
//! the copies its cluster's nodes hold, in the background
//! (`node::cluster::fsck`), as `git annex fsck --from REMOTE` does for one
//! remote: bad copies are replaced by good ones, missing ones recorded
//! absent.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use node::Repo;
use protocol::Key;
use serde_json::{Value, json};

/// How often `--wait` asks for the job's progress.
const POLL: Duration = Duration::from_millis(500);

fn client(path: &Path) -> anyhow::Result<crate::api::Client> {
    let repo = Repo::open(path)
        .with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))?;
    if !crate::daemon::daemon_running(&repo) {
        bail!(
            "no daemon is running for {} (start `annexmesh daemon`): fsck runs in it",
            repo.top.display()
        );
    }
    crate::api::Client::find(&repo).with_context(|| {
        format!(
            "the daemon of {} runs but its API does not answer",
            repo.top.display()
        )
    })
}

fn parse(body: &str) -> anyhow::Result<Value> {
    serde_json::from_str(body).context("the API's /fsck is not JSON")
}

/// What the command line asks.
pub struct Ask<'a> {
    pub cluster: &'a str,
    pub keys: &'a [String],
    pub json: bool,
    pub wait: bool,
    pub status: bool,
}

/// `annexmesh fsck --cluster CLUSTER [KEY…] [--json] [--wait | --status]`.
pub fn fsck(path: &Path, ask: &Ask<'_>) -> anyhow::Result<ExitCode> {
    let api = client(path)?;
    if ask.status {
        let (code, body) = api.call("GET", "/fsck")?;
        if code == 404 {
            println!("no fsck job has run since the daemon started");
            return Ok(ExitCode::SUCCESS);
        }
        if !(200..300).contains(&code) {
            bail!("the daemon's API answered {code}: {}", body.trim());
        }
        let job = parse(&body)?;
        report(&job, ask.json);
        return Ok(ExitCode::SUCCESS);
    }
    for k in ask.keys {
        Key::parse(k).with_context(|| format!("{k:?} is not a key"))?;
    }
    let request = json!({ "cluster": ask.cluster, "keys": ask.keys }).to_string();
    let (code, body) = api.call_json("POST", "/fsck", &request)?;
    match code {
        202 => {}
        409 => {
            let job = parse(&body)?;
            bail!(
                "fsck job {} of cluster {} is still running ({} of {} keys checked): see \
                 `annexmesh fsck --cluster {} --status`",
                job["id"],
                job["cluster"].as_str().unwrap_or("?"),
                job["keys_checked"],
                job["keys_total"],
                ask.cluster
            )
        }
        _ => {
            let said = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.trim().to_owned());
            bail!("the daemon's API answered {code}: {said}")
        }
    }
    let job = parse(&body)?;
    if !ask.wait {
        if ask.json {
            println!("{job}");
        } else {
            println!(
                "fsck job {} of cluster {} started in the daemon (its API at {}); follow it \
                 with `annexmesh fsck --cluster {} --status`",
                job["id"],
                job["cluster"].as_str().unwrap_or("?"),
                api.url(),
                ask.cluster
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let done = follow(&api, job["id"].as_u64().unwrap_or(0), ask.json)?;
    report(&done, ask.json);
    // As git-annex's fsck: anything found wrong (repaired or not) exits 1.
    let wrong = ["bad", "missing", "unchecked", "errors"]
        .iter()
        .any(|k| done[*k].as_u64().unwrap_or(0) > 0)
        || !done["error"].is_null();
    Ok(if wrong {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Polls job `id` until it is done; its progress on stderr as it changes.
fn follow(api: &crate::api::Client, id: u64, quiet: bool) -> anyhow::Result<Value> {
    let mut shown = String::new();
    loop {
        let job = parse(&api.ok("GET", "/fsck")?)?;
        if job["id"].as_u64() != Some(id) {
            bail!("the daemon no longer has fsck job {id} (was it restarted?)");
        }
        let line = progress_line(&job);
        if !quiet && line != shown {
            eprintln!("{line}");
            shown = line;
        }
        if job["state"] != "running" {
            return Ok(job);
        }
        std::thread::sleep(POLL);
    }
}

/// The running or last job's counts, for `annexmesh status`.
pub fn last_job(api: &crate::api::Client) -> Option<String> {
    let (code, body) = api.call("GET", "/fsck").ok()?;
    if code != 200 {
        return None;
    }
    Some(progress_line(&serde_json::from_str(&body).ok()?))
}

fn progress_line(job: &Value) -> String {
    let n = |k: &str| job[k].as_u64().unwrap_or(0);
    format!(
        "fsck job {} of {} ({}): {}/{} keys checked, {} copies, {} bytes: {} good, {} bad, \
         {} missing, {} repaired, {} unchecked, {} errors",
        n("id"),
        job["cluster"].as_str().unwrap_or("?"),
        job["state"].as_str().unwrap_or("?"),
        n("keys_checked"),
        n("keys_total"),
        n("copies"),
        n("bytes"),
        n("good"),
        n("bad"),
        n("missing"),
        n("repaired"),
        n("unchecked"),
        n("errors"),
    )
}

fn report(job: &Value, json: bool) {
    if json {
        println!("{job}");
        return;
    }
    println!("{}", progress_line(job));
    if let Some(e) = job["error"].as_str() {
        println!("the job stopped: {e}");
    }
    for f in job["findings"].as_array().into_iter().flatten() {
        let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
        let message = f["message"]
            .as_str()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        println!(
            "  {} on {}: {}{message}: {}",
            text("key"),
            text("node"),
            text("found"),
            text("action")
        );
    }
    if let Some(n) = job["findings_dropped"].as_u64().filter(|n| *n > 0) {
        println!("  … and {n} more findings not kept");
    }
}
