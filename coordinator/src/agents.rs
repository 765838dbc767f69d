//! What the coordinator knows of each agent and its sources, as stored at
//! `<prefix>/agents/<host>` (so a new leader, and followers answering
//! reads, know every agent before it reconnects).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_proto::v1;
use serde::{Deserialize, Serialize};

use crate::history::BackupHistory;
use crate::lag::{LagLimits, SourceReport, WalReport};

/// A source: as its agent described it, and what is known of its backups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The agent's description (id, kind, paths, schedules, version, RPO).
    pub source: v1::Source,
    /// When its newest backup finished.
    pub last_backup: Option<DateTime<Utc>>,
    /// That backup's snapshot id.
    pub last_snapshot_id: String,
    /// WAL streaming, as last reported.
    pub wal: Option<WalState>,
    /// Why it cannot be captured, if it cannot.
    pub error: String,
    /// Its backups' figures and outcomes.
    #[serde(default)]
    pub history: BackupHistory,
    /// As a failover member, its server as last reported.
    #[serde(default)]
    pub member: Option<MemberSeen>,
}

/// A failover member's report, and when it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSeen {
    /// The agent's report.
    pub state: v1::MemberState,
    /// When it was heard.
    pub reported: DateTime<Utc>,
}

/// WAL streaming as last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalState {
    /// The agent's report (a negative newest-stored age: nothing stored yet).
    pub lag: v1::WalLag,
    /// When it was reported.
    pub reported: DateTime<Utc>,
}

impl WalState {
    /// Seconds since WAL was last stored, at `now`: aged by the time since
    /// the report, so a silent agent's WAL grows old. None: nothing stored.
    pub fn stored_age(&self, now: DateTime<Utc>) -> Option<f64> {
        let reported = self.lag.newest_stored_age_seconds;
        (reported >= 0.0).then(|| reported + (now - self.reported).to_std().unwrap_or(Duration::ZERO).as_secs_f64())
    }
}

/// An agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Its host (its certificate's name).
    pub host: String,
    /// Its region.
    pub region: String,
    /// Its version.
    pub agent_version: String,
    /// Jobs it runs at once.
    pub max_jobs: u32,
    /// What it backs up, by id.
    pub sources: BTreeMap<String, SourceRecord>,
    /// When it was last heard from.
    pub last_seen: DateTime<Utc>,
    /// The coordinator it is attached to, while it is.
    pub attached_to: Option<String>,
    /// Silent past the deadline.
    pub lost: bool,
}

impl AgentRecord {
    /// The key of an agent.
    pub fn key(prefix: &str, host: &str) -> String {
        format!("{prefix}/agents/{host}")
    }

    /// The record a hello makes, keeping what was known of its sources.
    pub fn from_hello(hello: &v1::Hello, before: Option<&AgentRecord>, now: DateTime<Utc>) -> Self {
        let sources = hello
            .sources
            .iter()
            .map(|s| {
                let old = before.and_then(|b| b.sources.get(&s.id));
                let record = SourceRecord {
                    source: s.clone(),
                    last_backup: old.and_then(|o| o.last_backup),
                    last_snapshot_id: old.map(|o| o.last_snapshot_id.clone()).unwrap_or_default(),
                    wal: old.and_then(|o| o.wal.clone()),
                    error: String::new(),
                    history: old.map(|o| o.history.clone()).unwrap_or_default(),
                    member: old.and_then(|o| o.member.clone()),
                };
                (s.id.clone(), record)
            })
            .collect();
        AgentRecord {
            host: hello.host.clone(),
            region: hello.region.clone(),
            agent_version: hello.agent_version.clone(),
            max_jobs: hello.max_jobs.max(1),
            sources,
            last_seen: now,
            attached_to: None,
            lost: false,
        }
    }

    /// Takes in a heartbeat's per-source state.
    pub fn heard(&mut self, beat: &v1::Heartbeat, now: DateTime<Utc>) {
        self.last_seen = now;
        self.lost = false;
        for state in &beat.sources {
            let Some(source) = self.sources.get_mut(&state.source_id) else { continue };
            source.error.clone_from(&state.error);
            if let Some(t) = DateTime::from_timestamp(state.last_backup_unix, 0)
                && state.last_backup_unix > 0
                && source.last_backup.is_none_or(|b| b < t)
            {
                source.last_backup = Some(t);
                source.last_snapshot_id.clone_from(&state.last_snapshot_id);
            }
            source.wal = state.wal.clone().map(|lag| WalState { lag, reported: now });
            if let Some(member) = &state.member {
                source.member = Some(MemberSeen { state: member.clone(), reported: now });
            }
        }
    }

    /// The agent on the wire.
    pub fn to_proto(&self, connected: bool) -> v1::AgentInfo {
        v1::AgentInfo {
            host: self.host.clone(),
            region: self.region.clone(),
            agent_version: self.agent_version.clone(),
            connected,
            lost: self.lost,
            last_seen_unix_ms: self.last_seen.timestamp_millis(),
            sources: self.sources.values().map(|s| s.source.clone()).collect(),
        }
    }
}

impl SourceRecord {
    /// What lag assessment needs, at `now`.
    pub fn report(&self, last_heard: DateTime<Utc>, now: DateTime<Utc>) -> SourceReport {
        SourceReport {
            last_heard: Some(last_heard),
            last_backup: self.last_backup,
            wal: self.wal.as_ref().map(|w| WalReport {
                connected: w.lag.connected,
                lag_seconds: w.lag.lag_seconds,
                newest_stored_age_seconds: w.stored_age(now),
            }),
        }
    }

    /// The limits it is held to (no RPO set: a day).
    pub fn limits(&self, wal_max_lag: Duration, lost_after: Duration) -> LagLimits {
        let rpo = match self.source.rpo_seconds {
            0 => Duration::from_secs(86_400),
            s => Duration::from_secs(s.into()),
        };
        LagLimits { rpo, max_wal_lag: Some(wal_max_lag), lost_after }
    }

    /// The WAL state on the wire.
    pub fn wal_proto(&self) -> Option<v1::WalLag> {
        self.wal.as_ref().map(|w| w.lag.clone())
    }
}
