//! `lifeboat repair index|snapshots`: the way back from a lost or damaged
//! index and from snapshots whose data is gone. Both are safe while
//! backups run.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_common::repo::ops::repair::{repair_index, repair_snapshots};

use crate::RepoArgs;

/// Repair commands.
#[derive(Args)]
pub struct RepairCommand {
    #[command(subcommand)]
    command: RepairSub,
}

#[derive(Subcommand)]
enum RepairSub {
    /// Rebuild the index from the headers of the packs in the store
    /// (replaces every index object read when it began; damaged ones too).
    Index {
        #[command(flatten)]
        repo: RepoArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots whose data is gone (unreadable, or referring to
    /// chunks no index lists or packs the store lacks); with --forget,
    /// remove them. Run `repair index` first: it may find the data again.
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        /// Remove the snapshots found broken.
        #[arg(long)]
        forget: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl RepairCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        match self.command {
            RepairSub::Index { repo, json } => {
                let opened = repo.open().await?;
                let described = opened.store().describe();
                let report =
                    repair_index(&opened).await.with_context(|| format!("rebuilding the index of {described}"))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    eprintln!(
                        "read the headers of {} packs ({} no index listed); wrote {} index objects in place of {}",
                        report.packs, report.packs_added, report.indexes_written, report.indexes_removed
                    );
                }
                for u in &report.unreadable {
                    eprintln!("lifeboat: unreadable pack: {u}");
                }
                if !report.unreadable.is_empty() {
                    bail!(
                        "{} packs could not be read (listed above); their data is not indexed",
                        report.unreadable.len()
                    );
                }
                Ok(0)
            }
            RepairSub::Snapshots { repo, forget, json } => {
                let opened = repo.open().await?;
                let report = repair_snapshots(&opened, forget).await.context("checking the snapshots")?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    return Ok(if report.broken.is_empty() || forget { 0 } else { 1 });
                }
                for b in &report.broken {
                    let what = if b.forgotten { "forgot" } else { "broken" };
                    eprintln!("lifeboat: {what}: {}: {}", b.key, b.reason);
                }
                eprintln!("checked {} snapshots: {} broken", report.checked, report.broken.len());
                if !report.broken.is_empty() && !forget {
                    bail!(
                        "{} snapshots cannot be restored whole (listed above); --forget removes them",
                        report.broken.len()
                    );
                }
                Ok(0)
            }
        }
    }
}
