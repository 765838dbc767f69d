//! Errors of the repository layer, each naming the object involved.

use crate::crypto::CryptoError;
use crate::store::StoreError;

/// What went wrong reading or writing a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The store failed (missing, truncated or unreachable object, full disk...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key handling failed (wrong key, unknown data key...).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// No repository exists at this location.
    #[error("no repository at {0}: run `lifeboat repo init` first")]
    NotInitialised(String),
    /// A repository already exists at this location.
    #[error("a repository already exists at {0}")]
    AlreadyInitialised(String),
    /// The repository uses a format this build does not understand.
    #[error(
        "the repository's config names format version {found}, which is not supported (this build reads versions 1 to {supported})"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An object failed authentication, decoding or its hash check.
    #[error("object {object} is corrupt: {reason}")]
    Corrupt {
        /// The object.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// A blob is referenced but no index lists it.
    #[error("blob {0} is not in any index (missing data)")]
    BlobNotIndexed(String),
    /// A snapshot id or prefix matched nothing, or several.
    #[error("snapshot {0}")]
    SnapshotLookup(String),
    /// A pipeline stage stopped; the error that stopped it is reported separately.
    #[error("interrupted: {0}")]
    Interrupted(&'static str),
    /// Serialising an object failed.
    #[error("encoding {what}: {reason}")]
    Encode {
        /// The kind of object.
        what: &'static str,
        /// Why it could not be encoded.
        reason: String,
    },
}

impl RepoError {
    /// True when the error is about the object itself (damaged, forged,
    /// sealed with a key the keyring lacks), not about reaching the store.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            RepoError::Corrupt { .. }
                | RepoError::Crypto(
                    crate::crypto::CryptoError::UnknownDataKey(_) | crate::crypto::CryptoError::Authentication
                )
        )
    }

    /// A corruption error naming `object`.
    pub fn corrupt(object: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        RepoError::Corrupt { object: object.to_string(), reason: reason.to_string() }
    }
}
