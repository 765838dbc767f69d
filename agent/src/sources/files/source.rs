//! File trees as a [`Source`]: their `[[source]]` section, backup and
//! restore through the trait, and watching for changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indicatif::HumanBytes;
use lifeboat_proto::v1;
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::{BackupOptions, ChangeWatcher, RestoreOptions, backup_files, restore_files};
use crate::sources::rehearsal::{DrillPlan, PlanRequest, Recovered, Scratch};
use crate::sources::{
    BackupContext, BackupDone, Common, Ongoing, RestoreContext, RestoreDone, RestoreRequest, Source, SourceError,
    SourceSection, pick_snapshot,
};

/// A `[[source]]` of `kind = "files"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Id, schedules, RPO.
    #[serde(flatten)]
    pub common: Common,
    /// The roots (required: checked after parsing, so that a misspelt
    /// field is named rather than reported missing).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Globs left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Watch the paths and report changes (for an on-change schedule).
    #[serde(default)]
    pub watch: bool,
}

impl SourceSection for FilesConfig {
    fn common(&self) -> &Common {
        &self.common
    }

    fn check(&self) -> Result<(), String> {
        if self.paths.is_empty() {
            return Err(format!("source {:?}: a files source needs paths", self.common.id));
        }
        Ok(())
    }

    fn resolve(&mut self, base: &Path) {
        for p in &mut self.paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    fn build(&self) -> Arc<dyn Source> {
        Arc::new(FilesSource::new(self.clone()))
    }
}

/// File trees, with the options of one backup or restore beyond what the
/// configuration says (the CLI sets them from its flags).
#[derive(Debug, Clone, Default)]
pub struct FilesSource {
    config: FilesConfig,
    backup: BackupOptions,
    restore: RestoreOptions,
}

impl FilesSource {
    /// The source `config` describes, with default options.
    pub fn new(config: FilesConfig) -> Self {
        FilesSource { config, ..Default::default() }
    }

    /// Backs up with `options` (its paths, excludes, host and tags are
    /// replaced by the configuration's and the context's).
    pub fn with_backup_options(mut self, options: BackupOptions) -> Self {
        self.backup = options;
        self
    }

    /// Restores with `options` (its target, path and delta are replaced by
    /// the request's; the repository's own files are always protected).
    pub fn with_restore_options(mut self, options: RestoreOptions) -> Self {
        self.restore = options;
        self
    }
}

#[async_trait::async_trait]
impl Source for FilesSource {
    fn id(&self) -> &str {
        &self.config.common.id
    }

    fn describe(&self) -> v1::Source {
        let paths = self.config.paths.iter().map(|p| p.display().to_string()).collect();
        self.config.common.to_proto(v1::SourceKind::Files, paths)
    }

    async fn backup(&self, ctx: BackupContext) -> Result<BackupDone, SourceError> {
        let opts = BackupOptions {
            paths: self.config.paths.clone(),
            excludes: self.config.exclude.clone(),
            tags: ctx.tags,
            hostname: ctx.hostname,
            ..self.backup.clone()
        };
        let outcome = backup_files(&ctx.repo, opts, ctx.progress).await.map_err(SourceError::kind)?;
        let s = &outcome.snapshot.summary;
        let headline = format!(
            "snapshot {} saved: {} files ({}), {} dirs; read {} files ({}), {} new chunks, {} added to the repository ({} stored) in {:.1}s",
            outcome.id.short(),
            s.files,
            HumanBytes(s.bytes_total),
            s.dirs,
            s.files_read,
            HumanBytes(s.bytes_read),
            s.blobs_new,
            HumanBytes(s.bytes_new),
            HumanBytes(s.bytes_stored),
            s.duration_secs,
        );
        Ok(BackupDone {
            id: outcome.id,
            snapshot: outcome.snapshot,
            headline,
            remarks: outcome.notices.iter().map(|n| format!("lifeboat: note: {n}")).collect(),
            incomplete: !outcome.warnings.is_empty(),
            warnings: outcome.warnings,
        })
    }

    async fn restore(&self, ctx: RestoreContext, request: RestoreRequest) -> Result<RestoreDone, SourceError> {
        let (id, snapshot) =
            pick_snapshot(&ctx.repo, request.snapshot.as_deref(), &ctx.hostname, &self.config.common).await?;
        let opts = RestoreOptions {
            target: request.target.clone(),
            sub_path: request.path.clone(),
            delta: request.delta,
            protect: ctx.spec.local_paths(),
            ..self.restore.clone()
        };
        let (delete, delta) = (opts.delete, opts.delta);
        let started = std::time::Instant::now();
        let report = restore_files(&ctx.repo, &snapshot, opts, ctx.progress).await.map_err(SourceError::kind)?;
        let headline = format!(
            "restored snapshot {} into {}: {} files ({} written{}), {} dirs, {} links and special files{}{} in {:.1}s",
            id.short(),
            request.target.display(),
            report.files,
            HumanBytes(report.bytes),
            if delta { format!(", {} already there", HumanBytes(report.bytes_reused)) } else { String::new() },
            report.dirs,
            report.others,
            if delete { format!(", {} extra entries deleted", report.deleted) } else { String::new() },
            if report.kept > 0 {
                format!(", {} existing files kept (--overwrite)", report.kept)
            } else {
                String::new()
            },
            started.elapsed().as_secs_f64()
        );
        Ok(RestoreDone { snapshot: id, headline, warnings: report.warnings, failed: report.failed })
    }

    async fn drill_plan(&self, request: PlanRequest<'_>) -> Result<DrillPlan, SourceError> {
        DrillPlan::newest_snapshot(&request, "files")
    }

    async fn drill_recover(
        &self,
        ctx: RestoreContext,
        plan: &DrillPlan,
        scratch: Scratch,
    ) -> Result<Box<dyn Recovered>, SourceError> {
        super::drill::recover(ctx, plan, scratch).await
    }

    fn start(&self, ongoing: Ongoing) -> Vec<JoinHandle<()>> {
        if !self.config.watch {
            return Vec::new();
        }
        vec![tokio::spawn(watch(self.config.common.id.clone(), self.config.paths.clone(), ongoing))]
    }
}

/// Reports each (debounced) change of the source until the daemon stops.
async fn watch(id: String, paths: Vec<PathBuf>, mut ongoing: Ongoing) {
    let mut watcher = match ChangeWatcher::new(&paths, Duration::from_secs(2)) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(source = id, error = %e, "cannot watch the source for changes");
            return;
        }
    };
    loop {
        let changed = tokio::select! {
            changed = watcher.next() => changed,
            _ = ongoing.shutdown.wait_for(|stop| *stop) => return,
        };
        match changed {
            Some(Ok(paths)) => {
                tracing::info!(source = id, paths = paths.len(), "source changed");
                ongoing.events.changed(&id);
            }
            Some(Err(e)) => tracing::warn!(source = id, error = %e, "watching for changes"),
            None => return,
        }
    }
}
