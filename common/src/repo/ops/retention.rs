//! Retention: which snapshots a policy's `retention_days` lets go (those
//! of a schedule older than its retention, never the newest of a source: a
//! source is never left without a backup by the clock alone; snapshots no
//! schedule made are kept until forgotten by hand), and applying it to a
//! repository: forgetting them, deleting the WAL no kept base backup needs,
//! and pruning what nothing refers to any more, in two phases.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::repo::Repository;
use crate::repo::error::RepoError;
use crate::repo::format::id::SnapshotId;
use crate::repo::format::layout::WAL_PREFIX;
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::wal::{Segment, WalFile};
use crate::repo::ops::prune::{PruneReport, forget, prune};

/// The tag a scheduled snapshot carries: `schedule:<group.name>`.
pub const SCHEDULE_TAG: &str = "schedule:";

/// The tag an agent's snapshot carries: `source:<id>`.
pub const SOURCE_TAG: &str = "source:";

/// The tag of the snapshots of source `id`.
pub fn source_tag(id: &str) -> String {
    format!("{SOURCE_TAG}{id}")
}

/// The source a snapshot is of: its host, and its `source:` tag (or paths).
fn source_of(s: &Snapshot) -> (String, String) {
    let source = s.tags.iter().find(|t| t.starts_with(SOURCE_TAG)).cloned().unwrap_or_else(|| s.paths.join("\u{0}"));
    (s.hostname.clone(), source)
}

/// The snapshots past their schedule's retention at `now`.
pub fn expired(
    snapshots: &[(SnapshotId, Snapshot)],
    days_by_schedule: &HashMap<String, u32>,
    now: DateTime<Utc>,
) -> Vec<SnapshotId> {
    let mut newest: BTreeMap<(String, String), (DateTime<Utc>, SnapshotId)> = BTreeMap::new();
    for (id, s) in snapshots {
        let entry = newest.entry(source_of(s)).or_insert((s.time, *id));
        if s.time > entry.0 {
            *entry = (s.time, *id);
        }
    }
    snapshots
        .iter()
        .filter(|(id, s)| {
            let days = s
                .tags
                .iter()
                .filter_map(|t| t.strip_prefix(SCHEDULE_TAG))
                .filter_map(|sch| days_by_schedule.get(sch))
                .max();
            let past = days.is_some_and(|d| s.time + chrono::Duration::days(i64::from(*d)) < now);
            past && newest.get(&source_of(s)).is_none_or(|(_, newest)| newest != id)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// What a retention run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RetentionReport {
    /// Snapshots forgotten (or, dry, that would be).
    pub forgotten: Vec<SnapshotId>,
    /// WAL objects deleted.
    pub wal_deleted: u64,
    /// The oldest WAL segment kept (the oldest kept base backup's first).
    #[serde(serialize_with = "display_opt")]
    pub wal_kept_from: Option<Segment>,
    /// The prune run (none when dry).
    pub prune: Option<PruneReport>,
}

fn display_opt<S: serde::Serializer>(value: &Option<Segment>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Applies retention as it stands at `at` (normally now; the prune's grace
/// is always counted from now); `dry` only reports what would be forgotten.
pub async fn apply(
    repo: &Repository,
    days_by_schedule: &HashMap<String, u32>,
    at: DateTime<Utc>,
    grace: chrono::Duration,
    dry: bool,
) -> Result<RetentionReport, RepoError> {
    let snapshots = repo.snapshots().await?;
    let forgotten = expired(&snapshots, days_by_schedule, at);
    // The oldest base backup that stays: WAL before its start serves nothing.
    let mut kept_from = None::<Segment>;
    for (id, s) in &snapshots {
        let Some(pg) = s.postgres.as_ref().filter(|_| !forgotten.contains(id)) else { continue };
        let start = pg.start_wal;
        if kept_from.is_none_or(|k| start.position() < k.position()) {
            kept_from = Some(start);
        }
    }
    let mut report = RetentionReport { forgotten, wal_kept_from: kept_from, ..Default::default() };
    if dry {
        return Ok(report);
    }
    forget(repo, &report.forgotten).await?;
    if let Some(keep_from) = report.wal_kept_from {
        report.wal_deleted = expire_wal_before(repo, keep_from).await?;
    }
    report.prune = Some(prune(repo, grace, Utc::now()).await?);
    Ok(report)
}

/// Deletes the WAL no kept base backup needs: every segment (whole,
/// partial, streamed, or a backup history file) that lies wholly before
/// segment `keep_from` (the oldest kept backup's first), on any timeline:
/// recovery only ever moves forward from a backup's start. Timeline
/// history files, and objects whose names are not WAL names, stay.
/// Returns how many objects went.
pub async fn expire_wal_before(repo: &Repository, keep_from: Segment) -> Result<u64, RepoError> {
    let mut deleted = 0;
    for meta in repo.store().list(WAL_PREFIX).await? {
        let name = meta.key.rsplit('/').next().unwrap_or_default();
        let Ok(file) = name.parse::<WalFile>() else { continue };
        if file.segment().is_some_and(|s| s.position() < keep_from.position()) {
            repo.store().delete(&meta.key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::BlobId;

    fn snap(
        n: u8,
        host: &str,
        source: &str,
        schedule: Option<&str>,
        days_ago: i64,
        now: DateTime<Utc>,
    ) -> (SnapshotId, Snapshot) {
        let mut tags = vec![format!("{SOURCE_TAG}{source}")];
        tags.extend(schedule.map(|s| format!("{SCHEDULE_TAG}{s}")));
        let snapshot = Snapshot {
            time: now - chrono::Duration::days(days_ago),
            hostname: host.into(),
            source: "files".into(),
            paths: vec!["/srv".into()],
            tags,
            tree: BlobId([0; 32]),
            parent: None,
            summary: Default::default(),
            postgres: None,
            redis: None,
        };
        (SnapshotId([n; 32]), snapshot)
    }

    #[test]
    fn past_retention_goes_but_never_a_sources_newest_nor_one_made_by_hand() {
        let now: DateTime<Utc> = "2026-11-25T12:00:00Z".parse().unwrap();
        let days = HashMap::from([("files.media".to_owned(), 30), ("database.full".to_owned(), 7)]);
        let snapshots = vec![
            snap(1, "h1", "media", Some("files.media"), 40, now), // past 30 days
            snap(2, "h1", "media", Some("files.media"), 20, now), // within
            snap(3, "h1", "media", None, 90, now),                // by hand: kept
            snap(4, "h2", "pg", Some("database.full"), 60, now),  // past, but h2/pg's newest
            snap(5, "h1", "pg", Some("database.full"), 8, now),   // past 7 days
            snap(6, "h1", "pg", Some("database.full"), 1, now),
            snap(7, "h1", "etc", Some("files.unknown"), 400, now), // no rule: kept
        ];
        assert_eq!(expired(&snapshots, &days, now), vec![SnapshotId([1; 32]), SnapshotId([5; 32])]);
    }

    #[tokio::test]
    async fn wal_before_the_oldest_kept_backup_goes_and_history_stays() {
        use crate::crypto::MasterKey;
        use crate::repo::format::object;
        use crate::store::LocalStore;
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Repository::init(store, &MasterKey::generate().unwrap()).await.unwrap();
        let names = [
            "000000010000000000000003",
            "000000010000000000000004.00000028.backup",
            "000000010000000000000005",
            "000000020000000000000005.partial",
            "000000020000000000000006",
            "000000020000000000000007.stream",
            "00000002.history",
        ];
        for name in names {
            let key = name.parse::<WalFile>().unwrap().key();
            let sealed = object::seal(repo.keyring(), "wal", &key, vec![1; 64], 1).unwrap();
            repo.store().put(&key, sealed.into()).await.unwrap();
        }
        let keep_from: Segment = "000000020000000000000005".parse().unwrap();
        assert_eq!(expire_wal_before(&repo, keep_from).await.unwrap(), 2);
        let mut left: Vec<String> = repo
            .store()
            .list(WAL_PREFIX)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key.rsplit('/').next().unwrap().to_owned())
            .collect();
        left.sort();
        let mut expected = names[2..].to_vec();
        expected.sort();
        assert_eq!(left, expected);
        assert!("bogus".parse::<Segment>().is_err());
    }
}
