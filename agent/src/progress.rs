//! Live progress counters of a capture or restore, shared between the
//! worker threads that advance them and whoever displays them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters advanced by a running operation; read them at any time.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files finished.
    pub files_done: AtomicU64,
    /// Bytes finished (read for a backup, written for a restore).
    pub bytes_done: AtomicU64,
    /// Files in total, once known.
    pub files_total: AtomicU64,
    /// Bytes in total, once known.
    pub bytes_total: AtomicU64,
    /// Set once the totals are final.
    pub totals_known: AtomicBool,
    /// Set by a caller that wants totals counted up front (for an ETA).
    pub want_totals: AtomicBool,
}

impl Progress {
    /// Counters for an operation whose totals the caller wants counted.
    pub fn with_totals() -> Self {
        let p = Progress::default();
        p.want_totals.store(true, Ordering::Relaxed);
        p
    }

    /// Adds a finished file of `bytes` bytes.
    pub fn file_done(&self, bytes: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds `bytes` finished bytes.
    pub fn bytes(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A plain snapshot of the counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            totals_known: self.totals_known.load(Ordering::Relaxed),
        }
    }
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Files finished.
    pub files_done: u64,
    /// Bytes finished.
    pub bytes_done: u64,
    /// Files in total (when known).
    pub files_total: u64,
    /// Bytes in total (when known).
    pub bytes_total: u64,
    /// Whether the totals are final.
    pub totals_known: bool,
}
