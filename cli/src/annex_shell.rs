//! The `annex-shell` subcommand: argument handling and exit codes as
//! git-annex-shell has them; the work is in `node::annex_shell`.

use std::process::ExitCode;

use anyhow::Context;
use node::annex_shell::{self, ShellCommand};

pub fn run(program: &str, args: Vec<String>) -> ExitCode {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(args: &[String]) -> anyhow::Result<ExitCode> {
    match ShellCommand::parse(args)? {
        ShellCommand::ConfigList { dir } => {
            print!("{}", annex_shell::configlist(&dir)?);
            Ok(ExitCode::SUCCESS)
        }
        ShellCommand::P2pStdio {
            dir,
            client,
            expected,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let reason = runtime.block_on(annex_shell::p2pstdio(
                &dir,
                client.as_deref(),
                expected.as_deref(),
            ))?;
            if annex_shell::failed(&reason) {
                eprintln!("git-annex-shell: {reason:?}");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
