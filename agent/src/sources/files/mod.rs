//! File trees: capture (walk, chunk, dedup, pack) and restore.

mod backup;
mod dirfd;
pub mod drill;
mod error;
mod filter;
mod meta;
mod restore;
mod source;
mod stall;
mod watch;

pub(crate) use backup::lost_footing;
pub use backup::{
    BackupOptions, BackupOutcome, Captured, ContentCheck, FileChecker, FixedChunks, backup_files, capture,
};
pub use error::FilesError;
pub use filter::Filter;
pub use restore::{Overwrite, RestoreOptions, RestoreReport, restore_files};
pub use source::{FilesConfig, FilesSource};
pub use watch::ChangeWatcher;
