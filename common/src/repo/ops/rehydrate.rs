//! Bringing data packs back from an archive tier before a restore.

use crate::repo::engine::repository::Repository;
use crate::repo::error::RepoError;
use crate::repo::format::layout::DATA_PREFIX;

/// Starts the rehydration of every data pack (S3 Glacier restore, Azure
/// tier change to Hot); tree packs never leave the hot tier. Returns how
/// many packs were asked for.
pub async fn rehydrate(repo: &Repository) -> Result<usize, RepoError> {
    let store = repo.store();
    let packs = store.list(DATA_PREFIX).await?;
    for meta in &packs {
        store.start_rehydrate(&meta.key).await?;
    }
    Ok(packs.len())
}
