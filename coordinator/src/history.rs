//! What the leader remembers of each source's backups beyond the job
//! history: the newest success of each schedule with its figures, the
//! outcome of every backup over the last 30 days, and recent sizes. Kept in
//! the agent's record, so a new leader reports and alerts on the same
//! figures.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How far back the success ratio looks (the seed's "Backup Success Rate").
pub const RATIO_DAYS: i64 = 30;

/// Successful backups whose sizes make the median a new size is held to.
pub const SIZES_KEPT: usize = 10;

/// The schedule name of backups run by hand.
pub const MANUAL: &str = "manual";

/// One successful backup's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupFigures {
    /// When it finished.
    pub finished: DateTime<Utc>,
    /// How long it took, in seconds.
    pub duration_seconds: f64,
    /// Bytes it covers (the source's size).
    pub size_bytes: u64,
    /// Bytes newly stored (after deduplication and compression).
    pub stored_bytes: u64,
    /// Files in it.
    pub files: u64,
}

/// Final outcomes of backups on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayOutcomes {
    /// Succeeded.
    pub succeeded: u32,
    /// Failed after their last attempt.
    pub failed: u32,
}

/// A source's backup history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupHistory {
    /// The newest success of each schedule ([`MANUAL`] for by hand).
    #[serde(default)]
    pub last: BTreeMap<String, BackupFigures>,
    /// Outcomes by day (days since the epoch), the last [`RATIO_DAYS`].
    #[serde(default)]
    pub days: BTreeMap<i64, DayOutcomes>,
    /// Sizes of the newest successes, oldest first.
    #[serde(default)]
    pub sizes: VecDeque<u64>,
    /// The newest backup that failed after its last attempt, until one succeeds.
    #[serde(default)]
    pub last_failure: Option<Failure>,
}

/// A backup that failed after its last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// When.
    pub at: DateTime<Utc>,
    /// Its schedule (none: by hand).
    pub schedule: Option<String>,
    /// The job.
    pub job: String,
    /// Its last attempt's error.
    pub error: String,
}

fn day(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

impl BackupHistory {
    /// Records a success of `schedule`.
    pub fn succeeded(&mut self, schedule: Option<&str>, figures: BackupFigures) {
        self.count(figures.finished, true);
        self.last_failure = None;
        self.sizes.push_back(figures.size_bytes);
        while self.sizes.len() > SIZES_KEPT {
            self.sizes.pop_front();
        }
        self.last.insert(schedule.unwrap_or(MANUAL).to_owned(), figures);
    }

    /// Records a backup that failed after its last attempt.
    pub fn failed(&mut self, failure: Failure) {
        self.count(failure.at, false);
        self.last_failure = Some(failure);
    }

    fn count(&mut self, at: DateTime<Utc>, ok: bool) {
        let today = day(at);
        let slot = self.days.entry(today).or_default();
        if ok {
            slot.succeeded = slot.succeeded.saturating_add(1);
        } else {
            slot.failed = slot.failed.saturating_add(1);
        }
        self.days.retain(|d, _| *d > today - RATIO_DAYS);
    }

    /// Successes over final outcomes in the last [`RATIO_DAYS`] before
    /// `now`, with how many there were; `None` without any.
    pub fn success_ratio(&self, now: DateTime<Utc>) -> Option<(f64, u32)> {
        let from = day(now) - RATIO_DAYS;
        let (ok, all) = self
            .days
            .range(from + 1..)
            .fold((0u32, 0u32), |(ok, all), (_, d)| (ok + d.succeeded, all + d.succeeded + d.failed));
        (all > 0).then(|| (f64::from(ok) / f64::from(all), all))
    }

    /// The newest success of any schedule.
    pub fn newest(&self) -> Option<&BackupFigures> {
        self.last.values().max_by_key(|f| f.finished)
    }

    /// The newest success's size against [`Self::median_before_newest`], as
    /// a fraction of the median (`None` without a median, or one of 0).
    pub fn size_deviation(&self) -> Option<f64> {
        let newest = *self.sizes.back()?;
        let median = self.median_before_newest().filter(|m| *m > 0)?;
        Some((newest as f64 - median as f64) / median as f64)
    }

    /// The median size of the successes before the newest (`None` with
    /// fewer than three to compare with).
    pub fn median_before_newest(&self) -> Option<u64> {
        let mut before: Vec<u64> = self.sizes.iter().rev().skip(1).copied().collect();
        if before.len() < 3 {
            return None;
        }
        before.sort_unstable();
        Some(before[before.len() / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn failure(at_: &str) -> Failure {
        Failure { at: at(at_), schedule: Some("db.full".into()), job: "j".into(), error: "disk gone".into() }
    }

    fn figures(finished: &str, size: u64) -> BackupFigures {
        BackupFigures { finished: at(finished), duration_seconds: 1.0, size_bytes: size, stored_bytes: 1, files: 1 }
    }

    #[test]
    fn the_ratio_covers_thirty_days_and_the_median_leaves_the_newest_out() {
        let mut h = BackupHistory::default();
        assert_eq!(h.success_ratio(at("2026-11-01T00:00:00Z")), None);
        // 40 days ago: a failure that no longer counts.
        h.failed(failure("2026-10-01T12:00:00Z"));
        for d in 1..=9 {
            h.succeeded(Some("db.full"), figures(&format!("2026-11-0{d}T02:00:00Z"), 100 + d));
        }
        h.failed(failure("2026-11-09T03:00:00Z"));
        assert!(h.last_failure.is_some());
        let (ratio, n) = h.success_ratio(at("2026-11-10T00:00:00Z")).unwrap();
        assert_eq!(n, 10);
        assert!((ratio - 0.9).abs() < 1e-9, "{ratio}");
        assert!(h.days.keys().all(|d| *d > day(at("2026-11-09T00:00:00Z")) - RATIO_DAYS));

        h.succeeded(None, figures("2026-11-10T01:00:00Z", 500));
        assert_eq!(h.last_failure, None, "a success ends the failure");
        assert_eq!(h.newest().unwrap().size_bytes, 500);
        assert_eq!(h.last.len(), 2);
        // Sizes before the newest: 101..=109, median 105.
        assert_eq!(h.median_before_newest(), Some(105));
        assert!((h.size_deviation().unwrap() - (500.0 - 105.0) / 105.0).abs() < 1e-9);
        for _ in 0..20 {
            h.succeeded(None, figures("2026-11-10T01:00:00Z", 7));
        }
        assert_eq!(h.sizes.len(), SIZES_KEPT);
    }
}
