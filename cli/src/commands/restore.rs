//! `lifeboat restore SNAPSHOT --target DIR`, `lifeboat restore postgres|redis …`,
//! and `restore agent` through the coordinator.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::control::{ControlArgs, follow, parse_target};
use lifeboat_agent::progress::Progress;
use lifeboat_agent::sources::files::{FilesSource, Overwrite, RestoreOptions};
use lifeboat_agent::sources::postgres::PostgresSource;
use lifeboat_agent::sources::postgres::startup::{StartOptions, start_and_wait};
use lifeboat_agent::sources::redis::RedisSource;
use lifeboat_agent::sources::redis::restore::{StartOptions as RedisStart, start_and_check};
use lifeboat_agent::sources::{
    RecoveryPoint, RestoreContext, RestoreDone, RestoreRequest, Source, parse_recovery_time,
};
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::engine::open::RepoSpec;

use crate::RepoArgs;
use crate::progress::ProgressView;

/// Restores a snapshot into a directory, or a PostgreSQL cluster to a point.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RestoreCommand {
    #[command(subcommand)]
    sub: Option<RestoreSub>,
    #[command(flatten)]
    files: RestoreArgs,
}

#[derive(Subcommand)]
enum RestoreSub {
    /// Restore a PostgreSQL base backup into a new data directory, set to
    /// recover from the archived WAL to the target when it starts.
    Postgres(PgRestoreArgs),
    /// Restore a Redis snapshot as dump.rdb into a server's directory (its
    /// server stopped), and optionally start a server on it and check it.
    Redis(RedisRestoreArgs),
    /// Ask the coordinator to have a source's agent restore it (files: a
    /// snapshot, or a path of it; PostgreSQL: a base backup and WAL to a target).
    Agent(AgentRestoreArgs),
}

#[derive(Args)]
struct AgentRestoreArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// The source, as HOST/SOURCE; the restore runs on that host's agent.
    #[arg(value_parser = parse_target)]
    target: (String, String),
    /// Where to restore to, on the agent's host.
    #[arg(long)]
    target_dir: String,
    /// Snapshot or backup id (or prefix); default: the newest that fits.
    #[arg(long)]
    snapshot: Option<String>,
    /// Files: only this absolute path of the snapshot.
    #[arg(long)]
    path: Option<String>,
    /// PostgreSQL: recover to this time, with its zone (2026-11-24 10:00:00+00).
    #[arg(long, conflicts_with = "to_lsn", value_parser = parse_recovery_time)]
    to_time: Option<DateTime<Utc>>,
    /// PostgreSQL: recover to this LSN.
    #[arg(long)]
    to_lsn: Option<String>,
    /// Keep what is in place and right; write only what differs.
    #[arg(long)]
    delta: bool,
    /// Wait for the restore to finish (exit 1 if it fails).
    #[arg(long)]
    wait: bool,
}

impl AgentRestoreArgs {
    async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let (host, source_id) = self.target;
        let latest = self.to_time.is_none() && self.to_lsn.is_none();
        let spec = lifeboat_proto::v1::RestoreSpec {
            snapshot: self.snapshot.unwrap_or_default(),
            target_dir: self.target_dir,
            path: self.path.unwrap_or_default(),
            latest,
            to_time: self.to_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
            to_lsn: self.to_lsn.unwrap_or_default(),
            delta: self.delta,
        };
        let request = lifeboat_proto::v1::RestoreRequest { host, source_id, spec: Some(spec) };
        let reply = control
            .call(|mut c| {
                let request = request.clone();
                async move { c.restore(request).await }
            })
            .await?;
        follow(&control, self.control.json, reply, self.wait).await
    }
}

#[derive(Args)]
struct PgRestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The new data directory (must be empty or absent).
    #[arg(long)]
    target_dir: PathBuf,
    /// Recover to this time, with its zone, as PostgreSQL prints it
    /// (2026-11-24 10:00:00.5+00) or in RFC 3339 (2026-11-24T10:00:00Z).
    #[arg(long, conflicts_with_all = ["to_lsn", "latest"], value_parser = parse_recovery_time)]
    to_time: Option<DateTime<Utc>>,
    /// Recover to this WAL position (X/Y).
    #[arg(long, conflicts_with = "latest")]
    to_lsn: Option<String>,
    /// Recover to the end of the archived WAL (the default).
    #[arg(long)]
    latest: bool,
    /// Start from this base backup (id or prefix) instead of the newest that fits.
    #[arg(long)]
    from_backup: Option<String>,
    /// The lifeboat-agent binary PostgreSQL runs to fetch WAL (default: beside this one).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Restore over an existing data directory (its server stopped): keep
    /// files whose content matches, rewrite only what differs, delete the rest.
    #[arg(long)]
    delta: bool,
    /// Put a tablespace (by name or OID) in another directory: NAME=DIR; repeatable.
    #[arg(long, value_parser = parse_tablespace_map)]
    tablespace_map: Vec<(String, PathBuf)>,
    /// Then start the server (as the directory's owner, with pg_ctl) and
    /// wait until recovery ends, printing the point it reached.
    #[arg(long)]
    start: bool,
    /// Directory of pg_ctl (default: the backup's PostgreSQL version's).
    #[arg(long, requires = "start")]
    pg_bin: Option<PathBuf>,
    /// Role to connect as to watch recovery.
    #[arg(long, default_value = "postgres", requires = "start")]
    pg_user: String,
    /// Seconds recovery may take before giving up waiting.
    #[arg(long, default_value_t = 3600, requires = "start")]
    start_timeout: u64,
    /// Worker threads (default: automatic).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl RestoreCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        match self.sub {
            Some(RestoreSub::Postgres(pg)) => pg.run().await,
            Some(RestoreSub::Redis(r)) => r.run().await,
            Some(RestoreSub::Agent(a)) => a.run().await,
            None => self.files.run().await,
        }
    }
}

/// `NAME=DIR` of --tablespace-map.
fn parse_tablespace_map(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.to_owned(), PathBuf::from(dir))),
        _ => Err(format!("{s:?} is not NAME=DIR")),
    }
}

impl PgRestoreArgs {
    async fn run(self) -> Result<u8> {
        let repo = self.repo.open().await?;
        let agent = match self.agent_bin {
            Some(p) => p,
            None => std::env::current_exe().context("locating this binary")?.with_file_name("lifeboat-agent"),
        };
        let agent = std::path::absolute(&agent).with_context(|| format!("resolving {}", agent.display()))?;
        let point = match (self.to_time, self.to_lsn) {
            (Some(t), _) => RecoveryPoint::Time(t),
            (None, Some(l)) => RecoveryPoint::Lsn(l),
            (None, None) => RecoveryPoint::Latest,
        };
        let source = PostgresSource::default()
            .with_tuning(self.threads, None)
            .with_agent_bin(agent)
            .with_tablespace_map(self.tablespace_map);
        let request = RestoreRequest {
            target: self.target_dir.clone(),
            snapshot: self.from_backup,
            path: None,
            point,
            delta: self.delta,
        };
        let started = std::time::Instant::now();
        let what = format!("restoring PostgreSQL into {}", self.target_dir.display());
        let done = run_restore(&source, repo.clone(), self.repo.spec()?, request, what).await?;
        if self.start {
            let opts = StartOptions {
                pg_bin: self.pg_bin,
                user: self.pg_user,
                timeout: std::time::Duration::from_secs(self.start_timeout),
            };
            let (_, backup) = repo.find_snapshot(&done.snapshot.to_string()).await?;
            let version = backup.postgres.map_or(0, |pg| pg.version);
            let reached = start_and_wait(&self.target_dir, version, &opts)
                .await
                .with_context(|| format!("starting PostgreSQL on {}", self.target_dir.display()))?;
            eprintln!(
                "recovery reached {} (last commit replayed: {}); the server runs on timeline {}, log in {}, {:.1}s in all",
                reached.lsn,
                reached.last_commit.as_deref().unwrap_or("none"),
                reached.timeline,
                reached.log.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(0)
    }
}

#[derive(Args)]
struct RedisRestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// A Redis snapshot's id or prefix, or `latest` (the newest Redis snapshot).
    #[arg(default_value = "latest")]
    snapshot: String,
    /// The server's directory (its `dir`): dump.rdb is written there.
    #[arg(long)]
    target_dir: PathBuf,
    /// With `latest`: the newest made on this host.
    #[arg(long)]
    host: Option<String>,
    /// Then start redis-server on it (as the directory's owner), wait until
    /// the dataset is loaded and check its key counts against the capture.
    #[arg(long)]
    start: bool,
    /// The port the started server listens on.
    #[arg(long, default_value_t = 6379, requires = "start")]
    port: u16,
    /// The address the started server listens on.
    #[arg(long, default_value = "127.0.0.1", requires = "start")]
    bind: String,
    /// The redis-server program.
    #[arg(long, default_value = "redis-server", requires = "start")]
    redis_server: PathBuf,
    /// Seconds loading may take before giving up waiting.
    #[arg(long, default_value_t = 3600, requires = "start")]
    start_timeout: u64,
}

impl RedisRestoreArgs {
    async fn run(self) -> Result<u8> {
        let repo = self.repo.open().await?;
        let (id, snapshot) = if self.snapshot == "latest" {
            let snapshots = repo.snapshots().await?;
            snapshots
                .into_iter()
                .filter(|(_, s)| s.redis.is_some() && self.host.as_ref().is_none_or(|h| &s.hostname == h))
                .max_by_key(|(_, s)| s.time)
                .context("the repository has no Redis snapshot (of that host)")?
        } else {
            repo.find_snapshot(&self.snapshot).await?
        };
        let request = RestoreRequest {
            target: self.target_dir.clone(),
            snapshot: Some(id.to_string()),
            path: None,
            point: RecoveryPoint::Latest,
            delta: false,
        };
        let started = std::time::Instant::now();
        let what = format!("restoring Redis snapshot {} into {}", id.short(), self.target_dir.display());
        run_restore(&RedisSource::default(), repo, self.repo.spec()?, request, what).await?;
        if self.start {
            let opts = RedisStart {
                redis_server: self.redis_server,
                bind: self.bind,
                port: self.port,
                timeout: std::time::Duration::from_secs(self.start_timeout),
            };
            let Some(capture) = &snapshot.redis else { bail!("snapshot {} is not of Redis", id.short()) };
            let up = start_and_check(&self.target_dir, capture, &opts)
                .await
                .with_context(|| format!("starting redis-server on {}", self.target_dir.display()))?;
            for r in &up.remarks {
                eprintln!("{r}");
            }
            eprintln!(
                "redis-server (pid {}) serves {} keys at {}, key counts checked against the capture; loaded in {:.1}s, {:.1}s in all; log in {}",
                up.pid,
                up.keys,
                up.addr,
                up.load_seconds,
                started.elapsed().as_secs_f64(),
                up.log.display()
            );
        }
        Ok(0)
    }
}

/// Restores a snapshot into a directory.
#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Snapshot id, unique id prefix, or `latest`.
    #[arg(required = true)]
    snapshot: Option<String>,
    /// Directory to restore into (created if missing).
    #[arg(long, required = true)]
    target: Option<PathBuf>,
    /// Restore only this absolute path of the snapshot; its contents land directly in the target.
    #[arg(long)]
    path: Option<String>,
    /// Make the target exactly the snapshot: delete what the snapshot does not have.
    #[arg(long)]
    delete: bool,
    /// Keep what files in the target already hold where it matches (checked
    /// by content hash, chunk by chunk) and write only what differs.
    #[arg(long, conflicts_with = "overwrite")]
    delta: bool,
    /// Files already in the target: `always` replaced (read-only and newer
    /// ones too), `if-changed` unless size and modification time match,
    /// `if-newer` only by a newer copy, `never` kept as they are.
    #[arg(long, default_value = "always", value_parser = str::parse::<Overwrite>)]
    overwrite: Overwrite,
    /// Leave extended attributes and POSIX ACLs unset.
    #[arg(long)]
    no_xattrs: bool,
    /// Worker threads (default: two per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl RestoreArgs {
    /// Runs the command.
    async fn run(self) -> Result<u8> {
        // Required by clap unless a subcommand is given.
        let (Some(spec), Some(target)) = (self.snapshot.as_deref(), self.target.clone()) else {
            bail!("give a snapshot and --target, or `restore postgres`");
        };
        let repo = self.repo.open().await?;
        let source = FilesSource::default().with_restore_options(RestoreOptions {
            delete: self.delete,
            threads: self.threads,
            overwrite: self.overwrite,
            skip_xattrs: self.no_xattrs,
            ..Default::default()
        });
        let request = RestoreRequest {
            target: target.clone(),
            snapshot: Some(spec.to_owned()),
            path: self.path.clone(),
            point: RecoveryPoint::Latest,
            delta: self.delta,
        };
        let what = format!("restoring snapshot {spec} into {}", target.display());
        run_restore(&source, repo, self.repo.spec()?, request, what).await?;
        Ok(0)
    }
}

/// Restores through `source` with a progress bar, and prints what was
/// restored, what it warned about and what failed (an error).
async fn run_restore(
    source: &dyn Source,
    repo: Repository,
    spec: RepoSpec,
    request: RestoreRequest,
    what: String,
) -> Result<RestoreDone> {
    let progress = Arc::new(Progress::default());
    let view = ProgressView::start("restore", progress.clone());
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let done = source.restore(RestoreContext { repo, spec, hostname, progress }, request).await.context(what)?;
    drop(view);
    for w in &done.warnings {
        eprintln!("lifeboat: warning: {w}");
    }
    eprintln!("{}", done.headline);
    if !done.failed.is_empty() {
        for f in &done.failed {
            eprintln!("lifeboat: failed: {f}");
        }
        bail!("{} entries could not be restored (listed above)", done.failed.len());
    }
    Ok(done)
}
