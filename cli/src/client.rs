//! `annexmesh put/get/drop/checkpresent`: our client over libp2p.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::identity::Keypair;
use node::Repo;
use node::config::{Config, load_or_create_identity, state_dir};
use node::net::{PeerAddress, tcp_transport};
use node::remote::{Endpoint, StreamSession};
use protocol::key::select_extension;
use protocol::verify::Backend;
use protocol::{AssociatedFile, AuthToken, Key, Uuid};
use rand::RngCore;

#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// Auth token for the peer (also $ANNEXMESH_TOKEN); not needed with a grant.
    #[arg(long, env = "ANNEXMESH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

struct Connection {
    session: StreamSession,
    peer_uuid: Uuid,
    /// Keeps the swarm task alive for as long as the session.
    _endpoint: Endpoint,
}

/// Our identity and UUID: the repository's when there is one, else fresh ones.
fn whoami(repo_path: &Path) -> anyhow::Result<(Keypair, Uuid, Option<Repo>)> {
    match Repo::open(repo_path) {
        Ok(repo) => {
            let key = load_or_create_identity(&state_dir(&repo))?;
            Ok((key, repo.uuid.clone(), Some(repo)))
        }
        Err(_) => {
            let mut random = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut random);
            Ok((Keypair::generate_ed25519(), Uuid::new_v4(random), None))
        }
    }
}

async fn connect(repo_path: &Path, peer: &str, auth: &AuthArgs) -> anyhow::Result<Connection> {
    let (key, me, repo) = whoami(repo_path)?;
    let text = match &repo {
        Some(r) => Config::load(r)?
            .peers
            .iter()
            .find(|p| p.name == peer)
            .map_or_else(|| peer.to_owned(), |p| p.address.clone()),
        None => peer.to_owned(),
    };
    let address = PeerAddress::parse(&text).with_context(|| format!("peer {peer:?}"))?;
    let token = match &auth.token {
        Some(t) => AuthToken::parse(t).context("tokens are letters and digits only")?,
        None => AuthToken::parse("").context("empty token")?,
    };
    let endpoint = Endpoint::new(key.clone(), tcp_transport(&key)?)?;
    let (session, peer_uuid) = endpoint.connect(&address, me, token).await?;
    Ok(Connection {
        session,
        peer_uuid,
        _endpoint: endpoint,
    })
}

fn bar(total: u64, what: String) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what);
    pb
}

/// The key of a file under `backend`, hashing it once.
fn key_for_file(file: &Path, backend: &str) -> anyhow::Result<Key> {
    let Backend::Hashed { hash, extension } = Backend::from_name(backend) else {
        bail!("{backend} is not a hash backend annexmesh can compute");
    };
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut h = hash.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        use std::io::Read;
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    let ext = if extension {
        select_extension(&file.to_string_lossy())
    } else {
        String::new()
    };
    Ok(Key::from_hash(backend, size, &h.finish_hex(), &ext)?)
}

pub async fn put(
    repo: &Path,
    file: &Path,
    to: &str,
    backend: &str,
    auth: &AuthArgs,
) -> anyhow::Result<ExitCode> {
    let key = key_for_file(file, backend)?;
    let mut c = connect(repo, to, auth).await?;
    let size = std::fs::metadata(file)?.len();
    let pb = bar(size, format!("put {}", file.display()));
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let outcome = c
        .session
        .put(
            &key,
            AssociatedFile::new(name.as_deref().unwrap_or("")),
            file,
            &mut |n| pb.set_position(n),
        )
        .await?;
    pb.finish_and_clear();
    if !outcome.stored {
        bail!("{to} did not accept {key}");
    }
    println!("{key}");
    Ok(ExitCode::SUCCESS)
}

fn parse_key(key: &str) -> anyhow::Result<Key> {
    Key::parse(key).with_context(|| format!("{key:?} is not a git-annex key"))
}

pub async fn get(
    repo: &Path,
    key: &str,
    from: &str,
    output: Option<PathBuf>,
    auth: &AuthArgs,
) -> anyhow::Result<ExitCode> {
    let key = parse_key(key)?;
    let dest = output.unwrap_or_else(|| PathBuf::from(key.file()));
    let partial = {
        let mut name = dest
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".annexmesh-partial");
        dest.with_file_name(name)
    };
    let mut c = connect(repo, from, auth).await?;
    let pb = bar(key.size().unwrap_or(0), format!("get {key}"));
    let ok = c
        .session
        .get(&key, AssociatedFile::none(), &partial, &dest, &mut |n| {
            pb.set_position(n)
        })
        .await?;
    pb.finish_and_clear();
    if !ok {
        bail!(
            "{from} ({}) does not have {key}, or sent bad content",
            c.peer_uuid
        );
    }
    println!("{}", dest.display());
    Ok(ExitCode::SUCCESS)
}

pub async fn drop(repo: &Path, key: &str, from: &str, auth: &AuthArgs) -> anyhow::Result<ExitCode> {
    let key = parse_key(key)?;
    let mut c = connect(repo, from, auth).await?;
    let (ok, _) = c.session.remove(&key, None).await?;
    if !ok {
        bail!("{from} refused to remove {key} (locked?)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn checkpresent(
    repo: &Path,
    key: &str,
    from: &str,
    auth: &AuthArgs,
) -> anyhow::Result<ExitCode> {
    let key = parse_key(key)?;
    let mut c = connect(repo, from, auth).await?;
    let present = c.session.check_present(&key).await?;
    println!("{}", if present { "present" } else { "absent" });
    Ok(if present {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
