//! `lifeboat restore SNAPSHOT --target DIR`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::HumanBytes;
use lifeboat_agent::files::{RestoreOptions, restore_files};
use lifeboat_agent::progress::Progress;

use crate::RepoArgs;
use crate::progress::ProgressView;

/// Restores a snapshot into a directory.
#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Snapshot id, unique id prefix, or `latest`.
    snapshot: String,
    /// Directory to restore into (created if missing).
    #[arg(long)]
    target: PathBuf,
    /// Restore only this absolute path of the snapshot; its contents land directly in the target.
    #[arg(long)]
    path: Option<String>,
    /// Make the target exactly the snapshot: delete what the snapshot does not have.
    #[arg(long)]
    delete: bool,
    /// Worker threads (default: two per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl RestoreArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let repo = self.repo.open().await?;
        let (id, snapshot) = repo.find_snapshot(&self.snapshot).await?;
        let started = std::time::Instant::now();
        let progress = Arc::new(Progress::default());
        let view = ProgressView::start("restore", progress.clone());
        let opts = RestoreOptions {
            target: self.target.clone(),
            sub_path: self.path.clone(),
            delete: self.delete,
            threads: self.threads,
        };
        let report = restore_files(&repo, &snapshot, opts, progress)
            .await
            .with_context(|| format!("restoring snapshot {} into {}", id.short(), self.target.display()))?;
        drop(view);
        for w in &report.warnings {
            eprintln!("lifeboat: warning: {w}");
        }
        eprintln!(
            "restored snapshot {} into {}: {} files ({}), {} dirs, {} links and special files{} in {:.1}s",
            id.short(),
            self.target.display(),
            report.files,
            HumanBytes(report.bytes),
            report.dirs,
            report.others,
            if self.delete { format!(", {} extra entries deleted", report.deleted) } else { String::new() },
            started.elapsed().as_secs_f64()
        );
        if !report.failed.is_empty() {
            for f in &report.failed {
                eprintln!("lifeboat: failed: {f}");
            }
            bail!("{} files could not be restored (listed above)", report.failed.len());
        }
        Ok(0)
    }
}
