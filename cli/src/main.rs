//! `annexmesh`: the command line. Invoked as `git-annex-shell` it behaves as
//! `annexmesh annex-shell`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod annex_shell;
mod api;
mod client;
mod cluster;
mod daemon;
mod duration;
mod fsck;
mod mesh;
mod query;
mod repair;
mod replication;

#[derive(Parser)]
#[command(
    name = "annexmesh",
    version,
    about = "git-annex clusters as a libp2p mesh"
)]
struct Cli {
    /// The repository to act on (default: the current directory).
    #[arg(long, global = true, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// How logs (stderr, filtered by `ANNEXMESH_LOG`) are written.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Make the repository an annexmesh peer: adopt an existing git-annex
    /// repository, or create a new bare one; create its identity and config.
    Init {
        /// Description recorded for a new repository.
        #[arg(long, default_value = "annexmesh")]
        description: String,
    },
    /// Run the peer in the foreground: serve the repository over libp2p.
    Daemon {
        /// Multiaddrs to listen on (added to the config's `listen`).
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Peers to connect to at start.
        #[arg(long, value_name = "MULTIADDR")]
        peer: Vec<String>,
        /// Do not serve git (CONNECT) to clients.
        #[arg(long)]
        no_git: bool,
        /// How long a member may be silent before it is suspected (s, m, h).
        #[arg(long, default_value = "10s")]
        suspect_after: String,
        /// Where to serve the HTTP API, IP:PORT (default: the config's
        /// `api_listen`, else 127.0.0.1 on a free port).
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<String>,
    },
    /// The HTTP API's bearer token.
    Api {
        #[command(subcommand)]
        action: api::ApiCommand,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// git-annex P2P pairing helpers.
    P2p {
        /// Print `p2p-annex::libp2p:<multiaddr>:<token>` lines for `git annex p2p --link`.
        #[arg(long, required = true)]
        gen_addresses: bool,
    },
    /// Let a peer in without a token (by its PeerId).
    Grant {
        peer: String,
        /// read-write, append-only or read-only.
        #[arg(long, default_value = "read-write")]
        mode: String,
    },
    /// Print a line that lets one repository join this mesh (`annexmesh
    /// join LINE`). Needs this repository's daemon running.
    Invite {
        /// How long the line stays usable (s, m, h, d).
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Join a mesh with a line from `annexmesh invite` on one of its members.
    Join { line: String },
    /// The mesh's members: PeerId, uuid, description, role, state, addresses.
    Peers {
        #[command(subcommand)]
        action: Option<mesh_cmd::PeersCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Leave the mesh: members stop taking this repository's metadata.
    Leave,
    /// Show or set a cluster's replication policy (or one key's override):
    /// at least MIN copies, at most MAX, repairs after GRACE.
    Replication {
        /// The cluster's name or uuid.
        cluster: String,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
        /// How long a node may be gone before its copies are made elsewhere
        /// (s, m, h, d).
        #[arg(long)]
        grace: Option<String>,
        /// A key whose override to show or set.
        #[arg(long)]
        key: Option<String>,
        /// Forget what is set (of the cluster, or of --key) before setting.
        #[arg(long)]
        clear: bool,
        #[arg(long)]
        json: bool,
    },
    /// The running daemon's view of the mesh's members: alive, suspected or
    /// down, their free space, and the alerts kept.
    Alerts {
        #[arg(long)]
        json: bool,
    },
    /// The repairer's view of the clusters this gateway serves: per key
    /// that is not simply at its replication, its copies and each node's
    /// state (present, transferring, error, missing).
    Status {
        /// One key.
        key: Option<String>,
        #[arg(long)]
        json: bool,
        /// Only keys with one of these states (present, queued,
        /// transferring, error, missing, under-replicated), comma-separated.
        #[arg(long, value_name = "STATE,…")]
        filter: Option<String>,
    },
    /// The mesh as the running daemon sees it, as Graphviz dot: members,
    /// gateways, nodes, clusters, links, the paths in use, each one's state
    /// (`annexmesh graph | dot -Tsvg > mesh.svg`).
    Graph,
    /// Check, in the running gateway daemon and in the background, every
    /// copy a cluster's nodes hold (or KEYs'): a bad copy is replaced by a
    /// good one, a missing one recorded absent (as `git annex fsck --from`).
    Fsck {
        /// The cluster, by name or uuid.
        #[arg(long, value_name = "CLUSTER")]
        cluster: String,
        keys: Vec<String>,
        #[arg(long)]
        json: bool,
        /// Follow the job until it is done and print its findings (exits 1
        /// if anything was found wrong, as git-annex's fsck).
        #[arg(long, conflicts_with = "status")]
        wait: bool,
        /// Show the running (or last) job's progress and findings.
        #[arg(long)]
        status: bool,
    },
    /// Retry now the repairs of KEYs (or of every key, with --all) that failed.
    Recover {
        keys: Vec<String>,
        #[arg(long)]
        all: bool,
    },
    /// Remember a peer's address under a name.
    AddPeer { name: String, address: String },
    /// Upload a file to a peer; prints its key.
    Put {
        file: PathBuf,
        #[arg(long, value_name = "PEER")]
        to: String,
        /// Key backend (SHA256E, SHA512E, BLAKE3_256, …).
        #[arg(long, default_value = "SHA256E")]
        backend: String,
        #[command(flatten)]
        auth: client::AuthArgs,
    },
    /// Download a key from a peer (resumes an interrupted download).
    Get {
        key: String,
        #[arg(long, value_name = "PEER")]
        from: String,
        /// Output file (default: the key's name in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        auth: client::AuthArgs,
    },
    /// Remove a key from a peer.
    Drop {
        key: String,
        #[arg(long, value_name = "PEER")]
        from: String,
        #[command(flatten)]
        auth: client::AuthArgs,
    },
    /// Ask a peer whether it has a key (exit 0 yes, 1 no).
    Checkpresent {
        key: String,
        #[arg(long, value_name = "PEER")]
        from: String,
        #[command(flatten)]
        auth: client::AuthArgs,
    },
    /// Which repositories have a key (from the shared location logs).
    Whereis {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// A repository's uuid, description, addresses, what it proxies, and how
    /// many keys and bytes it holds (default: this repository).
    Info {
        /// A uuid or description.
        peer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make this repository the gateway of a new cluster (as `git annex initcluster`).
    Initcluster { name: String },
    /// Record the clusters' nodes (remotes with `annex-cluster-node`) in
    /// cluster.log and proxy.log (as `git annex updatecluster`).
    Updatecluster,
    /// Make this repository another gateway of the cluster NAME that the
    /// gateway REMOTE serves (as `git annex extendcluster`), then update.
    Extendcluster { remote: String, name: String },
    /// Cluster nodes beyond local repositories.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// git's `ext::` transport to a peer's repository over the mesh (used by
    /// the gateways' branch sync): `CONNECT SERVICE` to ADDRESS, relaying
    /// stdin and stdout, through the repository's daemon when one runs.
    #[command(name = "git-connect", hide = true)]
    GitConnect {
        #[arg(long, value_name = "DIR")]
        git_dir: PathBuf,
        service: String,
        address: String,
    },
    /// Stand in for git-annex-shell (configlist, p2pstdio), with its arguments.
    #[command(name = "annex-shell", disable_help_flag = true)]
    AnnexShell {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

mod mesh_cmd {
    #[derive(clap::Subcommand)]
    pub enum PeersCommand {
        /// Remove a member (PeerId, uuid or description): its writes stop
        /// being taken everywhere.
        Rm { peer: String },
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if invoked_as == "git-annex-shell" {
        init_tracing(LogFormat::Text);
        let args = argv[1..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return annex_shell::run("git-annex-shell", args);
    }
    let cli = Cli::parse_from(argv);
    init_tracing(cli.log_format);
    if let Command::AnnexShell { args } = cli.command {
        return annex_shell::run("annexmesh annex-shell", args);
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("annexmesh: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let repo = cli.repo.unwrap_or_else(|| PathBuf::from("."));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Init { description } => daemon::init(&repo, &description),
        Command::Daemon {
            listen,
            peer,
            no_git,
            suspect_after,
            api_listen,
        } => runtime.block_on(daemon::run(
            &repo,
            listen,
            peer,
            !no_git,
            &suspect_after,
            api_listen,
        )),
        Command::Api { action } => api::command(&repo, action),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "annexmesh",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::P2p { .. } => daemon::gen_addresses(&repo),
        Command::Grant { peer, mode } => daemon::grant(&repo, &peer, &mode),
        Command::AddPeer { name, address } => daemon::add_peer(&repo, &name, &address),
        Command::Invite { ttl } => mesh::invite(&repo, &ttl),
        Command::Join { line } => runtime.block_on(mesh::join(&repo, &line)),
        Command::Peers { action, json } => match action {
            None => mesh::peers(&repo, json),
            Some(mesh_cmd::PeersCommand::Rm { peer }) => mesh::remove(&repo, &peer),
        },
        Command::Leave => mesh::leave(&repo),
        Command::Replication {
            cluster,
            min,
            max,
            grace,
            key,
            clear,
            json,
        } => replication::replication(
            &repo,
            &cluster,
            &replication::Settings {
                min,
                max,
                grace: grace.as_deref(),
                key: key.as_deref(),
                clear,
            },
            json,
        ),
        Command::Alerts { json } => replication::alerts(&repo, json),
        Command::Status { key, json, filter } => {
            repair::status(&repo, key.as_deref(), json, filter.as_deref())
        }
        Command::Recover { keys, all } => repair::recover(&repo, &keys, all),
        Command::Fsck {
            cluster,
            keys,
            json,
            wait,
            status,
        } => fsck::fsck(
            &repo,
            &fsck::Ask {
                cluster: &cluster,
                keys: &keys,
                json,
                wait,
                status,
            },
        ),
        Command::Graph => api::graph(&repo),
        // Transfers run on a runtime worker: a future polled by `block_on` on
        // the main thread moves bytes markedly slower (measured by the libp2p
        // benchmark).
        Command::Put {
            file,
            to,
            backend,
            auth,
        } => runtime.block_on(on_worker(async move {
            client::put(&repo, &file, &to, &backend, &auth).await
        })),
        Command::Get {
            key,
            from,
            output,
            auth,
        } => runtime.block_on(on_worker(async move {
            client::get(&repo, &key, &from, output, &auth).await
        })),
        Command::Drop { key, from, auth } => {
            runtime.block_on(client::drop(&repo, &key, &from, &auth))
        }
        Command::Checkpresent { key, from, auth } => {
            runtime.block_on(client::checkpresent(&repo, &key, &from, &auth))
        }
        Command::Whereis { key, json } => query::whereis(&repo, &key, json),
        Command::Info { peer, json } => query::info(&repo, peer.as_deref(), json),
        Command::GitConnect {
            git_dir,
            service,
            address,
        } => runtime.block_on(mesh::git_connect(&git_dir, &service, &address)),
        Command::Initcluster { name } => cluster::initcluster(&repo, &name),
        Command::Updatecluster => runtime.block_on(cluster::updatecluster(&repo)),
        Command::Extendcluster { remote, name } => {
            runtime.block_on(cluster::extendcluster(&repo, &remote, &name))
        }
        Command::Cluster(c) => cluster::cluster(&repo, c),
        Command::AnnexShell { .. } => Ok(ExitCode::SUCCESS),
    }
}

async fn on_worker<T: Send + 'static>(
    work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::spawn(work).await?
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("ANNEXMESH_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => fmt.try_init(),
        LogFormat::Json => fmt.json().try_init(),
    };
}
