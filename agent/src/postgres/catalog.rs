//! What the repository holds for PostgreSQL: base backups and the window of
//! time and WAL they can be recovered over.

use lifeboat_common::repo::Repository;
use serde::Serialize;

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
    pub start_lsn: String,
    /// End of the WAL range: the earliest LSN it recovers to.
    pub stop_lsn: String,
    /// Timeline.
    pub timeline: u32,
    /// Size of the data directory.
    pub bytes_total: u64,
    /// Bytes this backup added to the repository (the rest was deduplicated).
    pub bytes_stored: u64,
    /// The last LSN reachable from it with the WAL present without a gap.
    pub recoverable_to_lsn: Option<String>,
    /// The first segment missing before later ones, if the archive has a gap.
    pub wal_gap_at: Option<String>,
    /// Why it cannot be restored, if it cannot (its own WAL is missing).
    pub unusable: Option<String>,
    /// Pages whose checksum was verified while it was taken.
    pub pages_verified: u64,
    /// Pages that failed their checksum (held as read).
    pub corrupt_pages: Vec<lifeboat_common::repo::snapshot::CorruptPage>,
}

/// Every PostgreSQL base backup, oldest first, with how far each recovers.
pub async fn base_backups(repo: &Repository) -> Result<Vec<BaseBackup>, PgError> {
    let mut out = Vec::new();
    let mut segments_by_timeline = std::collections::HashMap::new();
    for (id, snap) in repo.snapshots().await? {
        let Some(pg) = snap.postgres else { continue };
        let archived = match segments_by_timeline.entry(pg.timeline) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(wal::archived_segments(repo, pg.timeline).await?),
        };
        let (to, gap, unusable) =
            match wal::check_chain(archived.as_slice(), &pg.start_wal, &pg.stop_wal, pg.wal_segment_size) {
                Ok((last, gap)) => {
                    let end = segment_start(&last, pg.wal_segment_size).map(|s| s + pg.wal_segment_size);
                    (end.map(|e| format!("{:X}/{:X}", e >> 32, e & 0xFFFF_FFFF)), gap, None)
                }
                Err(e) => (None, None, Some(e.to_string())),
            };
        out.push(BaseBackup {
            id: id.to_hex(),
            hostname: snap.hostname,
            pgdata: pg.pgdata,
            start_time: snap.time,
            stop_time: pg.stop_time,
            start_lsn: pg.start_lsn,
            stop_lsn: pg.stop_lsn,
            timeline: pg.timeline,
            bytes_total: snap.summary.bytes_total,
            bytes_stored: snap.summary.bytes_stored,
            recoverable_to_lsn: to,
            wal_gap_at: gap,
            unusable,
            pages_verified: pg.pages_verified,
            corrupt_pages: pg.corrupt_pages,
        });
    }
    Ok(out)
}
