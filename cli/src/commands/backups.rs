//! `lifeboat backups postgres [--json]`: base backups and how far each recovers.

use anyhow::Result;
use clap::{Args, Subcommand};
use indicatif::HumanBytes;
use lifeboat_agent::sources::postgres::catalog::base_backups;

use crate::RepoArgs;

/// Lists backups of one source kind.
#[derive(Args)]
pub struct BackupsCommand {
    #[command(subcommand)]
    command: BackupsSub,
}

#[derive(Subcommand)]
enum BackupsSub {
    /// PostgreSQL base backups, their WAL range and recoverable window.
    Postgres {
        #[command(flatten)]
        repo: RepoArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl BackupsCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let BackupsSub::Postgres { repo, json } = self.command;
        let repo = repo.open().await?;
        let backups = base_backups(&repo).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&backups)?);
            return Ok(0);
        }
        println!(
            "{:<10} {:<20} {:<20} {:>3} {:<23} {:>10} {:>10}  recoverable",
            "id", "started", "consistent at", "tli", "WAL", "size", "stored"
        );
        for b in &backups {
            let window = match (&b.unusable, &b.recoverable_to_lsn) {
                (Some(why), _) => format!("unusable: {why}"),
                (None, Some(to)) => {
                    let gap = b.wal_gap_at.as_deref().map(|g| format!(" (gap at {g})")).unwrap_or_default();
                    let until = b
                        .recoverable_to_time
                        .map(|t| {
                            format!(
                                ", {} .. ~{}",
                                b.stop_time.format("%Y-%m-%d %H:%M:%S"),
                                t.format("%Y-%m-%d %H:%M:%S")
                            )
                        })
                        .unwrap_or_default();
                    format!("LSN {} .. {to}{until}{gap}", b.stop_lsn)
                }
                (None, None) => "-".into(),
            };
            let window = match b.corrupt_pages.len() {
                0 => window,
                n => format!(
                    "{window}; {n} CORRUPT PAGES (first: {} block {})",
                    b.corrupt_pages[0].file, b.corrupt_pages[0].block
                ),
            };
            println!(
                "{:<10} {:<20} {:<20} {:>3} {:<23} {:>10} {:>10}  {window}",
                &b.id[..8],
                b.start_time.format("%Y-%m-%d %H:%M:%S"),
                b.stop_time.format("%Y-%m-%d %H:%M:%S"),
                b.timeline,
                format!("{}..{}", b.start_lsn, b.stop_lsn),
                HumanBytes(b.bytes_total).to_string(),
                HumanBytes(b.bytes_stored).to_string(),
            );
        }
        Ok(0)
    }
}
