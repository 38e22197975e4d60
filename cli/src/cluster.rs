//! `annexmesh initcluster` and `annexmesh updatecluster`, as git-annex's
//! commands of the same names (annex-spec §4.5).

use std::path::Path;
use std::process::ExitCode;

pub fn initcluster(repo: &Path, name: &str) -> anyhow::Result<ExitCode> {
    node::cluster::init_cluster(repo, name)?;
    println!("initcluster {name} ok");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Add an annexmesh peer as a node: PEER is a multiaddr ending in
    /// `/p2p/<id>` or a configured peer name. `updatecluster` then learns its
    /// uuid by connecting (the peer must grant this repository's peer id).
    AddNode {
        name: String,
        peer: String,
        /// The cluster (default: the only one).
        #[arg(long)]
        cluster: Option<String>,
    },
}

pub fn cluster(repo: &Path, command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::AddNode {
            name,
            peer,
            cluster,
        } => {
            let r = node::Repo::open(repo)?;
            let address = node::config::Config::load(&r)?
                .peers
                .iter()
                .find(|p| p.name == peer)
                .map_or_else(|| peer.clone(), |p| p.address.clone());
            let c = node::cluster::add_mesh_node(repo, &name, &address, cluster.as_deref())?;
            println!("added node {name} to cluster {c} (run updatecluster)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `extendcluster REMOTE NAME`, then `updatecluster`, as git-annex does.
pub async fn extendcluster(repo: &Path, remote: &str, name: &str) -> anyhow::Result<ExitCode> {
    for p in node::cluster::learn_mesh_uuids_of(repo, &[remote.to_owned()]).await? {
        eprintln!("annexmesh: {p}");
    }
    node::cluster::extend_cluster(repo, remote, name)?;
    println!("extendcluster {name} ok");
    updatecluster(repo).await
}

pub async fn updatecluster(repo: &Path) -> anyhow::Result<ExitCode> {
    for p in node::cluster::learn_mesh_uuids(repo).await? {
        eprintln!("annexmesh: {p}");
    }
    let update = node::cluster::update_clusters(repo)?;
    for p in &update.problems {
        eprintln!("annexmesh: {p}");
    }
    for m in update.messages() {
        println!("{m}");
    }
    Ok(ExitCode::SUCCESS)
}
