//! The helper's files in the repository git-annex runs it in.
//!
//! * `<git dir>/annex/creds/libp2p-identity`: the helper's own ed25519 key
//!   (libp2p protobuf encoding, mode 0600), used when the helper itself listens
//!   for a stock git-annex remotedaemon.
//! * `<git dir>/annex/creds/libp2p-listen`: the multiaddr it listens on, without
//!   `/p2p/`: a loopback TCP port picked once. Edit it (and run
//!   `git annex p2p --enable libp2p` again) to listen elsewhere.
//! * `<git dir>/annex/annexmesh/`: an annexmesh peer's identity and its running
//!   daemon's `addresses`, used when the repository is an annexmesh peer.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

pub struct RepoFiles {
    pub git_dir: PathBuf,
}

impl RepoFiles {
    /// The repository of the current directory (`git rev-parse --git-dir`).
    pub fn discover() -> anyhow::Result<RepoFiles> {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--git-dir"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .context("running git rev-parse --git-dir")?;
        if !out.status.success() {
            bail!("not in a git repository");
        }
        let text = String::from_utf8(out.stdout).context("git dir is not UTF-8")?;
        let dir = PathBuf::from(text.trim_end_matches('\n'));
        let git_dir = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir()?.join(dir)
        };
        Ok(RepoFiles { git_dir })
    }

    fn creds(&self) -> PathBuf {
        self.git_dir.join("annex/creds")
    }

    fn helper_identity_path(&self) -> PathBuf {
        self.creds().join("libp2p-identity")
    }

    fn listen_path(&self) -> PathBuf {
        self.creds().join("libp2p-listen")
    }

    /// The addresses a running annexmesh daemon serves this repository on.
    pub fn daemon_addresses(&self) -> Vec<String> {
        std::fs::read_to_string(self.git_dir.join("annex/annexmesh/addresses"))
            .map(|text| {
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The repository's annexmesh identity, if it is an annexmesh peer.
    pub fn annexmesh_identity(&self) -> anyhow::Result<Option<Keypair>> {
        read_key(&self.git_dir.join("annex/annexmesh/identity.key"))
    }

    /// The helper's own identity, if it has one.
    pub fn helper_identity(&self) -> anyhow::Result<Option<Keypair>> {
        read_key(&self.helper_identity_path())
    }

    /// The helper's own identity, created on first use.
    pub fn helper_identity_or_create(&self) -> anyhow::Result<Keypair> {
        if let Some(key) = self.helper_identity()? {
            return Ok(key);
        }
        let key = Keypair::generate_ed25519();
        let bytes = key
            .to_protobuf_encoding()
            .context("encoding a libp2p identity")?;
        create_private(&self.helper_identity_path(), &bytes)?;
        // Another process may have won the race: use whatever is there now.
        read_key(&self.helper_identity_path())?.context("identity vanished")
    }

    /// Where the helper listens (without `/p2p/`), chosen on first use.
    pub fn listen_addr_or_create(&self) -> anyhow::Result<Multiaddr> {
        let path = self.listen_path();
        if !path.exists() {
            let port = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .context("finding a free TCP port")?
                .port();
            create_private(&path, format!("/ip4/127.0.0.1/tcp/{port}\n").as_bytes())?;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Multiaddr::from_str(text.trim())
            .with_context(|| format!("{}: bad multiaddr {:?}", path.display(), text.trim()))
    }
}

fn read_key(path: &Path) -> anyhow::Result<Option<Keypair>> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map(Some)
            .with_context(|| format!("{}: bad libp2p identity", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Creates `path` (mode 0600) with `bytes` unless it exists: the content is
/// written and synced under a temporary name, then linked into place, so the
/// file is never seen half-written and a concurrent creator cannot be
/// overwritten.
fn create_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => std::fs::File::open(dir)?.sync_all(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result.with_context(|| format!("writing {}", path.display()))
}

/// `addr` without its trailing `/p2p/<PeerId>`, and that PeerId.
pub fn split_peer(addr: &Multiaddr) -> anyhow::Result<(Multiaddr, PeerId)> {
    let mut base = addr.clone();
    match base.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok((base, peer)),
        _ => bail!("{addr} does not end in /p2p/<PeerId>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("creds/key");
        create_private(&path, b"first").expect("create");
        create_private(&path, b"second").expect("exists");
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("creds"))
                .expect("dir")
                .count(),
            1
        );
    }

    #[test]
    fn identities_and_listen_addresses_persist() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = RepoFiles {
            git_dir: tmp.path().to_path_buf(),
        };
        assert!(repo.helper_identity().expect("read").is_none());
        let a = repo.helper_identity_or_create().expect("create");
        let b = repo.helper_identity_or_create().expect("load");
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let addr = repo.listen_addr_or_create().expect("listen");
        assert!(
            addr.to_string().starts_with("/ip4/127.0.0.1/tcp/"),
            "{addr}"
        );
        assert_eq!(repo.listen_addr_or_create().expect("again"), addr);
        assert!(repo.daemon_addresses().is_empty());
        assert!(repo.annexmesh_identity().expect("none").is_none());
    }

    #[test]
    fn splits_the_peer_off_an_address() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .expect("multiaddr");
        let (base, got) = split_peer(&addr).expect("split");
        assert_eq!(base.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert_eq!(got, peer);
        assert!(split_peer(&base).is_err());
    }
}
