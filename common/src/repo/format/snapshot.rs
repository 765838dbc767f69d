//! Snapshot manifests: the last object a backup writes, which makes it visible.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::format::id::{BlobId, SnapshotId};
use crate::repo::format::wal::{Lsn, Segment, Timeline};

/// What a backup did, kept with its snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Files seen.
    pub files: u64,
    /// Directories seen.
    pub dirs: u64,
    /// Files whose content was read (new or changed).
    pub files_read: u64,
    /// Bytes of all files in the snapshot.
    pub bytes_total: u64,
    /// Bytes read from changed or new files.
    pub bytes_read: u64,
    /// Blobs that were not in the repository before.
    pub blobs_new: u64,
    /// Plaintext bytes of those new blobs.
    pub bytes_new: u64,
    /// Bytes those new blobs take in the repository (compressed, sealed).
    pub bytes_stored: u64,
    /// Packs written.
    pub packs_written: u64,
    /// Wall time in seconds.
    pub duration_secs: f64,
}

/// A snapshot manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started.
    pub time: DateTime<Utc>,
    /// Host that made it.
    pub hostname: String,
    /// Source kind: `files` (PostgreSQL and Redis add their own).
    pub source: String,
    /// The roots backed up, absolute.
    pub paths: Vec<String>,
    /// Operator tags.
    pub tags: Vec<String>,
    /// Root tree.
    pub tree: BlobId,
    /// Snapshot used to skip unchanged files, if any.
    pub parent: Option<SnapshotId>,
    /// What the backup did.
    pub summary: BackupSummary,
    /// For a PostgreSQL base backup: what recovery needs to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresBackup>,
    /// For a Redis snapshot: the server it came from and what it held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisCapture>,
}

/// A Redis snapshot's manifest: the server the RDB came from, and the key
/// counts a restore checks the started server against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisCapture {
    /// The server captured, `host:port` (never with credentials).
    pub server: String,
    /// Its `redis_version`.
    pub version: String,
    /// Its role when captured: `master` or `slave` (a replica).
    pub role: String,
    /// The RDB format version (the digits after `REDIS`).
    pub rdb_version: u16,
    /// The replication id the full resynchronisation named.
    pub replication_id: String,
    /// The replication offset the RDB stands at.
    pub replication_offset: u64,
    /// Bytes of the RDB.
    pub rdb_bytes: u64,
    /// The RDB's own CRC64 trailer, when the server writes one
    /// (`rdbchecksum yes`); checked as it was received.
    pub checksum: Option<u64>,
    /// Keys per database (`INFO keyspace`) as the server forked the RDB.
    pub keyspace: Vec<RedisKeyspace>,
}

/// One database's line of `INFO keyspace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisKeyspace {
    /// The database number.
    pub db: u32,
    /// Keys in it.
    pub keys: u64,
    /// Those of them with a time to live.
    pub expires: u64,
}

/// A PostgreSQL base backup's manifest: where its WAL starts and stops, and
/// the files PostgreSQL hands back at the end of a non-exclusive backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostgresBackup {
    /// The data directory backed up.
    pub pgdata: String,
    /// `pg_backup_start` LSN.
    pub start_lsn: Lsn,
    /// `pg_backup_stop` LSN.
    pub stop_lsn: Lsn,
    /// Timeline the backup started on.
    pub timeline: Timeline,
    /// WAL segment holding the start LSN.
    pub start_wal: Segment,
    /// WAL segment holding the stop LSN.
    pub stop_wal: Segment,
    /// `server_version_num`.
    pub version: u32,
    /// WAL segment size in bytes.
    #[serde(default = "default_wal_segment_size")]
    pub wal_segment_size: u64,
    /// `pg_control_system().system_identifier`, as text.
    pub system_identifier: String,
    /// When `pg_backup_stop` returned.
    pub stop_time: DateTime<Utc>,
    /// Contents of `backup_label` to write into the restored data directory.
    pub backup_label: String,
    /// Contents of `tablespace_map` (empty without tablespaces).
    pub tablespace_map: String,
    /// Tablespaces outside the data directory, captured beside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<Tablespace>,
    /// Pages whose checksum was verified as they were read (0: the cluster
    /// has no data checksums).
    #[serde(default)]
    pub pages_verified: u64,
    /// Pages whose checksum did not match: the backup holds them as read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt_pages: Vec<CorruptPage>,
}

/// A tablespace of a PostgreSQL backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// Its OID (the name of its link in `pg_tblspc`).
    pub oid: u32,
    /// Its name.
    pub name: String,
    /// Its directory on the backed-up server: its path in the snapshot.
    pub location: String,
}

/// A data page that failed its checksum during a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptPage {
    /// The relation file, relative to the data directory.
    pub file: String,
    /// Block number in the relation.
    pub block: u64,
    /// The checksum the page's content has.
    pub expected: u16,
    /// The checksum stored in the page.
    pub found: u16,
}

/// PostgreSQL's default WAL segment size (16 MiB).
fn default_wal_segment_size() -> u64 {
    16 << 20
}
