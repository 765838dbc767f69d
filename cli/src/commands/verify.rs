//! `lifeboat verify [--read-data]`.

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::HumanBytes;
use lifeboat_agent::progress::Progress;
use lifeboat_common::repo::ops::verify::verify;

use lifeboat_common::repo::ops::replicas::ReconcileOptions;

use crate::RepoArgs;
use crate::commands::repo::run_reconcile;
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
    /// Also compare the stores of a replicated repository object by object
    /// (with --read-data, every copy of every pack is read and hashed).
    #[arg(long)]
    stores: bool,
}

impl VerifyArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        // Straight from the store: a verified local copy must not vouch for
        // a damaged remote one.
        let args = RepoArgs { no_cache: true, ..self.repo.clone() };
        let (repo, stores) = args.open_with_stores().await?;
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
                format!(
                    "; read {} blobs and {} WAL files ({})",
                    report.blobs_read,
                    report.wal_objects,
                    HumanBytes(report.bytes_read)
                )
            } else {
                String::new()
            }
        );
        if report.unindexed_packs > 0 {
            eprintln!(
                "note: {} packs are not in any index (left by an interrupted backup; prune removes them after its grace period)",
                report.unindexed_packs
            );
        }
        for n in &report.notes {
            eprintln!("note: {n}");
        }
        let mut problems = report.problems.len();
        for p in &report.problems {
            eprintln!("lifeboat: problem: {p}");
        }
        if self.stores {
            let opts = ReconcileOptions { read_data: self.read_data, ..Default::default() };
            problems += run_reconcile(&repo, &args.master_key()?, &stores, opts).await?.problems.len();
        }
        if problems > 0 {
            bail!("verify found {problems} problems (listed above)");
        }
        eprintln!("no problems found");
        Ok(0)
    }
}
