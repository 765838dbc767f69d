//! Turning policy into jobs, exactly once.
//!
//! A schedule applies to each source bound to it (a target). Each target's
//! last slot is kept in the state at
//! `<prefix>/schedules/<schedule>/<host>/<source>/last_slot`. A due slot
//! becomes a job in one transaction that also moves the last slot from the
//! value read to the new one, fenced on etcd by the leader's term: two
//! leaders in a row (or one deposed and one new) cannot both create it, and
//! however many slots an outage missed, the transaction makes one job, for
//! the latest. The leader keeps the slots it read in memory, so a tick with
//! nothing due reads nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lifeboat_common::policy::Schedule;

use crate::jobs::{JobBook, JobKind, JobRecord};
use crate::state::{Condition, Op, State, StateError};

/// One schedule applied to one source.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The schedule.
    pub schedule: &'a Schedule,
    /// The agent.
    pub host: &'a str,
    /// The source on it (a drill's name, for a drill).
    pub source_id: &'a str,
    /// What its jobs do.
    pub kind: JobKind,
}

/// A job made by the scheduler, and the revision it was stored at.
#[derive(Debug, Clone)]
pub struct Made {
    /// The job.
    pub job: JobRecord,
    /// Its revision in the state.
    pub revision: i64,
}

/// Where the scheduler keeps its keys, and the slots it has read.
#[derive(Debug, Clone)]
pub struct Scheduler {
    prefix: String,
    /// Last slot and revision by key, as read or written by this leader.
    slots: HashMap<String, (Option<DateTime<Utc>>, i64)>,
    /// When each target is next due: before then a tick skips it without
    /// working out its trigger (thousands of targets, every second).
    next_due: HashMap<String, DateTime<Utc>>,
}

impl Scheduler {
    /// A scheduler keeping state under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Scheduler { prefix: prefix.into(), slots: HashMap::new(), next_due: HashMap::new() }
    }

    fn last_slot_key(&self, target: &Target<'_>) -> String {
        format!("{}/schedules/{}/{}/{}/last_slot", self.prefix, target.schedule.id(), target.host, target.source_id)
    }

    /// Forgets when targets are next due (the policy changed: a schedule's
    /// trigger may have).
    pub fn policy_changed(&mut self) {
        self.next_due.clear();
    }

    async fn last_slot(
        &mut self,
        state: State<'_>,
        key: &str,
    ) -> Result<(Option<DateTime<Utc>>, Option<i64>), StateError> {
        if let Some((slot, revision)) = self.slots.get(key) {
            return Ok((*slot, Some(*revision)));
        }
        let stored = state.get(key).await?;
        let slot = stored
            .as_ref()
            .and_then(|v| std::str::from_utf8(&v.value).ok())
            .and_then(|v| v.parse::<DateTime<Utc>>().ok());
        if let Some(v) = &stored {
            self.slots.insert(key.to_owned(), (slot, v.revision));
        }
        Ok((slot, stored.map(|v| v.revision)))
    }

    /// Makes the jobs that are due at `now`, as the leader. A target never
    /// seen before starts counting from `now` (its first slot after now is
    /// its first run). Returns the jobs this call made.
    pub async fn tick(
        &mut self,
        state: State<'_>,
        targets: &[Target<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<Made>, StateError> {
        let mut made = Vec::new();
        for target in targets {
            let key = self.last_slot_key(target);
            if self.next_due.get(&key).is_some_and(|due| now < *due) {
                continue;
            }
            let (last, revision) = self.last_slot(state, &key).await?;
            // Unchanged since read, or still absent: the condition that makes
            // the slot move, and so the job, happen once.
            let unchanged = match revision {
                Some(rev) => Condition::Revision(key.clone(), rev),
                None => Condition::Absent(key.clone()),
            };
            let Some(last) = last else {
                let written =
                    state.commit_if(&[unchanged], &[Op::Put(key.clone(), now.to_rfc3339().into_bytes())]).await?;
                self.remember(key, written, Some(now));
                continue;
            };
            let Some(slot) = target.schedule.trigger.due(last, now) else {
                // On change: never due by time (a far date keeps it skipped).
                let next = target.schedule.trigger.next_after(last).unwrap_or(DateTime::<Utc>::MAX_UTC);
                self.next_due.insert(key, next);
                continue;
            };
            let mut job = JobRecord::new(
                format!("{}@{}/{}@{}", target.schedule.id(), target.host, target.source_id, slot.to_rfc3339()),
                target.host,
                target.source_id,
                target.kind,
                target.schedule.priority,
                now,
            );
            job.schedule_id = Some(target.schedule.id());
            job.slot = Some(slot);
            let job_key = JobBook::key(&self.prefix, &job.id);
            let value = crate::state::encode("a job", &job)?;
            // Also never over a job of the same id (a slot run already).
            let conditions = [unchanged, Condition::Absent(job_key.clone())];
            let ops = [Op::Put(key.clone(), slot.to_rfc3339().into_bytes()), Op::Put(job_key, value)];
            let written = state.commit_if(&conditions, &ops).await?;
            self.remember(key, written, Some(slot));
            if let Some(revision) = written {
                tracing::info!(job = %job.id, "job due");
                made.push(Made { job, revision });
            }
        }
        Ok(made)
    }

    /// Keeps what was written, or, when a condition failed (someone else
    /// wrote first), drops the cached value so the next tick reads it.
    fn remember(&mut self, key: String, written: Option<i64>, slot: Option<DateTime<Utc>>) {
        self.next_due.remove(&key);
        match written {
            Some(revision) => {
                self.slots.insert(key, (slot, revision));
            }
            None => {
                self.slots.remove(&key);
            }
        }
    }
}
