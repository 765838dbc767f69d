//! `lifeboat-agent`: the per-node agent: the daemon the coordinator drives
//! (`run`), and PostgreSQL's archive and restore commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lifeboat_agent::daemon::{self, config::AgentConfig};
use lifeboat_agent::sources::postgres::connect::ConnectArgs;
use lifeboat_agent::sources::postgres::stream::{self, StreamOptions, StreamStatus};
use lifeboat_agent::sources::postgres::wal::{Pushed, Restored};
use lifeboat_agent::sources::postgres::{archive, prefetch};
use lifeboat_common::repo::engine::settings::RepoArgs;
use lifeboat_common::telemetry::entry;

/// Lifeboat's agent.
#[derive(Parser)]
#[command(name = "lifeboat-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as a daemon: attach to the leading coordinator over mutual TLS,
    /// run the jobs it assigns, stream WAL and watch sources as configured.
    Run {
        /// The agent's configuration file (TOML).
        #[arg(long, env = "LIFEBOAT_AGENT_CONFIG")]
        config: PathBuf,
    },
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
        /// Keep up to this many following segments fetched into a spool in
        /// pg_wal by a prefetcher in the background, for the next calls to
        /// take at once (0: off).
        #[arg(long, default_value_t = 16)]
        ahead: usize,
        /// The cluster's WAL segment size in bytes (to name the next segments).
        #[arg(long, default_value_t = 16 << 20)]
        segment_size: u64,
        /// Be the prefetcher a call started: fill the window after NAME
        /// into the spool, and write nothing to DEST.
        #[arg(long, hide = true)]
        fill: bool,
    },
    /// Stream WAL from the server through a physical replication slot into
    /// the repository, in the foreground, until interrupted.
    WalStream {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        connect: ConnectArgs,
        /// The physical replication slot (created if absent; it keeps on
        /// the server all WAL not yet in the repository).
        #[arg(long)]
        slot: String,
        /// Store each received byte at once and report it flushed only then:
        /// list the application name in synchronous_standby_names for RPO 0.
        #[arg(long)]
        synchronous: bool,
        /// Seconds between uploads of the segment being written (not synchronous).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// The name the server sees (for synchronous_standby_names).
        #[arg(long, default_value = "lifeboat")]
        application_name: String,
        /// Rewrite this JSON file every second with the streaming status
        /// (positions, lag in bytes and seconds, age of the newest stored WAL).
        #[arg(long)]
        status_file: Option<PathBuf>,
    },
}

/// Exit status of `wal-fetch` that makes PostgreSQL abort recovery.
const WAL_FETCH_FATAL: u8 = 126;

async fn run(command: Command) -> Result<u8> {
    match command {
        Command::Run { config } => {
            let config = AgentConfig::load(&config)?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                stop.send_replace(true);
            });
            let host = config.host.clone();
            daemon::run(config, stopped).await.with_context(|| format!("agent {host}"))?;
            Ok(0)
        }
        Command::WalPush { repo, path, ahead, spool } => {
            let (repo, _stores) = repo.spec()?.open_for_objects().await?;
            let spool = spool.unwrap_or_else(|| archive::default_spool(&path));
            let pushed = archive::push_ahead(&repo, &path, &spool, ahead)
                .await
                .with_context(|| format!("archiving {}", path.display()))?;
            if pushed == Pushed::AlreadyThere {
                tracing::info!(path = %path.display(), "already archived with the same content");
            }
            Ok(0)
        }
        Command::WalFetch { repo, name, dest, ahead, segment_size, fill } => {
            let opened = async { repo.spec()?.open_for_objects().await }.await;
            if fill {
                // The prefetcher a call started, best effort: whatever goes
                // wrong is met again, and reported, when PostgreSQL asks. It
                // always exits 0: an orphan's other statuses can read as a
                // crash to a postmaster that reaps it (PID 1 in a container).
                if let Ok((repo, _stores)) = opened {
                    let spool = prefetch::spool_for(&repo, &dest);
                    prefetch::fill(&repo, &spool, &name, ahead, segment_size).await;
                }
                return Ok(0);
            }
            let fetched = async {
                let (repo, _stores) = opened?;
                let spool = prefetch::spool_for(&repo, &dest);
                let restored = prefetch::fetch_spooled(&repo, &name, &dest, &spool)
                    .await
                    .with_context(|| format!("restoring WAL file {name}"))?;
                if restored == Restored::Whole
                    && prefetch::wants_fill(&spool, &name, ahead, segment_size)
                    && let Err(e) = start_prefetcher()
                {
                    tracing::warn!(error = %e, "starting the WAL prefetcher: fetching one segment at a time");
                }
                anyhow::Ok(restored)
            };
            match fetched.await {
                Ok(Restored::Whole | Restored::Partial) => Ok(0),
                Ok(Restored::Missing) => Ok(1),
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
        Command::WalStream { repo, connect, slot, synchronous, interval, application_name, status_file } => {
            if !(interval > 0.0 && interval.is_finite()) {
                anyhow::bail!("--interval must be a positive number of seconds");
            }
            let interval = std::time::Duration::from_secs_f64(interval);
            wal_stream(repo, connect, StreamOptions { slot, synchronous, interval, application_name, status_file })
                .await
        }
    }
}

/// Starts this same `wal-fetch` again with `--fill`, not waited for: in
/// a process group of its own, its standard streams closed, so that
/// `restore_command` ends without it (it ends once the window is in).
/// PostgreSQL before 16 leaves its other descriptors open to
/// `restore_command`: this process holds them a moment longer.
fn start_prefetcher() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1)).arg("--fill").process_group(0);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    cmd.spawn().map(drop)
}

/// Streams until SIGINT or SIGTERM, printing the status every ten seconds.
async fn wal_stream(repo: RepoArgs, connect: ConnectArgs, opts: StreamOptions) -> Result<u8> {
    let (repo, _stores) = repo.spec()?.open_for_objects().await?;
    let (tx, mut rx) = tokio::sync::watch::channel(StreamStatus::default());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let printer = tokio::spawn(async move {
        let mut last = String::new();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            let s = rx.borrow_and_update().clone();
            let line = format!(
                "timeline {} stored {} received {} server {}: lag {} bytes, {:.1} s; {} segments, {} partial uploads",
                s.timeline,
                s.stored_lsn,
                s.received_lsn,
                s.server_lsn,
                s.lag_bytes,
                s.lag_seconds,
                s.segments_stored,
                s.partial_uploads
            );
            if line != last {
                println!("{line}");
                last = line;
            }
        }
    });
    println!("streaming WAL from {} through slot {} into {}", connect.describe(), opts.slot, repo.store().describe());
    let streamed = stream::stream_wal(&repo, &connect, &opts, tx, shutdown).await;
    printer.abort();
    streamed.with_context(|| format!("streaming WAL from {} through slot {}", connect.describe(), opts.slot))?;
    println!("stopped; every byte received is stored");
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = "lifeboat-agent";
    match &cli.command {
        Command::Run { config } => {
            // Traces start with logging, before the runtime runs the daemon;
            // a configuration that does not load is reported by the daemon.
            let otlp = AgentConfig::load(config).ok().and_then(|c| c.otlp_endpoint);
            entry::run_daemon(name, "info", otlp.as_deref(), run(cli.command))
        }
        _ => entry::run(name, run(cli.command)),
    }
}
