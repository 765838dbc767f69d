//! Which snapshots a policy's `retention_days` lets go: those of a schedule
//! older than its retention, never the newest of a source (a source is
//! never left without a backup by the clock alone). Snapshots no schedule
//! made (by hand) are kept until forgotten by hand.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::id::SnapshotId;
use super::snapshot::Snapshot;

/// The tag a scheduled snapshot carries: `schedule:<group.name>`.
pub const SCHEDULE_TAG: &str = "schedule:";

/// The tag an agent's snapshot carries: `source:<id>`.
pub const SOURCE_TAG: &str = "source:";

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
}
