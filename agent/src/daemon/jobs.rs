//! Running what the coordinator assigns: backups and restores of this
//! agent's sources, each in a task of its own, reported when done.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use lifeboat_common::repo::SnapshotId;
use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::ops::retention::{SCHEDULE_TAG, source_tag};
use lifeboat_common::store::OpenedStore;
use lifeboat_common::telemetry::traces;
use lifeboat_proto::v1;
use tracing::Instrument;

use super::{Agent, Running};
use crate::drill::{DrillContext, retention_days, run_drill};
use crate::progress::Progress;
use crate::sources::{
    BackupContext, RecoveryPoint, RestoreContext, RestoreRequest, Source, SourceError, newest_of, parse_recovery_time,
};
use lifeboat_common::policy::drills::drills_from_yaml;
use lifeboat_common::policy::failover::Member;
use lifeboat_common::repo::format::drill::DrillReport;

/// What a job that ran made.
enum Done {
    /// A backup's snapshot (none for a restore).
    Snapshot(Option<v1::SnapshotSummary>),
    /// A drill's report.
    Drill(Box<DrillReport>),
}

/// Why a job failed, as its result says.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The coordinator named a source this agent does not have.
    #[error("no source {0:?} on this agent")]
    NoSource(String),
    /// A kind of job this agent does not run.
    #[error("job kind {0} is not one this agent runs")]
    Kind(i32),
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Request(String),
    /// The backup or restore failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The backup was saved with entries missing.
    #[error("snapshot {snapshot} is incomplete: {count} entries could not be read (first: {first})")]
    Incomplete {
        /// The snapshot's short id.
        snapshot: String,
        /// Entries missing.
        count: usize,
        /// The first one, with its reason.
        first: String,
    },
    /// Entries could not be restored.
    #[error("{count} entries could not be restored (first: {first})")]
    Failed {
        /// How many.
        count: usize,
        /// The first one, with its reason.
        first: String,
    },
}

impl Agent {
    /// Starts an assigned job, unless this attempt was taken already.
    pub(super) fn start(self: &Arc<Self>, job: v1::JobAssignment) {
        let mut book = self.book();
        if !book.taken.insert((job.job_id.clone(), job.attempt)) || book.running.contains_key(&job.job_id) {
            tracing::warn!(job = job.job_id, attempt = job.attempt, "assignment taken already: not run twice");
            return;
        }
        let progress = Arc::new(Progress::with_totals());
        let agent = self.clone();
        let (id, attempt, source_id) = (job.job_id.clone(), job.attempt, job.source_id.clone());
        let kind = match v1::JobKind::try_from(job.kind) {
            Ok(v1::JobKind::Restore) => "restore",
            Ok(v1::JobKind::Drill) => "drill",
            _ => "backup",
        };
        let task_progress = progress.clone();
        // Held until the job is in the book, so a fast job's result cannot
        // be recorded before it.
        // The job's span continues the coordinator's trace; the source's
        // phases are its children.
        let span = tracing::info_span!("job", job = %id, attempt, source = %source_id, kind);
        traces::continue_trace(&span, &job.traceparent);
        let task = tokio::spawn(Instrument::instrument(
            async move {
                tracing::info!(job = job.job_id, attempt = job.attempt, source = job.source_id, "job started");
                let outcome = agent.execute(&job, task_progress).await;
                let result = match outcome {
                    Ok(Done::Drill(report)) => {
                        // The job ran; whether the drill passed is the report's to say.
                        tracing::info!(job = job.job_id, "{}", report.headline());
                        v1::JobResult {
                            job_id: job.job_id.clone(),
                            ok: report.passed,
                            error: if report.passed { String::new() } else { report.headline() },
                            drill_report_json: serde_json::to_string(&report).unwrap_or_default(),
                            ..Default::default()
                        }
                    }
                    Ok(Done::Snapshot(snapshot)) => {
                        tracing::info!(job = job.job_id, "job succeeded");
                        v1::JobResult { job_id: job.job_id.clone(), ok: true, snapshot, ..Default::default() }
                    }
                    Err(error) => {
                        let error = error.to_string();
                        tracing::error!(job = job.job_id, error, "job failed");
                        v1::JobResult { job_id: job.job_id.clone(), ok: false, error, ..Default::default() }
                    }
                };
                let result = v1::JobResult { finished_unix_ms: Utc::now().timestamp_millis(), ..result };
                agent.outcomes.count(kind, if result.ok { "succeeded" } else { "failed" });
                agent.finish(&job.job_id, result);
            },
            span,
        ));
        let started = tokio::time::Instant::now();
        book.running.insert(id, Running { attempt, source_id, kind, started, progress, task });
    }

    /// Stops a job the coordinator cancelled, and reports it so.
    pub(super) fn cancel(self: &Arc<Self>, id: &str, reason: &str) {
        let running = self.book().running.remove(id);
        if let Some(running) = running {
            running.task.abort();
            if running.kind == "drill" {
                // Cut short: its servers and scratch go, its report says so.
                let (agent, job) = (self.clone(), id.to_owned());
                tokio::spawn(async move {
                    let which = job.clone();
                    let cut = crate::drill::clean_up_cut_short(&agent.repo, &agent.config.host, move |m| {
                        m.job.as_deref() == Some(which.as_str())
                    });
                    for (report, _) in cut.await {
                        tracing::warn!(job, drill = report.id, "a cancelled drill was cleaned up");
                    }
                });
            }
            tracing::warn!(job = id, attempt = running.attempt, reason, "job cancelled");
            self.outcomes.count(running.kind, "cancelled");
            let result = v1::JobResult {
                job_id: id.to_owned(),
                ok: false,
                error: format!("cancelled: {reason}"),
                finished_unix_ms: Utc::now().timestamp_millis(),
                ..Default::default()
            };
            self.finish(id, result);
        }
    }

    async fn execute(&self, job: &v1::JobAssignment, progress: Arc<Progress>) -> Result<Done, JobError> {
        if v1::JobKind::try_from(job.kind) == Ok(v1::JobKind::Drill) {
            let spec = job.drill.clone().unwrap_or_default();
            let report = self.drill(&spec, &job.job_id, progress).await?;
            self.settle().await;
            return Ok(Done::Drill(Box::new(report)));
        }
        let source = self.source(&job.source_id).ok_or_else(|| JobError::NoSource(job.source_id.clone()))?;
        match v1::JobKind::try_from(job.kind) {
            Ok(v1::JobKind::Backup) => {
                let summary = self.backup(source.as_ref(), job, progress).await?;
                self.settle().await;
                Ok(Done::Snapshot(Some(summary)))
            }
            Ok(v1::JobKind::Restore) => {
                let spec = job.restore.clone().unwrap_or_default();
                self.restore(source.as_ref(), &spec, progress).await.map(|()| Done::Snapshot(None))
            }
            _ => Err(JobError::Kind(job.kind)),
        }
    }

    /// Runs the drill the coordinator sent, from the policy it sent.
    async fn drill(
        &self,
        spec: &v1::DrillSpec,
        job_id: &str,
        progress: Arc<Progress>,
    ) -> Result<DrillReport, JobError> {
        let policy = drills_from_yaml(&spec.policy_yaml)
            .map_err(|e| JobError::Request(format!("the coordinator's policy: {e}")))?;
        let drill = policy
            .drill(&spec.name)
            .cloned()
            .ok_or_else(|| JobError::Request(format!("the policy has no drill {:?}", spec.name)))?;
        let priorities = spec
            .priorities
            .iter()
            .filter_map(|(member, p)| Some((member.parse::<Member>().ok()?, u8::try_from(*p).ok()?)))
            .collect();
        let ctx = DrillContext {
            repo: self.repo.clone(),
            spec: self.spec.clone(),
            host: self.config.host.clone(),
            local: self.sources.clone(),
            policy,
            priorities,
            retention_days: retention_days(&spec.policy_yaml),
            agent_bin: std::env::current_exe().ok(),
            job: Some(job_id.to_owned()),
            progress,
        };
        Ok(run_drill(&ctx, &drill).await)
    }

    async fn backup(
        &self,
        source: &dyn Source,
        job: &v1::JobAssignment,
        progress: Arc<Progress>,
    ) -> Result<v1::SnapshotSummary, JobError> {
        // The job's id too: a job that ran twice would show as two snapshots.
        let mut tags = vec![source_tag(source.id()), format!("job:{}", job.job_id)];
        if !job.schedule_id.is_empty() {
            tags.push(format!("{SCHEDULE_TAG}{}", job.schedule_id));
        }
        let ctx = BackupContext { repo: self.repo.clone(), hostname: self.config.host.clone(), tags, progress };
        let done = source.backup(ctx).await?;
        if done.incomplete {
            return Err(JobError::Incomplete {
                snapshot: done.id.short(),
                count: done.warnings.len(),
                first: done.warnings.first().cloned().unwrap_or_default(),
            });
        }
        let summary = summary(&done.id, &done.snapshot);
        self.book().last_backup.insert(source.id().to_owned(), (done.id.to_string(), Utc::now().timestamp()));
        Ok(summary)
    }

    async fn restore(
        &self,
        source: &dyn Source,
        spec: &v1::RestoreSpec,
        progress: Arc<Progress>,
    ) -> Result<(), JobError> {
        if spec.target_dir.is_empty() {
            return Err(JobError::Request("a restore needs a target directory".into()));
        }
        let point = if !spec.to_time.is_empty() {
            RecoveryPoint::Time(parse_recovery_time(&spec.to_time).map_err(|e| JobError::Request(e.to_string()))?)
        } else if !spec.to_lsn.is_empty() {
            RecoveryPoint::Lsn(spec.to_lsn.clone())
        } else {
            RecoveryPoint::Latest
        };
        let request = RestoreRequest {
            target: PathBuf::from(&spec.target_dir),
            snapshot: (!spec.snapshot.is_empty()).then(|| spec.snapshot.clone()),
            path: (!spec.path.is_empty()).then(|| spec.path.clone()),
            point,
            delta: spec.delta,
        };
        let ctx = RestoreContext {
            repo: self.repo.clone(),
            spec: self.spec.clone(),
            hostname: self.config.host.clone(),
            progress,
        };
        let done = source.restore(ctx, request).await?;
        if !done.failed.is_empty() {
            return Err(JobError::Failed { count: done.failed.len(), first: done.failed[0].clone() });
        }
        tracing::info!(snapshot = %done.snapshot.short(), "{}", done.headline);
        Ok(())
    }

    /// What each source's newest backup is, from the repository (so status
    /// is right after a restart): one listing for all of them.
    pub(super) async fn learn_last_backups(&self) {
        let snapshots = match self.repo.snapshots().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the snapshots to learn each source's newest backup");
                return;
            }
        };
        for source in &self.sources {
            if let Some((id, snapshot)) = newest_of(snapshots.iter(), &self.config.host, &source_tag(source.id())) {
                let finished = snapshot.time.timestamp() + snapshot.summary.duration_secs as i64;
                self.book().last_backup.insert(source.id().to_owned(), (id.to_string(), finished));
            }
        }
    }

    /// Copies to secondary stores what the write policy left in the outbox.
    async fn settle(&self) {
        if let OpenedStore::Replicated(r) = &self.stores
            && let Err(e) = r.settle().await
        {
            tracing::warn!(error = %e, "copying the outbox to the secondary stores; the next backup retries");
        }
    }
}

fn summary(id: &SnapshotId, snapshot: &Snapshot) -> v1::SnapshotSummary {
    let s = &snapshot.summary;
    v1::SnapshotSummary {
        snapshot_id: id.to_string(),
        source_kind: snapshot.source.clone(),
        hostname: snapshot.hostname.clone(),
        paths: snapshot.paths.clone(),
        tags: snapshot.tags.clone(),
        time_unix: snapshot.time.timestamp(),
        files: s.files,
        dirs: s.dirs,
        bytes_read: s.bytes_read,
        bytes_unchanged: s.bytes_total.saturating_sub(s.bytes_read),
        chunks_new: s.blobs_new,
        bytes_new_stored: s.bytes_stored,
        duration_seconds: s.duration_secs,
    }
}
