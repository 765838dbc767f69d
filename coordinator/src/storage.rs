//! What the repository holds in each store and tier, its estimated monthly
//! cost, and how far each secondary store's copy lags the primary. The
//! leader measures it every `storage_every` by listing every store (an
//! object's tier is estimated from its age and the policy's
//! `storage_lifecycle`, as the stores' own lifecycle rules move it; without
//! one, or in a local directory, everything is hot), for `/metrics` and the
//! copy-lag alert.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_common::repo::engine::settings::{RepoArgs, RepoSettings};
use lifeboat_common::repo::format::layout::DATA_PREFIX;
use lifeboat_common::store::lifecycle::{Lifecycle, StorageTier};
use lifeboat_common::store::{ObjectStore, OpenedStore, StoreError};

use crate::core::{NodeRole, Shared};

/// One store's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreFigures {
    /// The store, as it describes itself (without an emulator's endpoint).
    pub store: String,
    /// `s3`, `azure` or `local`, for the price table.
    pub kind: &'static str,
    /// Bytes by tier.
    pub tiers: BTreeMap<StorageTier, u64>,
    /// Bytes the primary has that this store lacks (none for the primary).
    pub copy_lag_bytes: Option<u64>,
}

/// The repository's figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageFigures {
    /// Every store, the primary first.
    pub stores: Vec<StoreFigures>,
    /// When they were measured.
    pub measured: DateTime<Utc>,
}

impl StorageFigures {
    /// Each secondary store's copy lag, for the alert.
    pub fn copy_lag(&self) -> Vec<(String, u64)> {
        self.stores.iter().filter_map(|s| s.copy_lag_bytes.map(|l| (s.store.clone(), l))).collect()
    }
}

/// The kind of a store, from how it describes itself.
pub fn kind(store: &dyn ObjectStore) -> &'static str {
    let d = store.describe();
    if d.starts_with("s3://") {
        "s3"
    } else if d.starts_with("azure://") {
        "azure"
    } else {
        "local"
    }
}

/// Lists every store and sums what it holds by tier, and what each
/// secondary lacks of the primary.
pub async fn measure(
    stores: &[Arc<dyn ObjectStore>],
    lifecycle: Option<&Lifecycle>,
    now: DateTime<Utc>,
) -> Result<StorageFigures, StoreError> {
    let mut listed = Vec::new();
    for store in stores {
        listed.push(store.list("").await?);
    }
    let primary: HashMap<&str, u64> =
        listed.first().map(|l| l.iter().map(|o| (o.key.as_str(), o.size)).collect()).unwrap_or_default();
    let mut figures = Vec::new();
    for (i, (store, objects)) in stores.iter().zip(&listed).enumerate() {
        let kind = kind(store.as_ref());
        let mut tiers: BTreeMap<StorageTier, u64> = BTreeMap::new();
        for o in objects {
            // Only data moves between tiers; metadata stays hot.
            let data = o.key.starts_with(DATA_PREFIX);
            let tier = match (lifecycle, o.modified, kind) {
                (Some(l), Some(at), "s3" | "azure") if data => {
                    l.tier_for_age(u32::try_from((now - at).num_days().max(0)).unwrap_or(u32::MAX))
                }
                _ => StorageTier::Hot,
            };
            *tiers.entry(tier).or_insert(0) += o.size;
        }
        let copy_lag_bytes = (i > 0).then(|| {
            let here: HashMap<&str, u64> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
            primary.iter().filter(|(k, size)| here.get(*k) != Some(size)).map(|(_, size)| size).sum()
        });
        let describe = store.describe();
        let name = describe.split(" at ").next().unwrap_or(&describe).to_owned();
        figures.push(StoreFigures { store: name, kind, tiers, copy_lag_bytes });
    }
    Ok(StorageFigures { stores: figures, measured: now })
}

/// Measures every `every` while this coordinator leads; the figures are
/// kept in `shared`.
pub async fn keep_measuring(shared: Arc<Shared>, settings: RepoSettings, every: Duration) {
    let spec = match RepoArgs::default().spec_with(settings, Path::new("[repository]")) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "storage figures are off: the repository settings are unusable");
            return;
        }
    };
    let mut stores: Option<Vec<Arc<dyn ObjectStore>>> = None;
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(every).await;
        }
        first = false;
        if !matches!(*shared.role.borrow(), NodeRole::Leader { .. }) {
            continue;
        }
        if stores.is_none() {
            match spec.open().await {
                Ok((_, OpenedStore::Replicated(r))) => stores = Some(r.stores()),
                Ok((_, OpenedStore::Single(s))) => stores = Some(vec![s]),
                Err(e) => {
                    tracing::warn!(error = %e, "storage figures: cannot open the repository");
                    continue;
                }
            }
        }
        let Some(stores) = &stores else { continue };
        let policy = shared.policy();
        match measure(stores, policy.lifecycle.as_ref(), Utc::now()).await {
            Ok(figures) => shared.set_storage(figures),
            Err(e) => tracing::warn!(error = %e, "storage figures: listing a store failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use lifeboat_common::store::LocalStore;

    #[tokio::test]
    async fn bytes_by_store_and_what_the_secondary_lacks() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let primary: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(a.path()));
        let secondary: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(b.path()));
        for (key, len) in [("data/aa/one", 1000), ("data/bb/two", 500), ("index/x", 20)] {
            primary.put(key, Bytes::from(vec![7u8; len])).await.unwrap();
        }
        secondary.put("data/aa/one", Bytes::from(vec![7u8; 1000])).await.unwrap();
        // A copy cut short counts as missing.
        secondary.put("index/x", Bytes::from(vec![7u8; 5])).await.unwrap();
        let figures = measure(&[primary, secondary], Some(&Lifecycle::default()), Utc::now()).await.unwrap();
        let (p, s) = (&figures.stores[0], &figures.stores[1]);
        assert_eq!((p.kind, p.copy_lag_bytes), ("local", None));
        // A local directory has no tiers: all hot, whatever the lifecycle.
        assert_eq!(p.tiers, BTreeMap::from([(StorageTier::Hot, 1520)]));
        assert_eq!(s.tiers, BTreeMap::from([(StorageTier::Hot, 1005)]));
        assert_eq!(s.copy_lag_bytes, Some(520));
        assert_eq!(figures.copy_lag(), vec![(s.store.clone(), 520)]);
    }
}
