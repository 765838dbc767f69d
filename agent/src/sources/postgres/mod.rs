//! PostgreSQL: base backups through the non-exclusive backup API, WAL
//! archiving (`wal-push` / `wal-fetch`), WAL streaming through a
//! replication slot (`wal-stream`), restore to a recoverable data
//! directory, and a drill's recovery into a scratch server.

pub mod archive;
pub mod basebackup;
pub mod catalog;
pub mod checksum;
pub mod connect;
pub mod drill;
pub mod drill_clone;
mod error;
pub mod member;
pub mod prefetch;
pub mod relfile;
pub mod replication;
pub mod restore;
mod source;
pub mod startup;
pub mod stream;
pub mod wal;
pub mod wal_records;

pub use error::PgError;
pub use source::{PostgresConfig, PostgresSource, WalStreamConfig};
