//! `lifeboat backup files …`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::HumanBytes;
use lifeboat_agent::files::{BackupOptions, backup_files};
use lifeboat_agent::postgres::basebackup::{PgBackupOptions, backup_postgres};
use lifeboat_agent::postgres::connect::ConnectArgs;
use lifeboat_agent::progress::Progress;
use lifeboat_common::repo::SnapshotId;

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
        let opts = PgBackupOptions {
            pgdata: self.pgdata.clone(),
            connect: self.connect,
            hostname: self.hostname.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
            tags: self.tag,
            threads: self.threads,
            compression_level: self.compression_level,
        };
        let progress = Arc::new(Progress::with_totals());
        let view = ProgressView::start("base backup", progress.clone());
        let outcome = backup_postgres(&repo, opts, progress)
            .await
            .with_context(|| format!("backing up PostgreSQL at {}", self.pgdata.display()))?;
        drop(view);
        let s = &outcome.snapshot.summary;
        if let Some(pg) = &outcome.snapshot.postgres {
            eprintln!(
                "base backup {} saved: WAL {} .. {} on timeline {}; {} files ({}), {} new ({} stored) in {:.1}s",
                outcome.id.short(),
                pg.start_lsn,
                pg.stop_lsn,
                pg.timeline,
                s.files,
                HumanBytes(s.bytes_total),
                HumanBytes(s.bytes_new),
                HumanBytes(s.bytes_stored),
                s.duration_secs
            );
        }
        println!("{}", outcome.id);
        settle(&stores).await?;
        for w in &outcome.warnings {
            eprintln!("lifeboat: warning: {w}");
        }
        let corrupt = outcome.snapshot.postgres.as_ref().map_or(&[][..], |pg| &pg.corrupt_pages[..]);
        match outcome.snapshot.postgres.as_ref().map_or(0, |pg| pg.pages_verified) {
            0 if corrupt.is_empty() => eprintln!("page checksums not verified: the cluster has no data checksums"),
            n => eprintln!("page checksums verified on {n} pages"),
        }
        for page in corrupt {
            eprintln!(
                "lifeboat: warning: page checksum mismatch in {} block {} (stored {:#06x}, content has {:#06x}); the backup holds the page as read and is marked",
                page.file, page.block, page.found, page.expected
            );
        }
        Ok(if outcome.warnings.is_empty() && corrupt.is_empty() { 0 } else { EXIT_PARTIAL })
    }
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
            BackupSub::Run(args) => return args.run().await,
        };
        let (repo, stores) = args.repo.open_with_stores().await?;
        let parent = match &args.parent {
            Some(p) => Some(repo.find_snapshot(p).await.context("finding the parent snapshot")?.0),
            None => None::<SnapshotId>,
        };
        let host = args.host.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
        let opts = BackupOptions {
            paths: args.paths,
            includes: args.include,
            excludes: args.exclude,
            tags: args.tag,
            hostname: host,
            force: args.force,
            parent,
            threads: args.threads,
            content_check: None,
            compression_level: args.compression_level,
            fixed_chunks: None,
            read_timeout: Some(args.read_timeout),
            skip_xattrs: args.no_xattrs,
        };
        let progress = Arc::new(Progress::with_totals());
        let view = ProgressView::start("backup", progress.clone());
        let outcome = backup_files(&repo, opts, progress).await.context("backing up files")?;
        drop(view);
        let s = &outcome.snapshot.summary;
        eprintln!(
            "snapshot {} saved: {} files ({}), {} dirs; read {} files ({}), {} new chunks, {} added to the repository ({} stored) in {:.1}s",
            outcome.id.short(),
            s.files,
            HumanBytes(s.bytes_total),
            s.dirs,
            s.files_read,
            HumanBytes(s.bytes_read),
            s.blobs_new,
            HumanBytes(s.bytes_new),
            HumanBytes(s.bytes_stored),
            s.duration_secs,
        );
        println!("{}", outcome.id);
        settle(&stores).await?;
        for n in &outcome.notices {
            eprintln!("lifeboat: note: {n}");
        }
        if outcome.warnings.is_empty() {
            return Ok(0);
        }
        for w in &outcome.warnings {
            eprintln!("lifeboat: warning: {w}");
        }
        eprintln!(
            "lifeboat: error: snapshot {} is incomplete: {} entries could not be read",
            outcome.id.short(),
            outcome.warnings.len()
        );
        Ok(EXIT_PARTIAL)
    }
}
