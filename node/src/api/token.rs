//! The API's bearer token: `<git dir>/annex/creds/annexmesh-api`, one line,
//! beside git-annex's `p2pauth`. Read again for every request, so a rotated
//! token takes effect without a restart.

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

pub fn token_file(git_dir: &Path) -> PathBuf {
    git_dir.join("annex/creds/annexmesh-api")
}

/// The current token, if there is one.
pub fn read(git_dir: &Path) -> Option<String> {
    let path = token_file(git_dir);
    let meta = std::fs::metadata(&path).ok()?;
    if meta.len() > MAX_TOKEN_FILE {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The token, made first when there is none, or anew with `rotate`.
pub fn ensure(git_dir: &Path, rotate: bool) -> Result<String> {
    if !rotate && let Some(t) = read(git_dir) {
        return Ok(t);
    }
    let mut random = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut random);
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = token_file(git_dir);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(|| format!("creating {}", dir.display()))?;
    }
    crate::fs::write_atomic(&path, format!("{token}\n").as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .context(|| format!("restricting {}", path.display()))?;
    Ok(token)
}

/// Whether `given` is the token, compared in time independent of where
/// they differ.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept_and_rotated() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()), None);
        let a = ensure(dir.path(), false).expect("make");
        assert_eq!(a.len(), 64);
        assert_eq!(ensure(dir.path(), false).expect("keep"), a);
        let b = ensure(dir.path(), true).expect("rotate");
        assert_ne!(a, b);
        assert_eq!(read(dir.path()).as_deref(), Some(b.as_str()));
        assert!(matches(&b, &b));
        assert!(!matches(&b, &a));
        assert!(!matches(&b, ""));
    }
}
