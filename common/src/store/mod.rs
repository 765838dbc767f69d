//! Object stores: where a repository's objects live.
//!
//! The repository code speaks only [`ObjectStore`]; each backend (the local
//! directory here, S3 and Azure Blob beside it) implements it in its own
//! module, so adding a backend touches nothing else.

mod azure;
mod fs;
pub mod lifecycle;
mod location;
mod outbox;
mod replicated;
mod s3;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use lifecycle::{Lifecycle, LifecycleOutcome};

pub use azure::{AzureCredential, AzureLocation, AzureStore, account_sas};
/// Azure access tiers, for [`AzureStore::set_access_tier`].
pub use azure_storage_blob::models::AccessTier;
pub use fs::LocalStore;
pub use location::{
    LocationError, OpenedStore, Replication, local_path, open_location, open_locations, parse_azure, parse_s3,
};
pub use outbox::{CopyLag, DrainOutcome, Outbox};
pub use replicated::{ReplicatedStore, WritePolicy};
pub use s3::{S3Location, S3Store};

/// What went wrong talking to an object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("object {key} not found in {store}")]
    NotFound {
        /// The store, as it describes itself.
        store: String,
        /// The object's key.
        key: String,
    },
    /// A create-if-absent write found the object already there.
    #[error("object {key} already exists in {store}")]
    AlreadyExists {
        /// The store, as it describes itself.
        store: String,
        /// The object's key.
        key: String,
    },
    /// A ranged read asked for bytes past the object's end (a truncated object).
    #[error("object {key} in {store} is {size} bytes, shorter than the {wanted} bytes asked for")]
    Truncated {
        /// The store, as it describes itself.
        store: String,
        /// The object's key.
        key: String,
        /// Its size in bytes.
        size: u64,
        /// The bytes asked for.
        wanted: u64,
    },
    /// The key is not a valid object name.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The object's key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The object sits in an archive tier and must be rehydrated before it
    /// can be read.
    #[error(
        "object {key} in {store} is in the archive tier: it must be rehydrated before it can be read (`lifeboat repo rehydrate` starts that; it takes hours on the real services)"
    )]
    Archived {
        /// The store, as it describes itself.
        store: String,
        /// The object's key.
        key: String,
    },
    /// A remote service refused or could not be reached (after bounded retries).
    #[error("{op} {key} in {store}: {message}")]
    Remote {
        /// The store, as it describes itself.
        store: String,
        /// What was being done.
        op: &'static str,
        /// The object's key.
        key: String,
        /// HTTP status, when the service answered.
        status: Option<u16>,
        /// The service's message.
        message: String,
    },
    /// Any I/O failure, naming the object or path involved.
    #[error("{op} {what} in {store}: {cause}")]
    Io {
        /// The store, as it describes itself.
        store: String,
        /// What was being done.
        op: &'static str,
        /// The object or path involved.
        what: String,
        // Part of the message rather than a `source`, so a chained display
        // does not print it twice.
        /// The underlying error.
        cause: std::io::Error,
    },
}

impl StoreError {
    /// True when the error means the object is absent.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// One object as listed: its key and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full key, e.g. `data/ab/ab12…`.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written, if the store says.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// A flat namespace of immutable objects addressed by `/`-separated keys.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// A short human description of the store (path or URL, never a secret).
    fn describe(&self) -> String;

    /// Whether the store is on this machine's disks (no cache needed).
    fn is_local(&self) -> bool {
        false
    }

    /// How many requests are worth having in flight at once: remote stores
    /// are latency-bound and want many, a local disk few.
    fn parallelism(&self) -> usize {
        8
    }

    /// Creates the container the store lives in (bucket, Azure container)
    /// if it does not exist yet; `repo init` calls it.
    async fn create_container(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes an object, replacing any previous one atomically.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Writes an object only if no object has that key; otherwise
    /// [`StoreError::AlreadyExists`].
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Reads `range` of an object; a range past the end is [`StoreError::Truncated`].
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError>;

    /// Every store's copy of an object, in order of preference, for a
    /// caller that found the first one damaged and can tell a good copy
    /// (one store has one copy; a replicated store one per member).
    async fn get_copies(&self, key: &str) -> Vec<Result<Bytes, StoreError>> {
        vec![self.get(key).await]
    }

    /// Size of an object, or [`StoreError::NotFound`].
    async fn head(&self, key: &str) -> Result<u64, StoreError>;

    /// Every object whose key starts with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Deletes an object; deleting an absent object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Moves the store's data objects through `lifecycle` (metadata stays
    /// hot), by the service's own rules where it has them.
    async fn apply_lifecycle(&self, lifecycle: &Lifecycle) -> Result<Vec<LifecycleOutcome>, StoreError> {
        let _ = lifecycle;
        Ok(vec![LifecycleOutcome {
            store: self.describe(),
            summary: "no storage tiers here: nothing to do".into(),
            adjustments: Vec::new(),
        }])
    }

    /// Removes what interrupted writes left behind (temporary files,
    /// unfinished uploads) from before `before`; returns how many.
    async fn reclaim_temporaries(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let _ = before;
        Ok(0)
    }

    /// Starts bringing an archived object back to a readable tier. Stores
    /// without archive tiers have nothing to do.
    async fn start_rehydrate(&self, key: &str) -> Result<(), StoreError> {
        let _ = key;
        Ok(())
    }
}

/// Rejects keys that could escape the store's namespace.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidKey { key: key.to_owned(), reason };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(invalid("leading or trailing '/'"));
    }
    if key.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err(invalid("empty, '.' or '..' component"));
    }
    if key.contains('\0') {
        return Err(invalid("NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_key;

    #[test]
    fn keys_cannot_escape() {
        for bad in ["", "/abs", "a/../b", "a//b", "a/", "./a", "a\0b"] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["config", "data/ab/abcdef", "keys/0123"] {
            check_key(good).unwrap();
        }
    }
}
