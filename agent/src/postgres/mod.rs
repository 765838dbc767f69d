//! PostgreSQL: base backups through the non-exclusive backup API, WAL
//! archiving (`wal-push` / `wal-fetch`), and restore to a recoverable data
//! directory.

pub mod archive;
pub mod basebackup;
pub mod catalog;
pub mod connect;
mod error;
pub mod restore;
pub mod wal;

pub use error::PgError;
