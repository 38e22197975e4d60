//! `git-annex-p2p-libp2p`: git-annex's generic P2P-network helper for libp2p,
//! so that stock git-annex can reach annexmesh peers, and other stock
//! git-annex repositories, over libp2p (git remote URLs
//! `p2p-annex::libp2p:<multiaddr>/p2p/<PeerId>[/annex-uuid/<uuid>]`).
//!
//! git-annex runs it in three ways (git-annex-modern.md §5.1):
//!
//! * `git-annex-p2p-libp2p address`: print this repository's addresses
//!   (`git annex p2p --enable libp2p`);
//! * `git-annex-p2p-libp2p <my-address> <socketfile>`: the listener started
//!   by `git annex remotedaemon`: every incoming `/annex/p2p/1` stream is
//!   relayed to git-annex's unix socket;
//! * `git-annex-p2p-libp2p <peer-address>`: one outgoing P2P connection,
//!   relayed over stdin and stdout.
//!
//! The helper never looks at the bytes it relays: the P2P protocol, `AUTH`
//! included, is between the two git-annex (or annexmesh) ends.

use std::process::ExitCode;

mod p2p_libp2p;

const USAGE: &str = "usage: git-annex-p2p-libp2p address
       git-annex-p2p-libp2p <my-address> <socketfile>
       git-annex-p2p-libp2p <peer-address>";

fn main() -> ExitCode {
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [a] if a == "-h" || a == "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        [a] if a == "--version" => {
            println!("git-annex-p2p-libp2p {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        [a] if a == "address" => p2p_libp2p::address::run(),
        [peer] => in_runtime(p2p_libp2p::connect::run(peer)),
        [me, socket] => in_runtime(p2p_libp2p::listen::run(me, socket)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("git-annex-p2p-libp2p: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One process per connection: a current-thread runtime starts fastest.
fn in_runtime(
    task: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(task);
    // Do not wait for a blocking stdio read that may still be pending.
    runtime.shutdown_background();
    result
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // stderr reaches the git-annex user: only errors unless asked for more.
    let filter =
        EnvFilter::try_from_env("ANNEXMESH_LOG").unwrap_or_else(|_| EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
