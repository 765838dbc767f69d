//! `lifeboat`: the operator's command-line client. The repository commands
//! here work offline, with nothing but the repository and the master key.

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
    /// Check the repository's integrity.
    Verify(commands::verify::VerifyArgs),
    /// The coordinator's audit log of admin calls.
    Audit(commands::audit::AuditCommand),
    /// Certificates for the control plane's mutual TLS.
    Certs(commands::certs::CertsCommand),
}

/// Exit code for "done, but some entries could not be read".
pub const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifeboat_agent::entry::run("lifeboat", async move {
        match cli.command {
            Command::Key(c) => c.run().await,
            Command::Repo(c) => c.run().await,
            Command::Backup(c) => c.run().await,
            Command::Backups(c) => c.run().await,
            Command::Snapshots(c) => c.run().await,
            Command::Restore(c) => c.run().await,
            Command::Verify(c) => c.run().await,
            Command::Audit(c) => c.run().await,
            Command::Certs(c) => c.run().await,
        }
    })
}
