//! `annexmesh initcluster` and `annexmesh updatecluster`, as git-annex's
//! commands of the same names (annex-spec §4.5).

use std::path::Path;
use std::process::ExitCode;

pub fn initcluster(repo: &Path, name: &str) -> anyhow::Result<ExitCode> {
    node::cluster::init_cluster(repo, name)?;
    println!("initcluster {name} ok");
    Ok(ExitCode::SUCCESS)
}

pub fn updatecluster(repo: &Path) -> anyhow::Result<ExitCode> {
    let update = node::cluster::update_clusters(repo)?;
    for p in &update.problems {
        eprintln!("annexmesh: {p}");
    }
    for m in update.messages() {
        println!("{m}");
    }
    Ok(ExitCode::SUCCESS)
}
