//! Turning policy into jobs, exactly once.
//!
//! Each schedule's last slot is kept in the state (etcd, or the embedded
//! database) at `<prefix>/schedules/<id>/last_slot`. A due slot becomes a
//! job in one transaction that also moves the last slot from the value read
//! to the new one, fenced on etcd by the leader's term: two leaders in a row (or one
//! deposed and one new) cannot both create it, and however many slots an
//! outage missed, the transaction makes one job, for the latest.

use chrono::{DateTime, Utc};
use lifeboat_common::policy::Schedule;
use serde::{Deserialize, Serialize};

use crate::state::{Condition, State, StateError};

/// A job as stored, until an agent takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// `<schedule id>@<slot, RFC 3339>`: the same slot always names the same job.
    pub id: String,
    /// The schedule that made it.
    pub schedule_id: String,
    /// The slot it is for.
    pub slot: DateTime<Utc>,
    /// 1 (critical) .. 4 (low).
    pub priority: u8,
    /// When it was made.
    pub created: DateTime<Utc>,
}

/// Where the scheduler keeps its keys.
#[derive(Debug, Clone)]
pub struct Scheduler {
    prefix: String,
}

impl Scheduler {
    /// A scheduler keeping state under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Scheduler { prefix: prefix.into() }
    }

    fn last_slot_key(&self, schedule: &Schedule) -> String {
        format!("{}/schedules/{}/last_slot", self.prefix, schedule.id())
    }

    /// The key of a job.
    pub fn job_key(&self, id: &str) -> String {
        format!("{}/jobs/{id}", self.prefix)
    }

    /// Makes the jobs that are due at `now`, as the leader. A schedule never
    /// seen before starts counting from `now` (its first slot after now is
    /// its first run). Returns the jobs this call made.
    pub async fn tick(
        &self,
        state: State<'_>,
        schedules: &[Schedule],
        now: DateTime<Utc>,
    ) -> Result<Vec<JobRecord>, StateError> {
        let mut made = Vec::new();
        for schedule in schedules {
            let key = self.last_slot_key(schedule);
            let stored = state.get(&key).await?;
            let last = stored
                .as_ref()
                .and_then(|v| std::str::from_utf8(&v.value).ok())
                .and_then(|v| v.parse::<DateTime<Utc>>().ok());
            // Unchanged since read, or still absent: the condition that makes
            // the slot move, and so the job, happen once.
            let unchanged = match &stored {
                Some(v) => Condition::Revision(key.clone(), v.revision),
                None => Condition::Absent(key.clone()),
            };
            let Some(last) = last else {
                state.commit_if(&[unchanged], &[(key, now.to_rfc3339().into_bytes())]).await?;
                continue;
            };
            let Some(slot) = schedule.trigger.due(last, now) else { continue };
            let job = JobRecord {
                id: format!("{}@{}", schedule.id(), slot.to_rfc3339()),
                schedule_id: schedule.id(),
                slot,
                priority: schedule.priority,
                created: now,
            };
            let job_key = self.job_key(&job.id);
            let value = serde_json::to_vec(&job).unwrap_or_default();
            // Also never over a job of the same id (a slot run already).
            let conditions = [unchanged, Condition::Absent(job_key.clone())];
            if state.commit_if(&conditions, &[(key, slot.to_rfc3339().into_bytes()), (job_key, value)]).await? {
                tracing::info!(job = %job.id, "job due");
                made.push(job);
            }
        }
        Ok(made)
    }
}
