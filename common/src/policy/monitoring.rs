//! The seed's `monitoring` block, as it stands:
//!
//! ```yaml
//! monitoring:
//!   backup_jobs:
//!     - name: "Database Full Backup"
//!       alert_on_failure: true
//!       alert_channels: ["pagerduty", "slack", "email"]
//!       success_metric: "backup_size > 1GB"
//!     - name: "WAL Archiving"
//!       alert_on_failure: true
//!       max_lag_minutes: 10
//!       alert_channels: ["pagerduty"]
//!     - name: "File Sync Status"
//!       check_interval: "1h"
//!       alert_on_failure: true
//!       alert_channels: ["slack", "email"]
//! ```
//!
//! Each entry watches schedules and sources. `schedules: [group.name, ...]`
//! and `sources: [id or host/id, ...]` name them; without either, the
//! entry's name binds it (see [`Watch`]). `alert_channels` is the order of
//! escalation. `success_metric` is one comparison over a backup's figures
//! (`backup_size`, `stored_bytes`, `duration`, `files`) with units; a
//! malformed one is refused with its line.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::PolicyError;
use super::schedules::Schedule;
use crate::invalid::Invalid;

/// One entry of `monitoring.backup_jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitoredJob {
    /// Its name, as operators read it in alerts.
    pub name: String,
    /// Whether a backup that failed after its last attempt raises an incident.
    pub alert_on_failure: bool,
    /// Channel names, in escalation order.
    pub alert_channels: Vec<String>,
    /// What every successful backup must satisfy.
    pub success_metric: Option<SuccessMetric>,
    /// How far WAL may fall behind before it is an incident.
    pub max_lag: Option<Duration>,
    /// How often its conditions are checked (default: every evaluation).
    pub check_interval: Option<Duration>,
    /// What it watches.
    pub watch: Watch,
}

/// What an entry watches.
///
/// Named explicitly (`schedules:`, `sources:`), or else by its name: a
/// schedule group whose name (singular or plural) is a word of the entry's
/// name is watched; if words also name schedules of that group, only those
/// ("Database Full Backup": `database.full`; "File Sync Status": every
/// `files.*`). An entry with `max_lag_minutes` whose name binds no schedule
/// watches the WAL of every source that reports WAL ("WAL Archiving").
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Watch {
    /// Schedule ids (`group.name`).
    pub schedules: Vec<String>,
    /// Source ids, or `host/id`.
    pub sources: Vec<String>,
    /// Every source that reports WAL.
    pub all_wal: bool,
}

impl Watch {
    /// Whether it watches the source `host/id` bound to `schedules`.
    pub fn covers(&self, host: &str, source_id: &str, schedules: &[String], reports_wal: bool) -> bool {
        (self.all_wal && reports_wal)
            || self.sources.iter().any(|s| s == source_id || *s == format!("{host}/{source_id}"))
            || schedules.iter().any(|s| self.schedules.contains(s))
    }
}

/// A backup figure a success metric compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Bytes the backup covers.
    Size,
    /// Bytes it newly stored.
    Stored,
    /// How long it took.
    Duration,
    /// Files in it.
    Files,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `>`
    Greater,
    /// `>=`
    AtLeast,
    /// `<`
    Less,
    /// `<=`
    AtMost,
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
}

/// `backup_size > 1GB`: a figure, a comparison, a value in the figure's units
/// (bytes, seconds, files).
#[derive(Debug, Clone, PartialEq)]
pub struct SuccessMetric {
    /// As written.
    pub text: String,
    /// The figure.
    pub figure: Figure,
    /// The comparison.
    pub comparison: Comparison,
    /// The value, in bytes, seconds or files.
    pub value: f64,
}

/// A backup's figures, for a success metric.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Bytes covered.
    pub size_bytes: u64,
    /// Bytes newly stored.
    pub stored_bytes: u64,
    /// Seconds taken.
    pub duration_seconds: f64,
    /// Files.
    pub files: u64,
}

impl SuccessMetric {
    /// Whether `figures` satisfy it.
    pub fn holds(&self, figures: &Figures) -> bool {
        let x = match self.figure {
            Figure::Size => figures.size_bytes as f64,
            Figure::Stored => figures.stored_bytes as f64,
            Figure::Duration => figures.duration_seconds,
            Figure::Files => figures.files as f64,
        };
        match self.comparison {
            Comparison::Greater => x > self.value,
            Comparison::AtLeast => x >= self.value,
            Comparison::Less => x < self.value,
            Comparison::AtMost => x <= self.value,
            Comparison::Equal => x == self.value,
            Comparison::NotEqual => x != self.value,
        }
    }
}

impl fmt::Display for SuccessMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const FIGURES: &str = "backup_size, stored_bytes, duration or files";

impl std::str::FromStr for SuccessMetric {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Self, Invalid> {
        let bad = |why: String| Invalid(format!("success_metric {text:?}: {why}"));
        let at = text
            .find(['<', '>', '=', '!'])
            .ok_or_else(|| bad("expected FIGURE OP VALUE, e.g. \"backup_size > 1GB\"".into()))?;
        let (name, rest) = text.split_at(at);
        let op_len = if rest[1..].starts_with('=') { 2 } else { 1 };
        let (op, value) = rest.split_at(op_len);
        let comparison = match op {
            ">" => Comparison::Greater,
            ">=" => Comparison::AtLeast,
            "<" => Comparison::Less,
            "<=" => Comparison::AtMost,
            "==" => Comparison::Equal,
            "!=" => Comparison::NotEqual,
            other => return Err(bad(format!("{other:?} is not a comparison (>, >=, <, <=, ==, !=)"))),
        };
        let figure = match name.trim() {
            "backup_size" | "size" | "size_bytes" => Figure::Size,
            "stored_bytes" | "stored" => Figure::Stored,
            "duration" => Figure::Duration,
            "files" => Figure::Files,
            other => return Err(bad(format!("{other:?} is not a figure ({FIGURES})"))),
        };
        let value = value.trim();
        let value = match figure {
            Figure::Size | Figure::Stored => bytes(value).map_err(bad)?,
            Figure::Duration => humantime::parse_duration(value)
                .map_err(|e| bad(format!("{value:?}: {e} (e.g. 30m, 2h)")))?
                .as_secs_f64(),
            Figure::Files => {
                value.parse::<u64>().map_err(|_| bad(format!("{value:?} is not a number of files")))? as f64
            }
        };
        Ok(SuccessMetric { text: text.to_owned(), figure, comparison, value })
    }
}

/// `1GB`, `500 MiB`, `1024`: a size in bytes (KB, MB, GB, TB decimal; KiB,
/// MiB, GiB, TiB binary).
pub fn bytes(text: &str) -> Result<f64, String> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 1GB, 500MiB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => return Err(format!("{other:?} is not a unit of size (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")),
    };
    Ok(number * scale)
}

impl<'de> Deserialize<'de> for SuccessMetric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
struct Document {
    monitoring: Option<Block>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Block {
    #[serde(default)]
    backup_jobs: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(try_from = "RawEntry")]
struct Entry(MonitoredJob);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    #[serde(default)]
    alert_on_failure: bool,
    #[serde(default)]
    alert_channels: Vec<String>,
    success_metric: Option<SuccessMetric>,
    max_lag_minutes: Option<f64>,
    check_interval: Option<String>,
    schedules: Option<Vec<String>>,
    sources: Option<Vec<String>>,
}

impl TryFrom<RawEntry> for Entry {
    type Error = Invalid;

    fn try_from(raw: RawEntry) -> Result<Self, Invalid> {
        let name = raw.name;
        let bad = |why: String| Invalid(format!("{name:?}: {why}"));
        let success_metric = raw.success_metric;
        let max_lag = match raw.max_lag_minutes {
            Some(m) if !(m > 0.0 && m.is_finite()) => return Err(bad(format!("max_lag_minutes {m}: more than 0"))),
            Some(m) => Some(Duration::from_secs_f64(m * 60.0)),
            None => None,
        };
        let check_interval = raw
            .check_interval
            .map(|t| humantime::parse_duration(&t).map_err(|e| bad(format!("check_interval {t:?}: {e}"))))
            .transpose()?;
        let watch = Watch {
            schedules: raw.schedules.unwrap_or_default(),
            sources: raw.sources.unwrap_or_default(),
            all_wal: false,
        };
        Ok(Entry(MonitoredJob {
            name,
            alert_on_failure: raw.alert_on_failure,
            alert_channels: raw.alert_channels,
            success_metric,
            max_lag,
            check_interval,
            watch,
        }))
    }
}

/// The words of a name, lower-case and singular (`Files` and `file` alike).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let w = w.to_lowercase();
            match w.strip_suffix('s') {
                Some(stem) if stem.len() > 2 => stem.to_owned(),
                _ => w,
            }
        })
        .collect()
}

/// The schedules an entry's name binds (see [`Watch`]).
fn bound_by_name(name: &str, schedules: &[Schedule]) -> Vec<String> {
    let said = words(name);
    let mut groups: BTreeMap<&str, Vec<&Schedule>> = BTreeMap::new();
    for s in schedules {
        groups.entry(s.group.as_str()).or_default().push(s);
    }
    let mut bound = Vec::new();
    for (group, members) in groups {
        if !words(group).iter().all(|w| said.contains(w)) {
            continue;
        }
        let named: Vec<&&Schedule> =
            members.iter().filter(|s| words(&s.name).iter().any(|w| said.contains(w))).collect();
        if named.is_empty() {
            bound.extend(members.iter().map(|s| s.id()));
        } else {
            bound.extend(named.iter().map(|s| s.id()));
        }
    }
    bound
}

/// The `monitoring` block of a policy document (none: empty), bound to
/// `schedules`; an entry that binds nothing, or names a schedule that does
/// not exist, is refused.
pub fn monitoring_from_yaml(text: &str, schedules: &[Schedule]) -> Result<Vec<MonitoredJob>, PolicyError> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let entries = doc.monitoring.map(|b| b.backup_jobs).unwrap_or_default();
    let mut out = Vec::new();
    for (i, Entry(mut job)) in entries.into_iter().enumerate() {
        let bad =
            |reason: String| PolicyError::Monitoring { entry: format!("backup_jobs[{i}] {:?}", job.name), reason };
        for s in &job.watch.schedules {
            if !schedules.iter().any(|x| x.id() == *s) {
                return Err(bad(format!("schedules: no schedule {s:?} in backup_schedules")));
            }
        }
        if job.watch.schedules.is_empty() && job.watch.sources.is_empty() {
            job.watch.schedules = bound_by_name(&job.name, schedules);
            if job.watch.schedules.is_empty() {
                if job.max_lag.is_none() {
                    return Err(bad(
                        "its name binds no schedule: say what it watches with schedules: [group.name] or sources: [id]"
                            .into(),
                    ));
                }
                job.watch.all_wal = true;
            }
        }
        out.push(job);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backup_schedules_from_yaml;

    fn figures(size: u64, seconds: f64) -> Figures {
        Figures { size_bytes: size, stored_bytes: size / 10, duration_seconds: seconds, files: 3 }
    }

    #[test]
    fn the_seed_block_binds_as_its_names_say() {
        let seed = include_str!("../../../deploy/examples/policy.yaml");
        let schedules = backup_schedules_from_yaml(seed).unwrap();
        let jobs = monitoring_from_yaml(seed, &schedules).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["Database Full Backup", "WAL Archiving", "File Sync Status"]);

        let full = &jobs[0];
        assert_eq!(full.watch, Watch { schedules: vec!["database.full".into()], ..Watch::default() });
        assert_eq!(full.alert_channels, ["pagerduty", "slack", "email"]);
        let metric = full.success_metric.as_ref().unwrap();
        assert!(metric.holds(&figures(2_000_000_000, 1.0)) && !metric.holds(&figures(999_999_999, 1.0)));

        let wal = &jobs[1];
        assert!(wal.watch.all_wal && wal.watch.schedules.is_empty(), "{wal:?}");
        assert_eq!(wal.max_lag, Some(Duration::from_secs(600)));
        assert!(wal.watch.covers("db1", "pg", &[], true) && !wal.watch.covers("web1", "docs", &[], false));

        let files = &jobs[2];
        assert_eq!(files.watch.schedules, ["files.configs", "files.media"]);
        assert_eq!(files.check_interval, Some(Duration::from_secs(3600)));
        assert!(files.watch.covers("web1", "docs", &["files.media".into()], false));
    }

    #[test]
    fn explicit_bindings_and_mistakes_name_their_line() {
        let head = "backup_schedules:\n  db:\n    nightly: { cron: \"0 2 * * *\" }\nmonitoring:\n  backup_jobs:\n";
        let schedules = backup_schedules_from_yaml(head).unwrap();
        let parse = |entries: &str| monitoring_from_yaml(&format!("{head}{entries}"), &schedules);
        let jobs = parse("    - name: Anything\n      schedules: [db.nightly]\n      sources: [web1/docs]\n").unwrap();
        assert!(jobs[0].watch.covers("web1", "docs", &[], false) && !jobs[0].watch.covers("web2", "docs", &[], false));
        assert!(jobs[0].watch.covers("x", "y", &["db.nightly".into()], false));

        let metric =
            parse("    - name: Db\n      success_metric: \"duration <= 2h\"\n").unwrap()[0].success_metric.clone();
        let metric = metric.unwrap();
        assert!(metric.holds(&figures(1, 7200.0)) && !metric.holds(&figures(1, 7201.0)));
        let metric: SuccessMetric = "stored_bytes >= 500 MiB".parse().unwrap();
        assert_eq!(metric.value, 500.0 * 1024.0 * 1024.0);

        for (entry, line, what) in [
            ("    - name: Db\n      success_metric: \"backup_size > 1 parsec\"\n", "line 6", "parsec"),
            ("    - name: Db\n      success_metric: \"weight > 1GB\"\n", "line 6", "not a figure"),
            ("    - name: Db\n      success_metric: \"backup_size 1GB\"\n", "line 6", "FIGURE OP VALUE"),
            ("    - name: Db\n      alert_on_falure: true\n", "line 7", "alert_on_falure"),
            ("    - name: Db\n      max_lag_minutes: -3\n", "line 6", "max_lag_minutes"),
        ] {
            let err = parse(entry).unwrap_err().to_string();
            assert!(err.contains(line) && err.contains(what), "{entry:?} gave {err}");
        }
        let err = parse("    - name: Web Tier\n      alert_on_failure: true\n").unwrap_err().to_string();
        assert!(err.contains("backup_jobs[0] \"Web Tier\"") && err.contains("binds no schedule"), "{err}");
        let err = parse("    - name: X\n      schedules: [db.hourly]\n").unwrap_err().to_string();
        assert!(err.contains("no schedule \"db.hourly\""), "{err}");
    }
}
