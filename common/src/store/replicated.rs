//! One repository spanning several stores, in order of preference (the
//! first is the primary). With write policy `all` a write is acknowledged
//! when every store has it; with `primary` when the primary has it and the
//! copies for the others are spooled in the durable [`Outbox`], which a
//! background task drains. Reads fall back to the next store (and last to
//! the outbox) when one fails or lacks the object.

use crate::invalid::Invalid;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::lifecycle::{Lifecycle, LifecycleOutcome};
use super::outbox::{CopyLag, Outbox};
use super::{ObjectMeta, ObjectStore, StoreError};

/// Pause between drain passes while nothing new arrives.
const DRAIN_INTERVAL: Duration = Duration::from_secs(2);
/// Longest pause after a failed pass (a secondary that is down).
const DRAIN_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When a write to a replicated repository is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WritePolicy {
    /// When every store has it.
    #[default]
    All,
    /// When the primary has it and the other copies are in the outbox.
    Primary,
}

impl FromStr for WritePolicy {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "all" => Ok(WritePolicy::All),
            "primary" => Ok(WritePolicy::Primary),
            other => Err(Invalid(format!("unknown write policy {other:?} (all, primary)"))),
        }
    }
}

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
    policy: WritePolicy,
    /// Copies waiting for the secondaries.
    outbox: Arc<Outbox>,
    wake: Arc<Notify>,
    drainer: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ReplicatedStore {
    fn drop(&mut self) {
        if let Some(d) = &self.drainer {
            d.abort();
        }
    }
}

/// Whether an error means the store itself is unusable (as opposed to the
/// one object being absent or damaged).
fn store_unreachable(e: &StoreError) -> bool {
    matches!(e, StoreError::Remote { status: None, .. } | StoreError::Remote { status: Some(500..), .. })
}

impl ReplicatedStore {
    /// Not found, for an object deleted from the primary whose deletion
    /// still waits in the outbox for the others: a read must not fall back
    /// to a copy that is about to go.
    fn not_deleted(&self, key: &str) -> Result<(), StoreError> {
        if self.outbox.is_deleting(key) {
            return Err(StoreError::NotFound { store: self.describe(), key: key.to_owned() });
        }
        Ok(())
    }

    /// Stores in order of preference (the first is the primary), the write
    /// policy, and the outbox directory (default: under [`crate::dirs::state_dir`]).
    /// With policy `primary` this starts the background copier, so it must
    /// be called inside a Tokio runtime.
    pub fn new(stores: Vec<Arc<dyn ObjectStore>>, policy: WritePolicy, outbox: Option<PathBuf>) -> Self {
        let root = match (outbox, stores.first()) {
            (Some(dir), _) => dir,
            (None, Some(primary)) => Outbox::default_root(primary.as_ref()),
            (None, None) => crate::dirs::state_dir().join("outbox/none"),
        };
        let outbox = Arc::new(Outbox::new(root, stores.iter().skip(1).cloned().collect()));
        let wake = Arc::new(Notify::new());
        let drainer = (policy == WritePolicy::Primary).then(|| tokio::spawn(drain_loop(outbox.clone(), wake.clone())));
        ReplicatedStore {
            members: stores.into_iter().map(|store| Member { store, down: AtomicBool::new(false) }).collect(),
            policy,
            outbox,
            wake,
            drainer,
        }
    }

    /// The write policy.
    pub fn policy(&self) -> WritePolicy {
        self.policy
    }

    /// The outbox of copies waiting for the secondaries.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Copies what the outbox holds to every secondary that answers, and
    /// returns what is still waiting (for a secondary that is down).
    pub async fn settle(&self) -> Result<Vec<CopyLag>, StoreError> {
        for outcome in self.outbox.drain().await {
            if let Some(e) = outcome.error {
                tracing::warn!(store = %outcome.store, error = %e, "secondary not reachable; copies stay in the outbox");
            }
        }
        self.outbox.lag().await
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
        // Stores that failed earlier are skipped, unless all have: then
        // each gets another chance rather than the read failing outright.
        let live: Vec<&Member> = self.members.iter().filter(|m| !m.down.load(Ordering::Relaxed)).collect();
        let candidates = if live.is_empty() { self.members.iter().collect() } else { live };
        for m in candidates {
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

    fn split_primary(&self, key: &str) -> Result<(&Member, &[Member]), StoreError> {
        self.members.split_first().ok_or_else(|| StoreError::InvalidKey {
            key: key.to_owned(),
            reason: "a replicated store needs at least one store",
        })
    }

    /// Policy `primary`. A plain write spools the copies first (so a crash
    /// cannot leave an object on the primary that the secondaries never
    /// get) and forgets them if the primary refuses. A create-if-absent
    /// write lets the primary decide first, because spooling would replace
    /// a pending copy of the object that already exists; a crash in between
    /// leaves a gap that `repo sync` closes.
    async fn put_spooled(&self, key: &str, data: Bytes, if_absent: bool) -> Result<(), StoreError> {
        let primary = &self.split_primary(key)?.0.store;
        if if_absent {
            primary.put_if_absent(key, data.clone()).await?;
            self.outbox.enqueue_put(key, data).await?;
        } else {
            // An older copy still waiting is left alone if the primary refuses this one.
            let was_pending = self.outbox.is_pending(key);
            self.outbox.enqueue_put(key, data.clone()).await?;
            if let Err(e) = primary.put(key, data).await {
                if !was_pending {
                    self.outbox.discard_put(key).await;
                }
                return Err(e);
            }
        }
        self.wake.notify_one();
        Ok(())
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

/// Drains the outbox as copies arrive, backing off while a secondary is down.
async fn drain_loop(outbox: Arc<Outbox>, wake: Arc<Notify>) {
    let mut pause = DRAIN_INTERVAL;
    loop {
        let _ = tokio::time::timeout(pause, wake.notified()).await;
        let failed = outbox.drain().await.into_iter().filter(|o| o.error.is_some()).count();
        pause = if failed == 0 { DRAIN_INTERVAL } else { (pause * 2).min(DRAIN_MAX_BACKOFF) };
        if failed > 0 {
            // Ignore wake-ups until the pause is over: a dead secondary is
            // not retried once per new object.
            tokio::time::sleep(pause).await;
        }
    }
}

#[async_trait]
impl ObjectStore for ReplicatedStore {
    fn describe(&self) -> String {
        let parts: Vec<String> = self.members.iter().map(|m| m.store.describe()).collect();
        format!("replicated [{}]", parts.join(", "))
    }

    fn is_local(&self) -> bool {
        self.members.iter().all(|m| m.store.is_local())
    }

    /// With policy `primary` only the primary must answer: a secondary
    /// that is down now gets its copies (and should get its container) later.
    async fn create_container(&self) -> Result<(), StoreError> {
        for (i, m) in self.members.iter().enumerate() {
            match m.store.create_container().await {
                Err(e) if i > 0 && self.policy == WritePolicy::Primary => {
                    tracing::warn!(store = %m.store.describe(), error = %e, "secondary not ready; its copies wait in the outbox");
                }
                r => r?,
            }
        }
        Ok(())
    }

    fn parallelism(&self) -> usize {
        self.members.iter().map(|m| m.store.parallelism()).max().unwrap_or(1)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        if self.policy == WritePolicy::Primary {
            return self.put_spooled(key, data, false).await;
        }
        self.write_all(|s| {
            let data = data.clone();
            async move { s.put(key, data).await }
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        if self.policy == WritePolicy::Primary {
            return self.put_spooled(key, data, true).await;
        }
        // The primary decides who created the object; the others follow it.
        let (primary, rest) = self.split_primary(key)?;
        primary.store.put_if_absent(key, data.clone()).await?;
        let results = futures::future::join_all(rest.iter().map(|m| {
            let data = data.clone();
            async move { m.store.put(key, data).await }
        }))
        .await;
        results.into_iter().collect()
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.not_deleted(key)?;
        match self.read(|s| async move { s.get(key).await }).await {
            Err(e) => self.outbox.get(key).await.ok_or(e),
            ok => ok,
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        self.not_deleted(key)?;
        let read = self
            .read(|s| {
                let range = range.clone();
                async move { s.get_range(key, range).await }
            })
            .await;
        match read {
            Err(e) => match self.outbox.get(key).await {
                Some(b) if range.start <= range.end && range.end <= b.len() as u64 => {
                    Ok(b.slice(range.start as usize..range.end as usize))
                }
                _ => Err(e),
            },
            ok => ok,
        }
    }

    async fn get_copies(&self, key: &str) -> Vec<Result<Bytes, StoreError>> {
        futures::future::join_all(self.members.iter().map(|m| m.store.get(key))).await
    }

    async fn head(&self, key: &str) -> Result<u64, StoreError> {
        self.not_deleted(key)?;
        match self.read(|s| async move { s.head(key).await }).await {
            Err(e) => self.outbox.get(key).await.map(|b| b.len() as u64).ok_or(e),
            ok => ok,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.read(|s| async move { s.list(prefix).await }).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if self.policy == WritePolicy::Primary {
            self.split_primary(key)?.0.store.delete(key).await?;
            self.outbox.enqueue_delete(key).await?;
            self.wake.notify_one();
            return Ok(());
        }
        self.write_all(|s| async move { s.delete(key).await }).await
    }

    async fn reclaim_temporaries(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let mut removed = 0;
        for m in &self.members {
            removed += m.store.reclaim_temporaries(before).await?;
        }
        Ok(removed)
    }

    async fn start_rehydrate(&self, key: &str) -> Result<(), StoreError> {
        self.write_all(|s| async move { s.start_rehydrate(key).await }).await
    }

    async fn apply_lifecycle(&self, lifecycle: &Lifecycle) -> Result<Vec<LifecycleOutcome>, StoreError> {
        let mut out = Vec::new();
        for m in &self.members {
            out.extend(m.store.apply_lifecycle(lifecycle).await?);
        }
        Ok(out)
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
        let spool = tempfile::tempdir().unwrap();
        let r = ReplicatedStore::new(vec![sa.clone(), sb.clone()], WritePolicy::All, Some(spool.path().into()));
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

    #[tokio::test]
    async fn policy_primary_spools_then_copies() {
        let (a, spool, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let sa: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(a.path()));
        // The secondary is "down" while its root is a file: writes fail.
        let b_root = b.path().join("secondary");
        std::fs::write(&b_root, b"").unwrap();
        let sb: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&b_root));
        let open =
            || ReplicatedStore::new(vec![sa.clone(), sb.clone()], WritePolicy::Primary, Some(spool.path().into()));
        let r = open();
        r.put("data/x", Bytes::from_static(b"x")).await.unwrap();
        r.put_if_absent("config", Bytes::from_static(b"c")).await.unwrap();
        assert!(matches!(r.put_if_absent("config", Bytes::new()).await, Err(StoreError::AlreadyExists { .. })));
        let lag = r.settle().await.unwrap();
        assert_eq!((lag[0].objects, lag[0].bytes), (2, 2));
        // With the primary's copy gone, the read falls back to the outbox.
        sa.delete("data/x").await.unwrap();
        assert_eq!(r.get("data/x").await.unwrap(), Bytes::from_static(b"x"));
        assert_eq!(r.head("data/x").await.unwrap(), 1);
        sa.put("data/x", Bytes::from_static(b"x")).await.unwrap();
        drop(r);

        // The secondary comes back; a new process drains the outbox.
        std::fs::remove_file(&b_root).unwrap();
        let r = open();
        assert_eq!(r.settle().await.unwrap()[0].objects, 0);
        assert_eq!(sb.get("data/x").await.unwrap(), Bytes::from_static(b"x"));
        assert_eq!(sb.get("config").await.unwrap(), Bytes::from_static(b"c"));
    }
}
