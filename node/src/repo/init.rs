//! `annexmesh init`: make a directory an annexmesh peer.
//!
//! * An existing git-annex repository (non-bare or bare) is adopted as it is.
//! * An empty or missing directory becomes a new bare repository laid out as a
//!   bare git-annex repository (`annex.uuid`, `annex.version = 10`, the uuid
//!   recorded in `uuid.log`), so stock git-annex can use it too.
//!
//! Either way the peer gets a persistent ed25519 identity and a config file.

use std::io::Write;
use std::path::Path;

use protocol::Uuid;
use protocol::logs::uuid_based;

use crate::config::{Config, load_or_create_identity, state_dir};
use crate::error::{Error, IoContext, Result};
use crate::journal::{Journal, log_clock_now};
use crate::repo::{Repo, read_uuid};

/// What `init` did.
#[derive(Debug)]
pub struct Initialized {
    pub repo: Repo,
    pub created: bool,
    pub peer_id: libp2p::PeerId,
}

/// Initializes `path`; `random` supplies the new UUID's bytes.
pub fn init(path: &Path, description: &str, random: [u8; 16]) -> Result<Initialized> {
    init_with_key(path, description, random, None)
}

/// Like [`init`], with a given identity (stored if the peer has none yet).
pub fn init_with_key(
    path: &Path,
    description: &str,
    random: [u8; 16],
    key: Option<&libp2p::identity::Keypair>,
) -> Result<Initialized> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    }
    let is_empty_dir = path.is_dir()
        && std::fs::read_dir(path)
            .context(|| format!("reading {}", path.display()))?
            .next()
            .is_none();
    let (repo, created) = if !path.exists() || is_empty_dir {
        (init_bare(path, description, random)?, true)
    } else {
        match Repo::open(path) {
            Ok(repo) => (repo, false),
            Err(Error::NoUuid(top)) => {
                return Err(Error::Usage(format!(
                    "{} is a git repository without an annex uuid: run `git annex init` there first",
                    top.display()
                )));
            }
            Err(e) => return Err(e),
        }
    };
    let dir = state_dir(&repo);
    if let Some(given) = key
        && !dir.join("identity.key").exists()
    {
        let bytes = given
            .to_protobuf_encoding()
            .map_err(|e| Error::Protocol(format!("encoding identity: {e}")))?;
        std::fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
        crate::store::write_atomic(&dir.join("identity.key"), &bytes)?;
    }
    let key = load_or_create_identity(&dir)?;
    if !Config::path(&repo).exists() {
        Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            ..Config::default()
        }
        .save(&repo)?;
    }
    Ok(Initialized {
        peer_id: key.public().to_peer_id(),
        repo,
        created,
    })
}

fn init_bare(path: &Path, description: &str, random: [u8; 16]) -> Result<Repo> {
    gix::init_bare(path)
        .map_err(|e| Error::Git(format!("git init --bare {}: {e}", path.display())))?;
    let uuid = Uuid::new_v4(random);
    let config = path.join("config");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .context(|| format!("opening {}", config.display()))?;
    write!(f, "[annex]\n\tuuid = {uuid}\n\tversion = 10\n")
        .and_then(|_| f.sync_all())
        .context(|| format!("writing {}", config.display()))?;
    if read_uuid(path)?.as_ref() != Some(&uuid) {
        return Err(Error::Git("annex.uuid did not stick".into()));
    }
    let repo = Repo::open(path)?;
    Journal::new(&repo.git_dir).modify("uuid.log", |old| {
        uuid_based::record(old, uuid.as_str(), description, log_clock_now())
    })?;
    Ok(repo)
}
