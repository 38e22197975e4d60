//! A peer's own files: its libp2p identity and its TOML configuration, kept in
//! `<git dir>/annex/annexmesh/` beside git-annex's own state.
//!
//! ```toml
//! listen = ["/ip4/127.0.0.1/tcp/0"]
//! api_listen = "127.0.0.1:9095"  # the HTTP API (default 127.0.0.1:0)
//!
//! [[peer]]
//! name = "laptop"
//! address = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW…"
//!
//! [[grant]]             # a PeerId allowed in without a token
//! peer = "12D3KooW…"
//! mode = "read-only"    # read-write (default), append-only, read-only
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use protocol::server::ServeMode;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::repo::Repo;
use crate::store::write_atomic;

/// Where a repository's annexmesh files live.
pub fn state_dir(repo: &Repo) -> PathBuf {
    repo.annex_dir().join("annexmesh")
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs to listen on (`daemon --listen` adds to these).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Known peers, by name.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerEntry>,
    /// PeerIds allowed in without a token.
    #[serde(default, rename = "grant")]
    pub grants: Vec<Grant>,
    /// Where the daemon serves its HTTP API (`daemon --api-listen`
    /// overrides; default `127.0.0.1:0`, a free port, recorded in the
    /// state dir's `api` file for the command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub peer: String,
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "read-write".into()
}

/// Parses `read-write`, `append-only` or `read-only`.
pub fn parse_mode(s: &str) -> Result<ServeMode> {
    match s {
        "read-write" => Ok(ServeMode::ReadWrite),
        "append-only" => Ok(ServeMode::AppendOnly),
        "read-only" => Ok(ServeMode::ReadOnly),
        other => Err(Error::Usage(format!(
            "unknown access mode {other:?} (read-write, append-only, read-only)"
        ))),
    }
}

pub fn mode_name(mode: ServeMode) -> &'static str {
    match mode {
        ServeMode::ReadWrite => "read-write",
        ServeMode::AppendOnly => "append-only",
        ServeMode::ReadOnly => "read-only",
    }
}

impl Config {
    pub fn path(repo: &Repo) -> PathBuf {
        state_dir(repo).join("config.toml")
    }

    /// Reads the config; a missing file is the default config.
    pub fn load(repo: &Repo) -> Result<Config> {
        let path = Config::path(repo);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::Io {
                context: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    pub fn save(&self, repo: &Repo) -> Result<()> {
        let path = Config::path(repo);
        std::fs::create_dir_all(state_dir(repo)).context(|| "creating annexmesh state".into())?;
        let text = toml::to_string_pretty(self).map_err(|e| Error::Usage(e.to_string()))?;
        write_atomic(&path, text.as_bytes())
    }

    /// Granted PeerIds and their modes (bad entries are errors, not ignored).
    pub fn peer_grants(&self) -> Result<Vec<(PeerId, ServeMode)>> {
        self.grants
            .iter()
            .map(|g| {
                let peer = PeerId::from_str(&g.peer)
                    .map_err(|e| Error::Usage(format!("bad grant peer {}: {e}", g.peer)))?;
                Ok((peer, parse_mode(&g.mode)?))
            })
            .collect()
    }

    /// Resolves a peer name or a multiaddr.
    pub fn resolve_peer(&self, name_or_addr: &str) -> Result<Multiaddr> {
        let text = self
            .peers
            .iter()
            .find(|p| p.name == name_or_addr)
            .map_or(name_or_addr, |p| p.address.as_str());
        Multiaddr::from_str(text).map_err(|e| {
            Error::Usage(format!(
                "{name_or_addr:?} is neither a known peer nor a multiaddr: {e}"
            ))
        })
    }
}

/// Loads the peer's ed25519 identity, creating it (mode 0600) if absent.
pub fn load_or_create_identity(dir: &Path) -> Result<Keypair> {
    let path = dir.join("identity.key");
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| Error::Usage(format!("{}: bad identity: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| Error::Protocol(format!("encoding identity: {e}")))?;
            std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
            write_atomic(&path, &bytes)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .context(|| format!("chmod {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(Error::Io {
            context: format!("reading {}", path.display()),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_rejects_typos() {
        let text = r#"
listen = ["/ip4/127.0.0.1/tcp/0"]
[[peer]]
name = "b"
address = "/ip4/127.0.0.1/tcp/4001"
[[grant]]
peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
mode = "read-only"
"#;
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.peers[0].name, "b");
        assert_eq!(c.peer_grants().unwrap()[0].1, ServeMode::ReadOnly);
        assert_eq!(
            c.resolve_peer("b").unwrap().to_string(),
            "/ip4/127.0.0.1/tcp/4001"
        );
        assert!(c.resolve_peer("nobody").is_err());
        assert!(toml::from_str::<Config>("lisen = []").is_err());
        let back: Config = toml::from_str(&toml::to_string_pretty(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn identity_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(tmp.path()).unwrap();
        let b = load_or_create_identity(tmp.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }
}
