//! A cluster's nodes as the gateway's git config describes them: how each is
//! reached ([`Access`]), what it costs, the clusters it belongs to, and the
//! far nodes behind other gateways. Plain data: the gateway and the setup
//! commands build on it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use protocol::Uuid;

use super::cost::Cost;
use crate::error::{Error, Result};
use crate::store::Store;

/// One node of a cluster: a git remote of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub remote: String,
    pub uuid: Uuid,
    pub access: Access,
    /// What reading from it costs: `remote.<r>.annex-cost`, else git-annex's
    /// default for its kind ([`Access::default_cost`]).
    pub cost: Cost,
    /// Its stall rule (`remote.<r>.annex-stalldetection`, else
    /// `annex.stalldetection`) and reply deadline (`annexmesh.replytimeout`).
    pub deadlines: protocol::deadline::NodeDeadlines,
}

/// How the gateway reaches a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A local git-annex repository, written directly through its `Store`.
    Local(PathBuf),
    /// An existing git-annex repository behind `git-annex-shell p2pstdio`.
    Shell(ShellCommand),
    /// An annexmesh peer on the mesh (url `p2p-annex::libp2p:<multiaddr>`).
    Mesh(String),
    /// A special remote (directory or external).
    Special(crate::special::Special),
}

impl Access {
    /// git-annex's default for a remote of this kind: a local git repository
    /// is cheap (`Remote/Git.hs`: `repoCheap`, whatever its `annex-shell`), an
    /// ssh one expensive; a P2P remote (`p2p-annex::…`, `Remote/P2P.hs`) very
    /// expensive; a directory special remote cheap, an external one expensive
    /// (its `GETCOST` is not asked).
    pub fn default_cost(&self) -> Cost {
        match self {
            Access::Local(_) | Access::Shell(ShellCommand::Program { .. }) => Cost::CHEAP,
            Access::Shell(ShellCommand::Ssh { .. }) => Cost::EXPENSIVE,
            Access::Mesh(_) => Cost::VERY_EXPENSIVE,
            Access::Special(crate::special::Special::Directory(_)) => Cost::CHEAP,
            Access::Special(crate::special::Special::External { .. }) => Cost::EXPENSIVE,
        }
    }
}

/// The url prefix of a mesh node's remote.
pub const MESH_URL_PREFIX: &str = "p2p-annex::libp2p:";

/// How to start a node's `git-annex-shell p2pstdio`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellCommand {
    /// A local repository whose remote sets `annex-shell`: that program is run
    /// directly as `PROGRAM p2pstdio PATH CLIENT --uuid NODE`.
    Program { program: PathBuf, path: PathBuf },
    /// `ssh [-p PORT] HOST "SHELL 'p2pstdio' 'PATH' 'CLIENT' '--uuid' 'NODE'"`,
    /// with git's ssh settings as git-annex honours them.
    Ssh {
        host: String,
        port: Option<u16>,
        shell: String,
        path: String,
    },
}

/// Quotes a word for a POSIX shell, as git-annex's `shellEscape` does.
fn shell_quote(w: &str) -> String {
    format!("'{}'", w.replace('\'', "'\"'\"'"))
}

impl ShellCommand {
    /// The command for `git-annex-shell ACTION PATH ARGS…`.
    pub fn command(&self, action: &str, args: &[&str]) -> std::process::Command {
        match self {
            ShellCommand::Program { program, path } => {
                let mut c = Command::new(program);
                c.arg(action).arg(path).args(args);
                c
            }
            ShellCommand::Ssh {
                host,
                port,
                shell,
                path,
            } => {
                let mut line = format!("{shell} {} {}", shell_quote(action), shell_quote(path));
                for a in args {
                    line.push(' ');
                    line.push_str(&shell_quote(a));
                }
                let mut c = ssh_command();
                if let Some(p) = port {
                    c.arg("-p").arg(p.to_string());
                }
                c.arg(host).arg(line);
                c
            }
        }
    }
}

/// `ssh`, or git's ssh when git-annex would use it (`GIT_ANNEX_USE_GIT_SSH=1`
/// with `GIT_SSH_COMMAND` or `GIT_SSH`).
fn ssh_command() -> Command {
    if std::env::var("GIT_ANNEX_USE_GIT_SSH").is_ok_and(|v| v == "1") {
        if let Ok(cmd) = std::env::var("GIT_SSH_COMMAND")
            && !cmd.is_empty()
        {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("{cmd} \"$@\"")).arg(cmd);
            return c;
        }
        if let Some(prog) = std::env::var_os("GIT_SSH")
            && !prog.is_empty()
        {
            return Command::new(prog);
        }
    }
    Command::new("ssh")
}

/// An ssh-style url: `host:/path`, `host:path` (under the home directory, as
/// `/~/path`) or `ssh://[user@]host[:port]/path`.
pub(crate) fn parse_ssh_url(url: &str) -> Option<(String, Option<u16>, String)> {
    if let Some(rest) = url
        .strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("git+ssh://"))
    {
        let (hostport, path) = rest.split_at(rest.find('/')?);
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse().ok()?)),
            None => (hostport, None),
        };
        return Some((host.to_owned(), port, path.to_owned()));
    }
    if url.contains("://") {
        return None;
    }
    let (host, path) = url.split_once(':')?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/~/{path}")
    };
    Some((host.to_owned(), None, path))
}

/// `git-annex-shell configlist`: the node's `annex.uuid`.
pub(crate) fn shell_uuid(shell: &ShellCommand) -> Result<Uuid> {
    let out = shell
        .command("configlist", &[])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Git(format!("running git-annex-shell configlist: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("annex.uuid="))
        .and_then(|u| Uuid::parse(u.trim()).ok())
        .ok_or_else(|| {
            Error::Git(format!(
                "git-annex-shell configlist gave no annex.uuid: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
}

/// A cluster this gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub uuid: Uuid,
    pub nodes: Vec<Node>,
    /// Other gateways of the same cluster (`remote.<r>.annex-cluster-gateway`,
    /// set by `extendcluster`): each node's `uuid` is that gateway's own.
    pub gateways: Vec<Node>,
}

/// A node of a cluster reached through another gateway of it (git-annex's
/// `G-H-N4`): listed in that gateway's `proxy.log` line and in `cluster.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarNode {
    pub uuid: Uuid,
    /// `<gateway remote>-<its name there>`, the name in this gateway's `proxy.log`.
    pub name: String,
    pub gateway: Node,
}

impl FarNode {
    /// The node as a remote node of this gateway: the other gateway's access,
    /// naming the far node as its target.
    pub fn as_node(&self) -> Node {
        via(&self.gateway, &self.name, &self.uuid)
    }
}

/// `gateway`'s access, aimed at `target` (`--uuid`, or `/annex-uuid/` on the mesh).
fn via(gateway: &Node, name: &str, target: &Uuid) -> Node {
    let access = match &gateway.access {
        Access::Mesh(addr) => {
            let base = addr.split("/annex-uuid/").next().unwrap_or(addr);
            Access::Mesh(format!("{base}/annex-uuid/{target}"))
        }
        other => other.clone(),
    };
    Node {
        remote: name.to_owned(),
        uuid: target.clone(),
        access,
        // One more hop: the far gateway's own link to the node.
        cost: Cost(protocol::routing::path_cost(gateway.cost.0, 1)),
        deadlines: gateway.deadlines,
    }
}

impl Cluster {
    /// The nodes other gateways of this cluster proxy and this one does not
    /// (git-annex's `updateproxy` rule: cluster nodes the other gateway lists
    /// in its `proxy.log`, minus what this gateway proxies directly).
    pub fn far_nodes(&self, view: &protocol::logs::view::View<'_>) -> Vec<FarNode> {
        let members: BTreeSet<String> = view
            .clusters()
            .remove(self.uuid.as_str())
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        let direct: BTreeSet<&str> = self.nodes.iter().map(|n| n.uuid.as_str()).collect();
        let proxies = view.proxies();
        let mut far: Vec<FarNode> = Vec::new();
        for g in &self.gateways {
            for (u, name) in proxies.get(g.uuid.as_str()).into_iter().flatten() {
                if u == self.uuid.as_str()
                    || !members.contains(u)
                    || direct.contains(u.as_str())
                    || far.iter().any(|f| f.uuid.as_str() == u)
                {
                    continue;
                }
                let Ok(uuid) = Uuid::parse(u) else { continue };
                far.push(FarNode {
                    uuid,
                    name: format!("{}-{name}", g.remote),
                    gateway: g.clone(),
                });
            }
        }
        far
    }

    /// The far nodes as the topology routes them (issue 9): every node whose
    /// single best route crosses another gateway, named along its path
    /// (`H-K-N6`), reached through the route's next hop when this gateway
    /// has a remote for it. Falls back to [`Cluster::far_nodes`] without
    /// routes.
    pub fn far_nodes_routed(
        &self,
        view: &protocol::logs::view::View<'_>,
        routes: Option<&protocol::cluster::Routes>,
    ) -> Vec<FarNode> {
        let Some(routes) = routes else {
            return self.far_nodes(view);
        };
        routes
            .iter()
            .filter_map(|r| {
                let hop = r.next_hop()?;
                let gateway = self.gateways.iter().find(|g| &g.uuid == hop)?;
                Some(FarNode {
                    uuid: r.node.clone(),
                    name: r.name.clone(),
                    gateway: gateway.clone(),
                })
            })
            .collect()
    }

    /// This cluster as reached through each other gateway, as one node each
    /// (annex-spec §4.9): the gateway's access aimed at the cluster uuid.
    pub fn via_gateways(&self) -> Vec<(Uuid, Node)> {
        self.gateways
            .iter()
            .map(|g| {
                (
                    g.uuid.clone(),
                    via(g, &format!("{}-{}", g.remote, self.name), &self.uuid),
                )
            })
            .collect()
    }
}

/// A node's uuid and its object store, written directly (no extra process).
#[derive(Debug, Clone)]
pub struct NodeStore {
    pub uuid: Uuid,
    pub remote: String,
    pub store: Store,
}
