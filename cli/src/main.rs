//! `annexmesh`: the command line. Invoked as `git-annex-shell` it behaves as
//! `annexmesh annex-shell`.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod annex_shell;

#[derive(Parser)]
#[command(
    name = "annexmesh",
    version,
    about = "git-annex clusters as a libp2p mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stand in for git-annex-shell (configlist, p2pstdio), with its arguments.
    #[command(name = "annex-shell", disable_help_flag = true)]
    AnnexShell {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    init_tracing();
    if invoked_as == "git-annex-shell" {
        let args = argv[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return annex_shell::run("git-annex-shell", args);
    }
    let cli = Cli::parse_from(argv);
    match cli.command {
        Command::AnnexShell { args } => annex_shell::run("annexmesh annex-shell", args),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("ANNEXMESH_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
