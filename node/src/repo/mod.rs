//! Finding a repository on disk: an existing git-annex repository (non-bare or
//! bare) or a bare annexmesh repository, which has the same layout as a bare
//! git-annex repository so that stock git-annex can use it too.

pub mod branch;
pub mod busy;
pub mod config;
pub mod gitconfig;
pub mod init;
pub mod journal;
pub mod store;
pub mod watch;

use std::path::{Path, PathBuf};

use protocol::Uuid;

use crate::error::{Error, Result};

/// Which object layout a repository uses (annex-spec §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `.git/annex/objects/<hashDirMixed>/…` first, then the lower-case layout.
    NonBare,
    /// `annex/objects/<hashDirLower>/…` first, then the mixed-case layout.
    Bare,
}

/// A repository with an annex UUID.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The working tree top (non-bare) or the repository itself (bare).
    pub top: PathBuf,
    pub git_dir: PathBuf,
    pub layout: Layout,
    pub uuid: Uuid,
}

impl Repo {
    /// Opens the repository at `path` (its top or its git directory). Fails with
    /// [`Error::NotARepository`] or [`Error::NoUuid`].
    pub fn open(path: &Path) -> Result<Repo> {
        let path = std::fs::canonicalize(path).map_err(|_| Error::NotARepository(path.into()))?;
        let (top, git_dir, layout) = if path.join(".git").is_dir() {
            (path.clone(), path.join(".git"), Layout::NonBare)
        } else if path.join("HEAD").is_file() && path.join("objects").is_dir() {
            let is_git_dir_of_worktree = path.file_name().is_some_and(|n| n == ".git");
            if is_git_dir_of_worktree {
                let top = path.parent().map(Path::to_path_buf).unwrap_or(path.clone());
                (top, path.clone(), Layout::NonBare)
            } else {
                (path.clone(), path.clone(), Layout::Bare)
            }
        } else {
            return Err(Error::NotARepository(path));
        };
        let uuid = read_uuid(&git_dir)?.ok_or_else(|| Error::NoUuid(top.clone()))?;
        Ok(Repo {
            top,
            git_dir,
            layout,
            uuid,
        })
    }

    pub fn annex_dir(&self) -> PathBuf {
        self.git_dir.join("annex")
    }
}

/// Reads `annex.uuid` from the repository's git config (`None` when unset or empty).
pub fn read_uuid(git_dir: &Path) -> Result<Option<Uuid>> {
    let repo = gix::open_opts(git_dir, gix::open::Options::isolated())
        .map_err(|e| Error::Git(format!("cannot open {}: {e}", git_dir.display())))?;
    let config = repo.config_snapshot();
    match config.string("annex.uuid") {
        Some(value) if !value.is_empty() => {
            let text = value.to_string();
            Uuid::parse(&text)
                .map(Some)
                .map_err(|e| Error::Git(format!("bad annex.uuid {text:?}: {e}")))
        }
        _ => Ok(None),
    }
}
