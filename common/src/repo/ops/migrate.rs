//! `repo migrate`: brings a repository of format 1 to format 2, where every
//! sealed object (index, snapshot, prune plan, WAL file) is bound to its
//! name. Objects still sealed in format 1 are read, checked and sealed
//! again under their own name; then the keyring records format 2 (under
//! the master key, so it cannot be turned back without it), and last the
//! config. Safe to run again after an interruption: what is done is skipped.
//!
//! Writers of the previous release must be stopped first: a format-1 object
//! written after the keyring moved on is refused as untrusted.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::crypto::{MasterKey, OBJECT_FORMAT};

use crate::repo::engine::repository::Repository;
use crate::repo::error::RepoError;
use crate::repo::format::config::FORMAT_VERSION;
use crate::repo::format::layout::{CONFIG_KEY, SEALED, keyring_key};
use crate::repo::format::object;

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrateReport {
    /// The format the repository had.
    pub from: u32,
    /// Objects sealed again under their name.
    pub resealed: u64,
    /// Objects already bound to their name.
    pub already: u64,
    /// Whether the keyring and config were moved to format 2 now.
    pub upgraded: bool,
}

/// Migrates `repo` (opened with `master`) to the current format.
pub async fn migrate(repo: &Repository, master: &MasterKey) -> Result<MigrateReport, RepoError> {
    let mut report =
        MigrateReport { from: repo.config().version.min(repo.keyring().object_format), ..Default::default() };
    let mut target = repo.keyring().clone();
    target.object_format = OBJECT_FORMAT;
    let store = repo.store();
    let level = repo.config().compression_level;
    for (prefix, kind) in SEALED {
        let keys: Vec<String> = store.list(prefix).await?.into_iter().map(|m| m.key).collect();
        let outcomes: Vec<bool> = futures::stream::iter(keys)
            .map(|key| {
                let target = &target;
                async move {
                    let bytes = match store.get(&key).await {
                        Ok(b) => b,
                        // Forgotten, or a writer's marker that ended, since the listing.
                        Err(e) if e.is_not_found() => return Ok(false),
                        Err(e) => return Err(e.into()),
                    };
                    let (plain, format) = object::open_any(repo.keyring(), kind, &key, &bytes)?;
                    if format >= OBJECT_FORMAT {
                        return Ok::<_, RepoError>(false);
                    }
                    let sealed = object::seal(target, kind, &key, plain, level)?;
                    store.put(&key, Bytes::from(sealed)).await?;
                    Ok(true)
                }
            })
            .buffer_unordered(store.parallelism())
            .try_collect()
            .await?;
        let resealed = outcomes.iter().filter(|&&r| r).count() as u64;
        report.resealed += resealed;
        report.already += outcomes.len() as u64 - resealed;
    }
    if repo.keyring().object_format < OBJECT_FORMAT {
        let keys_key = keyring_key(&master.id);
        let wrapped = target.wrap(master)?;
        let json = serde_json::to_vec_pretty(&wrapped)
            .map_err(|e| RepoError::Encode { what: "keyring", reason: e.to_string() })?;
        store.put(&keys_key, Bytes::from(json)).await?;
        // Read back before the config names the new format.
        let check: crate::crypto::WrappedKeyring =
            serde_json::from_slice(&store.get(&keys_key).await?).map_err(|e| RepoError::corrupt(&keys_key, e))?;
        if check.unwrap_with(master)?.object_format != OBJECT_FORMAT {
            return Err(RepoError::corrupt(&keys_key, "did not keep the new object format"));
        }
        report.upgraded = true;
    }
    if repo.config().version < FORMAT_VERSION {
        let mut config = repo.config().clone();
        config.version = FORMAT_VERSION;
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| RepoError::Encode { what: "config", reason: e.to_string() })?;
        store.put(CONFIG_KEY, Bytes::from(json)).await?;
        report.upgraded = true;
    }
    tracing::info!(?report, "migrated");
    Ok(report)
}
