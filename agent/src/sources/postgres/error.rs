//! What can go wrong backing up or restoring PostgreSQL.

use std::path::PathBuf;

use lifeboat_common::repo::RepoError;
use lifeboat_common::repo::format::wal::WalNameError;
use lifeboat_common::store::StoreError;

use crate::sources::files::FilesError;

/// A PostgreSQL backup, archive or restore failure, naming what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server refused or the connection failed.
    #[error("{what}: {}", explain(cause))]
    Db {
        /// What was being done.
        what: String,
        /// The driver's error.
        cause: tokio_postgres::Error,
    },
    /// The replication connection failed or the server refused a command.
    #[error("replication: {0}")]
    Replication(String),
    /// Capturing or restoring the files failed.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not a name PostgreSQL gives WAL files, or not a WAL position.
    #[error(transparent)]
    BadWalName(#[from] WalNameError),
    /// A WAL file already archived with other content.
    #[error(
        "WAL file {name} is already archived with different content: refusing to replace it (two clusters archiving into one repository, or a restored cluster reusing a timeline?)"
    )]
    Conflict {
        /// The WAL file.
        name: String,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        cause: std::io::Error,
    },
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
}

/// The server's own words when it refused (the driver's message is only
/// "db error" then), else the driver's message with its causes (a TLS
/// handshake's says which certificate check failed).
fn explain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("server said {} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = c.source();
    }
    text
}

impl PgError {
    /// A driver error with what was being done.
    pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let what = what.into();
        move |cause| PgError::Db { what, cause }
    }

    /// A local I/O error naming the file.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PgError {
        let path = path.into();
        move |cause| PgError::Io { op, path, cause }
    }
}
