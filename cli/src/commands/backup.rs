//! `lifeboat backup files|postgres|redis …`, and `backup run` through the coordinator.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lifeboat_agent::progress::Progress;
use lifeboat_agent::sources::files::{BackupOptions, FilesConfig, FilesSource};
use lifeboat_agent::sources::postgres::connect::ConnectArgs;
use lifeboat_agent::sources::postgres::{PostgresConfig, PostgresSource};
use lifeboat_agent::sources::redis::endpoint::{Connection, Prefer};
use lifeboat_agent::sources::redis::{RedisConfig, RedisSource};
use lifeboat_agent::sources::{BackupContext, Source};
use lifeboat_common::repo::{Repository, SnapshotId};
use lifeboat_common::store::OpenedStore;

use super::control::{ControlArgs, follow, parse_target};
use crate::progress::ProgressView;
use crate::repo_args::settle;
use crate::{EXIT_PARTIAL, RepoArgs};

/// Backup commands, one per source kind.
#[derive(Args)]
pub struct BackupCommand {
    #[command(subcommand)]
    command: BackupSub,
}

#[derive(Subcommand)]
enum BackupSub {
    /// Back up file trees; prints the new snapshot's id on stdout.
    Files(FilesArgs),
    /// Take a base backup of a running PostgreSQL cluster (WAL must be
    /// archived with `lifeboat-agent wal-push`); prints the backup's id.
    Postgres(PostgresArgs),
    /// Snapshot a Redis server over the replication protocol (as a replica
    /// would receive it), or the master or a replica of a set under
    /// Sentinel; prints the snapshot's id.
    Redis(RedisArgs),
    /// Ask the coordinator to back a source up now, on its agent.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// The source, as HOST/SOURCE.
    #[arg(value_parser = parse_target)]
    target: (String, String),
    /// Wait for the backup to finish (exit 1 if it fails); prints the snapshot id.
    #[arg(long)]
    wait: bool,
}

impl RunArgs {
    async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let (host, source_id) = self.target;
        let request = lifeboat_proto::v1::RunBackupRequest { host, source_id };
        let reply = control
            .call(|mut c| {
                let request = request.clone();
                async move { c.run_backup(request).await }
            })
            .await?;
        follow(&control, self.control.json, reply, self.wait).await
    }
}

#[derive(Args)]
struct PostgresArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The cluster's data directory.
    #[arg(long, env = "PGDATA")]
    pgdata: PathBuf,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Tag the backup; repeatable.
    #[arg(long)]
    tag: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// File worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// zstd level for the data (default: the repository's for files, 1 for
    /// PostgreSQL, whose backups must be fast and whose pages compress well at 1).
    #[arg(long, value_parser = clap::value_parser!(i32).range(-7..=19))]
    compression_level: Option<i32>,
}

impl PostgresArgs {
    async fn run(self) -> Result<u8> {
        let (repo, stores) = self.repo.open_with_stores().await?;
        let config = PostgresConfig { pgdata: self.pgdata.clone(), ..Default::default() };
        let source = PostgresSource::new(config, self.connect).with_tuning(self.threads, self.compression_level);
        let what = format!("backing up PostgreSQL at {}", self.pgdata.display());
        run_backup(&source, repo, &stores, self.hostname, self.tag, "base backup", what).await
    }
}

#[derive(Args)]
struct RedisArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// redis://[USER@]HOST:PORT, rediss://… (TLS), or
    /// sentinel://HOST:PORT[,HOST:PORT…]/MASTER; never with a password.
    #[arg(long)]
    url: String,
    /// The ACL user (instead of one in the URL).
    #[arg(long)]
    user: Option<String>,
    /// A file holding the password.
    #[arg(long, conflicts_with = "password_env")]
    password_file: Option<PathBuf>,
    /// The variable holding the password (e.g. REDISCLI_AUTH).
    #[arg(long)]
    password_env: Option<String>,
    /// The CA that signed the server's certificate (rediss://).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Under Sentinel: capture the master, or a healthy replica.
    #[arg(long, default_value = "master", value_parser = str::parse::<Prefer>)]
    prefer: Prefer,
    /// Tag the snapshot; repeatable.
    #[arg(long)]
    tag: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// zstd level for the data (default 1: RDB strings are often compressed
    /// already, and a capture is on the clock).
    #[arg(long, value_parser = clap::value_parser!(i32).range(-7..=19))]
    compression_level: Option<i32>,
}

impl RedisArgs {
    async fn run(self) -> Result<u8> {
        let connection = Connection {
            url: self.url,
            user: self.user,
            password_file: self.password_file,
            password_env: self.password_env,
            ca_file: self.ca_file,
            prefer: self.prefer,
        };
        // Refuse a bad URL before opening the repository.
        let url = connection.check()?;
        let (repo, stores) = self.repo.open_with_stores().await?;
        let source = RedisSource::new(RedisConfig { connection, ..Default::default() })
            .with_compression_level(self.compression_level);
        let what = format!("capturing Redis at {url}");
        run_backup(&source, repo, &stores, self.hostname, self.tag, "capture", what).await
    }
}

/// Backs `source` up with a progress bar, prints what was saved (the id on
/// stdout) and what went wrong, and settles a replicated repository.
async fn run_backup(
    source: &dyn Source,
    repo: Repository,
    stores: &OpenedStore,
    hostname: Option<String>,
    tags: Vec<String>,
    label: &'static str,
    what: String,
) -> Result<u8> {
    let hostname = hostname.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    let progress = Arc::new(Progress::with_totals());
    let view = ProgressView::start(label, progress.clone());
    let done = source.backup(BackupContext { repo, hostname, tags, progress }).await.context(what)?;
    drop(view);
    eprintln!("{}", done.headline);
    println!("{}", done.id);
    settle(stores).await?;
    for r in &done.remarks {
        eprintln!("{r}");
    }
    for w in &done.warnings {
        eprintln!("lifeboat: warning: {w}");
    }
    if done.incomplete {
        eprintln!(
            "lifeboat: error: snapshot {} is incomplete: {} entries could not be read",
            done.id.short(),
            done.warnings.len()
        );
    }
    Ok(if done.warnings.is_empty() { 0 } else { EXIT_PARTIAL })
}

#[derive(Args)]
struct FilesArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Files and directories to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Leave out entries matching this glob (a name, or a path with `/`); repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    /// Back up only files matching this glob (directories are always walked); repeatable.
    #[arg(long)]
    include: Vec<String>,
    /// Tag the snapshot; repeatable.
    #[arg(long)]
    tag: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    host: Option<String>,
    /// Read every file, even those unchanged since the parent snapshot.
    #[arg(long)]
    force: bool,
    /// Parent snapshot id (default: the latest of this host and these paths).
    #[arg(long)]
    parent: Option<String>,
    /// File worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// zstd level for the data (default: the repository's for files, 1 for
    /// PostgreSQL, whose backups must be fast and whose pages compress well at 1).
    #[arg(long, value_parser = clap::value_parser!(i32).range(-7..=19))]
    compression_level: Option<i32>,
    /// How long a read may wait for data (a pipe, a device-like file)
    /// before its file is left out with a warning.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    read_timeout: std::time::Duration,
    /// Leave extended attributes and POSIX ACLs out of the snapshot.
    #[arg(long)]
    no_xattrs: bool,
}

impl BackupCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let args = match self.command {
            BackupSub::Files(args) => args,
            BackupSub::Postgres(args) => return args.run().await,
            BackupSub::Redis(args) => return args.run().await,
            BackupSub::Run(args) => return args.run().await,
        };
        let (repo, stores) = args.repo.open_with_stores().await?;
        let parent = match &args.parent {
            Some(p) => Some(repo.find_snapshot(p).await.context("finding the parent snapshot")?.0),
            None => None::<SnapshotId>,
        };
        let config = FilesConfig { paths: args.paths, exclude: args.exclude, ..Default::default() };
        let source = FilesSource::new(config).with_backup_options(BackupOptions {
            includes: args.include,
            force: args.force,
            parent,
            threads: args.threads,
            compression_level: args.compression_level,
            read_timeout: Some(args.read_timeout),
            skip_xattrs: args.no_xattrs,
            ..Default::default()
        });
        run_backup(&source, repo, &stores, args.host, args.tag, "backup", "backing up files".into()).await
    }
}
