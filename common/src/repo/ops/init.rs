//! Creating a repository in a store that may not exist yet.

use std::sync::Arc;

use crate::crypto::MasterKey;
use crate::repo::engine::repository::Repository;
use crate::repo::error::RepoError;
use crate::store::ObjectStore;

/// Prepares the store (a bucket or container where the service has them)
/// and creates an empty repository in it, its keyring wrapped by `master`.
pub async fn init(store: Arc<dyn ObjectStore>, master: &MasterKey) -> Result<Repository, RepoError> {
    store.create_container().await?;
    Repository::init(store, master).await
}
