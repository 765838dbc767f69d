//! Opening a repository the way every binary does: locations, master key
//! file, write policy, outbox and metadata cache, with errors that name
//! what was being opened.

use std::path::PathBuf;

use crate::crypto::{CryptoError, MasterKey};
use crate::store::{LocationError, OpenedStore, Replication, WritePolicy, open_locations};

use crate::repo::engine::repository::Repository;
use crate::repo::error::RepoError;

/// Where a repository is and how to open it.
#[derive(Debug, Clone, Default)]
pub struct RepoSpec {
    /// Store locations, primary first.
    pub locations: Vec<String>,
    /// The master key file.
    pub key_file: Option<PathBuf>,
    /// Write policy of a replicated repository.
    pub write_policy: WritePolicy,
    /// Outbox directory for policy `primary` (default under the state directory).
    pub outbox: Option<PathBuf>,
    /// Skip the local metadata cache of a remote repository.
    pub no_cache: bool,
    /// Refuse a key file its group or others may read (else: a warning).
    pub strict_permissions: bool,
}

/// Why a repository could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The locations are unusable.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// No key file was named.
    #[error("no key file given: pass --key-file, set LIFEBOAT_KEY_FILE or name key_file in the --config file")]
    NoKeyFile,
    /// The configuration file cannot be read or parsed.
    #[error("configuration file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file cannot be read.
    #[error("{cause}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        cause: CryptoError,
    },
    /// The repository refused to open.
    #[error("opening repository in {store}: {cause}")]
    Repo {
        /// The store, described.
        store: String,
        /// Why.
        cause: RepoError,
    },
}

impl RepoSpec {
    /// The store (or stores).
    pub async fn stores(&self) -> Result<OpenedStore, OpenError> {
        let replication = Replication { policy: self.write_policy, outbox: self.outbox.clone() };
        Ok(open_locations(&self.locations, &replication).await?)
    }

    /// What on this machine holds the repository or opens it (local store
    /// directories, the key file, the outbox): never to be overwritten or
    /// deleted by a restore.
    pub fn local_paths(&self) -> Vec<PathBuf> {
        let stores = self.locations.iter().filter_map(|l| crate::store::local_path(l));
        stores.chain(self.key_file.clone()).chain(self.outbox.clone()).collect()
    }

    /// The master key.
    pub fn master_key(&self) -> Result<MasterKey, OpenError> {
        let path = self.key_file.as_ref().ok_or(OpenError::NoKeyFile)?;
        let key = MasterKey::load(path).map_err(|cause| OpenError::Key { path: path.clone(), cause })?;
        match MasterKey::check_permissions(path) {
            Err(cause) if self.strict_permissions => return Err(OpenError::Key { path: path.clone(), cause }),
            Err(e) => tracing::warn!("{e} (refused with --strict-permissions)"),
            Ok(()) => {}
        }
        Ok(key)
    }

    /// Opens the repository without loading its index (single objects only, e.g. WAL).
    pub async fn open_for_objects(&self) -> Result<(Repository, OpenedStore), OpenError> {
        let stores = self.stores().await?;
        let key = self.master_key()?;
        let store = stores.store();
        let described = store.describe();
        let repo = Repository::open_for_objects(store, &key)
            .await
            .map_err(|cause| OpenError::Repo { store: described, cause })?;
        Ok((repo, stores))
    }

    /// Opens the repository, keeping hold of its stores.
    pub async fn open(&self) -> Result<(Repository, OpenedStore), OpenError> {
        let stores = self.stores().await?;
        let key = self.master_key()?;
        let store = stores.store();
        let cache = (!self.no_cache && !store.is_local()).then(crate::dirs::cache_dir);
        let described = store.describe();
        let repo = Repository::open_cached(store, &key, cache.as_deref())
            .await
            .map_err(|cause| OpenError::Repo { store: described, cause })?;
        Ok((repo, stores))
    }
}
