//! The durable outbox of a replicated repository written with policy
//! `primary`: an object is spooled to local disk for every secondary store
//! before the primary acknowledges it, and copied from the spool later.
//!
//! The spool is a [`LocalStore`] per target (fsynced temp file + rename), so
//! an entry either exists whole or not at all, and survives a crash or a
//! restart of the process; a copy is deleted from the spool only after the
//! target stored it. Layout: `<root>/<target id>/put/<key>` for objects to
//! copy, `<root>/<target id>/delete/<key>` (empty) for deletions to repeat,
//! and `<root>/<target id>/TARGET` naming the store for a human reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{LocalStore, ObjectStore, StoreError};
use crate::repo::format::layout::{INDEX_PREFIX, SNAPSHOTS_PREFIX};

/// Copies in flight per target while draining.
const DRAIN_CONCURRENCY: usize = 4;
const PUT: &str = "put/";
const DELETE: &str = "delete/";

/// What is still waiting to reach one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyLag {
    /// The target store.
    pub store: String,
    /// Objects not yet copied (and deletions not yet repeated).
    pub objects: u64,
    /// Bytes not yet copied.
    pub bytes: u64,
    /// When the oldest waiting entry was spooled.
    pub oldest: Option<SystemTime>,
}

impl CopyLag {
    /// How long the oldest waiting entry has waited.
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        self.oldest.and_then(|t| SystemTime::now().duration_since(t).ok())
    }
}

/// What one drain pass did for one store.
#[derive(Debug)]
pub struct DrainOutcome {
    /// The target store.
    pub store: String,
    /// Objects copied.
    pub copied: u64,
    /// Deletions repeated.
    pub deleted: u64,
    /// Why the pass stopped early, if it did (the rest stays spooled).
    pub error: Option<StoreError>,
}

#[derive(Debug)]
struct Target {
    store: Arc<dyn ObjectStore>,
    spool: LocalStore,
    /// One drain pass per target at a time.
    pass: tokio::sync::Mutex<()>,
    /// Whether the spool's `TARGET` file has been written by this process.
    named: AtomicBool,
}

impl Target {
    /// Names the target store inside its spool, once per process.
    async fn name_spool(&self) -> Result<(), StoreError> {
        if !self.named.load(Ordering::Relaxed) {
            self.spool.put("TARGET", Bytes::from(self.store.describe() + "\n")).await?;
            self.named.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Spooled copies for the secondary stores of one replicated repository.
#[derive(Debug)]
pub struct Outbox {
    root: PathBuf,
    targets: Vec<Target>,
}

/// A short stable name for a store, from its description.
fn store_id(describe: &str) -> String {
    blake3::hash(describe.as_bytes()).to_hex()[..16].to_owned()
}

impl Outbox {
    /// The default outbox of the repository whose primary is `primary`.
    pub fn default_root(primary: &dyn ObjectStore) -> PathBuf {
        crate::dirs::state_dir().join("outbox").join(store_id(&primary.describe()))
    }

    /// An outbox at `root` for `targets`; directories are created on the first write.
    pub fn new(root: impl Into<PathBuf>, targets: Vec<Arc<dyn ObjectStore>>) -> Self {
        let root = root.into();
        let targets = targets
            .into_iter()
            .map(|store| Target {
                spool: LocalStore::new(root.join(store_id(&store.describe()))),
                store,
                pass: tokio::sync::Mutex::new(()),
                named: AtomicBool::new(false),
            })
            .collect();
        Outbox { root, targets }
    }

    /// The outbox directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Spools `data` for every target. Durable when this returns.
    pub async fn enqueue_put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let writes = self.targets.iter().map(|t| {
            let data = data.clone();
            async move {
                t.name_spool().await?;
                t.spool.delete(&format!("{DELETE}{key}")).await?;
                t.spool.put(&format!("{PUT}{key}"), data).await
            }
        });
        futures::future::try_join_all(writes).await.map(drop)
    }

    /// Whether a copy of `key` is waiting for any target.
    pub fn is_pending(&self, key: &str) -> bool {
        self.targets.iter().any(|t| t.spool.root().join(PUT).join(key).exists())
    }

    /// Whether a deletion of `key` is waiting for any target (which may
    /// then still hold the object).
    pub fn is_deleting(&self, key: &str) -> bool {
        self.targets.iter().any(|t| t.spool.root().join(DELETE).join(key).exists())
    }

    /// Forgets a spooled copy (the primary refused the object).
    pub async fn discard_put(&self, key: &str) {
        for t in &self.targets {
            if let Err(e) = t.spool.delete(&format!("{PUT}{key}")).await {
                tracing::warn!(key, error = %e, "could not discard a spooled copy");
            }
        }
    }

    /// Spools a deletion for every target, replacing any pending copy.
    pub async fn enqueue_delete(&self, key: &str) -> Result<(), StoreError> {
        for t in &self.targets {
            t.name_spool().await?;
            t.spool.put(&format!("{DELETE}{key}"), Bytes::new()).await?;
            t.spool.delete(&format!("{PUT}{key}")).await?;
        }
        Ok(())
    }

    /// A spooled copy of `key`, if any target still waits for it.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        for t in &self.targets {
            if let Ok(b) = t.spool.get(&format!("{PUT}{key}")).await {
                return Some(b);
            }
        }
        None
    }

    /// Copies everything spooled to its target; a target that fails keeps
    /// the rest of its entries for the next pass.
    pub async fn drain(&self) -> Vec<DrainOutcome> {
        futures::future::join_all(self.targets.iter().map(drain_target)).await
    }

    /// What is still waiting, per target.
    pub async fn lag(&self) -> Result<Vec<CopyLag>, StoreError> {
        let mut out = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let mut lag = CopyLag { store: t.store.describe(), objects: 0, bytes: 0, oldest: None };
            for prefix in [PUT, DELETE] {
                for entry in t.spool.list(prefix).await? {
                    lag.objects += 1;
                    lag.bytes += entry.size;
                    let modified = std::fs::metadata(t.spool.root().join(&entry.key)).and_then(|m| m.modified());
                    if let Ok(m) = modified {
                        lag.oldest = Some(lag.oldest.map_or(m, |o| o.min(m)));
                    }
                }
            }
            out.push(lag);
        }
        Ok(out)
    }
}

/// When a spooled copy is sent: what other objects refer to goes first, so
/// a secondary never holds a snapshot whose index or packs are still
/// waiting here (the drain stops at the first failure).
fn send_order(key: &str) -> u8 {
    let key = &key[PUT.len()..];
    if key.starts_with(SNAPSHOTS_PREFIX) {
        2
    } else if key.starts_with(INDEX_PREFIX) {
        1
    } else {
        0
    }
}

/// Size and modification time of a spool entry: if they change while the
/// entry is being copied, it was spooled again and must be sent again.
fn stamp(t: &Target, entry: &str) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(t.spool.root().join(entry)).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

async fn drain_target(t: &Target) -> DrainOutcome {
    let _pass = t.pass.lock().await;
    let mut outcome = DrainOutcome { store: t.store.describe(), copied: 0, deleted: 0, error: None };
    let result: Result<(), StoreError> = async {
        let pending = t.spool.list(PUT).await?;
        for rank in 0..=2 {
            let batch: Vec<_> = pending.iter().filter(|e| send_order(&e.key) == rank).cloned().collect();
            let copied = futures::stream::iter(batch)
                .map(|entry| async move {
                    let key = &entry.key[PUT.len()..];
                    let before = stamp(t, &entry.key);
                    let data = match t.spool.get(&entry.key).await {
                        Ok(d) => d,
                        // Replaced by a deletion meanwhile.
                        Err(e) if e.is_not_found() => return Ok(0),
                        Err(e) => return Err(e),
                    };
                    t.store.put(key, data).await?;
                    if stamp(t, &entry.key) == before {
                        t.spool.delete(&entry.key).await?;
                    }
                    Ok::<u64, StoreError>(1)
                })
                .buffer_unordered(DRAIN_CONCURRENCY)
                .try_fold(0u64, |n, c| async move { Ok(n + c) });
            outcome.copied += copied.await?;
        }
        for entry in t.spool.list(DELETE).await? {
            t.store.delete(&entry.key[DELETE.len()..]).await?;
            t.spool.delete(&entry.key).await?;
            outcome.deleted += 1;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(store = %outcome.store, error = %e, "copy from the outbox stopped; the rest stays spooled");
        outcome.error = Some(e);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spooled_copies_survive_a_restart_and_drain() {
        let (spool, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(target.path()));
        let outbox = Outbox::new(spool.path(), vec![store.clone()]);
        outbox.enqueue_put("data/aa/x", Bytes::from_static(b"x")).await.unwrap();
        outbox.enqueue_put("index/y", Bytes::from_static(b"yy")).await.unwrap();
        outbox.enqueue_delete("snapshots/z").await.unwrap();
        store.put("snapshots/z", Bytes::from_static(b"z")).await.unwrap();
        drop(outbox);

        // A new process finds the same entries.
        let outbox = Outbox::new(spool.path(), vec![store.clone()]);
        let lag = outbox.lag().await.unwrap();
        assert_eq!((lag[0].objects, lag[0].bytes), (3, 3));
        assert!(lag[0].oldest.is_some());
        assert_eq!(outbox.get("index/y").await.unwrap(), Bytes::from_static(b"yy"));

        let outcome = outbox.drain().await;
        assert!(outcome[0].error.is_none());
        assert_eq!((outcome[0].copied, outcome[0].deleted), (2, 1));
        assert_eq!(store.get("data/aa/x").await.unwrap(), Bytes::from_static(b"x"));
        assert!(store.get("snapshots/z").await.unwrap_err().is_not_found());
        assert_eq!(outbox.lag().await.unwrap()[0].objects, 0);
    }

    #[tokio::test]
    async fn a_failing_target_keeps_its_entries() {
        let spool = tempfile::tempdir().unwrap();
        // A "store" whose root is a file: every write fails.
        let blocker = tempfile::NamedTempFile::new().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(blocker.path()));
        let outbox = Outbox::new(spool.path(), vec![store]);
        outbox.enqueue_put("data/aa/x", Bytes::from_static(b"x")).await.unwrap();
        let outcome = outbox.drain().await;
        assert!(outcome[0].error.is_some());
        assert_eq!(outbox.lag().await.unwrap()[0].objects, 1);
    }
}
