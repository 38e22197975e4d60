//! `git-annex-p2p-libp2p address`: this repository's addresses, one a line.

use std::process::ExitCode;

use libp2p::multiaddr::Protocol;

use super::repo::RepoFiles;

pub fn run() -> anyhow::Result<ExitCode> {
    let repo = RepoFiles::discover()?;
    // An annexmesh peer whose daemon runs serves the repository itself.
    let mut lines = repo.daemon_addresses();
    if lines.is_empty() {
        // Otherwise this helper will listen, for git-annex's remotedaemon.
        let key = repo.helper_identity_or_create()?;
        let addr = repo
            .listen_addr_or_create()?
            .with(Protocol::P2p(key.public().to_peer_id()));
        lines.push(addr.to_string());
    }
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
