//! Who may use a served repository over libp2p.
//!
//! * Tokens, in git-annex's own file `.git/annex/creds/p2pauth`: one
//!   `<token> <address>` per line, reloaded for every connection as git-annex
//!   does. A token counts when its address is a `p2p-annex::libp2p:` address of
//!   this peer (it names our PeerId). Grants read-write, as git-annex does.
//! * PeerIds in the config's grants, each with a mode: such a peer's `AUTH` is
//!   accepted whatever its token.

use std::path::PathBuf;

use libp2p::PeerId;
use protocol::server::ServeMode;
use protocol::{AuthToken, Uuid};

use crate::error::{IoContext, Result};
use crate::session::Authenticator;

/// The git-annex network name annexmesh uses (`p2p-annex::libp2p:<address>`).
pub const NETNAME: &str = "libp2p";

/// Largest p2pauth file read (git-annex's tokens are 128 bytes per line).
const MAX_AUTH_FILE: u64 = 4 << 20;

#[derive(Debug, Clone)]
pub struct AccessRules {
    /// `.git/annex/creds/p2pauth`.
    pub token_file: PathBuf,
    pub me: PeerId,
    pub grants: Vec<(PeerId, ServeMode)>,
    /// Mesh members reach the repository with their role, without a grant.
    pub members: Option<std::sync::Arc<crate::members::Members>>,
}

impl AccessRules {
    pub fn new(git_dir: &std::path::Path, me: PeerId, grants: Vec<(PeerId, ServeMode)>) -> Self {
        AccessRules {
            token_file: git_dir.join("annex/creds/p2pauth"),
            me,
            grants,
            members: None,
        }
    }

    /// These rules, letting the mesh's members in with their roles.
    pub fn with_members(mut self, members: std::sync::Arc<crate::members::Members>) -> Self {
        self.members = Some(members);
        self
    }

    /// Appends a new token for `address` (git-annex's `p2p --gen-addresses`).
    pub fn add_token(&self, token: &AuthToken, address: &str) -> Result<()> {
        use std::io::Write;
        if let Some(dir) = self.token_file.parent() {
            std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.token_file)
            .context(|| format!("opening {}", self.token_file.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.token_file, std::fs::Permissions::from_mode(0o600));
        writeln!(f, "{} {address}", token.as_str())
            .and_then(|_| f.sync_all())
            .context(|| format!("writing {}", self.token_file.display()))
    }

    fn token_valid(&self, token: &AuthToken) -> bool {
        let Ok(meta) = std::fs::metadata(&self.token_file) else {
            return false;
        };
        if meta.len() > MAX_AUTH_FILE {
            tracing::warn!("{} is too large; ignoring it", self.token_file.display());
            return false;
        }
        let Ok(text) = std::fs::read_to_string(&self.token_file) else {
            return false;
        };
        let me = format!("/p2p/{}", self.me);
        let mut ok = false;
        for line in text.lines() {
            let (t, address) = line.split_once(' ').unwrap_or((line, ""));
            let Some(candidate) = AuthToken::parse(t) else {
                continue;
            };
            let ours = address.is_empty()
                || (address.starts_with(&format!("p2p-annex::{NETNAME}:"))
                    && address.contains(&me));
            // Compare every candidate, so timing does not reveal which matched.
            ok |= ours && !candidate.is_empty() && candidate.constant_time_eq(token);
        }
        ok
    }

    /// The authenticator for one stream from `peer`.
    pub fn for_peer(&self, peer: PeerId) -> StreamAccess<'_> {
        StreamAccess { rules: self, peer }
    }
}

pub struct StreamAccess<'a> {
    rules: &'a AccessRules,
    peer: PeerId,
}

impl Authenticator for StreamAccess<'_> {
    fn check(&self, _client: Option<&Uuid>, token: &AuthToken) -> Option<ServeMode> {
        if let Some((_, mode)) = self.rules.grants.iter().find(|(p, _)| *p == self.peer) {
            return Some(*mode);
        }
        if let Some(role) = self.rules.members.as_ref().and_then(|m| m.role(&self.peer)) {
            return Some(role);
        }
        self.rules
            .token_valid(token)
            .then_some(ServeMode::ReadWrite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_grants() {
        let tmp = tempfile::tempdir().unwrap();
        let me = PeerId::random();
        let friend = PeerId::random();
        let rules = AccessRules::new(tmp.path(), me, vec![(friend, ServeMode::ReadOnly)]);
        let token = AuthToken::generate(&[3; 512]);
        let u = Uuid::parse("aaaa").unwrap();
        assert_eq!(
            rules.for_peer(PeerId::random()).check(Some(&u), &token),
            None
        );
        rules
            .add_token(
                &token,
                &format!("p2p-annex::libp2p:/ip4/127.0.0.1/tcp/1/p2p/{me}"),
            )
            .unwrap();
        let other = AuthToken::generate(&[4; 512]);
        rules
            .add_token(
                &other,
                "p2p-annex::libp2p:/ip4/127.0.0.1/tcp/1/p2p/SOMEONEELSE",
            )
            .unwrap();
        assert_eq!(
            rules.for_peer(PeerId::random()).check(Some(&u), &token),
            Some(ServeMode::ReadWrite)
        );
        assert_eq!(
            rules.for_peer(PeerId::random()).check(Some(&u), &other),
            None
        );
        assert_eq!(
            rules
                .for_peer(PeerId::random())
                .check(Some(&u), &AuthToken::parse("").unwrap()),
            None
        );
        assert_eq!(
            rules
                .for_peer(friend)
                .check(Some(&u), &AuthToken::parse("").unwrap()),
            Some(ServeMode::ReadOnly)
        );
    }
}
