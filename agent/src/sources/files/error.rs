//! Errors of file capture and restore, each naming the path or object.

use lifeboat_common::repo::RepoError;

/// What stopped a file backup or restore.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A filesystem call failed on `path`.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        // Part of the message rather than a `source`, so a chained display
        // does not print it twice.
        /// The underlying error.
        cause: std::io::Error,
    },
    /// An include or exclude pattern is not a valid glob.
    #[error("invalid pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// A path asked for is not in the snapshot.
    #[error("{0} is not in the snapshot")]
    NotInSnapshot(String),
    /// Bad options.
    #[error("{0}")]
    Usage(String),
    /// Data the backup reused was taken away by a prune while it ran, even
    /// after it stored its own copy once.
    #[error("a prune marked or deleted data this backup reused while it ran ({0}): nothing was saved; run it again")]
    LostFooting(String),
    /// A worker thread stopped unexpectedly.
    #[error("internal: {0}")]
    Internal(&'static str),
    /// The restore was abandoned (its caller gave up: a timeout, a cancel).
    #[error("the restore was abandoned before it ended")]
    Abandoned,
}

impl FilesError {
    /// An I/O error on `path`.
    pub fn io(op: &'static str, path: &std::path::Path, cause: std::io::Error) -> Self {
        FilesError::Io { op, path: path.display().to_string(), cause }
    }
}
