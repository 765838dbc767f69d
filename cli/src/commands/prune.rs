//! `lifeboat prune`: applies a policy's retention (with `--policy`) and
//! deletes the data no snapshot needs, in two phases with a grace period.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::HumanBytes;
use lifeboat_common::policy::backup_schedules_from_yaml;
use lifeboat_common::repo::ops::prune::SAFE_GRACE;
use lifeboat_common::repo::ops::retention::apply;

use crate::{EXIT_PARTIAL, RepoArgs};

/// `lifeboat prune`.
#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Forget snapshots past their schedule's `retention_days` in this
    /// policy first (the newest of each source is always kept).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// How long data stays marked before it is deleted: longer than the
    /// longest backup, so one that started before the mark is safe.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
    /// Take a grace period shorter than an hour: a backup killed without
    /// its marker may lose what it stored (tests and emergencies only).
    #[arg(long)]
    unsafe_grace: bool,
    /// Apply retention as it stands at this time (RFC 3339; default now),
    /// e.g. with --dry-run to see what goes next week. Grace is always
    /// counted from now.
    #[arg(long)]
    as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// Only say what would be forgotten.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl PruneArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let days: HashMap<String, u32> = match &self.policy {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let schedules =
                    backup_schedules_from_yaml(&text).with_context(|| format!("policy {}", path.display()))?;
                schedules.iter().filter_map(|s| s.retention_days.map(|d| (s.id(), d))).collect()
            }
            None => HashMap::new(),
        };
        if self.grace < SAFE_GRACE && !self.unsafe_grace {
            bail!(
                "--grace {} is shorter than {}: a backup that died without its marker could lose data; add --unsafe-grace to prune anyway",
                humantime::format_duration(self.grace),
                humantime::format_duration(SAFE_GRACE)
            );
        }
        let repo = self.repo.open().await?;
        let grace = chrono::Duration::from_std(self.grace).context("--grace is too long")?;
        let at = self.as_of.unwrap_or_else(chrono::Utc::now);
        let report = apply(&repo, &days, at, grace, self.dry_run).await.context("applying retention")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(0);
        }
        let verb = if self.dry_run { "would forget" } else { "forgot" };
        println!("{verb} {} snapshots past their retention", report.forgotten.len());
        for id in &report.forgotten {
            println!("  {}", id.short());
        }
        if let Some(from) = &report.wal_kept_from {
            println!("WAL kept from {from}; {} older WAL objects deleted", report.wal_deleted);
        }
        let Some(p) = &report.prune else { return Ok(0) };
        for why in &p.held_back {
            eprintln!("lifeboat: warning: nothing marked or deleted: {why}");
        }
        if !p.held_back.is_empty() {
            eprintln!(
                "lifeboat: error: prune held back; `lifeboat verify` lists every problem, `lifeboat repair` mends them"
            );
            return Ok(EXIT_PARTIAL);
        }
        println!(
            "pruned {} packs ({}); marked {} packs ({}) to go after the grace period; {} waiting; {} held for running backups; {} referenced again and kept",
            p.deleted_packs,
            HumanBytes(p.deleted_bytes),
            p.marked_packs,
            HumanBytes(p.marked_bytes),
            p.waiting_packs,
            p.held_for_writers,
            p.revived_packs
        );
        if p.leftover_packs + p.temporaries + p.stale_writers > 0 {
            println!(
                "removed what interrupted writers left: {} unindexed packs ({}), {} temporary files, {} stale writer markers",
                p.leftover_packs,
                HumanBytes(p.leftover_bytes),
                p.temporaries,
                p.stale_writers
            );
        }
        Ok(0)
    }
}
