//! The seed's `backup_schedules` block, as it stands:
//!
//! ```yaml
//! backup_schedules:
//!   database:
//!     full:             { cron: "0 2 * * 0", retention_days: 28 }
//!     incremental:      { cron: "0 2 * * *", retention_days: 7 }
//!     transaction_logs: { interval: "5m",    retention_days: 7 }
//!   files:
//!     media:            { cron: "0 3 * * *", retention_days: 30 }
//!     configs:          { on_change: true,   retention_days: 90 }
//! ```
//!
//! Cron patterns have five fields and are read in UTC. An entry may add a
//! `priority` (1 critical .. 4 low, default 3): when agents are busy,
//! priority 1 jobs go first. Every mistake is reported with its line.

use crate::invalid::Invalid;
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::PolicyError;

/// One schedule: `group.name` (e.g. `database.full`).
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The group (`database`, `files`, ...).
    pub group: String,
    /// Its name in the group (`full`, `media`, ...).
    pub name: String,
    /// When it runs.
    pub trigger: Trigger,
    /// How long its backups are kept (none: kept until removed by hand).
    pub retention_days: Option<u32>,
    /// 1 (critical) to 4 (low).
    pub priority: u8,
}

impl Schedule {
    /// `group.name`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.group, self.name)
    }
}

/// What makes a schedule run.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A five-field cron pattern, in UTC.
    Cron(CronPattern),
    /// Every so often.
    Interval(Duration),
    /// Whenever what it covers changes.
    OnChange,
}

/// A parsed cron pattern.
#[derive(Debug, Clone)]
pub struct CronPattern {
    text: String,
    // Boxed: a parsed pattern is a few hundred bytes of bit sets.
    cron: Box<croner::Cron>,
}

impl CronPattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `after` that the pattern names.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The latest time at or before `at` that the pattern names.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&at, true).ok()
    }
}

impl TryFrom<String> for CronPattern {
    type Error = Invalid;

    fn try_from(text: String) -> Result<Self, Invalid> {
        if text.split_whitespace().count() != 5 {
            return Err(
                format!("cron {text:?}: five fields expected (minute hour day-of-month month day-of-week)").into()
            );
        }
        let cron = croner::parser::CronParser::new().parse(&text).map_err(|e| format!("cron {text:?}: {e}"))?;
        Ok(CronPattern { text, cron: Box::new(cron) })
    }
}

impl Trigger {
    /// When a run is due, given the last run's scheduled time (or, never
    /// run, when the schedule was first seen) and now: the latest slot
    /// after `last` and not after `now`. However many slots an outage
    /// missed, that is one run. `None` when nothing is due (or on change).
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron(c) => c.latest_at_or_before(now).filter(|slot| *slot > last),
            Trigger::Interval(every) => {
                let every = chrono::Duration::from_std(*every).ok()?;
                let next = last + every;
                (next <= now).then(|| {
                    // The latest slot of the grid started at `last`.
                    let missed = (now - last).num_milliseconds() / every.num_milliseconds().max(1);
                    last + every * i32::try_from(missed).unwrap_or(i32::MAX)
                })
            }
            Trigger::OnChange => None,
        }
    }

    /// The next slot strictly after `after` (none for on-change schedules).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron(c) => c.next_after(after),
            Trigger::Interval(every) => Some(after + chrono::Duration::from_std(*every).ok()?),
            Trigger::OnChange => None,
        }
    }
}

#[derive(Deserialize)]
struct Document {
    backup_schedules: Option<BTreeMap<String, BTreeMap<String, Entry>>>,
}

/// An entry, checked while it is read so a mistake carries its line.
#[derive(Deserialize)]
#[serde(try_from = "RawEntry")]
struct Entry {
    trigger: Trigger,
    retention_days: Option<u32>,
    priority: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    cron: Option<CronPattern>,
    interval: Option<Interval>,
    on_change: Option<bool>,
    retention_days: Option<u32>,
    priority: Option<u8>,
}

impl<'de> Deserialize<'de> for CronPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CronPattern::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An `interval`, checked where it is written.
struct Interval(Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let every = humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("interval {text:?}: {e} (e.g. \"5m\", \"1h\")")))?;
        if every < Duration::from_secs(1) {
            return Err(serde::de::Error::custom(format!("interval {text:?}: at least one second")));
        }
        Ok(Interval(every))
    }
}

impl TryFrom<RawEntry> for Entry {
    type Error = Invalid;

    fn try_from(raw: RawEntry) -> Result<Self, Invalid> {
        let interval = raw.interval.map(|i| i.0);
        let on_change = raw.on_change.unwrap_or(false);
        let trigger = match (raw.cron, interval, on_change) {
            (Some(c), None, false) => Trigger::Cron(c),
            (None, Some(i), false) => Trigger::Interval(i),
            (None, None, true) => Trigger::OnChange,
            (None, None, false) => return Err("no trigger: give one of cron, interval or on_change: true".into()),
            _ => return Err("more than one trigger: give only one of cron, interval or on_change".into()),
        };
        if raw.retention_days == Some(0) {
            return Err("retention_days: at least 1".into());
        }
        let priority = raw.priority.unwrap_or(3);
        if !(1..=4).contains(&priority) {
            return Err(format!("priority {priority}: 1 (critical) to 4 (low)").into());
        }
        Ok(Entry { trigger, retention_days: raw.retention_days, priority })
    }
}

/// The schedules of a policy document, sorted by id.
pub fn backup_schedules_from_yaml(text: &str) -> Result<Vec<Schedule>, PolicyError> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let groups = doc.backup_schedules.ok_or(PolicyError::MissingBlock("backup_schedules"))?;
    let mut out = Vec::new();
    for (group, entries) in groups {
        for (name, e) in entries {
            out.push(Schedule {
                group: group.clone(),
                name,
                trigger: e.trigger,
                retention_days: e.retention_days,
                priority: e.priority,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_seed_block_parses_as_it_stands() {
        let seed = include_str!("../../../deploy/examples/policy.yaml");
        let schedules = backup_schedules_from_yaml(seed).unwrap();
        let ids: Vec<String> = schedules.iter().map(Schedule::id).collect();
        // The seed's schedules, and the hourly Redis snapshot the example adds.
        assert_eq!(
            ids,
            [
                "database.full",
                "database.incremental",
                "database.redis",
                "database.transaction_logs",
                "files.configs",
                "files.media"
            ]
        );
        let full = &schedules[0];
        assert_eq!(full.retention_days, Some(28));
        assert!(matches!(&full.trigger, Trigger::Cron(c) if c.as_str() == "0 2 * * 0"));
        assert!(matches!(schedules[2].trigger, Trigger::Interval(d) if d == Duration::from_secs(3600)));
        assert!(matches!(schedules[3].trigger, Trigger::Interval(d) if d == Duration::from_secs(300)));
        assert!(matches!(schedules[4].trigger, Trigger::OnChange));
    }

    #[test]
    fn a_missed_run_runs_once_and_slots_are_utc() {
        let weekly = Trigger::Cron(CronPattern::try_from("0 2 * * 0".to_owned()).unwrap());
        // 2026-11-22 is a Sunday.
        assert_eq!(weekly.next_after(at("2026-11-20T00:00:00Z")), Some(at("2026-11-22T02:00:00Z")));
        assert_eq!(weekly.due(at("2026-11-22T02:00:00Z"), at("2026-11-25T00:00:00Z")), None);
        // Down for three weeks: one run, for the latest slot.
        assert_eq!(
            weekly.due(at("2026-11-01T02:00:00Z"), at("2026-11-25T00:00:00Z")),
            Some(at("2026-11-22T02:00:00Z"))
        );

        let five = Trigger::Interval(Duration::from_secs(300));
        assert_eq!(five.due(at("2026-11-25T00:00:00Z"), at("2026-11-25T00:04:59Z")), None);
        assert_eq!(five.due(at("2026-11-25T00:00:00Z"), at("2026-11-25T00:05:00Z")), Some(at("2026-11-25T00:05:00Z")));
        assert_eq!(five.due(at("2026-11-25T00:00:00Z"), at("2026-11-25T01:02:00Z")), Some(at("2026-11-25T01:00:00Z")));
        assert_eq!(Trigger::OnChange.due(at("2026-11-25T00:00:00Z"), at("2027-01-01T00:00:00Z")), None);
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            ("backup_schedules:\n  database:\n    full:\n      cron: \"0 2 * *\"\n", "line 4", "five fields"),
            ("backup_schedules:\n  db:\n    x:\n      cron: \"0 25 * * *\"\n", "line 4", "cron"),
            ("backup_schedules:\n  db:\n    x:\n      interval: \"often\"\n", "line 4", "interval"),
            // Whole-entry mistakes name the entry's line.
            ("backup_schedules:\n  db:\n    x:\n      retention_days: 3\n", "line 3", "no trigger"),
            (
                "backup_schedules:\n  db:\n    x:\n      cron: \"* * * * *\"\n      interval: 5m\n",
                "line 3",
                "more than one",
            ),
            (
                "backup_schedules:\n  db:\n    x:\n      cron: \"* * * * *\"\n      retention: 3\n",
                "line 5",
                "retention",
            ),
            ("backup_schedules:\n  db:\n    x:\n      interval: 5m\n      priority: 9\n", "line 3", "priority 9"),
        ];
        for (yaml, line, what) in cases {
            let err = backup_schedules_from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(line) && err.contains(what), "{yaml:?} gave {err:?}");
        }
        let err = backup_schedules_from_yaml("storage_lifecycle: {}\n").unwrap_err();
        assert!(err.to_string().contains("no backup_schedules block"), "{err}");
    }
}
