//! `lifeboat verify [--read-data]`.

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::HumanBytes;
use lifeboat_agent::progress::Progress;
use lifeboat_common::repo::verify::verify;

use crate::RepoArgs;
use crate::progress::ProgressView;

/// Checks that every referenced object exists and the indexes agree; with
/// `--read-data`, also downloads, decrypts and hashes everything.
#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Read and authenticate every pack.
    #[arg(long)]
    read_data: bool,
}

impl VerifyArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let repo = self.repo.open().await?;
        let progress = Arc::new(Progress::default());
        if self.read_data {
            let total: u64 = repo.index().packs().iter().map(|p| p.size).sum();
            progress.bytes_total.store(total, std::sync::atomic::Ordering::Relaxed);
            progress.totals_known.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let view = ProgressView::start("verify", progress.clone());
        let p = progress.clone();
        let report = verify(&repo, self.read_data, Arc::new(move |n| p.bytes(n))).await?;
        drop(view);
        eprintln!(
            "checked {} snapshots, {} trees, {} packs{}",
            report.snapshots,
            report.trees,
            report.packs,
            if self.read_data {
                format!("; read {} blobs ({})", report.blobs_read, HumanBytes(report.bytes_read))
            } else {
                String::new()
            }
        );
        if report.unindexed_packs > 0 {
            eprintln!(
                "note: {} packs are not in any index (left by an interrupted backup; harmless)",
                report.unindexed_packs
            );
        }
        if !report.ok() {
            for p in &report.problems {
                eprintln!("lifeboat: problem: {p}");
            }
            bail!("verify found {} problems (listed above)", report.problems.len());
        }
        eprintln!("no problems found");
        Ok(0)
    }
}
