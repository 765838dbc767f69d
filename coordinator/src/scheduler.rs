//! Turning policy into jobs, exactly once.
//!
//! Each schedule's last slot is kept in etcd at
//! `<prefix>/schedules/<id>/last_slot`. A due slot becomes a job in one
//! transaction that also moves the last slot from the value read to the
//! new one, fenced by the leader's term: two leaders in a row (or one
//! deposed and one new) cannot both create it, and however many slots an
//! outage missed, the transaction makes one job, for the latest.

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, TxnOp};
use lifeboat_common::policy::Schedule;
use serde::{Deserialize, Serialize};

use crate::election::{ElectionError, Leadership};

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
        leader: &Leadership,
        schedules: &[Schedule],
        now: DateTime<Utc>,
    ) -> Result<Vec<JobRecord>, ElectionError> {
        let mut made = Vec::new();
        let mut reader = leader.reader();
        for schedule in schedules {
            let key = self.last_slot_key(schedule);
            let read = reader
                .get(key.clone(), None)
                .await
                .map_err(|cause| ElectionError::Etcd { endpoints: "the leader's etcd connection".into(), cause })?;
            let stored = read.kvs().first().map(|kv| (kv.mod_revision(), kv.value().to_vec()));
            let last = stored
                .as_ref()
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<DateTime<Utc>>().ok());
            // Unchanged since read, or still absent: the compare that makes
            // the slot move, and so the job, happen once.
            let unchanged = match &stored {
                Some((rev, _)) => Compare::mod_revision(key.clone(), CompareOp::Equal, *rev),
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            };
            let Some(last) = last else {
                leader.fenced_if(vec![unchanged], vec![TxnOp::put(key, now.to_rfc3339(), None)]).await?;
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
            let value = serde_json::to_vec(&job).unwrap_or_default();
            let ops = vec![TxnOp::put(key, slot.to_rfc3339(), None), TxnOp::put(self.job_key(&job.id), value, None)];
            // Also never over a job of the same id (a slot run already).
            let absent = Compare::create_revision(self.job_key(&job.id), CompareOp::Equal, 0);
            if leader.fenced_if(vec![unchanged, absent], ops).await? {
                tracing::info!(job = %job.id, "job due");
                made.push(job);
            }
        }
        Ok(made)
    }
}
