//! What a session on a gateway serves: one of its clusters (with its nodes
//! opened as the gateway reaches them, and the routes over the gossiped
//! topology) or one node it proxies.

use protocol::Uuid;

use super::nodes::{Access, Node, NodeStore};
use super::{ConfigSnapshot, configured_in, node_of_remote};
use crate::error::Result;
use crate::repo::Repo;
use crate::store::Store;

/// What a `p2pstdio --uuid U` on this gateway serves.
#[derive(Debug, Clone)]
pub enum Served {
    /// A cluster of this gateway, with its nodes.
    Cluster {
        uuid: Uuid,
        nodes: Vec<crate::gateway::GatewayNode>,
        /// The routes from this gateway over the cluster's topology, once
        /// learnt from gossip; `None` serves the configured nodes as they are
        /// (see [`crate::gateway::Gateway::routes`]).
        routes: Option<protocol::cluster::Routes>,
    },
    /// One node, proxied (any kind: see [`crate::proxy`]).
    Node(Box<crate::gateway::GatewayNode>),
}

fn open_gateway_node(repo: &Repo, n: &Node) -> Option<crate::gateway::GatewayNode> {
    match &n.access {
        Access::Special(special) => Some(crate::gateway::GatewayNode::Special(Box::new(
            crate::special::SpecialNode::new(n.uuid.clone(), n.remote.clone(), special.clone())
                .with_cost(n.cost)
                .with_deadlines(n.deadlines),
        ))),
        Access::Mesh(addr) => {
            let address = match crate::net::PeerAddress::parse(addr) {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!("node {}: {e}", n.remote);
                    return None;
                }
            };
            let state_dir = crate::config::state_dir(repo);
            let key = match crate::config::load_or_create_identity(&state_dir) {
                Ok(k) => k,
                Err(e) => {
                    tracing::info!("gateway identity: {e}");
                    return None;
                }
            };
            Some(crate::gateway::GatewayNode::Remote(Box::new(
                crate::gateway::RemoteNode::mesh(
                    n.uuid.clone(),
                    n.remote.clone(),
                    address,
                    key,
                    state_dir,
                )
                .with_cost(n.cost)
                .with_deadlines(n.deadlines),
            )))
        }
        Access::Local(_) => open_node(n).map(|s| crate::gateway::GatewayNode::Local(s, n.cost)),
        Access::Shell(shell) => Some(crate::gateway::GatewayNode::Remote(Box::new(
            crate::gateway::RemoteNode::shell(n.uuid.clone(), n.remote.clone(), shell.clone())
                .with_cost(n.cost)
                .with_deadlines(n.deadlines),
        ))),
    }
}

fn open_node(n: &Node) -> Option<NodeStore> {
    let Access::Local(path) = &n.access else {
        return None;
    };
    match Store::open(path) {
        Ok(store) if store.uuid() == &n.uuid => Some(NodeStore {
            uuid: n.uuid.clone(),
            remote: n.remote.clone(),
            store,
        }),
        Ok(store) => {
            tracing::info!(
                "node {} has uuid {}, expected {}",
                n.remote,
                store.uuid(),
                n.uuid
            );
            None
        }
        Err(e) => {
            tracing::info!("node {}: {e}", n.remote);
            None
        }
    }
}

/// Finds what `want` names on the gateway `gateway`: one of its clusters, or a
/// node it proxies (its `proxy.log` line lists it and the remote is a cluster
/// node or has `annex-proxy` set). `None` when it serves no such repository.
pub fn resolve(gateway: &Store, want: &str) -> Result<Option<Served>> {
    let repo = gateway.repo();
    let config = ConfigSnapshot::read(&repo.top)?;
    let (clusters, _) = configured_in(repo, &config);
    if let Some(c) = clusters.iter().find(|c| c.uuid.as_str() == want) {
        let mut nodes: Vec<crate::gateway::GatewayNode> = c
            .nodes
            .iter()
            .filter_map(|n| open_gateway_node(repo, n))
            .collect();
        // The same cluster through each other gateway of it, as one node.
        for (gateway, node) in c.via_gateways() {
            if let Some(crate::gateway::GatewayNode::Remote(r)) = open_gateway_node(repo, &node) {
                nodes.push(crate::gateway::GatewayNode::Remote(Box::new(
                    r.via_gateway(gateway),
                )));
            }
        }
        // Routes over the gossiped topology, once this gateway has a line:
        // a PUT then reaches every node once, whatever the gateway graph.
        let routes = match crate::topology::routes(gateway, &c.uuid) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!("routes of {}: {e}", c.name);
                None
            }
        };
        return Ok(Some(Served::Cluster {
            uuid: c.uuid.clone(),
            nodes,
            routes,
        }));
    }
    let mut catalog = protocol::logs::catalog::Catalog::new();
    for log in ["proxy.log", "cluster.log"] {
        catalog.insert_content(log, &gateway.journal().read(log)?);
    }
    let view = protocol::logs::view::View::new(&catalog);
    let proxies = view.proxies();
    let Some(entries) = proxies.get(repo.uuid.as_str()) else {
        return Ok(None);
    };
    let Some((_, remote)) = entries.iter().find(|(u, _)| u == want) else {
        return Ok(None);
    };
    // A node behind another gateway of one of our clusters: relayed there.
    if let Some(far) = clusters
        .iter()
        .flat_map(|c| {
            let routes = crate::topology::routes(gateway, &c.uuid).ok().flatten();
            c.far_nodes_routed(&view, routes.as_ref())
        })
        .find(|f| f.uuid.as_str() == want && &f.name == remote)
    {
        return Ok(open_gateway_node(repo, &far.as_node()).map(|n| Served::Node(Box::new(n))));
    }
    let is_node = clusters
        .iter()
        .any(|c| c.nodes.iter().any(|n| &n.remote == remote));
    let proxy_on = config
        .get(&format!("remote.{remote}.annex-proxy"))
        .is_some_and(|v| v == "true");
    if !is_node && !proxy_on {
        return Ok(None);
    }
    let Some(node) = node_of_remote(repo, &config, remote)? else {
        return Ok(None);
    };
    if node.uuid.as_str() != want {
        return Ok(None);
    }
    Ok(open_gateway_node(repo, &node).map(|n| Served::Node(Box::new(n))))
}
