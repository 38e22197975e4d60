//! `annexmesh api token`: the daemon's HTTP API's bearer token.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use node::Repo;

#[derive(clap::Subcommand)]
pub enum ApiCommand {
    /// Print the bearer token (made when there is none).
    Token {
        /// Replace it with a new one (the daemon takes it at once).
        #[arg(long)]
        rotate: bool,
    },
}

pub fn command(path: &Path, action: ApiCommand) -> anyhow::Result<ExitCode> {
    let repo = Repo::open(path)
        .with_context(|| format!("{} (run `annexmesh init` first?)", path.display()))?;
    match action {
        ApiCommand::Token { rotate } => {
            println!("{}", node::api::token::ensure(&repo.git_dir, rotate)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
