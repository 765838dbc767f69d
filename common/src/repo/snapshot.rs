//! Snapshot manifests: the last object a backup writes, which makes it visible.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::{BlobId, SnapshotId};

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
}
