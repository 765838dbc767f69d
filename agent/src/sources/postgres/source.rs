//! A PostgreSQL cluster as a [`Source`]: its `[[source]]` section, base
//! backups and point-in-time restores through the trait, and WAL streaming
//! kept up while the daemon runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::HumanBytes;
use lifeboat_common::policy::human_duration;
use lifeboat_common::repo::Repository;
use lifeboat_proto::v1;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::basebackup::{PgBackupOptions, backup_postgres};
use super::connect::{ConnectArgs, SslMode};
use super::member::Member;
use super::restore::{PgRestoreOptions, restore_postgres, wal_fetch_command};
use super::stream::{StreamOptions, StreamStatus, stream_wal};
use crate::sources::rehearsal::{ClonePlan, DrillPlan, PlanRequest, Recovered, Scratch};
use crate::sources::{
    BackupContext, BackupDone, Common, Ongoing, Order, RecoveryPoint, RestoreContext, RestoreDone, RestoreRequest,
    Source, SourceError, SourceHealth, SourceSection,
};

/// WAL streaming for a PostgreSQL source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalStreamConfig {
    /// The physical replication slot (created if absent).
    pub slot: String,
    /// Commits wait for the repository (list the application name in
    /// `synchronous_standby_names`).
    #[serde(default)]
    pub synchronous: bool,
    /// How often the segment being written is stored (not synchronous).
    #[serde(default = "default_interval", deserialize_with = "human_duration")]
    pub interval: Duration,
    /// The name the server sees.
    #[serde(default = "default_application_name")]
    pub application_name: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_application_name() -> String {
    "lifeboat".into()
}

/// A `[[source]]` of `kind = "postgres"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Id, schedules, RPO.
    #[serde(flatten)]
    pub common: Common,
    /// The data directory (required: checked after parsing, so that a
    /// misspelt field is named rather than reported missing).
    #[serde(default)]
    pub pgdata: PathBuf,
    /// Server host or socket directory.
    pub pg_host: Option<String>,
    /// Port.
    pub pg_port: Option<u16>,
    /// User.
    pub pg_user: Option<String>,
    /// Database.
    pub pg_dbname: Option<String>,
    /// TLS: `disable` (the default) or `verify-full`.
    #[serde(default)]
    pub pg_sslmode: SslMode,
    /// The CA the server's certificate must chain to (`verify-full`).
    pub pg_sslrootcert: Option<PathBuf>,
    /// Stream WAL continuously, whether or not a coordinator is reachable
    /// (as a failover member: only while it is the unfenced primary).
    pub wal_stream: Option<WalStreamConfig>,
    /// As a failover standby, stream from the group's primary whenever it
    /// is reachable (`primary_conninfo`), besides following the repository.
    #[serde(default)]
    pub stream_from_primary: bool,
    /// Directory of `pg_ctl`, for a failover member whose server the agent
    /// starts, stops and promotes (default: the cluster's major version's,
    /// as Debian installs it, else `PATH`).
    pub pg_bin: Option<PathBuf>,
}

impl PostgresConfig {
    /// Connection settings (unset ones fall back to PG* and defaults).
    pub fn connect(&self) -> ConnectArgs {
        ConnectArgs {
            host: self.pg_host.clone(),
            port: self.pg_port,
            user: self.pg_user.clone(),
            dbname: self.pg_dbname.clone(),
            sslmode: self.pg_sslmode,
            sslrootcert: self.pg_sslrootcert.clone(),
        }
    }
}

impl SourceSection for PostgresConfig {
    fn common(&self) -> &Common {
        &self.common
    }

    fn check(&self) -> Result<(), String> {
        if self.pgdata.as_os_str().is_empty() {
            return Err(format!("source {:?}: a postgres source needs pgdata", self.common.id));
        }
        if self.pg_sslmode == SslMode::VerifyFull && self.pg_sslrootcert.is_none() {
            return Err(format!(
                "source {:?}: pg_sslmode verify-full needs pg_sslrootcert (the CA the server's certificate chains to)",
                self.common.id
            ));
        }
        Ok(())
    }

    fn resolve(&mut self, base: &Path) {
        for path in [Some(&mut self.pgdata), self.pg_sslrootcert.as_mut()].into_iter().flatten() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    fn build(&self) -> Arc<dyn Source> {
        Arc::new(PostgresSource::new(self.clone(), self.connect()))
    }
}

/// A PostgreSQL cluster, with the options of one backup or restore beyond
/// what the configuration says (the CLI sets them from its flags).
#[derive(Debug, Default)]
pub struct PostgresSource {
    config: PostgresConfig,
    connect: ConnectArgs,
    threads: usize,
    compression_level: Option<i32>,
    agent_bin: Option<PathBuf>,
    tablespace_map: Vec<(String, PathBuf)>,
    stream: Mutex<Option<watch::Receiver<StreamStatus>>>,
    /// Its role in a failover group, once the daemon runs it.
    member: std::sync::OnceLock<Arc<Member>>,
}

impl PostgresSource {
    /// The cluster `config` describes, reached through `connect`.
    pub fn new(config: PostgresConfig, connect: ConnectArgs) -> Self {
        PostgresSource { config, connect, ..Default::default() }
    }

    /// File worker threads (0: automatic) and the zstd level of the data.
    pub fn with_tuning(mut self, threads: usize, compression_level: Option<i32>) -> Self {
        self.threads = threads;
        self.compression_level = compression_level;
        self
    }

    /// The `lifeboat-agent` binary a restored server fetches WAL with
    /// (`wal-fetch`, given the repository this restore reads; default:
    /// this binary).
    pub fn with_agent_bin(mut self, agent: PathBuf) -> Self {
        self.agent_bin = Some(agent);
        self
    }

    /// Where restored tablespaces go, by OID or name.
    pub fn with_tablespace_map(mut self, map: Vec<(String, PathBuf)>) -> Self {
        self.tablespace_map = map;
        self
    }
}

#[async_trait::async_trait]
impl Source for PostgresSource {
    fn id(&self) -> &str {
        &self.config.common.id
    }

    fn describe(&self) -> v1::Source {
        self.config.common.to_proto(v1::SourceKind::Postgres, vec![self.config.pgdata.display().to_string()])
    }

    async fn backup(&self, ctx: BackupContext) -> Result<BackupDone, SourceError> {
        let opts = PgBackupOptions {
            pgdata: self.config.pgdata.clone(),
            connect: self.connect.clone(),
            hostname: ctx.hostname,
            tags: ctx.tags,
            threads: self.threads,
            compression_level: self.compression_level,
        };
        let outcome = backup_postgres(&ctx.repo, opts, ctx.progress).await.map_err(SourceError::kind)?;
        let s = &outcome.snapshot.summary;
        let mut remarks = Vec::new();
        let mut warnings = outcome.warnings;
        let headline = match &outcome.snapshot.postgres {
            Some(pg) => {
                match pg.pages_verified {
                    0 if pg.corrupt_pages.is_empty() => {
                        remarks.push("page checksums not verified: the cluster has no data checksums".to_owned())
                    }
                    n => remarks.push(format!("page checksums verified on {n} pages")),
                }
                warnings.extend(pg.corrupt_pages.iter().map(|page| format!(
                    "page checksum mismatch in {} block {} (stored {:#06x}, content has {:#06x}); the backup holds the page as read and is marked",
                    page.file, page.block, page.found, page.expected
                )));
                format!(
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
                )
            }
            None => format!("base backup {} saved", outcome.id.short()),
        };
        Ok(BackupDone {
            id: outcome.id,
            snapshot: outcome.snapshot,
            headline,
            remarks,
            warnings,
            // WAL replay mends what changed while it was read: a base
            // backup stands whatever it warns about.
            incomplete: false,
        })
    }

    async fn restore(&self, ctx: RestoreContext, request: RestoreRequest) -> Result<RestoreDone, SourceError> {
        let restore_command = wal_fetch_command(self.agent_bin.as_deref(), &ctx.spec).map_err(SourceError::kind)?;
        let opts = PgRestoreOptions {
            target_dir: request.target.clone(),
            from_backup: request.snapshot.clone(),
            target: request.point.clone(),
            restore_command,
            delta: request.delta,
            tablespace_map: self.tablespace_map.clone(),
            threads: self.threads,
            protect: ctx.spec.local_paths(),
        };
        let started = std::time::Instant::now();
        let outcome = restore_postgres(&ctx.repo, opts, ctx.progress).await.map_err(SourceError::kind)?;
        let files = &outcome.files;
        let headline = format!(
            "restored base backup {} (WAL {} .. {}, timeline {}) into {}: {} files ({} written{}) in {:.1}s; start PostgreSQL on it to recover to {}",
            outcome.backup.short(),
            outcome.postgres.start_lsn,
            outcome.postgres.stop_lsn,
            outcome.postgres.timeline,
            request.target.display(),
            files.files,
            HumanBytes(files.bytes),
            if request.delta {
                format!(", {} already there, {} removed", HumanBytes(files.bytes_reused), files.deleted)
            } else {
                String::new()
            },
            started.elapsed().as_secs_f64(),
            match &request.point {
                RecoveryPoint::Latest => "the end of the archived WAL".to_owned(),
                RecoveryPoint::Time(t) => t.to_rfc3339(),
                RecoveryPoint::Lsn(l) => l.clone(),
            }
        );
        Ok(RestoreDone {
            snapshot: outcome.backup,
            headline,
            warnings: outcome.files.warnings,
            failed: outcome.files.failed,
        })
    }

    fn start(&self, ongoing: Ongoing) -> Vec<JoinHandle<()>> {
        let member = self
            .member
            .get_or_init(|| {
                Member::new(
                    self.config.pgdata.clone(),
                    self.connect.clone(),
                    self.config.pg_bin.clone(),
                    self.config.stream_from_primary,
                )
            })
            .clone();
        let may_stream = member.may_stream();
        let mut tasks =
            vec![tokio::spawn(member.run(ongoing.repo.clone(), ongoing.spec.clone(), ongoing.shutdown.clone()))];
        let Some(stream) = &self.config.wal_stream else { return tasks };
        let (tx, rx) = watch::channel(StreamStatus::default());
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        let options = StreamOptions {
            slot: stream.slot.clone(),
            synchronous: stream.synchronous,
            interval: stream.interval,
            application_name: stream.application_name.clone(),
            status_file: None,
        };
        let id = self.config.common.id.clone();
        let streaming = Streaming { id, repo: ongoing.repo, connect: self.connect.clone(), options, status: tx };
        tasks.push(tokio::spawn(keep_streaming(streaming, may_stream, ongoing.shutdown)));
        tasks
    }

    fn ports(&self) -> Vec<u16> {
        vec![self.connect.port()]
    }

    async fn drill_plan(&self, request: PlanRequest<'_>) -> Result<DrillPlan, SourceError> {
        super::drill::plan(request).await.map_err(SourceError::kind)
    }

    async fn drill_recover(
        &self,
        ctx: RestoreContext,
        plan: &DrillPlan,
        scratch: Scratch,
    ) -> Result<Box<dyn Recovered>, SourceError> {
        super::drill::recover(ctx, plan, scratch).await
    }

    async fn drill_standby(&self) -> Result<ClonePlan, SourceError> {
        super::drill_clone::plan(&self.connect).await.map_err(SourceError::kind)
    }

    async fn drill_clone(
        &self,
        ctx: RestoreContext,
        plan: &ClonePlan,
        scratch: Scratch,
    ) -> Result<Box<dyn Recovered>, SourceError> {
        super::drill_clone::clone(&self.connect, &self.config.pgdata, self.config.pg_bin.as_deref(), ctx, plan, scratch)
            .await
            .map_err(SourceError::kind)
    }

    fn health(&self) -> SourceHealth {
        let member = self.member.get().and_then(|m| m.report());
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let Some(status) = stream.as_ref().map(|rx| rx.borrow().clone()) else {
            return SourceHealth { member, ..SourceHealth::default() };
        };
        SourceHealth {
            error: (!status.connected).then(|| status.last_error.clone()).flatten(),
            wal: Some(v1::WalLag {
                connected: status.connected,
                timeline: status.timeline,
                stored_lsn: status.stored_lsn,
                server_lsn: status.server_lsn,
                lag_bytes: status.lag_bytes,
                lag_seconds: status.lag_seconds,
                newest_stored_age_seconds: status.newest_stored_age_seconds.unwrap_or(-1.0),
            }),
            wal_segments_stored: status.segments_stored,
            member,
        }
    }

    fn order(&self, order: Order) -> Result<(), String> {
        match self.member.get() {
            Some(member) => {
                member.order(order);
                Ok(())
            }
            None => Err(format!("source {} is not running under the daemon", self.config.common.id)),
        }
    }
}

/// What one source's WAL streaming needs.
struct Streaming {
    id: String,
    repo: Repository,
    connect: ConnectArgs,
    options: StreamOptions,
    status: watch::Sender<StreamStatus>,
}

/// Streams WAL for one source for as long as the agent runs and
/// `may_stream` allows, retrying after failures: this goes on whether or
/// not a coordinator is reachable.
async fn keep_streaming(s: Streaming, mut may_stream: watch::Receiver<bool>, shutdown: watch::Receiver<bool>) {
    loop {
        let mut stop = shutdown.clone();
        tokio::select! {
            allowed = may_stream.wait_for(|m| *m) => if allowed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let (mut stop, mut barred) = (shutdown.clone(), may_stream.clone());
        let stopping = async move {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = barred.wait_for(|m| !*m) => {}
            }
        };
        match stream_wal(&s.repo, &s.connect, &s.options, s.status.clone(), stopping).await {
            Ok(()) if *shutdown.borrow() => return,
            Ok(()) => {
                tracing::warn!(source = s.id, "WAL streaming stopped: this member is not the primary");
                s.status.send_modify(|st| st.connected = false);
                continue;
            }
            Err(e) => {
                tracing::error!(source = s.id, error = %e, "WAL streaming failed; retrying in 10s");
                s.status.send_modify(|st| {
                    st.connected = false;
                    st.last_error = Some(e.to_string());
                });
            }
        }
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
