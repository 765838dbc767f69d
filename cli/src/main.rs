//! `lifeboat`: the operator's command-line client. The repository commands
//! work offline, with nothing but the repository and the master key; the
//! control commands (`status`, `agents`, `jobs`, `backup run`, ...) are the
//! coordinator's admin client over mutual TLS.

mod commands;
mod progress;
mod repo_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::repo_args::RepoArgs;

/// Lifeboat: encrypted, deduplicated backups and restores.
#[derive(Parser)]
#[command(name = "lifeboat", version, about)]
struct Cli {
    /// The repository flags, accepted before the subcommand too (each
    /// subcommand that opens a repository reads them).
    #[command(flatten)]
    _repo: RepoArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Master key files.
    Key(commands::key::KeyCommand),
    /// Repository set-up.
    Repo(commands::repo::RepoCommand),
    /// Back a source up.
    Backup(commands::backup::BackupCommand),
    /// List backups of a source kind with what they can recover.
    Backups(commands::backups::BackupsCommand),
    /// List snapshots.
    Snapshots(commands::snapshots::SnapshotsArgs),
    /// Restore a snapshot.
    Restore(Box<commands::restore::RestoreCommand>),
    /// Run a restore drill of the policy here, offline (`drill run --policy FILE NAME`).
    Drill(commands::drill::DrillCommand),
    /// Check the repository's integrity.
    Verify(commands::verify::VerifyArgs),
    /// Forget snapshots past their retention (--policy) and delete the data
    /// no snapshot needs, in two phases with a grace period.
    Prune(commands::prune::PruneArgs),
    /// Rebuild a lost or damaged index; find (and forget) snapshots whose data is gone.
    Repair(commands::repair::RepairCommand),
    /// The coordinator's audit log of admin calls.
    Audit(commands::audit::AuditCommand),
    /// Certificates for the control plane's mutual TLS.
    Certs(commands::certs::CertsCommand),
    /// The coordinator's view: leader, sources against their RPO, next runs
    /// (exit 2 when a source is behind its RPO or scheduling is degraded).
    Status(commands::control::StatusArgs),
    /// The agents the coordinator knows.
    Agents(commands::control::AgentsArgs),
    /// Jobs, newest first.
    Jobs(commands::control::JobsArgs),
    /// Cancel a queued or running job.
    Cancel(commands::control::CancelArgs),
    /// The leader's incidents (exit 2 while one is open); `alerts ack ID` stops one's escalation.
    Alerts(commands::alerts::AlertsCommand),
    /// Restore drills the coordinators ran (`drills`), one report (`drills show ID [--markdown]`),
    /// one drill now (`drills run NAME [--wait]`).
    Drills(commands::drills::DrillsCommand),
    /// Failover groups: `status`, `promote GROUP --to HOST/SOURCE`, `switchover`, `pause`, `resume`.
    Failover(commands::failover::FailoverCommand),
}

/// Exit code for "done, but some entries could not be read".
pub const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifeboat_common::telemetry::entry::run("lifeboat", async move {
        match cli.command {
            Command::Key(c) => c.run().await,
            Command::Repo(c) => c.run().await,
            Command::Backup(c) => c.run().await,
            Command::Backups(c) => c.run().await,
            Command::Snapshots(c) => c.run().await,
            Command::Restore(c) => c.run().await,
            Command::Drill(c) => c.run().await,
            Command::Verify(c) => c.run().await,
            Command::Prune(c) => c.run().await,
            Command::Repair(c) => c.run().await,
            Command::Audit(c) => c.run().await,
            Command::Certs(c) => c.run().await,
            Command::Status(c) => c.run().await,
            Command::Agents(c) => c.run().await,
            Command::Jobs(c) => c.run().await,
            Command::Cancel(c) => c.run().await,
            Command::Alerts(c) => c.run().await,
            Command::Drills(c) => c.run().await,
            Command::Failover(c) => c.run().await,
        }
    })
}
