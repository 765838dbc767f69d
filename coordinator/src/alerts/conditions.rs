//! The conditions alerts are raised for, found in the leader's records at
//! one moment: each with its target, its words, and the channels the
//! policy sends it to (the first entry of `monitoring` that watches the
//! target and asks for it, else `alerting.default_channels`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::HumanBytes;
use lifeboat_common::policy::monitoring::{Figures, MonitoredJob};

use super::Alert;
use crate::agents::{AgentRecord, SourceRecord};
use crate::config::Policy;
use crate::lag::recovery_point_age;

/// Something wrong now, about one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// What.
    pub alert: Alert,
    /// About what: `host/source`, `host`, or `store:NAME`.
    pub target: String,
    /// One line for people.
    pub summary: String,
    /// Figures behind it.
    pub details: BTreeMap<String, String>,
    /// Where it goes, in escalation order.
    pub channels: Vec<String>,
    /// The monitoring entry it comes from, whose `check_interval` applies.
    pub entry: Option<usize>,
}

/// What conditions are judged against, besides the agents' records.
#[derive(Debug)]
pub struct Facts<'a> {
    /// The policy in force.
    pub policy: &'a Policy,
    /// WAL lag allowed where no monitoring entry says (the configuration's `wal_max_lag`).
    pub wal_max_lag: Duration,
    /// Secondary stores' copy lag, in bytes, by store.
    pub copy_lag: &'a [(String, u64)],
    /// The moment.
    pub now: DateTime<Utc>,
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

impl Facts<'_> {
    /// Entries watching this source (by id, schedule, or its WAL), with their index.
    fn watching<'p>(&'p self, host: &str, s: &SourceRecord) -> Vec<(usize, &'p MonitoredJob)> {
        let reports_wal = s.wal.is_some();
        self.policy
            .monitoring
            .iter()
            .enumerate()
            .filter(|(_, e)| e.watch.covers(host, &s.source.id, &s.source.schedules, reports_wal))
            .collect()
    }

    fn default_channels(&self) -> Vec<String> {
        self.policy.alerting.default_channels.clone()
    }

    /// The first watching entry `wants`, its channels; none watching: the defaults.
    fn route(
        &self,
        watching: &[(usize, &MonitoredJob)],
        wants: impl Fn(&MonitoredJob) -> bool,
    ) -> Option<(Option<usize>, Vec<String>)> {
        match watching.iter().find(|(_, e)| wants(e)) {
            Some((i, e)) => Some((Some(*i), e.alert_channels.clone())),
            None if watching.is_empty() => Some((None, self.default_channels())),
            // Watched, and no entry asks for this: nobody is told.
            None => None,
        }
    }
}

/// Every condition holding at `facts.now`.
pub fn evaluate<'a>(agents: impl Iterator<Item = &'a AgentRecord>, facts: &Facts<'_>) -> Vec<Condition> {
    let mut found = Vec::new();
    let alerting = &facts.policy.alerting;
    let now = facts.now;
    for agent in agents {
        let host = agent.host.as_str();
        if agent.lost {
            let silent = (now - agent.last_seen).to_std().unwrap_or_default();
            let mut channels: Vec<String> = Vec::new();
            for s in agent.sources.values() {
                for (_, e) in facts.watching(host, s) {
                    for c in &e.alert_channels {
                        if !channels.contains(c) {
                            channels.push(c.clone());
                        }
                    }
                }
            }
            if channels.is_empty() {
                channels = facts.default_channels();
            }
            found.push(Condition {
                alert: Alert::AgentLost,
                target: host.to_owned(),
                summary: format!("agent {host} has not been heard from for {}", secs(silent)),
                details: BTreeMap::from([("last_seen".into(), agent.last_seen.to_rfc3339())]),
                channels,
                entry: None,
            });
        }
        for s in agent.sources.values() {
            source_conditions(host, agent, s, facts, &mut found);
        }
    }
    for (store, lag) in facts.copy_lag {
        if *lag > alerting.max_copy_lag_bytes {
            found.push(Condition {
                alert: Alert::CopyLag,
                target: format!("store:{store}"),
                summary: format!(
                    "store {store} lags {} behind the primary (bound {})",
                    HumanBytes(*lag),
                    HumanBytes(alerting.max_copy_lag_bytes)
                ),
                details: BTreeMap::from([("copy_lag_bytes".into(), lag.to_string())]),
                channels: facts.default_channels(),
                entry: None,
            });
        }
    }
    found
}

fn source_conditions(host: &str, agent: &AgentRecord, s: &SourceRecord, facts: &Facts<'_>, found: &mut Vec<Condition>) {
    let now = facts.now;
    let alerting = &facts.policy.alerting;
    let target = format!("{host}/{}", s.source.id);
    let watching = facts.watching(host, s);
    let mut raise =
        |alert: Alert, route: Option<(Option<usize>, Vec<String>)>, summary: String, details: Vec<(&str, String)>| {
            if let Some((entry, channels)) = route {
                found.push(Condition {
                    alert,
                    target: target.clone(),
                    summary,
                    details: details.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    channels,
                    entry,
                });
            }
        };

    if let Some(failure) = &s.history.last_failure {
        raise(
            Alert::BackupFailed,
            facts.route(&watching, |e| e.alert_on_failure),
            format!("backup of {target} failed after its last attempt: {}", failure.error),
            vec![
                ("schedule", failure.schedule.clone().unwrap_or_else(|| crate::history::MANUAL.to_owned())),
                ("failed_at", failure.at.to_rfc3339()),
                ("job", failure.job.clone()),
            ],
        );
    }

    let report = s.report(agent.last_seen, now);
    let rpo = s.limits(facts.wal_max_lag, Duration::ZERO).rpo;
    if let Some(point) = recovery_point_age(&report, now)
        && point > rpo
    {
        raise(
            Alert::RpoBreached,
            facts.route(&watching, |e| e.alert_on_failure),
            format!("{target}: newest recovery point is {} old, past its RPO of {}", secs(point), secs(rpo)),
            vec![
                ("recovery_point_age_seconds", point.as_secs().to_string()),
                ("rpo_seconds", rpo.as_secs().to_string()),
            ],
        );
    }

    if let Some(wal) = &s.wal {
        let lag = Duration::try_from_secs_f64(wal.lag.lag_seconds.max(0.0)).unwrap_or(Duration::MAX);
        let entry = watching.iter().find(|(_, e)| e.max_lag.is_some());
        let (limit, route) = match entry {
            Some((i, e)) => (e.max_lag.unwrap_or(facts.wal_max_lag), Some((Some(*i), e.alert_channels.clone()))),
            None => (facts.wal_max_lag, facts.route(&watching, |e| e.alert_on_failure)),
        };
        if lag > limit {
            raise(
                Alert::WalLag,
                route,
                format!("{target}: WAL is {} behind (at most {})", secs(lag), secs(limit)),
                vec![
                    ("lag_seconds", format!("{:.0}", wal.lag.lag_seconds)),
                    ("lag_bytes", wal.lag.lag_bytes.to_string()),
                ],
            );
        }
    }

    if let Some((ratio, n)) = s.history.success_ratio(now)
        && ratio < alerting.min_success_ratio
    {
        raise(
            Alert::SuccessRate,
            facts.route(&watching, |_| true),
            format!(
                "{target}: {:.1} % of {n} backups in 30 days succeeded (alert under {:.1} %)",
                ratio * 100.0,
                alerting.min_success_ratio * 100.0
            ),
            vec![("success_ratio", format!("{ratio:.4}")), ("backups", n.to_string())],
        );
    }

    if let (Some(newest), Some(median), Some(off)) =
        (s.history.newest(), s.history.median_before_newest(), s.history.size_deviation())
        && off.abs() > alerting.size_deviation
    {
        raise(
            Alert::SizeDeviation,
            facts.route(&watching, |_| true),
            format!(
                "{target}: the newest backup covers {}, {:+.0} % from the recent median {}",
                HumanBytes(newest.size_bytes),
                off * 100.0,
                HumanBytes(median)
            ),
            vec![("size_bytes", newest.size_bytes.to_string()), ("median_bytes", median.to_string())],
        );
    }

    for (i, e) in &watching {
        let Some(metric) = &e.success_metric else { continue };
        // The newest success of the schedules the entry watches (all of the
        // source's when it names the source itself).
        let newest = s
            .history
            .last
            .iter()
            .filter(|(schedule, _)| e.watch.schedules.is_empty() || e.watch.schedules.contains(schedule))
            .max_by_key(|(_, f)| f.finished);
        let Some((schedule, f)) = newest else { continue };
        let figures = Figures {
            size_bytes: f.size_bytes,
            stored_bytes: f.stored_bytes,
            duration_seconds: f.duration_seconds,
            files: f.files,
        };
        if !metric.holds(&figures) {
            raise(
                Alert::SuccessMetric,
                Some((Some(*i), e.alert_channels.clone())),
                format!("{target}: backup of {schedule} does not meet \"{metric}\" ({:?})", e.name),
                vec![
                    ("schedule", schedule.clone()),
                    ("size_bytes", f.size_bytes.to_string()),
                    ("stored_bytes", f.stored_bytes.to_string()),
                    ("duration_seconds", format!("{:.1}", f.duration_seconds)),
                    ("files", f.files.to_string()),
                ],
            );
        }
    }
}
