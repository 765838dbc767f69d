//! One repository spanning several stores, in order of preference (the
//! first is the primary): writes go to every store, reads fall back to the
//! next store when one fails or lacks the object.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, StoreError};

/// A store that stopped answering is skipped for reads from then on, so a
/// dead primary costs one timeout, not one per object.
#[derive(Debug)]
struct Member {
    store: Arc<dyn ObjectStore>,
    down: AtomicBool,
}

/// Several stores acting as one.
#[derive(Debug)]
pub struct ReplicatedStore {
    members: Vec<Member>,
}

/// Whether an error means the store itself is unusable (as opposed to the
/// one object being absent or damaged).
fn store_unreachable(e: &StoreError) -> bool {
    matches!(e, StoreError::Remote { status: None, .. } | StoreError::Remote { status: Some(500..), .. })
}

impl ReplicatedStore {
    /// Stores in order of preference; the first is the primary.
    pub fn new(stores: Vec<Arc<dyn ObjectStore>>) -> Self {
        ReplicatedStore {
            members: stores.into_iter().map(|store| Member { store, down: AtomicBool::new(false) }).collect(),
        }
    }

    /// The stores, primary first.
    pub fn stores(&self) -> Vec<Arc<dyn ObjectStore>> {
        self.members.iter().map(|m| m.store.clone()).collect()
    }

    /// Runs a read on each store in order until one succeeds. Returns the
    /// first error that is not "not found" if every store fails, else the
    /// primary's "not found".
    async fn read<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(Arc<dyn ObjectStore>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut first_err: Option<StoreError> = None;
        let mut not_found: Option<StoreError> = None;
        for m in self.members.iter().filter(|m| !m.down.load(Ordering::Relaxed)) {
            match f(m.store.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if store_unreachable(&e) {
                        tracing::warn!(store = %m.store.describe(), error = %e, "store unreachable; reading from the next");
                        m.down.store(true, Ordering::Relaxed);
                    }
                    if e.is_not_found() {
                        not_found.get_or_insert(e);
                    } else {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.or(not_found).unwrap_or_else(|| StoreError::Remote {
            store: self.describe(),
            op: "reading",
            key: String::new(),
            status: None,
            message: "every store is unreachable".into(),
        }))
    }

    /// Runs a write on every store at once; fails (naming the store) unless all succeed.
    async fn write_all<F, Fut>(&self, f: F) -> Result<(), StoreError>
    where
        F: Fn(Arc<dyn ObjectStore>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let results = futures::future::join_all(self.members.iter().map(|m| f(m.store.clone()))).await;
        results.into_iter().collect()
    }
}

#[async_trait]
impl ObjectStore for ReplicatedStore {
    fn describe(&self) -> String {
        let parts: Vec<String> = self.members.iter().map(|m| m.store.describe()).collect();
        format!("replicated [{}]", parts.join(", "))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.write_all(|s| {
            let data = data.clone();
            async move { s.put(key, data).await }
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        // The primary decides who created the object; the others follow it.
        let (primary, rest) = self.members.split_first().ok_or_else(|| StoreError::InvalidKey {
            key: key.to_owned(),
            reason: "a replicated store needs at least one store",
        })?;
        primary.store.put_if_absent(key, data.clone()).await?;
        let results = futures::future::join_all(rest.iter().map(|m| {
            let data = data.clone();
            async move { m.store.put(key, data).await }
        }))
        .await;
        results.into_iter().collect()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.read(|s| async move { s.get(key).await }).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.read(|s| {
            let range = range.clone();
            async move { s.get_range(key, range).await }
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<u64, StoreError> {
        self.read(|s| async move { s.head(key).await }).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.read(|s| async move { s.list(prefix).await }).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.write_all(|s| async move { s.delete(key).await }).await
    }

    async fn start_rehydrate(&self, key: &str) -> Result<(), StoreError> {
        self.write_all(|s| async move { s.start_rehydrate(key).await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn writes_everywhere_and_reads_fall_back() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, sb): (Arc<dyn ObjectStore>, Arc<dyn ObjectStore>) =
            (Arc::new(LocalStore::new(a.path())), Arc::new(LocalStore::new(b.path())));
        let r = ReplicatedStore::new(vec![sa.clone(), sb.clone()]);
        r.put("data/x", Bytes::from_static(b"both")).await.unwrap();
        assert_eq!(sb.get("data/x").await.unwrap(), Bytes::from_static(b"both"));
        r.put_if_absent("config", Bytes::from_static(b"c")).await.unwrap();
        assert!(matches!(r.put_if_absent("config", Bytes::new()).await, Err(StoreError::AlreadyExists { .. })));

        // Lost from the primary: read from the secondary.
        sa.delete("data/x").await.unwrap();
        assert_eq!(r.get("data/x").await.unwrap(), Bytes::from_static(b"both"));
        assert_eq!(r.get_range("data/x", 1..3).await.unwrap(), Bytes::from_static(b"ot"));
        // Absent everywhere: not found.
        assert!(r.get("data/none").await.unwrap_err().is_not_found());
        r.delete("data/x").await.unwrap();
        assert!(sb.get("data/x").await.unwrap_err().is_not_found());
    }
}
