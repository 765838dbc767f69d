//! Live markers of running writers, which prune honours (as restic's locks
//! and Kopia's writer sessions, without excluding anyone).
//!
//! A backup leans on packs that were unreferenced but not yet marked when
//! it loaded the index; a prune marking them meanwhile must not delete them
//! before the backup's snapshot exists for the sweep's re-check to see. So
//! each writer keeps an object under `writers/` while it runs, refreshed
//! every [`REFRESH`], naming the prune plans it had loaded (whose packs it
//! never leans on). A sweep deletes the packs of a plan only when no live
//! marker lacks that plan. A marker not refreshed for [`STALE_AFTER`] is a
//! writer that died: ignored (and removed by the next prune).

use crate::repo::format::layout::WRITER_KIND;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::engine::repository::{Damaged, Repository};
use crate::repo::error::RepoError;
use crate::repo::format::id::random_id_bytes;
use crate::repo::format::object;

use crate::repo::format::layout::WRITERS_PREFIX;
/// How often a running writer rewrites its marker.
pub const REFRESH: Duration = Duration::from_secs(60);
/// How long after its last refresh a marker counts as a dead writer's.
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// What a writer's marker says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriterMarker {
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// What it is doing (`backup files`, `backup postgres`, ...).
    pub what: String,
    /// When it began.
    pub started: DateTime<Utc>,
    /// When it last rewrote the marker.
    pub refreshed: DateTime<Utc>,
    /// The prune plans (their keys) it had loaded when it began.
    pub plans_seen: Vec<String>,
}

impl WriterMarker {
    /// Whether the writer still counts as running at `now`.
    pub fn live(&self, now: DateTime<Utc>) -> bool {
        chrono::Duration::from_std(STALE_AFTER).is_ok_and(|stale| self.refreshed + stale > now)
    }
}

/// A running writer's marker: written when it starts, refreshed in the
/// background, removed when it ends.
#[derive(Debug)]
pub struct WriterSession {
    repo: Repository,
    /// The marker's key, until it is removed.
    key: Option<String>,
    refresher: tokio::task::JoinHandle<()>,
}

async fn write(repo: &Repository, key: &str, marker: &WriterMarker) -> Result<(), RepoError> {
    let payload =
        serde_json::to_vec(marker).map_err(|e| RepoError::Encode { what: "writer marker", reason: e.to_string() })?;
    let sealed = object::seal(repo.keyring(), WRITER_KIND, key, payload, repo.config().compression_level)?;
    repo.store().put(key, sealed.into()).await?;
    Ok(())
}

impl WriterSession {
    /// Announces a writer doing `what` on `repo`; the plans its index
    /// loaded are the ones it will not lean on.
    pub async fn start(repo: &Repository, what: &str) -> Result<Self, RepoError> {
        Self::begin(repo, what, repo.plans_seen()).await
    }

    /// Announces a writer that holds every sweep while it runs (one that
    /// rewrites the index must not see packs vanish under it).
    pub async fn start_holding_sweeps(repo: &Repository, what: &str) -> Result<Self, RepoError> {
        Self::begin(repo, what, Vec::new()).await
    }

    async fn begin(repo: &Repository, what: &str, plans_seen: Vec<String>) -> Result<Self, RepoError> {
        let key = format!("{WRITERS_PREFIX}{}", hex::encode(random_id_bytes()?));
        let now = Utc::now();
        let marker = Arc::new(WriterMarker {
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            what: what.to_owned(),
            started: now,
            refreshed: now,
            plans_seen,
        });
        write(repo, &key, &marker).await?;
        let refresher = {
            let (repo, key, marker) = (repo.clone(), key.clone(), marker.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REFRESH);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let fresh = WriterMarker { refreshed: Utc::now(), ..(*marker).clone() };
                    if let Err(e) = write(&repo, &key, &fresh).await {
                        tracing::warn!(marker = %key, error = %e, "could not refresh the writer marker");
                    }
                }
            })
        };
        Ok(WriterSession { repo: repo.clone(), key: Some(key), refresher })
    }

    /// Removes the marker: the writer is done (its snapshot, if any, exists).
    pub async fn finish(mut self) {
        self.refresher.abort();
        if let Some(key) = self.key.take()
            && let Err(e) = self.repo.store().delete(&key).await
        {
            tracing::warn!(marker = %key, error = %e, "could not remove the writer marker; it goes stale");
        }
    }
}

impl Drop for WriterSession {
    /// A session dropped without [`WriterSession::finish`] (its writer
    /// failed) stops refreshing and removes its marker in the background.
    fn drop(&mut self) {
        self.refresher.abort();
        if let (Some(key), Ok(runtime)) = (self.key.take(), tokio::runtime::Handle::try_current()) {
            let repo = self.repo.clone();
            runtime.spawn(async move { repo.store().delete(&key).await });
        }
    }
}

/// Every writer marker, by key, and those that cannot be read.
pub async fn list(repo: &Repository) -> Result<(Vec<(String, WriterMarker)>, Vec<Damaged>), RepoError> {
    repo.sealed_objects(WRITERS_PREFIX, WRITER_KIND).await
}
