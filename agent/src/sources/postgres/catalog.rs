//! What the repository holds for PostgreSQL: base backups and the window of
//! time and WAL they can be recovered over.

use lifeboat_common::repo::Repository;
use lifeboat_common::repo::format::wal::Lsn;
use serde::Serialize;

use super::replication::format_lsn;
use super::wal::segment_start;
use super::{PgError, wal};

/// One base backup.
#[derive(Debug, Clone, Serialize)]
pub struct BaseBackup {
    /// Snapshot id.
    pub id: String,
    /// Host it was taken on.
    pub hostname: String,
    /// Data directory.
    pub pgdata: String,
    /// When it started and ended.
    pub start_time: chrono::DateTime<chrono::Utc>,
    /// When `pg_backup_stop` returned: the earliest point it recovers to.
    pub stop_time: chrono::DateTime<chrono::Utc>,
    /// WAL range.
    pub start_lsn: Lsn,
    /// End of the WAL range: the earliest LSN it recovers to.
    pub stop_lsn: Lsn,
    /// Timeline.
    pub timeline: u32,
    /// Size of the data directory.
    pub bytes_total: u64,
    /// Bytes this backup added to the repository (the rest was deduplicated).
    pub bytes_stored: u64,
    /// The last LSN reachable from it with the WAL present without a gap.
    pub recoverable_to_lsn: Option<String>,
    /// About the latest time reachable: when the last segment of that
    /// unbroken WAL was stored (its commits are no later).
    pub recoverable_to_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The first segment missing before later ones, if the archive has a gap.
    pub wal_gap_at: Option<String>,
    /// Why it cannot be restored, if it cannot (its own WAL is missing).
    pub unusable: Option<String>,
    /// Pages whose checksum was verified while it was taken.
    pub pages_verified: u64,
    /// Pages that failed their checksum (held as read).
    pub corrupt_pages: Vec<lifeboat_common::repo::format::snapshot::CorruptPage>,
}

/// Every PostgreSQL base backup, oldest first, with how far each recovers.
pub async fn base_backups(repo: &Repository) -> Result<Vec<BaseBackup>, PgError> {
    let mut out = Vec::new();
    let mut segments_by_timeline = std::collections::HashMap::new();
    for (id, snap) in repo.snapshots().await? {
        let Some(pg) = snap.postgres else { continue };
        let archived = match segments_by_timeline.entry(pg.timeline.0) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(wal::archived_segment_times(repo, pg.timeline.0).await?)
            }
        };
        let names: Vec<String> = archived.keys().cloned().collect();
        let (to, to_time, gap, unusable) =
            match wal::check_chain(&names, &pg.start_wal.to_string(), &pg.stop_wal.to_string(), pg.wal_segment_size) {
                Ok((last, gap)) => {
                    let end = segment_start(&last, pg.wal_segment_size).map(|s| s + pg.wal_segment_size);
                    let at = archived.get(&last).copied().flatten();
                    (end.map(format_lsn), at, gap, None)
                }
                Err(e) => (None, None, None, Some(e.to_string())),
            };
        out.push(BaseBackup {
            id: id.to_hex(),
            hostname: snap.hostname,
            pgdata: pg.pgdata,
            start_time: snap.time,
            stop_time: pg.stop_time,
            start_lsn: pg.start_lsn,
            stop_lsn: pg.stop_lsn,
            timeline: pg.timeline.0,
            bytes_total: snap.summary.bytes_total,
            bytes_stored: snap.summary.bytes_stored,
            recoverable_to_lsn: to,
            recoverable_to_time: to_time.map(|t| t.max(pg.stop_time)),
            wal_gap_at: gap,
            unusable,
            pages_verified: pg.pages_verified,
            corrupt_pages: pg.corrupt_pages,
        });
    }
    Ok(out)
}
