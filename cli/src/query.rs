//! `annexmesh whereis KEY` and `annexmesh info [PEER]`, read from the
//! repository's git-annex branch and journal (what gossip brought in is there).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use node::Repo;
use protocol::Key;
use protocol::logs::view::View;
use serde_json_lite::Json;

/// A tiny JSON writer: the output is flat and string-valued, so a dependency is
/// not worth it.
pub(crate) mod serde_json_lite {
    pub enum Json {
        Str(String),
        Num(u64),
        List(Vec<Json>),
        Obj(Vec<(&'static str, Json)>),
        Null,
    }

    impl Json {
        pub fn render(&self) -> String {
            match self {
                Json::Str(s) => quote(s),
                Json::Num(n) => n.to_string(),
                Json::Null => "null".into(),
                Json::List(v) => {
                    let items: Vec<String> = v.iter().map(Json::render).collect();
                    format!("[{}]", items.join(","))
                }
                Json::Obj(fields) => {
                    let items: Vec<String> = fields
                        .iter()
                        .map(|(k, v)| format!("{}:{}", quote(k), v.render()))
                        .collect();
                    format!("{{{}}}", items.join(","))
                }
            }
        }
    }

    fn quote(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

fn catalog(repo: &Repo) -> anyhow::Result<protocol::logs::catalog::Catalog> {
    node::branch::read(&repo.git_dir).context("reading the git-annex branch")
}

fn describe(view: &View<'_>, uuid: &str, here: &str) -> String {
    let mut s = format!("{uuid} -- {}", view.description(uuid).unwrap_or_default());
    if uuid == here {
        s.push_str(" [here]");
    }
    s
}

pub fn whereis(path: &Path, key: &str, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(path).with_context(|| format!("{}", path.display()))?;
    let key = Key::parse(key).with_context(|| format!("{key:?} is not a git-annex key"))?;
    let catalog = catalog(&repo)?;
    let view = View::new(&catalog);
    let w = view.whereis(&key);
    let here = repo.uuid.to_string();
    if json {
        let entry = |u: &String| {
            Json::Obj(vec![
                ("uuid", Json::Str(u.clone())),
                (
                    "description",
                    Json::Str(view.description(u).unwrap_or_default()),
                ),
                ("here", Json::Str((u == &here).to_string())),
                (
                    "addresses",
                    Json::List(view.addresses(u).into_iter().map(Json::Str).collect()),
                ),
            ])
        };
        let out = Json::Obj(vec![
            ("key", Json::Str(key.to_string())),
            ("copies", Json::Num(w.copies.len() as u64)),
            ("whereis", Json::List(w.copies.iter().map(entry).collect())),
            (
                "clusters",
                Json::List(w.clusters.iter().map(entry).collect()),
            ),
        ]);
        println!("{}", out.render());
    } else {
        println!("whereis {key} ({} copies)", w.copies.len());
        for u in &w.copies {
            println!("  \t{}", describe(&view, u, &here));
        }
        for c in &w.clusters {
            println!("  \t{}", describe(&view, c, &here));
        }
    }
    Ok(if w.copies.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn info(path: &Path, peer: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(path).with_context(|| format!("{}", path.display()))?;
    let catalog = catalog(&repo)?;
    let view = View::new(&catalog);
    // A peer is named by uuid or by description; default: this repository.
    let uuid = match peer {
        None => repo.uuid.to_string(),
        Some(p) => {
            let by_desc = view
                .descriptions()
                .into_iter()
                .find(|(_, d)| d == p)
                .map(|(u, _)| u);
            by_desc.unwrap_or_else(|| p.to_owned())
        }
    };
    let proxies = view.proxies().remove(&uuid).unwrap_or_default();
    let (keys, bytes) = view.holdings(&uuid);
    let clusters: Vec<(String, String)> = proxies
        .iter()
        .filter(|(u, _)| protocol::Uuid::parse(u).is_ok_and(|u| u.is_cluster()))
        .cloned()
        .collect();
    if json {
        let out = Json::Obj(vec![
            ("uuid", Json::Str(uuid.clone())),
            (
                "description",
                view.description(&uuid).map_or(Json::Null, Json::Str),
            ),
            ("trust", Json::Str(view.trust(&uuid).as_str().into())),
            (
                "groups",
                Json::List(view.groups(&uuid).into_iter().map(Json::Str).collect()),
            ),
            (
                "addresses",
                Json::List(view.addresses(&uuid).into_iter().map(Json::Str).collect()),
            ),
            (
                "proxying",
                Json::List(
                    proxies
                        .iter()
                        .map(|(u, n)| {
                            Json::Obj(vec![
                                ("uuid", Json::Str(u.clone())),
                                ("name", Json::Str(n.clone())),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("keys", Json::Num(keys)),
            ("bytes", Json::Num(bytes)),
        ]);
        println!("{}", out.render());
        return Ok(ExitCode::SUCCESS);
    }
    println!("uuid: {uuid}");
    println!(
        "description: {}",
        view.description(&uuid).unwrap_or_default()
    );
    println!("trust: {}", view.trust(&uuid).as_str());
    let groups = view.groups(&uuid);
    if !groups.is_empty() {
        println!("groups: {}", groups.join(" "));
    }
    for a in view.addresses(&uuid) {
        println!("address: {a}");
    }
    for (_, name) in &clusters {
        println!("gateway to cluster: {name}");
    }
    let plain: Vec<&str> = proxies
        .iter()
        .filter(|(u, _)| !clusters.iter().any(|(c, _)| c == u))
        .map(|(_, n)| n.as_str())
        .collect();
    if !plain.is_empty() {
        println!("proxying: {}", plain.join(" "));
    }
    println!("annexed keys: {keys}");
    println!("annexed size: {bytes} bytes");
    Ok(ExitCode::SUCCESS)
}
