//! A whole mesh peer: the repository served over `/annex/p2p/1` ([`Peer`]) and
//! its metadata shared by gossip and anti-entropy ([`Meta`]), persisted in the
//! repository's `git-annex` branch in batches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::logs::catalog::{Catalog, record_map};
use protocol::logs::view::ADDRESSES_LOG;

use crate::error::Result;
use crate::journal::log_clock_now;
use crate::meta::{Meta, MetaLink, MetaOptions, Persist};
use crate::peer::{Peer, PeerOptions};

/// How often local changes (git-annex's journal) are committed to the branch.
pub const JOURNAL_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// Writes merged metadata into the repository's `git-annex` branch.
pub struct BranchPersist {
    pub git_dir: PathBuf,
}

impl Persist for BranchPersist {
    fn persist(&self, files: &[(String, Vec<u8>)]) -> Result<()> {
        crate::branch::commit_catalog_files(&self.git_dir, files, "annexmesh: merge from peers")
            .map(|_| ())
    }
}

pub struct Mesh {
    pub peer: Peer,
    pub meta: Arc<Meta>,
    git_dir: PathBuf,
    committer: tokio::task::JoinHandle<()>,
}

impl Mesh {
    pub async fn start(mut options: PeerOptions, meta_options: MetaOptions) -> Result<Mesh> {
        let git_dir = options.store.repo().git_dir.clone();
        let link = Arc::new(MetaLink::default());
        options.store.set_observer(link.clone());
        let catalog = match crate::branch::read(&git_dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot read the git-annex branch, starting empty: {e}");
                Catalog::new()
            }
        };
        let peer = Peer::start(options).await?;
        let meta = Meta::start(
            peer.net.clone(),
            catalog,
            meta_options,
            Some(Arc::new(BranchPersist {
                git_dir: git_dir.clone(),
            })),
        )
        .await?;
        link.set(&meta);
        // Announce where this repository can be reached.
        let addrs: Vec<String> = peer.addrs.iter().map(ToString::to_string).collect();
        let uuid = peer.store.uuid().to_string();
        let content = peer.store.journal().modify(ADDRESSES_LOG, |old| {
            record_map(old, &uuid, &addrs.join(" "), log_clock_now())
        })?;
        meta.record_local(ADDRESSES_LOG, &content);
        let commit_dir = git_dir.clone();
        let committer = tokio::spawn(async move {
            let mut every = tokio::time::interval(JOURNAL_COMMIT_INTERVAL);
            loop {
                every.tick().await;
                let dir = commit_dir.clone();
                let r = tokio::task::spawn_blocking(move || {
                    crate::branch::commit(&dir, "annexmesh: record changes")
                })
                .await;
                if let Ok(Err(e)) = r {
                    tracing::warn!("committing the journal: {e}");
                }
            }
        });
        Ok(Mesh {
            peer,
            meta,
            git_dir,
            committer,
        })
    }

    /// Stops serving and writes everything pending to the branch.
    pub async fn shutdown(self) -> usize {
        self.committer.abort();
        let cut = self.peer.shutdown().await;
        let meta = self.meta.clone();
        let git_dir = self.git_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = meta.flush() {
                tracing::warn!("persisting metadata: {e}");
            }
            if let Err(e) = crate::branch::commit(&git_dir, "annexmesh: record changes") {
                tracing::warn!("committing the journal: {e}");
            }
        })
        .await;
        cut
    }
}
