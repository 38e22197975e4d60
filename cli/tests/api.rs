//! The daemon's HTTP API (issue 12) against real `annexmesh daemon`
//! processes on loopback, with a small real HTTP/1.1 client: every endpoint,
//! missing and wrong tokens, rotation without a restart, a recover taken by
//! the real repairer, `/metrics` parsed by a Prometheus text parser, and a
//! stream of 100 000 keys read line by line while the daemon's RSS is sampled.
//!
//! Run: `cargo test -p annexmesh-cli --test api`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{ProcessGuard, annexmesh_bin};

const TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP/1.1 answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// One request (`Connection: close`), reading the whole answer.
fn request(api: &str, method: &str, path: &str, token: Option<&str>) -> Answer {
    let (status, headers, mut r) = open(api, method, path, token);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).expect("chunk size");
            let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).expect("chunk");
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).expect("body");
    }
    Answer {
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

/// Sends a request; the status, headers and the reader at the body.
fn open(
    api: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Vec<(String, String)>, BufReader<TcpStream>) {
    let host = api.strip_prefix("http://").expect("http url");
    let mut s = TcpStream::connect(host).expect("connect to the API");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    (status, headers, r)
}

/// Reads chunked NDJSON line by line, calling `each` per line.
fn each_line(r: &mut BufReader<TcpStream>, mut each: impl FnMut(&str)) {
    let mut pending = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).expect("chunk size");
        let n = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        let mut chunk = vec![0u8; n + 2];
        r.read_exact(&mut chunk).expect("chunk");
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            each(std::str::from_utf8(&line[..i]).expect("utf-8 line"));
        }
    }
    assert!(pending.is_empty(), "a partial last line");
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        Lab { _tmp: tmp, root }
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn run(&self, name: &str, args: &[&str]) -> std::process::Output {
        Command::new(annexmesh_bin())
            .arg("--repo")
            .arg(self.repo(name))
            .args(args)
            .current_dir(&self.root)
            .env_remove("ANNEXMESH_LOG")
            .output()
            .expect("run annexmesh")
    }

    fn ok(&self, name: &str, args: &[&str]) -> String {
        support::succeeded(
            self.run(name, args),
            &format!("annexmesh --repo {name} {args:?}"),
        )
    }

    fn init(&self, name: &str) -> String {
        let out = self.ok(name, &["init", "--description", name]);
        out.rsplit("peer ")
            .next()
            .and_then(|s| s.strip_suffix(")\n"))
            .expect("peer id in init output")
            .to_owned()
    }

    /// Starts the daemon; returns it, its p2p address and its API's URL.
    fn daemon(&self, name: &str) -> (ProcessGuard, String, String) {
        let mut cmd = Command::new(annexmesh_bin());
        cmd.arg("--repo")
            .arg(self.repo(name))
            .args(["daemon", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--api-listen", "127.0.0.1:0", "--suspect-after", "3s"])
            .env("ANNEXMESH_LOG", "annexmesh=info,node=info");
        let mut d = ProcessGuard::spawn(&mut cmd);
        let (addr, api) = d.wait_for(TIMEOUT, |out| {
            let addr = out.lines().find_map(|l| l.strip_prefix("listening on "))?;
            let api = out
                .lines()
                .find_map(|l| l.strip_prefix("api listening on "))?;
            Some((addr.to_owned(), api.to_owned()))
        });
        (d, addr, api)
    }

    fn token(&self, name: &str) -> String {
        self.ok(name, &["api", "token"]).trim().to_owned()
    }
}

fn git_config(repo: &Path, key: &str) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["config", key])
        .output()
        .expect("git config");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls `f` until it gives something (bounded by [`TIMEOUT`]).
fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The samples of a metric in a `/metrics` text, parsed by a Prometheus
/// text parser.
fn metric(text: &str, name: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text exposition");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.metric == name)
        .collect()
}

/// How many observations a histogram holds (its `+Inf` bucket).
fn observations(text: &str, name: &str) -> f64 {
    let samples = metric(text, name);
    assert!(!samples.is_empty(), "no histogram {name}: {text}");
    samples
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(b) => b.iter().map(|c| c.count).fold(0.0, f64::max),
            _ => f64::NAN,
        })
        .sum()
}

fn value(s: &prometheus_parse::Sample) -> f64 {
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    }
}

/// A gateway G serving cluster `c` of one mesh node M1, both daemons with
/// their API: every endpoint.
#[test]
fn every_endpoint_answers_with_a_token() {
    let lab = Lab::new();
    let peer_g = lab.init("G");
    let peer_m = lab.init("M1");
    let (g, addr_g, api) = lab.daemon("G");
    let (_m, _, _) = lab.daemon("M1");
    lab.ok("M1", &["join", lab.ok("G", &["invite"]).trim()]);
    lab.ok("G", &["initcluster", "c"]);
    let token = lab.token("G");
    let get = |path: &str| request(&api, "GET", path, Some(&token));

    // No token, a wrong one: 401 with a JSON error.
    for t in [None, Some("nope"), Some(&token[1..])] {
        let a = request(&api, "GET", "/id", t);
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(json(&a.body)["status"], 401);
        assert!(a.headers.iter().any(|(k, _)| k == "www-authenticate"));
    }

    let id = json(&get("/id").body);
    assert_eq!(id["peer"], peer_g.as_str());
    assert_eq!(
        id["uuid"],
        git_config(&lab.repo("G"), "annex.uuid").as_str()
    );
    assert!(json(&get("/version").body)["version"].is_string());
    let nope = get("/no/such/thing");
    assert_eq!(
        (nope.status, json(&nope.body)["status"].clone()),
        (404, 404.into())
    );

    // The member, once it is one.
    let peers = wait("M1 among G's peers", || {
        let p = json(&get("/peers").body);
        p.as_array()?
            .iter()
            .any(|m| m["peer"] == peer_m.as_str() && m["description"] == "M1")
            .then_some(p)
    });
    let m1 = peers
        .as_array()
        .and_then(|a| a.iter().find(|m| m["peer"] == peer_m.as_str()))
        .expect("M1");
    assert_eq!(m1["role"], "read-write");
    // The journal follows (what `cluster add-node` reads).
    wait("M1 in G's journal", || {
        lab.run("G", &["cluster", "add-node", "M1", "M1"])
            .status
            .success()
            .then_some(())
    });
    lab.ok("G", &["updatecluster"]);
    lab.ok("G", &["replication", "c", "--min", "1", "--max", "1"]);
    let uuid_m = git_config(&lab.repo("M1"), "annex.uuid");

    let clusters = json(&get("/clusters").body);
    let c = &clusters.as_array().expect("a list")[0];
    assert_eq!(c["name"], "c");
    assert!(
        c["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| *n == uuid_m.as_str())
    );
    let one = get("/clusters/c");
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(json(&one.body)["uuid"], c["uuid"]);
    // The policy, once the daemon has taken the journal's change.
    wait("the policy in /clusters/c", || {
        (json(&get("/clusters/c").body)["replication"]["min"] == 1).then_some(())
    });
    assert_eq!(get("/clusters/zzz").status, 404);

    // A transfer into the cluster: its key is listed with its holder.
    let cluster = git_config(&lab.repo("G"), "annex.cluster.c");
    let received = |text: &str| -> f64 {
        metric(text, "annexmesh_peer_bytes_in_total")
            .iter()
            .map(value)
            .sum()
    };
    let served = |text: &str| -> f64 {
        metric(text, "annexmesh_peer_sessions_total")
            .iter()
            .map(value)
            .sum()
    };
    let text0 = get("/metrics").body;
    let file = lab.root.join("f.bin");
    std::fs::write(&file, vec![7u8; 50_000]).expect("write");
    let target = format!("{addr_g}/annex-uuid/{cluster}");
    let key = lab
        .ok(
            "M1",
            &["put", file.to_str().expect("utf-8"), "--to", &target],
        )
        .trim()
        .to_owned();
    let line = wait("the key in /keys", || {
        let a = get("/keys");
        assert_eq!(a.status, 200);
        assert!(
            a.headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/x-ndjson")
        );
        a.body.lines().map(json).find(|l| {
            l["key"] == key.as_str() && l["holders"].as_array().is_some_and(|h| !h.is_empty())
        })
    });
    assert!(
        line["holders"]
            .as_array()
            .expect("holders")
            .iter()
            .any(|h| *h == uuid_m.as_str())
    );
    // The bytes and sessions counters moved with the transfer.
    let text1 = get("/metrics").body;
    assert!(
        received(&text1) >= received(&text0) + 50_000.0,
        "{text0}\n{text1}"
    );
    assert!(served(&text1) > served(&text0), "{text1}");
    // The PUT was timed; a GET of it is too.
    let puts = "annexmesh_put_duration_seconds";
    let gets = "annexmesh_get_duration_seconds";
    assert!(
        observations(&text1, puts) >= observations(&text0, puts) + 1.0,
        "{text0}\n{text1}"
    );
    let back = lab.root.join("back.bin");
    lab.ok(
        "M1",
        &[
            "get",
            &key,
            "--from",
            &target,
            "-o",
            back.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(std::fs::read(&back).expect("got it"), vec![7u8; 50_000]);
    let text2 = get("/metrics").body;
    // The gateway's bytes to and from its node M1, by its uuid.
    let of_m1 = |text: &str, name: &str| -> f64 {
        metric(text, name)
            .iter()
            .filter(|s| s.labels.get("node") == Some(uuid_m.as_str()))
            .map(value)
            .sum()
    };
    assert!(
        of_m1(&text2, "annexmesh_gateway_node_bytes_out_total") >= 50_000.0,
        "{text2}"
    );
    assert!(
        of_m1(&text2, "annexmesh_gateway_node_bytes_in_total")
            >= of_m1(&text1, "annexmesh_gateway_node_bytes_in_total") + 50_000.0,
        "{text1}\n{text2}"
    );
    assert!(
        observations(&text2, gets) >= observations(&text1, gets) + 1.0,
        "{text1}\n{text2}"
    );
    assert!(!metric(&text1, "annexmesh_sessions_open").is_empty());
    assert!(get(&format!("/keys?node={uuid_m}")).body.contains(&key));
    assert!(
        !get("/keys?node=00000000-0000-0000-0000-000000000000")
            .body
            .contains(&key)
    );
    assert!(get("/keys?cluster=c&state=present").body.contains(&key));
    assert!(!get("/keys?state=missing").body.contains(&key));
    assert_eq!(get("/keys?state=bogus").status, 400);
    assert_eq!(get("/keys?cluster=zzz").status, 404);
    let k = get(&format!("/keys/{key}"));
    assert_eq!(k.status, 200, "{}", k.body);
    assert_eq!(json(&k.body)["key"], key.as_str());
    assert_eq!(get("/keys/not-a-key").status, 400);
    assert_eq!(get(&format!("/keys/SHA256E-s1--{:064x}", 1)).status, 404);

    // A recover, taken by the running repairer (its request file goes).
    let recover = wait("the repairer to run", || {
        let a = request(&api, "POST", &format!("/keys/{key}/recover"), Some(&token));
        (a.status != 409).then_some(a)
    });
    assert_eq!(recover.status, 202, "{}", recover.body);
    let requests = lab.repo("G").join(".git/annex/annexmesh/recover");
    let requests = if requests.exists() {
        requests
    } else {
        lab.repo("G").join("annex/annexmesh/recover")
    };
    wait("the repairer to take the request", || {
        std::fs::read_dir(&requests)
            .map_or(true, |mut d| d.next().is_none())
            .then_some(())
    });

    // Health: the member monitored, its heartbeat's values.
    let alerts = wait("M1 monitored", || {
        let a = json(&get("/health/alerts").body);
        a["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["uuid"] == uuid_m.as_str())
            .then_some(a)
    });
    assert!(alerts["alerts"].is_array());
    // Its heartbeat's values, once one is heard (null before: unknown).
    wait("M1's heartbeat values", || {
        json(&get("/health/metrics").body)
            .as_array()?
            .iter()
            .any(|n| n["uuid"] == uuid_m.as_str() && n["free_bytes"].as_u64().is_some())
            .then_some(())
    });

    // Metrics: parsed; the catalog counts the key; the request counter moves.
    let text = get("/metrics").body;
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let keys = metric(&text, "annexmesh_catalog_keys");
    assert!(value(&keys[0]) >= 1.0, "{text}");
    let before = value(&metric(&text, "annexmesh_api_requests_total")[0]);
    let after = value(&metric(&get("/metrics").body, "annexmesh_api_requests_total")[0]);
    assert!(after > before);
    // G took M1's gossip and ran anti-entropy with it.
    assert!(
        value(&metric(&text, "annexmesh_gossip_messages_in_total")[0]) >= 1.0,
        "{text}"
    );
    assert!(
        value(&metric(&text, "annexmesh_anti_entropy_rounds_total")[0]) >= 1.0,
        "{text}"
    );
    assert!(!metric(&text, "annexmesh_gossip_messages_rejected_total").is_empty());
    assert!(!metric(&text, "annexmesh_metadata_lines_rejected_total").is_empty());
    let unauthorized = value(&metric(&text, "annexmesh_api_unauthorized_total")[0]);
    assert!(unauthorized >= 3.0);

    // The command line as the API's client.
    let out = lab.run("G", &["alerts", "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from the daemon's API at http://"));
    let cli_alerts = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        cli_alerts["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["uuid"] == uuid_m.as_str())
    );
    assert!(
        lab.ok("G", &["recover", &key])
            .contains("its API at http://")
    );
    assert!(
        lab.ok("G", &["recover", "--all"])
            .contains("every key in error")
    );
    let dot = wait("a path in use in the graph", || {
        let dot = lab.ok("G", &["graph"]);
        dot.contains("style=bold").then_some(dot)
    });
    assert!(dot.starts_with("digraph annexmesh {"), "{dot}");
    assert!(
        dot.contains(&format!("\"{uuid_m}\" [shape=cylinder")),
        "{dot}"
    );
    assert!(dot.contains("label=\"M1\\nalive\""), "{dot}");
    assert_eq!(get("/health/graph").body, dot);
    println!("{dot}");
    render_with_graphviz(&dot);
    let out = lab.run("G", &["peers", "--json"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from the daemon's API at http://"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&peer_m));
    let listed = json(&String::from_utf8_lossy(&out.stdout));
    let states: Vec<(String, String)> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|m| {
            (
                m["peer"].as_str().unwrap_or("").to_owned(),
                m["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(peer_g.clone(), "self".to_owned())),
        "{listed}"
    );
    assert!(
        states.contains(&(peer_m.clone(), "connected".to_owned())),
        "{listed}"
    );
    let out = lab.run("G", &["peers"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("from the daemon's API at http://"));
    let text = String::from_utf8_lossy(&out.stdout);
    let uuid_g = git_config(&lab.repo("G"), "annex.uuid");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{peer_g} {uuid_g} -- ")) && l.ends_with(" self")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == format!("{peer_m} {uuid_m} -- M1 [read-write] connected")),
        "{text}"
    );

    // The repairer's view through the API: GET /status, `annexmesh status`.
    let st = wait("the repairer's summary in /status", || {
        let a = get("/status");
        (a.status == 200).then(|| json(&a.body))
    });
    let summary = st["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|s| s["cluster"] == cluster.as_str()))
        .expect("the cluster's summary")
        .clone();
    assert!(
        st["keys"].is_array() && st["descriptions"].is_object(),
        "{st}"
    );
    let out = lab.run("G", &["status"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from the daemon's API at http://"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("cluster {cluster}: {} keys, ", summary["keys"]))),
        "{text}\n{st}"
    );
    let out = lab.run("G", &["status", "--json"]);
    let cli_status = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        cli_status["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .any(|s| s["cluster"] == cluster.as_str()),
        "{cli_status}"
    );
    for shell in ["bash", "zsh", "fish"] {
        assert!(lab.ok("G", &["completions", shell]).contains("annexmesh"));
    }

    // Removing a member; a bad PeerId; no such member.
    assert_eq!(
        request(&api, "DELETE", "/peers/xyz", Some(&token)).status,
        400
    );
    assert_eq!(
        request(&api, "DELETE", &format!("/peers/{peer_g}"), Some(&token)).status,
        404
    );
    let rm = request(&api, "DELETE", &format!("/peers/{peer_m}"), Some(&token));
    assert_eq!(rm.status, 200, "{}", rm.body);
    wait("M1 gone from G's peers", || {
        (!get("/peers").body.contains(&peer_m)).then_some(())
    });

    // Rotation takes effect without a restart.
    let new = lab.ok("G", &["api", "token", "--rotate"]).trim().to_owned();
    assert_ne!(new, token);
    assert_eq!(request(&api, "GET", "/id", Some(&token)).status, 401);
    assert_eq!(request(&api, "GET", "/id", Some(&new)).status, 200);
    g.signal("TERM");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// 100 000 keys in the branch, listed by `GET /keys` and read line by line:
/// every key once, in the catalog's order, and the daemon's RSS flat (its
/// growth while streaming is bounded well below the listing's size).
#[test]
fn keys_stream_in_flat_memory() {
    const N: usize = 100_000;
    let lab = Lab::new();
    lab.init("R");
    let git_dir = lab.repo("R").join(".git");
    let git_dir = if git_dir.exists() {
        git_dir
    } else {
        lab.repo("R")
    };
    let uuid = git_config(&lab.repo("R"), "annex.uuid");
    let files: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| {
            let key = protocol::Key::parse(&format!("SHA256E-s{i}--{i:064x}")).expect("key");
            let content = protocol::logs::presence::record(
                b"",
                &uuid,
                protocol::logs::presence::Status::Present,
                1_700_000_000,
            );
            (protocol::logs::presence::location_log_path(&key), content)
        })
        .collect();
    node::branch::commit_catalog_files(&git_dir, &files, "test keys").expect("commit");
    drop(files);
    let (d, _, api) = lab.daemon("R");
    let token = lab.token("R");
    let pid = d.pid();
    // Warm up: one whole listing first, so the allocator has what a page needs.
    let (status, _, mut r) = open(&api, "GET", "/keys?state=missing", Some(&token));
    assert_eq!(status, 200);
    each_line(&mut r, |_| {});
    let base = rss_kib(pid);
    let (status, _, mut r) = open(&api, "GET", "/keys", Some(&token));
    assert_eq!(status, 200);
    let (mut n, mut peak, mut bytes) = (0usize, base, 0usize);
    let mut last = String::new();
    each_line(&mut r, |line| {
        n += 1;
        bytes += line.len() + 1;
        if n % 5_000 == 0 {
            peak = peak.max(rss_kib(pid));
        }
        let v = json(line);
        let key = v["key"].as_str().expect("key").to_owned();
        assert_eq!(v["holders"][0], uuid.as_str());
        let path =
            protocol::logs::presence::location_log_path(&protocol::Key::parse(&key).expect("key"));
        assert!(path > last, "out of order: {path} after {last}");
        last = path;
    });
    assert_eq!(n, N);
    let growth = peak.saturating_sub(base);
    println!(
        "GET /keys: {n} lines, {} KiB; daemon RSS {base} KiB before, peak {peak} KiB (+{growth} KiB)",
        bytes / 1024
    );
    assert!(
        growth * 1024 < (bytes as u64) / 2,
        "RSS grew by {growth} KiB over a {} KiB listing",
        bytes / 1024
    );
}

/// `dot -Tsvg` must accept the graph (graphviz is installed by
/// scripts/test; skipped, saying so, only where it is absent).
fn render_with_graphviz(dot: &str) {
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("SKIPPED rendering the graph: graphviz's dot is not installed");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dot.as_bytes())
        .expect("write dot");
    let out = child.wait_with_output().expect("dot");
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && svg.contains("<svg"),
        "dot -Tsvg refused the graph: {}\n{dot}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With no daemon running, the verbs that ask it say so and fail.
#[test]
fn verbs_without_a_daemon_say_there_is_none() {
    let lab = Lab::new();
    lab.init("R");
    for args in [
        &["alerts"][..],
        &["graph"],
        &["status"],
        &["recover", "--all"],
        &["fsck", "--cluster", "c"],
    ] {
        let out = lab.run("R", args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no daemon is running"), "{args:?}: {err}");
    }
    // `peers` reads the repository instead, and says so.
    let out = lab.run("R", &["peers"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("membership log") && err.contains("no daemon is running"),
        "{err}"
    );
    // The token is there to read (made on first use).
    let t = lab.token("R");
    assert_eq!(t.len(), 64);
    assert_eq!(lab.token("R"), t);
}

/// `--log-format json`: the daemon's log lines are JSON objects.
#[test]
fn logs_as_json_lines() {
    let lab = Lab::new();
    lab.init("R");
    let mut cmd = Command::new(annexmesh_bin());
    cmd.arg("--repo")
        .arg(lab.repo("R"))
        .args([
            "--log-format",
            "json",
            "daemon",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("ANNEXMESH_LOG", "info");
    let d = ProcessGuard::spawn(&mut cmd);
    let line = wait("a JSON log line", || {
        d.stderr()
            .lines()
            .find(|l| l.starts_with('{'))
            .map(str::to_owned)
    });
    let v = json(&line);
    assert_eq!(v["level"], "INFO", "{line}");
    assert!(v["target"].is_string() && v["fields"].is_object(), "{line}");
    assert!(
        d.stderr()
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('{')),
        "{}",
        d.stderr()
    );
}
