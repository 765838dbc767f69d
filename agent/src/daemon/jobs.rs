//! Running what the coordinator assigns: backups and restores of this
//! agent's sources, each in a task of its own, reported when done.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lifeboat_common::repo::SnapshotId;
use lifeboat_common::repo::snapshot::Snapshot;
use lifeboat_common::store::OpenedStore;
use lifeboat_proto::v1;

use super::config::{SourceConfig, SourceKind};
use super::{Agent, Running};
use crate::files::{BackupOptions, RestoreOptions, backup_files, restore_files};
use crate::postgres::basebackup::{PgBackupOptions, backup_postgres};
use crate::postgres::restore::{PgRestoreOptions, RecoveryTarget, restore_postgres, wal_fetch_command};
use crate::progress::Progress;

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
        let (id, attempt) = (job.job_id.clone(), job.attempt);
        let task_progress = progress.clone();
        // Held until the job is in the book, so a fast job's result cannot
        // be recorded before it.
        let task = tokio::spawn(async move {
            tracing::info!(job = job.job_id, attempt = job.attempt, source = job.source_id, "job started");
            let outcome = agent.execute(&job, task_progress).await;
            let result = match outcome {
                Ok(snapshot) => {
                    tracing::info!(job = job.job_id, "job succeeded");
                    v1::JobResult { job_id: job.job_id.clone(), ok: true, snapshot, ..Default::default() }
                }
                Err(error) => {
                    tracing::error!(job = job.job_id, error, "job failed");
                    v1::JobResult { job_id: job.job_id.clone(), ok: false, error, ..Default::default() }
                }
            };
            let result = v1::JobResult { finished_unix_ms: Utc::now().timestamp_millis(), ..result };
            agent.finish(&job.job_id, result);
        });
        book.running.insert(id, Running { attempt, progress, task });
    }

    /// Stops a job the coordinator cancelled, and reports it so.
    pub(super) fn cancel(&self, id: &str, reason: &str) {
        let running = self.book().running.remove(id);
        if let Some(running) = running {
            running.task.abort();
            tracing::warn!(job = id, attempt = running.attempt, reason, "job cancelled");
            let result = v1::JobResult {
                job_id: id.to_owned(),
                ok: false,
                error: format!("cancelled: {reason}"),
                snapshot: None,
                finished_unix_ms: Utc::now().timestamp_millis(),
            };
            self.finish(id, result);
        }
    }

    async fn execute(
        &self,
        job: &v1::JobAssignment,
        progress: Arc<Progress>,
    ) -> Result<Option<v1::SnapshotSummary>, String> {
        let source =
            self.source(&job.source_id).ok_or_else(|| format!("no source {:?} on this agent", job.source_id))?;
        match v1::JobKind::try_from(job.kind) {
            Ok(v1::JobKind::Backup) => {
                let summary = self.backup(source, job, progress).await?;
                self.settle().await;
                Ok(Some(summary))
            }
            Ok(v1::JobKind::Restore) => {
                let spec = job.restore.clone().unwrap_or_default();
                self.restore(source, &spec, progress).await.map(|()| None)
            }
            _ => Err(format!("job kind {} is not one this agent runs", job.kind)),
        }
    }

    async fn backup(
        &self,
        source: &SourceConfig,
        job: &v1::JobAssignment,
        progress: Arc<Progress>,
    ) -> Result<v1::SnapshotSummary, String> {
        // The job's id too: a job that ran twice would show as two snapshots.
        let mut tags = vec![source.tag(), format!("job:{}", job.job_id)];
        if !job.schedule_id.is_empty() {
            tags.push(format!("{}{}", lifeboat_common::repo::retention::SCHEDULE_TAG, job.schedule_id));
        }
        let (id, snapshot) = match source.kind {
            SourceKind::Files => {
                let opts = BackupOptions {
                    paths: source.paths.clone(),
                    includes: Vec::new(),
                    excludes: source.exclude.clone(),
                    tags,
                    hostname: self.config.host.clone(),
                    force: false,
                    parent: None,
                    threads: 0,
                    content_check: None,
                    compression_level: None,
                    fixed_chunks: None,
                    read_timeout: None,
                    skip_xattrs: false,
                };
                let outcome = backup_files(&self.repo, opts, progress).await.map_err(|e| e.to_string())?;
                if !outcome.warnings.is_empty() {
                    return Err(format!(
                        "snapshot {} is incomplete: {} entries could not be read (first: {})",
                        outcome.id.short(),
                        outcome.warnings.len(),
                        outcome.warnings[0]
                    ));
                }
                (outcome.id, outcome.snapshot)
            }
            SourceKind::Postgres => {
                let opts = PgBackupOptions {
                    pgdata: source.pgdata.clone().unwrap_or_default(),
                    connect: source.connect(),
                    hostname: self.config.host.clone(),
                    tags,
                    threads: 0,
                    compression_level: None,
                };
                let outcome = backup_postgres(&self.repo, opts, progress).await.map_err(|e| e.to_string())?;
                (outcome.id, outcome.snapshot)
            }
        };
        let summary = summary(&id, &snapshot);
        self.book().last_backup.insert(source.id.clone(), (id.to_string(), Utc::now().timestamp()));
        Ok(summary)
    }

    async fn restore(
        &self,
        source: &SourceConfig,
        spec: &v1::RestoreSpec,
        progress: Arc<Progress>,
    ) -> Result<(), String> {
        if spec.target_dir.is_empty() {
            return Err("a restore needs a target directory".into());
        }
        let target = PathBuf::from(&spec.target_dir);
        match source.kind {
            SourceKind::Files => {
                let (id, snapshot) = if spec.snapshot.is_empty() {
                    self.newest(source).await?.ok_or_else(|| format!("source {} has no snapshot yet", source.id))?
                } else {
                    self.repo.find_snapshot(&spec.snapshot).await.map_err(|e| e.to_string())?
                };
                let opts = RestoreOptions {
                    target: target.clone(),
                    sub_path: (!spec.path.is_empty()).then(|| spec.path.clone()),
                    delete: false,
                    delta: spec.delta,
                    fixed_chunks: None,
                    threads: 0,
                    ..Default::default()
                };
                let report = restore_files(&self.repo, &snapshot, opts, progress).await.map_err(|e| e.to_string())?;
                tracing::info!(snapshot = %id.short(), target = %target.display(), files = report.files, bytes = report.bytes, "restored");
                Ok(())
            }
            SourceKind::Postgres => {
                let agent = std::env::current_exe().map_err(|e| format!("locating lifeboat-agent: {e}"))?;
                let command = wal_fetch_command(&agent, &self.spec.locations, self.spec.key_file.as_deref())
                    .map_err(|e| format!("resolving the key file: {e}"))?;
                let recovery = if !spec.to_time.is_empty() {
                    let at = spec
                        .to_time
                        .parse::<DateTime<Utc>>()
                        .map_err(|e| format!("to_time {:?}: {e}", spec.to_time))?;
                    RecoveryTarget::Time(at)
                } else if !spec.to_lsn.is_empty() {
                    RecoveryTarget::Lsn(spec.to_lsn.clone())
                } else {
                    RecoveryTarget::Latest
                };
                let opts = PgRestoreOptions {
                    target_dir: target,
                    from_backup: (!spec.snapshot.is_empty()).then(|| spec.snapshot.clone()),
                    target: recovery,
                    restore_command: command,
                    delta: spec.delta,
                    tablespace_map: Vec::new(),
                    threads: 0,
                    protect: crate::repo_args::RepoArgs::default()
                        .spec_with(self.config.repository.clone(), std::path::Path::new(""))
                        .map(|spec| spec.local_paths())
                        .unwrap_or_default(),
                };
                let outcome = restore_postgres(&self.repo, opts, progress).await.map_err(|e| e.to_string())?;
                tracing::info!(backup = %outcome.backup.short(), "PostgreSQL restored; start it to recover");
                Ok(())
            }
        }
    }

    /// The newest snapshot of a source made on this host.
    async fn newest(&self, source: &SourceConfig) -> Result<Option<(SnapshotId, Snapshot)>, String> {
        let snapshots = self.repo.snapshots().await.map_err(|e| e.to_string())?;
        Ok(self.newest_of(snapshots.iter(), source).map(|(id, s)| (*id, s.clone())))
    }

    /// The newest of `snapshots` that this host made of `source`.
    fn newest_of<'a>(
        &self,
        snapshots: impl Iterator<Item = &'a (SnapshotId, Snapshot)>,
        source: &SourceConfig,
    ) -> Option<&'a (SnapshotId, Snapshot)> {
        let tag = source.tag();
        snapshots.filter(|(_, s)| s.hostname == self.config.host && s.tags.contains(&tag)).max_by_key(|(_, s)| s.time)
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
        for source in &self.config.sources {
            if let Some((id, snapshot)) = self.newest_of(snapshots.iter(), source) {
                let finished = snapshot.time.timestamp() + snapshot.summary.duration_secs as i64;
                self.book().last_backup.insert(source.id.clone(), (id.to_string(), finished));
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
    }
}
