//! A policy's retention applied to a repository: snapshots past their
//! schedule's `retention_days` are forgotten, WAL older than the oldest
//! base backup kept is deleted, and the data nothing refers to any more is
//! pruned in two phases (see `lifeboat_common::repo::prune`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lifeboat_common::repo::prune::{PruneReport, forget, prune};
use lifeboat_common::repo::{Repository, SnapshotId, retention};
use serde::Serialize;

use crate::postgres::{PgError, wal};

/// What a retention run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    /// Snapshots forgotten (or, dry, that would be).
    pub forgotten: Vec<String>,
    /// WAL objects deleted.
    pub wal_deleted: u64,
    /// The oldest WAL segment kept (the oldest kept base backup's first).
    pub wal_kept_from: Option<String>,
    /// The prune run (none when dry).
    pub prune: Option<PruneReport>,
}

/// Applies retention as it stands at `at` (normally now; the prune's grace
/// is always counted from now); `dry` only reports what would be forgotten.
pub async fn apply(
    repo: &Repository,
    days_by_schedule: &HashMap<String, u32>,
    at: DateTime<Utc>,
    grace: chrono::Duration,
    dry: bool,
) -> Result<RetentionReport, PgError> {
    let snapshots = repo.snapshots().await?;
    let expired: Vec<SnapshotId> = retention::expired(&snapshots, days_by_schedule, at);
    let mut report =
        RetentionReport { forgotten: expired.iter().map(ToString::to_string).collect(), ..Default::default() };
    // The oldest base backup that stays: WAL before its start serves nothing.
    report.wal_kept_from = snapshots
        .iter()
        .filter(|(id, _)| !expired.contains(id))
        .filter_map(|(_, s)| s.postgres.as_ref().map(|pg| pg.start_wal.clone()))
        .min_by(|a, b| a.get(8..).cmp(&b.get(8..)));
    if dry {
        return Ok(report);
    }
    forget(repo, &expired).await?;
    if let Some(keep_from) = &report.wal_kept_from {
        report.wal_deleted = wal::expire_before(repo, keep_from).await?;
    }
    report.prune = Some(prune(repo, grace, Utc::now()).await?);
    Ok(report)
}
