//! Jobs: what an agent is to do, and how far it got. The leader holds every
//! job in memory (loaded at the start of its term) and writes each change
//! through to the state with a condition on the revision it holds, fenced
//! by its term: a change another leader made first is never overwritten.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::{Condition, Op, State, StateError};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its agent (connected and with a free slot).
    Queued,
    /// Assigned to its agent.
    Running,
    /// Done.
    Succeeded,
    /// Failed, and not retried any more.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// Whether nothing will happen to it any more.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Back the source up.
    Backup,
    /// Restore the source (or a snapshot of it) on the agent.
    Restore,
    /// Run a restore drill (the source id is the drill's name).
    Drill,
}

impl JobKind {
    /// As logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
            JobKind::Drill => "drill",
        }
    }
}

/// A restore's target, as an operator asked for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTarget {
    /// Snapshot id or prefix; empty: the newest that fits.
    pub snapshot: String,
    /// Where to restore to, on the agent.
    pub target_dir: String,
    /// Files: only this path of the snapshot.
    pub path: String,
    /// PostgreSQL: replay all WAL there is.
    pub latest: bool,
    /// PostgreSQL: stop at this time (RFC 3339).
    pub to_time: String,
    /// PostgreSQL: stop at this LSN.
    pub to_lsn: String,
    /// Keep what is already in place and right.
    pub delta: bool,
}

/// What a successful backup made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMade {
    /// The snapshot's id.
    pub snapshot_id: String,
    /// Files in it.
    pub files: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes newly stored (after deduplication and compression).
    pub bytes_new_stored: u64,
    /// Bytes the snapshot covers, read or found unchanged.
    #[serde(default)]
    pub bytes_total: u64,
    /// How long the backup took, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
}

/// A job, as stored at `<prefix>/jobs/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Scheduled: `<schedule>@<host>/<source>@<slot, RFC 3339>`, so a slot
    /// always names the same job; by hand: `manual-<random>@<host>/<source>`.
    pub id: String,
    /// The agent that runs it.
    pub host: String,
    /// The source on that agent.
    pub source_id: String,
    /// What it does.
    pub kind: JobKind,
    /// The schedule and slot that made it (none when run by hand).
    pub schedule_id: Option<String>,
    /// The slot it is for.
    pub slot: Option<DateTime<Utc>>,
    /// 1 (critical) .. 4 (low): lower goes first.
    pub priority: u8,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// Where it stands.
    pub state: JobState,
    /// Attempts assigned so far.
    pub attempt: u32,
    /// Not to be assigned before this (a retry's back-off).
    pub not_before: Option<DateTime<Utc>>,
    /// The leadership term that last assigned it.
    pub term: i64,
    /// When the current attempt was assigned.
    pub started: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished: Option<DateTime<Utc>>,
    /// The last attempt's error.
    pub error: Option<String>,
    /// A backup's result.
    pub made: Option<BackupMade>,
    /// A restore's target.
    pub restore: Option<RestoreTarget>,
    /// A drill's report id, once it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_report: Option<String>,
    /// Who asked for it, when an operator did.
    pub requested_by: Option<String>,
    /// An operator asked to cancel it while it ran.
    pub cancel_requested: bool,
    /// The W3C trace context of its creation (empty when traces are off).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
}

impl JobRecord {
    /// A job queued now for `host`'s `source_id`.
    pub fn new(id: String, host: &str, source_id: &str, kind: JobKind, priority: u8, now: DateTime<Utc>) -> Self {
        // The job's trace begins here; dispatch and the agent's work join it.
        let span = tracing::info_span!("schedule job", job = %id, host, source = source_id, kind = ?kind, priority);
        let traceparent = lifeboat_common::telemetry::traces::traceparent(&span);
        JobRecord {
            traceparent,
            id,
            host: host.to_owned(),
            source_id: source_id.to_owned(),
            kind,
            schedule_id: None,
            slot: None,
            priority,
            created: now,
            state: JobState::Queued,
            attempt: 0,
            not_before: None,
            term: 0,
            started: None,
            finished: None,
            error: None,
            made: None,
            restore: None,
            drill_report: None,
            requested_by: None,
            cancel_requested: false,
        }
    }

    /// Whether it may be assigned at `now`.
    pub fn assignable(&self, now: DateTime<Utc>) -> bool {
        self.state == JobState::Queued && self.not_before.is_none_or(|t| t <= now)
    }

    fn encode(&self) -> Result<Vec<u8>, StateError> {
        crate::state::encode("a job", self)
    }
}

/// The leader's jobs, as stored.
#[derive(Debug, Default)]
pub struct JobBook {
    prefix: String,
    jobs: HashMap<String, (JobRecord, i64)>,
    /// Job ids by host, so dispatching one agent does not scan every job.
    by_host: HashMap<String, HashSet<String>>,
}

impl JobBook {
    /// The key of a job.
    pub fn key(prefix: &str, id: &str) -> String {
        format!("{prefix}/jobs/{id}")
    }

    /// Every job stored under `prefix` (a record that does not parse is
    /// logged and left alone).
    pub async fn load(state: State<'_>, prefix: &str) -> Result<Self, StateError> {
        let mut book = JobBook { prefix: prefix.to_owned(), ..JobBook::default() };
        for (key, stored) in state.list(&format!("{prefix}/jobs/")).await? {
            match serde_json::from_slice::<JobRecord>(&stored.value) {
                Ok(job) => book.put(job, stored.revision),
                Err(e) => tracing::warn!(key, error = %e, "unreadable job record left alone"),
            }
        }
        Ok(book)
    }

    fn put(&mut self, job: JobRecord, revision: i64) {
        self.by_host.entry(job.host.clone()).or_default().insert(job.id.clone());
        self.jobs.insert(job.id.clone(), (job, revision));
    }

    fn remove(&mut self, id: &str) {
        if let Some((job, _)) = self.jobs.remove(id)
            && let Some(ids) = self.by_host.get_mut(&job.host)
        {
            ids.remove(id);
        }
    }

    /// The jobs of one agent.
    pub fn of_host<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a JobRecord> + 'a {
        self.by_host.get(host).into_iter().flatten().filter_map(|id| self.get(id))
    }

    /// One job.
    pub fn get(&self, id: &str) -> Option<&JobRecord> {
        self.jobs.get(id).map(|(j, _)| j)
    }

    /// Every job, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().map(|(j, _)| j)
    }

    /// Adds a job made elsewhere in a transaction of its own (the scheduler's).
    pub fn adopt(&mut self, job: JobRecord, revision: i64) {
        self.put(job, revision);
    }

    /// Stores a new job; `Ok(false)` when one of that id exists already.
    pub async fn create(&mut self, state: State<'_>, job: JobRecord) -> Result<bool, StateError> {
        let key = Self::key(&self.prefix, &job.id);
        let written = state.commit_if(&[Condition::Absent(key.clone())], &[Op::Put(key, job.encode()?)]).await?;
        Ok(match written {
            Some(revision) => {
                self.put(job, revision);
                true
            }
            None => false,
        })
    }

    /// Changes a job with `change` and stores it, if no one changed it since
    /// it was read (if someone did, the stored one is read back and `None`
    /// returned). Returns the job as stored.
    pub async fn update(
        &mut self,
        state: State<'_>,
        id: &str,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<Option<JobRecord>, StateError> {
        let Some((job, revision)) = self.jobs.get(id) else { return Ok(None) };
        let mut changed = job.clone();
        change(&mut changed);
        let key = Self::key(&self.prefix, id);
        let condition = Condition::Revision(key.clone(), *revision);
        match state.commit_if(&[condition], &[Op::Put(key.clone(), changed.encode()?)]).await? {
            Some(revision) => {
                self.put(changed.clone(), revision);
                Ok(Some(changed))
            }
            None => {
                tracing::warn!(job = id, "job changed under this leader; reading it back");
                if let Some(stored) = state.get(&key).await?
                    && let Ok(job) = serde_json::from_slice::<JobRecord>(&stored.value)
                {
                    self.put(job, stored.revision);
                }
                Ok(None)
            }
        }
    }

    /// Forgets finished jobs that finished before `before` (the history kept).
    pub async fn expire(&mut self, state: State<'_>, before: DateTime<Utc>) -> Result<usize, StateError> {
        let old: Vec<(String, i64)> = self
            .jobs
            .values()
            .filter(|(j, _)| j.state.is_final() && j.finished.is_some_and(|f| f < before))
            .map(|(j, rev)| (j.id.clone(), *rev))
            .collect();
        let mut removed = 0;
        for (id, revision) in old {
            let key = Self::key(&self.prefix, &id);
            if state.commit_if(&[Condition::Revision(key.clone(), revision)], &[Op::Delete(key)]).await?.is_some() {
                self.remove(&id);
                removed += 1;
            }
        }
        Ok(removed)
    }
}
