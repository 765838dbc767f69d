//! `lifeboat-agent`: the per-node agent. Today it is PostgreSQL's archive
//! and restore command; the control-plane daemon joins it later.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lifeboat_agent::postgres::archive;
use lifeboat_agent::postgres::wal::{self, Pushed};
use lifeboat_agent::repo_args::RepoArgs;

/// Lifeboat's agent.
#[derive(Parser)]
#[command(name = "lifeboat-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Archive one WAL file: archive_command = 'lifeboat-agent wal-push %p'.
    /// Exits 0 only once the file is durable in the repository.
    WalPush {
        #[command(flatten)]
        repo: RepoArgs,
        /// The WAL file (PostgreSQL's %p).
        path: PathBuf,
        /// Also push up to this many more segments PostgreSQL has marked
        /// ready, in parallel, so later calls return at once (0: off).
        #[arg(long, default_value_t = 8)]
        ahead: usize,
        /// Where markers of segments pushed ahead are kept (default: under
        /// the state directory, one per cluster).
        #[arg(long)]
        spool: Option<PathBuf>,
    },
    /// Restore one WAL file: restore_command = 'lifeboat-agent wal-fetch %f %p'.
    /// Exits 1 without a message when the repository does not have it, as
    /// PostgreSQL expects at the end of the archive.
    WalFetch {
        #[command(flatten)]
        repo: RepoArgs,
        /// The WAL file's name (PostgreSQL's %f).
        name: String,
        /// Where to write it (PostgreSQL's %p).
        dest: PathBuf,
    },
}

/// Exit status of `wal-fetch` that makes PostgreSQL abort recovery.
const WAL_FETCH_FATAL: u8 = 126;

async fn run(command: Command) -> Result<u8> {
    match command {
        Command::WalPush { repo, path, ahead, spool } => {
            let (repo, _stores) = repo.spec().open_for_objects().await?;
            let spool = spool.unwrap_or_else(|| archive::default_spool(&path));
            let pushed = archive::push_ahead(&repo, &path, &spool, ahead)
                .await
                .with_context(|| format!("archiving {}", path.display()))?;
            if pushed == Pushed::AlreadyThere {
                tracing::info!(path = %path.display(), "already archived with the same content");
            }
            Ok(0)
        }
        Command::WalFetch { repo, name, dest } => {
            let fetched = async {
                let (repo, _stores) = repo.spec().open_for_objects().await?;
                wal::fetch(&repo, &name, &dest).await.with_context(|| format!("restoring WAL file {name}"))
            };
            match fetched.await {
                Ok(true) => Ok(0),
                Ok(false) => Ok(1),
                // PostgreSQL takes exit 1 for "no such file" and ends
                // recovery there, promoting with data missing; a status
                // above 125 makes it stop instead, which is what a damaged
                // or unreachable archive calls for.
                Err(e) => {
                    eprintln!("lifeboat-agent: error: {e:#}");
                    Ok(WAL_FETCH_FATAL)
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifeboat_agent::entry::run("lifeboat-agent", run(cli.command))
}
