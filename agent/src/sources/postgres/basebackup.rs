//! Base backups of a running cluster through the non-exclusive backup API:
//! `pg_backup_start` on a session held open for the whole backup, the data
//! directory and every tablespace captured by the file pipeline (so a second backup stores only
//! what changed), then `pg_backup_stop`, whose `backup_label` and
//! `tablespace_map` are kept in the snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

use chrono::Utc;
use lifeboat_common::repo::format::snapshot::{PostgresBackup, Tablespace};
use lifeboat_common::repo::format::wal::{Lsn, Segment, Timeline};
use lifeboat_common::repo::{Repository, SnapshotId};

use super::PgError;
use super::checksum::PageChecks;
use super::connect::ConnectArgs;
use super::relfile::{PAGE_SIZE, RelationFiles};
use crate::progress::Progress;
use crate::sources::files::{BackupOptions, BackupOutcome, ContentCheck, capture};

/// What to back up.
#[derive(Debug, Clone)]
pub struct PgBackupOptions {
    /// The cluster's data directory, as this machine sees it.
    pub pgdata: PathBuf,
    /// How to reach the server.
    pub connect: ConnectArgs,
    /// Host name to record.
    pub hostname: String,
    /// Operator tags.
    pub tags: Vec<String>,
    /// File worker threads (0: one per core).
    pub threads: usize,
    /// zstd level for the data (default: [`PG_COMPRESSION_LEVEL`]).
    pub compression_level: Option<i32>,
}

/// zstd level for PostgreSQL data by default: pages compress well even at
/// the fastest levels, and a base backup is on the clock (RTO, backup window).
pub const PG_COMPRESSION_LEVEL: i32 = 1;

/// Entries PostgreSQL's documentation says to leave out of a base backup,
/// relative to the data directory: recreated at start, or meaningless on
/// another server. The directories themselves are kept (empty).
const EXCLUDED_IN_PGDATA: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "backup_label.old",
    "pg_wal/*",
    "pg_replslot/*",
    "pg_dynshmem/*",
    "pg_notify/*",
    "pg_serial/*",
    "pg_snapshots/*",
    "pg_stat_tmp/*",
    "pg_subtrans/*",
];

/// Names left out anywhere: temporary files and relation cache init files.
const EXCLUDED_NAMES: &[&str] = &["pgsql_tmp*", "pg_internal.init"];

/// Column `i` of a result row, as `T`; a server answering with another
/// type is an error, not a panic.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a tokio_postgres::Row, i: usize) -> Result<T, PgError> {
    row.try_get(i).map_err(PgError::db(format!("reading column {i} of the server's answer")))
}

/// Takes a base backup and writes its snapshot.
#[tracing::instrument(skip_all, fields(pgdata = %opts.pgdata.display()))]
pub async fn backup_postgres(
    repo: &Repository,
    opts: PgBackupOptions,
    progress: Arc<Progress>,
) -> Result<BackupOutcome, PgError> {
    let pgdata = std::fs::canonicalize(&opts.pgdata).map_err(PgError::io("resolving", &opts.pgdata))?;
    let client = opts.connect.connect().await?;
    let row = client
        .query_one(
            "SELECT current_setting('data_directory'), current_setting('server_version_num')::int, \
             (SELECT system_identifier::text FROM pg_control_system()), \
             (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
             current_setting('data_checksums') = 'on' AND current_setting('block_size')::int = $1",
            &[&(PAGE_SIZE as i32)],
        )
        .await
        .map_err(PgError::db("reading the cluster's identity"))?;
    let (data_directory, version, system_identifier, wal_segment_size): (String, i32, String, i64) =
        (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?, col(&row, 3)?);
    let verify_pages: bool = col(&row, 4)?;
    let odd = |what: &str, value: i64| PgError::Usage(format!("the server reports {what} {value}, which cannot be"));
    let version = u32::try_from(version).map_err(|_| odd("server_version_num", version.into()))?;
    let wal_segment_size = u64::try_from(wal_segment_size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| odd("wal_segment_size", wal_segment_size))?;
    if std::fs::canonicalize(&data_directory).ok().as_ref() != Some(&pgdata) {
        return Err(PgError::Usage(format!(
            "{} serves data directory {data_directory}, not {}",
            opts.connect.describe(),
            pgdata.display()
        )));
    }

    let rows = client
        .query(
            "SELECT oid::int8, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE pg_tablespace_location(oid) <> '' ORDER BY oid",
            &[],
        )
        .await
        .map_err(PgError::db("listing tablespaces"))?;
    let mut tablespaces = Vec::new();
    for row in &rows {
        let oid: i64 = col(row, 0)?;
        let location: String = col(row, 2)?;
        let resolved = std::fs::canonicalize(&location).map_err(PgError::io("resolving tablespace", &location))?;
        tablespaces.push(Tablespace {
            oid: u32::try_from(oid).map_err(|_| odd("a tablespace OID", oid))?,
            name: col(row, 1)?,
            location: resolved.display().to_string(),
        });
    }

    let label = format!("lifeboat {}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ"));
    // Held open until pg_backup_stop: a non-exclusive backup ends with its session.
    let start = client
        .query_one(
            "SELECT lsn::text, pg_walfile_name(lsn), (SELECT timeline_id FROM pg_control_checkpoint()) \
             FROM pg_backup_start($1, true) AS lsn",
            &[&label],
        )
        .instrument(tracing::info_span!("pg_backup_start"))
        .await
        .map_err(PgError::db("starting the backup (pg_backup_start)"))?;
    let (start_lsn, start_wal, timeline): (String, String, i32) = (col(&start, 0)?, col(&start, 1)?, col(&start, 2)?);
    tracing::info!(%start_lsn, %start_wal, "backup started");
    let timeline = Timeline::from_server(timeline.into()).ok_or_else(|| odd("timeline", timeline.into()))?;
    let (start_lsn, start_wal): (Lsn, Segment) = (start_lsn.parse()?, start_wal.parse()?);

    let relations =
        RelationFiles::new(pgdata.clone(), tablespaces.iter().map(|t| (t.oid, PathBuf::from(&t.location))).collect());
    let checks = verify_pages.then(|| Arc::new(PageChecks::new(relations.clone(), start_lsn.0)));
    let root = pgdata.display().to_string();
    let mut excludes: Vec<String> = EXCLUDED_IN_PGDATA.iter().map(|e| format!("{root}/{e}")).collect();
    excludes.extend(EXCLUDED_NAMES.iter().map(|e| e.to_string()));
    let files = BackupOptions {
        paths: std::iter::once(pgdata.clone()).chain(tablespaces.iter().map(|t| PathBuf::from(&t.location))).collect(),
        includes: Vec::new(),
        excludes,
        tags: opts.tags.clone(),
        hostname: opts.hostname.clone(),
        // Files whose size and times are those the previous base backup
        // saw, from well before it began, are taken from it unread (a page
        // written since changes the times; one written while this backup
        // reads is replayed from WAL); the rest is read and deduplicated.
        force: false,
        parent: None::<SnapshotId>,
        threads: opts.threads,
        content_check: checks.clone().map(|c| c as Arc<dyn ContentCheck>),
        compression_level: Some(opts.compression_level.unwrap_or(PG_COMPRESSION_LEVEL)),
        fixed_chunks: Some(Arc::new(relations)),
        read_timeout: None,
        skip_xattrs: false,
    };
    let captured = capture(repo, files, "postgres", progress).await;

    // Always end the backup, even when the capture failed.
    let stop = client
        .query_one("SELECT lsn::text, pg_walfile_name(lsn), labelfile, spcmapfile FROM pg_backup_stop(true)", &[])
        .instrument(tracing::info_span!("pg_backup_stop, WAL archived"))
        .await
        .map_err(PgError::db("stopping the backup (pg_backup_stop)"))?;
    let captured = captured?;
    let (stop_lsn, stop_wal, backup_label, tablespace_map): (String, String, String, String) =
        (col(&stop, 0)?, col(&stop, 1)?, col(&stop, 2)?, col(&stop, 3)?);
    tracing::info!(%stop_lsn, %stop_wal, "backup stopped; its WAL is archived");
    let (stop_lsn, stop_wal): (Lsn, Segment) = (stop_lsn.parse()?, stop_wal.parse()?);

    let (pages_verified, corrupt_pages) = checks.map(|c| c.results()).unwrap_or_default();
    let mut captured = captured;
    let mut snapshot = captured.manifest("postgres", opts.hostname, opts.tags);
    let (warnings, notices) = (std::mem::take(&mut captured.warnings), std::mem::take(&mut captured.notices));
    snapshot.postgres = Some(PostgresBackup {
        pgdata: root,
        start_lsn,
        stop_lsn,
        timeline,
        start_wal,
        stop_wal,
        version,
        wal_segment_size,
        system_identifier,
        stop_time: Utc::now(),
        backup_label,
        tablespace_map,
        tablespaces,
        pages_verified,
        corrupt_pages,
    });
    let id = captured.save(repo, &snapshot).await?;
    Ok(BackupOutcome { id, snapshot, warnings, notices })
}
