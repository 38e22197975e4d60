//! Clusters as git-annex sets them up (annex-spec §4.4–4.5): a gateway repository
//! names its clusters in git config (`annex.cluster.NAME = <cluster uuid>`), its
//! nodes are git remotes with `remote.<r>.annex-cluster-node NAME`, and
//! `updatecluster` writes `cluster.log` and `proxy.log` through the journal.
//!
//! Git config is read and written with `git config` itself: simple, and exactly
//! git's own rules for quoting, includes and case. What a session reads is
//! read once, as a [`ConfigSnapshot`] (`git config -z --list`), and looked up
//! there: one `git` process per session, not one per key and node.

pub mod cost;
pub mod fsck;
pub mod gateway;
pub mod heads;
pub mod nodes;
pub mod proxy;
pub mod repair;
pub mod resolve;
pub mod special;
pub mod topology;

pub use cost::Cost;
pub use nodes::{Access, Cluster, FarNode, MESH_URL_PREFIX, Node, NodeStore, ShellCommand};
use nodes::{parse_ssh_url, shell_uuid};
pub use resolve::{Served, resolve};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use protocol::Uuid;
use protocol::logs::catalog::record_map;
use protocol::logs::uuid_based;

use crate::error::{Error, Result};
use crate::journal::log_clock_now;
use crate::repo::Repo;
use crate::store::Store;

pub use crate::repo::gitconfig::{ConfigSnapshot, config_get, config_regexp, config_set};

/// git-annex's rule for cluster and remote names usable in `proxy.log`.
fn legal_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `annexmesh initcluster NAME`: a new cluster uuid in git config and uuid.log.
pub fn init_cluster(repo_path: &Path, name: &str) -> Result<Uuid> {
    if !legal_name(name) {
        return Err(Error::Usage(format!("illegal cluster name {name:?}")));
    }
    let repo = Repo::open(repo_path)?;
    let key = format!("annex.cluster.{name}");
    if let Some(existing) = config_get(&repo.top, &key)?
        && let Ok(u) = Uuid::parse(&existing)
    {
        return Ok(u);
    }
    let uuid = Uuid::new_cluster(rand::random());
    config_set(&repo.top, &key, uuid.as_str())?;
    let journal = crate::journal::Journal::new(&repo.git_dir);
    let now = log_clock_now();
    journal.modify("uuid.log", |old| {
        uuid_based::record(old, uuid.as_str(), &format!("cluster {name}"), now)
    })?;
    crate::branch::commit(&repo.git_dir, "initcluster")?;
    Ok(uuid)
}

/// Remote name → how to reach it: a local path (relative urls are relative to
/// the repository's top, as git-annex resolves them), with `annex-shell` set a
/// program run on that path, or an ssh url.
fn remote_access(config: &ConfigSnapshot, top: &Path, remote: &str) -> Option<Access> {
    let get = |what: &str| {
        config
            .get(&format!("remote.{remote}.{what}"))
            .map(str::to_owned)
    };
    if let Some(dir) = get("annex-directory") {
        return Some(Access::Special(crate::special::Special::Directory(
            PathBuf::from(dir),
        )));
    }
    if let Some(t) = get("annex-externaltype") {
        // Its configuration is filled in from remote.log by `node_of_remote`.
        return Some(Access::Special(crate::special::Special::External {
            externaltype: t,
            config: BTreeMap::new(),
            git_dir: PathBuf::new(),
            remote: remote.to_owned(),
        }));
    }
    let url = get("url")?;
    if let Some(addr) = url.strip_prefix(MESH_URL_PREFIX) {
        return Some(Access::Mesh(addr.to_owned()));
    }
    let shell = get("annex-shell");
    let local = url.strip_prefix("file://").unwrap_or(&url);
    if !(local.contains("://") || (local.contains(':') && !local.starts_with('/'))) {
        let path = top.join(local);
        return Some(match shell {
            Some(program) => Access::Shell(ShellCommand::Program {
                program: PathBuf::from(program),
                path,
            }),
            None => Access::Local(path),
        });
    }
    let (host, port, path) = parse_ssh_url(&url)?;
    Some(Access::Shell(ShellCommand::Ssh {
        host,
        port,
        shell: shell.unwrap_or_else(|| "git-annex-shell".into()),
        path,
    }))
}

/// The clusters named in the gateway's git config, with their nodes as the git
/// config says (node uuids are read from the nodes' repositories; nodes that are
/// not local git-annex repositories are skipped with a warning).
pub fn configured(repo: &Repo) -> Result<Vec<Cluster>> {
    Ok(configured_with_problems(repo)?.0)
}

/// [`configured`], and the nodes it had to skip, with why.
pub fn configured_with_problems(repo: &Repo) -> Result<(Vec<Cluster>, Vec<String>)> {
    Ok(configured_in(repo, &ConfigSnapshot::read(&repo.top)?))
}

/// [`configured_with_problems`] from a config already read.
pub fn configured_in(repo: &Repo, config: &ConfigSnapshot) -> (Vec<Cluster>, Vec<String>) {
    let mut problems = Vec::new();
    let mut clusters = Vec::new();
    let names = config.matching("annex.cluster.", "");
    let members = config.matching("remote.", ".annex-cluster-node");
    let gateway_remotes = config.matching("remote.", ".annex-cluster-gateway");
    for (key, value) in names {
        let Some(name) = key.strip_prefix("annex.cluster.") else {
            continue;
        };
        let Ok(uuid) = Uuid::parse(value.trim()) else {
            continue;
        };
        let mut nodes = Vec::new();
        for (k, v) in &members {
            if !v.split_whitespace().any(|c| c == name) {
                continue;
            }
            let Some(remote) = k
                .strip_prefix("remote.")
                .and_then(|r| r.strip_suffix(".annex-cluster-node"))
            else {
                continue;
            };
            match node_of_remote(repo, config, remote) {
                Ok(Some(n)) => nodes.push(n),
                Ok(None) => problems.push(format!(
                    "cluster node {remote} is not a repository annexmesh can reach (skipped)"
                )),
                Err(e) => problems.push(format!("cluster node {remote}: {e} (skipped)")),
            }
        }
        let mut gateways = Vec::new();
        for (k, v) in &gateway_remotes {
            if !v.split_whitespace().any(|c| c == uuid.as_str()) {
                continue;
            }
            let Some(remote) = k
                .strip_prefix("remote.")
                .and_then(|r| r.strip_suffix(".annex-cluster-gateway"))
            else {
                continue;
            };
            match node_of_remote(repo, config, remote) {
                Ok(Some(
                    g @ Node {
                        access: Access::Shell(_) | Access::Mesh(_),
                        ..
                    },
                )) => gateways.push(g),
                Ok(_) => problems.push(format!(
                    "cluster gateway {remote} is not an ssh or annexmesh remote (skipped)"
                )),
                Err(e) => problems.push(format!("cluster gateway {remote}: {e} (skipped)")),
            }
        }
        clusters.push(Cluster {
            name: name.to_owned(),
            uuid,
            nodes,
            gateways,
        });
    }
    (clusters, problems)
}

pub(crate) fn node_of_remote(
    repo: &Repo,
    config: &ConfigSnapshot,
    remote: &str,
) -> Result<Option<Node>> {
    let Some(access) = remote_access(config, &repo.top, remote) else {
        return Ok(None);
    };
    let known_uuid = || {
        config
            .get(&format!("remote.{remote}.annex-uuid"))
            .and_then(|u| Uuid::parse(u.trim()).ok())
    };
    let (uuid, access) = match access {
        Access::Local(path) => {
            let r = Repo::open(&path)?;
            (r.uuid, Access::Local(r.top))
        }
        Access::Shell(ShellCommand::Program { program, path }) => {
            let r = Repo::open(&path)?;
            (
                r.uuid,
                Access::Shell(ShellCommand::Program { program, path }),
            )
        }
        Access::Special(special) => {
            let uuid = known_uuid()
                .ok_or_else(|| Error::Usage(format!("special remote {remote} has no uuid")))?;
            let special = match special {
                crate::special::Special::External {
                    externaltype,
                    remote,
                    ..
                } => {
                    let catalog = crate::branch::read(&repo.git_dir)?;
                    let log = catalog
                        .file("remote.log")
                        .map(|f| String::from_utf8_lossy(&f.content()).into_owned())
                        .unwrap_or_default();
                    crate::special::Special::External {
                        externaltype,
                        config: crate::special::remote_log_config(&log, &uuid),
                        git_dir: repo.git_dir.clone(),
                        remote,
                    }
                }
                other => other,
            };
            (uuid, Access::Special(special))
        }
        Access::Mesh(addr) => {
            // Learnt by `updatecluster` (see [`learn_mesh_uuids`]).
            let uuid = known_uuid()
                .ok_or_else(|| Error::Usage(format!("mesh node {remote}: uuid not known yet")))?;
            (uuid, Access::Mesh(addr))
        }
        Access::Shell(shell) => {
            // As git-annex: the uuid it learnt, else ask the node's shell.
            let uuid = match known_uuid() {
                Some(u) => u,
                None => shell_uuid(&shell)?,
            };
            (uuid, Access::Shell(shell))
        }
    };
    // As git-annex's `remoteCost`: the configured cost when it parses.
    let cost = config
        .get(&format!("remote.{remote}.annex-cost"))
        .and_then(|c| c.trim().parse::<f64>().ok())
        .filter(|c| c.is_finite())
        .map(Cost)
        .unwrap_or_else(|| access.default_cost());
    let deadlines = protocol::deadline::NodeDeadlines::configured(
        config.get(&format!("remote.{remote}.annex-stalldetection")),
        config.get("annex.stalldetection"),
        config.get("annexmesh.replytimeout"),
    );
    Ok(Some(Node {
        remote: remote.to_owned(),
        uuid,
        access,
        cost,
        deadlines,
    }))
}

/// `annexmesh cluster add-node REMOTE ADDRESS`: a mesh peer as a node of
/// `cluster` (the only cluster when `None`): `remote.<r>.url =
/// p2p-annex::libp2p:<address>` and `remote.<r>.annex-cluster-node`.
pub fn add_mesh_node(
    repo_path: &Path,
    remote: &str,
    address: &str,
    cluster: Option<&str>,
) -> Result<String> {
    if !legal_name(remote) {
        return Err(Error::Usage(format!("illegal remote name {remote:?}")));
    }
    let repo = Repo::open(repo_path)?;
    // ADDRESS may name a mesh member (PeerId, uuid, description): its
    // address and uuid come from gossip, so no connection is needed.
    let (address, uuid) = match crate::net::PeerAddress::parse(address) {
        Ok(_) => (address.to_owned(), None),
        Err(e) => match crate::members::find(&repo.git_dir, address)? {
            Some(m) => match m.addresses.first() {
                Some(a) => (a.clone(), Some(m.uuid)),
                None => {
                    return Err(Error::Usage(format!(
                        "member {address} has announced no address yet"
                    )));
                }
            },
            None => {
                return Err(Error::Usage(format!(
                    "{address:?} is neither a peer address ({e}) nor a mesh member known here"
                )));
            }
        },
    };
    let address = address.as_str();
    let names: Vec<String> = config_regexp(&repo.top, r"^annex\.cluster\.")?
        .into_iter()
        .filter_map(|(k, _)| k.strip_prefix("annex.cluster.").map(str::to_owned))
        .collect();
    let cluster = match cluster {
        Some(c) if names.iter().any(|n| n == c) => c.to_owned(),
        Some(c) => return Err(Error::Usage(format!("no cluster named {c}"))),
        None => match names.as_slice() {
            [one] => one.clone(),
            [] => return Err(Error::Usage("no cluster here: initcluster first".into())),
            _ => {
                return Err(Error::Usage(
                    "several clusters: name one with --cluster".into(),
                ));
            }
        },
    };
    config_set(
        &repo.top,
        &format!("remote.{remote}.url"),
        &format!("{MESH_URL_PREFIX}{address}"),
    )?;
    config_set(
        &repo.top,
        &format!("remote.{remote}.annex-cluster-node"),
        &cluster,
    )?;
    if let Some(u) = uuid {
        config_set(&repo.top, &format!("remote.{remote}.annex-uuid"), &u)?;
    }
    Ok(cluster)
}

/// The git remote for `who`: `who` itself when it is a remote; else the mesh
/// member it names (PeerId, uuid or description, from gossip), made a remote
/// (`p2p-annex::libp2p:<its address>`, its uuid as `annex-uuid`, named after
/// its description) so git-annex and the gateway reach it like any other.
/// `None` when it is neither.
pub fn remote_for_member(repo: &Repo, who: &str) -> Result<Option<String>> {
    let config = ConfigSnapshot::read(&repo.top)?;
    if remote_access(&config, &repo.top, who).is_some() {
        return Ok(Some(who.to_owned()));
    }
    let Some(m) = crate::members::find(&repo.git_dir, who)? else {
        return Ok(None);
    };
    let Some(address) = m.addresses.first() else {
        return Err(Error::Usage(format!(
            "member {who} has announced no address yet (is its daemon running?)"
        )));
    };
    let peer = m.peer.to_string();
    let name = [m.description.as_str(), who]
        .into_iter()
        .find(|n| legal_name(n) && !n.contains('-'))
        .map_or_else(
            || format!("peer{}", &peer[peer.len().saturating_sub(6)..]),
            str::to_owned,
        );
    let uuid_key = format!("remote.{name}.annex-uuid");
    match config_get(&repo.top, &uuid_key)? {
        Some(u) if u.trim() == m.uuid => return Ok(Some(name)),
        Some(_) => {
            return Err(Error::Usage(format!(
                "a remote named {name} exists for another repository; name the member by its PeerId"
            )));
        }
        None => {}
    }
    config_set(
        &repo.top,
        &format!("remote.{name}.url"),
        &format!("{MESH_URL_PREFIX}{address}"),
    )?;
    config_set(
        &repo.top,
        &format!("remote.{name}.fetch"),
        &format!("+refs/heads/*:refs/remotes/{name}/*"),
    )?;
    config_set(&repo.top, &uuid_key, &m.uuid)?;
    Ok(Some(name))
}

/// `annexmesh extendcluster REMOTE NAME` (git-annex's `extendcluster`): this
/// repository becomes another gateway of the cluster that the gateway `REMOTE`
/// serves as `NAME` (found in REMOTE's `proxy.log` line, fetched with its
/// git-annex branch): `annex.cluster.NAME = <cluster uuid>` and
/// `remote.REMOTE.annex-cluster-gateway = <cluster uuid>`. REMOTE must be an
/// ssh or annexmesh remote. Run [`update_clusters`] afterwards.
pub fn extend_cluster(repo_path: &Path, remote: &str, name: &str) -> Result<Uuid> {
    let repo = Repo::open(repo_path)?;
    // REMOTE may be a mesh member named from gossip: no git remote, no fetch.
    let remote = &remote_for_member(&repo, remote)?.unwrap_or_else(|| remote.to_owned());
    let config = ConfigSnapshot::read(&repo.top)?;
    let gateway = match node_of_remote(&repo, &config, remote)? {
        Some(
            g @ Node {
                access: Access::Shell(_) | Access::Mesh(_),
                ..
            },
        ) => g,
        Some(_) => {
            return Err(Error::Usage(format!(
                "{remote} is not an ssh or annexmesh remote, so it cannot be a cluster gateway"
            )));
        }
        None => return Err(Error::Usage(format!("there is no remote named {remote}"))),
    };
    let catalog = crate::branch::read(&repo.git_dir)?;
    let view = protocol::logs::view::View::new(&catalog);
    let cluster = view
        .proxies()
        .remove(gateway.uuid.as_str())
        .unwrap_or_default()
        .into_iter()
        .find(|(_, n)| n == name)
        .and_then(|(u, _)| Uuid::parse(&u).ok())
        .filter(Uuid::is_cluster)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{remote} is not a gateway of a cluster named {name} (fetch its git-annex branch first)"
            ))
        })?;
    let key = format!("annex.cluster.{name}");
    match config_get(&repo.top, &key)? {
        Some(u) if u.trim() != cluster.as_str() => {
            return Err(Error::Usage(format!(
                "this repository already has a cluster named {name}, with uuid {}",
                u.trim()
            )));
        }
        Some(_) => {}
        None => config_set(&repo.top, &key, cluster.as_str())?,
    }
    let gw_key = format!("remote.{remote}.annex-cluster-gateway");
    let mut list: Vec<String> = config_get(&repo.top, &gw_key)?
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if !list.iter().any(|u| u == cluster.as_str()) {
        list.push(cluster.as_str().to_owned());
        config_set(&repo.top, &gw_key, &list.join(" "))?;
    }
    Ok(cluster)
}

/// Connects to every mesh node whose uuid is not known yet (as the gateway,
/// with its annexmesh identity) and records it as `remote.<r>.annex-uuid`.
/// Returns the problems met.
pub async fn learn_mesh_uuids(repo_path: &Path) -> Result<Vec<String>> {
    let repo = Repo::open(repo_path)?;
    let members = config_regexp(&repo.top, r"^remote\..*\.annex-cluster-(node|gateway)$")?;
    let remotes: Vec<String> = members
        .iter()
        .filter_map(|(k, _)| {
            k.strip_prefix("remote.").and_then(|r| {
                r.strip_suffix(".annex-cluster-node")
                    .or_else(|| r.strip_suffix(".annex-cluster-gateway"))
            })
        })
        .map(str::to_owned)
        .collect();
    learn_mesh_uuids_of(repo_path, &remotes).await
}

/// [`learn_mesh_uuids`] for the named remotes (those that are mesh remotes).
pub async fn learn_mesh_uuids_of(repo_path: &Path, remotes: &[String]) -> Result<Vec<String>> {
    let repo = Repo::open(repo_path)?;
    let config = ConfigSnapshot::read(&repo.top)?;
    let mut problems = Vec::new();
    let mut endpoint = None;
    for remote in remotes {
        let remote = remote.as_str();
        let Some(Access::Mesh(addr)) = remote_access(&config, &repo.top, remote) else {
            continue;
        };
        if config.get(&format!("remote.{remote}.annex-uuid")).is_some() {
            continue;
        }
        let address = match crate::net::PeerAddress::parse(&addr) {
            Ok(a) => a,
            Err(e) => {
                problems.push(format!("cluster node {remote}: {e}"));
                continue;
            }
        };
        if endpoint.is_none() {
            let identity =
                crate::config::load_or_create_identity(&crate::config::state_dir(&repo))?;
            endpoint = Some(crate::remote::Endpoint::new(
                identity.clone(),
                crate::net::tcp_transport(&identity)?,
            )?);
        }
        let Some(ep) = endpoint.as_ref() else {
            continue;
        };
        let token =
            protocol::AuthToken::parse("").ok_or_else(|| Error::Protocol("empty token".into()))?;
        match ep.connect(&address, repo.uuid.clone(), token).await {
            Ok((session, uuid)) => {
                let _ = session.close().await;
                config_set(
                    &repo.top,
                    &format!("remote.{remote}.annex-uuid"),
                    uuid.as_str(),
                )?;
            }
            Err(e) => problems.push(format!("cluster node {remote}: {e}")),
        }
    }
    Ok(problems)
}

/// What `updatecluster` did, as git-annex reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// (remote name, cluster name) newly added.
    pub added: Vec<(String, String)>,
    /// (remote name, cluster name) removed.
    pub removed: Vec<(String, String)>,
    /// Names newly proxied (nodes, then clusters).
    pub proxying: Vec<String>,
    /// Configured nodes that could not be used, with why.
    pub problems: Vec<String>,
    /// Clusters whose nodes did not change.
    pub unchanged: Vec<String>,
    /// Whether `proxy.log` needed no change.
    pub proxy_unchanged: bool,
}

impl Update {
    /// git-annex's messages.
    pub fn messages(&self) -> Vec<String> {
        let mut m = Vec::new();
        for (r, c) in &self.added {
            m.push(format!("Added node {r} to cluster: {c}"));
        }
        for (r, c) in &self.removed {
            m.push(format!("Removed node {r} from cluster: {c}"));
        }
        for c in &self.unchanged {
            m.push(format!("No cluster node changes for cluster: {c}"));
        }
        for p in &self.proxying {
            m.push(format!("Started proxying for {p}"));
        }
        if self.proxy_unchanged {
            m.push("No proxy changes to record.".into());
        }
        m
    }
}

/// `annexmesh updatecluster`: records each configured cluster's nodes in
/// `cluster.log` and what the gateway proxies in `proxy.log`, via the journal,
/// then commits the journal to the git-annex branch.
pub fn update_clusters(repo_path: &Path) -> Result<Update> {
    let repo = Repo::open(repo_path)?;
    let (clusters, problems) = configured_with_problems(&repo)?;
    let journal = crate::journal::Journal::new(&repo.git_dir);
    let now = log_clock_now();
    let catalog = crate::branch::read(&repo.git_dir)?;
    let view = protocol::logs::view::View::new(&catalog);
    let old_clusters = view.clusters();
    let old_proxies: BTreeSet<(String, String)> = view
        .proxies()
        .remove(repo.uuid.as_str())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut update = Update {
        problems,
        ..Update::default()
    };
    // proxy.log entries: uuid -> name, sorted by uuid as git-annex writes them.
    let mut proxied: BTreeMap<String, String> = BTreeMap::new();
    for cluster in &clusters {
        let before: BTreeSet<String> = old_clusters
            .get(cluster.uuid.as_str())
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        // This gateway's own topology line first, so its routes include it.
        let routes = {
            let store = Store::new(repo.clone());
            crate::topology::record_own(
                &journal,
                &repo.uuid,
                &crate::topology::own_entry(&clusters),
            )?;
            crate::topology::routes(&store, &cluster.uuid)?
        };
        let far = cluster.far_nodes_routed(&view, routes.as_ref());
        let nodes: BTreeSet<String> = cluster
            .nodes
            .iter()
            .map(|n| n.uuid.as_str().to_owned())
            .chain(far.iter().map(|f| f.uuid.as_str().to_owned()))
            .collect();
        let changes = update.added.len() + update.removed.len();
        for f in &far {
            if !before.contains(f.uuid.as_str()) {
                update.added.push((f.name.clone(), cluster.name.clone()));
            }
            proxied.insert(f.uuid.as_str().to_owned(), f.name.clone());
        }
        for n in &cluster.nodes {
            if !before.contains(n.uuid.as_str()) {
                update.added.push((n.remote.clone(), cluster.name.clone()));
            }
            // As git-annex's fetch does: remember the node's uuid.
            config_set(
                &repo.top,
                &format!("remote.{}.annex-uuid", n.remote),
                n.uuid.as_str(),
            )?;
        }
        for u in before.difference(&nodes) {
            update.removed.push((u.clone(), cluster.name.clone()));
        }
        if update.added.len() + update.removed.len() == changes {
            update.unchanged.push(cluster.name.clone());
        }
        if before != nodes {
            let value = nodes.iter().cloned().collect::<Vec<_>>().join(" ");
            journal.modify("cluster.log", |old| {
                record_map(old, cluster.uuid.as_str(), &value, now)
            })?;
        }
        for n in &cluster.nodes {
            proxied.insert(n.uuid.as_str().to_owned(), n.remote.clone());
        }
    }
    let mut new_names = Vec::new();
    for (u, name) in &proxied {
        if !old_proxies.contains(&(u.clone(), name.clone())) {
            new_names.push(name.clone());
        }
    }
    new_names.sort();
    update.proxying.extend(new_names);
    for cluster in &clusters {
        proxied.insert(cluster.uuid.as_str().to_owned(), cluster.name.clone());
        if !old_proxies.contains(&(cluster.uuid.as_str().to_owned(), cluster.name.clone())) {
            update.proxying.push(cluster.name.clone());
        }
    }
    let wanted: BTreeSet<(String, String)> = proxied.clone().into_iter().collect();
    update.proxy_unchanged = wanted == old_proxies;
    if wanted != old_proxies {
        let value = proxied
            .iter()
            .map(|(u, n)| format!("{u}:{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        journal.modify("proxy.log", |old| {
            record_map(old, repo.uuid.as_str(), &value, now)
        })?;
    }
    crate::branch::commit(&repo.git_dir, "updatecluster")?;
    Ok(update)
}

/// What a gateway's daemon does when the topology changes (issue 9): every
/// other gateway of one of its clusters that says, in its topology line, that
/// it links to this one, and that is a mesh member, becomes a gateway remote
/// of that cluster here too (as `extendcluster` would make it), so links go
/// both ways with no command run; then [`update_clusters`], so `proxy.log`
/// and `cluster.log` list the nodes now reachable. Does nothing on a
/// repository that serves no cluster.
pub fn follow_topology(repo_path: &Path) -> Result<Option<Update>> {
    let repo = Repo::open(repo_path)?;
    let clusters = configured(&repo)?;
    if clusters.is_empty() {
        return Ok(None);
    }
    let catalog = crate::branch::read_files(&repo.git_dir, &[protocol::cluster::TOPOLOGY_LOG])?;
    let lines = catalog
        .file(protocol::cluster::TOPOLOGY_LOG)
        .map(|f| f.content())
        .unwrap_or_default();
    let entries = protocol::cluster::topology::read(&lines);
    for c in &clusters {
        for (gw, entry) in &entries {
            let links_here = entry.gateways.iter().any(|l| l.to == repo.uuid);
            let known = c.gateways.iter().any(|g| &g.uuid == gw);
            if gw == &repo.uuid || known || !links_here || !entry.clusters.contains(&c.uuid) {
                continue;
            }
            let Some(remote) = remote_for_member(&repo, gw.as_str())? else {
                continue;
            };
            let key = format!("remote.{remote}.annex-cluster-gateway");
            let mut list: Vec<String> = config_get(&repo.top, &key)?
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            if !list.iter().any(|u| u == c.uuid.as_str()) {
                list.push(c.uuid.as_str().to_owned());
                config_set(&repo.top, &key, &list.join(" "))?;
            }
        }
    }
    update_clusters(repo_path).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_snapshot_answers_as_git_config() {
        let c = ConfigSnapshot::parse(
            b"core.bare\nfalse\0annex.cluster.mycluster\nac52\0remote.N1.url\n../N1\0\
              remote.N1.annex-cluster-node\nmycluster\0remote.N1.url\n../N1b\0core.flag\0",
        );
        assert_eq!(
            c.get("remote.N1.url"),
            Some("../N1b"),
            "the last value wins"
        );
        assert_eq!(
            c.get("REMOTE.N1.URL"),
            Some("../N1b"),
            "section and variable ignore case"
        );
        assert_eq!(c.get("remote.n1.url"), None, "the subsection does not");
        assert_eq!(c.get("core.flag"), Some(""));
        assert_eq!(c.get("core.nothing"), None);
        assert_eq!(
            c.matching("remote.", ".annex-cluster-node"),
            [(
                "remote.N1.annex-cluster-node".to_owned(),
                "mycluster".to_owned()
            )]
        );
        assert_eq!(c.matching("annex.cluster.", "").len(), 1);
    }

    #[test]
    fn names() {
        assert!(legal_name("mycluster"));
        assert!(!legal_name("my cluster"));
        assert!(!legal_name(""));
    }
}
