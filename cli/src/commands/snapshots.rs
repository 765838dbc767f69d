//! `lifeboat snapshots`.

use anyhow::Result;
use clap::Args;
use indicatif::HumanBytes;
use serde::Serialize;

use crate::RepoArgs;

/// Lists snapshots, oldest first.
#[derive(Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row<'a> {
    id: String,
    #[serde(flatten)]
    snapshot: &'a lifeboat_common::repo::format::snapshot::Snapshot,
}

impl SnapshotsArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let repo = self.repo.open().await?;
        let list = repo.snapshot_list().await?;
        // Named, and the rest listed: one damaged object hides nothing else.
        for d in &list.damaged {
            eprintln!("lifeboat: warning: {}", d.error);
        }
        let snaps = list.good;
        if self.json {
            let rows: Vec<Row> = snaps.iter().map(|(id, s)| Row { id: id.to_hex(), snapshot: s }).collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(0);
        }
        println!(
            "{:<8}  {:<20}  {:<16}  {:<8}  {:>10}  {:>10}  paths / tags",
            "id", "time (UTC)", "host", "kind", "size", "added"
        );
        for (id, s) in &snaps {
            let tags = if s.tags.is_empty() { String::new() } else { format!("  [{}]", s.tags.join(", ")) };
            println!(
                "{:<8}  {:<20}  {:<16}  {:<8}  {:>10}  {:>10}  {}{}",
                id.short(),
                s.time.format("%Y-%m-%d %H:%M:%S"),
                s.hostname,
                s.source,
                HumanBytes(s.summary.bytes_total).to_string(),
                HumanBytes(s.summary.bytes_stored).to_string(),
                s.paths.join(" "),
                tags
            );
        }
        match list.damaged.len() {
            0 => println!("{} snapshots", snaps.len()),
            n => println!("{} snapshots, and {n} that cannot be read (`lifeboat repair snapshots`)", snaps.len()),
        }
        Ok(0)
    }
}
