//! Lag against the recovery point objective, from what agents report: the
//! age of each source's newest backup, how far WAL streaming is behind and
//! how old the newest stored WAL is, and agents gone silent.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What the coordinator last heard about one source.
#[derive(Debug, Clone, Default)]
pub struct SourceReport {
    /// When its agent was last heard from.
    pub last_heard: Option<DateTime<Utc>>,
    /// When its newest backup finished.
    pub last_backup: Option<DateTime<Utc>>,
    /// WAL streaming, for PostgreSQL sources that stream.
    pub wal: Option<WalReport>,
}

/// WAL streaming as the agent reports it.
#[derive(Debug, Clone, Default)]
pub struct WalReport {
    /// Whether the replication connection is up.
    pub connected: bool,
    /// Seconds since the server had WAL the repository lacks.
    pub lag_seconds: f64,
    /// Seconds since WAL was last stored (none yet: `None`).
    pub newest_stored_age_seconds: Option<f64>,
}

/// The limits a source is held to.
#[derive(Debug, Clone)]
pub struct LagLimits {
    /// Recovery point objective: the most data a loss may cost.
    pub rpo: Duration,
    /// How far WAL may fall behind (the seed's `max_lag_minutes`).
    pub max_wal_lag: Option<Duration>,
    /// An agent silent this long is lost.
    pub lost_after: Duration,
}

/// Something to alert on.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The agent has not been heard from for this long.
    AgentLost {
        /// For how long.
        silent: Duration,
    },
    /// No backup yet.
    NeverBackedUp,
    /// The newest backup (and WAL, if streamed) is older than the RPO.
    RpoBreached {
        /// By how much.
        behind: Duration,
    },
    /// WAL streaming is behind more than allowed.
    WalLagging {
        /// How far behind.
        lag: Duration,
    },
    /// WAL streaming is disconnected.
    WalDisconnected,
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

fn since(then: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

/// How old the newest recoverable point is at `now`: the newest of the last
/// backup and, when WAL streams, the newest stored WAL (none: neither yet).
pub fn recovery_point_age(report: &SourceReport, now: DateTime<Utc>) -> Option<Duration> {
    let backup_age = report.last_backup.map(|b| since(b, now));
    let wal_age = report.wal.as_ref().and_then(|w| w.newest_stored_age_seconds).map(secs);
    match (backup_age, wal_age) {
        (Some(b), Some(w)) => Some(b.min(w)),
        (b, w) => b.or(w),
    }
}

/// What is wrong with a source at `now`; empty when all is well. The
/// recovery point is [`recovery_point_age`]'s.
pub fn assess(report: &SourceReport, limits: &LagLimits, now: DateTime<Utc>) -> Vec<Finding> {
    let mut findings = Vec::new();
    match report.last_heard {
        Some(heard) if since(heard, now) > limits.lost_after => {
            findings.push(Finding::AgentLost { silent: since(heard, now) })
        }
        None => findings.push(Finding::AgentLost { silent: Duration::MAX }),
        Some(_) => {}
    }
    match recovery_point_age(report, now) {
        None => findings.push(Finding::NeverBackedUp),
        Some(age) if age > limits.rpo => findings.push(Finding::RpoBreached { behind: age }),
        Some(_) => {}
    }
    if let Some(wal) = &report.wal {
        if !wal.connected {
            findings.push(Finding::WalDisconnected);
        }
        if let Some(max) = limits.max_wal_lag
            && secs(wal.lag_seconds) > max
        {
            findings.push(Finding::WalLagging { lag: secs(wal.lag_seconds) });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_recovery_point_is_the_newest_of_backup_and_wal() {
        let now = at("2026-11-25T12:00:00Z");
        let limits = LagLimits {
            rpo: Duration::from_secs(300),
            max_wal_lag: Some(Duration::from_secs(600)),
            lost_after: Duration::from_secs(30),
        };
        // A nightly backup, but WAL stored a second ago: within the RPO.
        let mut report = SourceReport {
            last_heard: Some(at("2026-11-25T11:59:55Z")),
            last_backup: Some(at("2026-11-25T02:00:00Z")),
            wal: Some(WalReport { connected: true, lag_seconds: 0.5, newest_stored_age_seconds: Some(1.0) }),
        };
        assert_eq!(assess(&report, &limits, now), vec![]);

        // Streaming stopped 20 minutes ago and is disconnected.
        report.wal = Some(WalReport { connected: false, lag_seconds: 1200.0, newest_stored_age_seconds: Some(1200.0) });
        assert_eq!(
            assess(&report, &limits, now),
            vec![
                Finding::RpoBreached { behind: Duration::from_secs(1200) },
                Finding::WalDisconnected,
                Finding::WalLagging { lag: Duration::from_secs(1200) },
            ]
        );

        // Files only: the backup's age is the point; the agent went quiet.
        let files = SourceReport { last_heard: Some(at("2026-11-25T11:58:00Z")), last_backup: None, wal: None };
        assert_eq!(
            assess(&files, &limits, now),
            vec![Finding::AgentLost { silent: Duration::from_secs(120) }, Finding::NeverBackedUp]
        );
    }
}
