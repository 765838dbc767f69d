//! Comparing the stores of a replicated repository (`verify --stores`) and
//! bringing them into agreement (`repo sync`).
//!
//! Every object is judged by what it is, not by a majority vote: a pack must
//! hash to its name, index and snapshot objects must authenticate under the
//! keyring, the config must be this repository's. So a copy damaged in one
//! store is told apart from the good one even when only two stores exist.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};

use crate::crypto::WrappedKeyring;
use crate::store::ObjectStore;

use super::config::RepoConfig;
use super::error::RepoError;
use super::id::PackId;
use super::object;
use super::repository::Repository;

/// Objects examined at once.
const CONCURRENCY: usize = 8;

/// What `verify --stores` / `repo sync` should do.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReconcileOptions {
    /// Read and check every copy of every pack, not only their sizes
    /// (other objects are small and always read).
    pub read_data: bool,
    /// Copy good objects over missing or damaged ones.
    pub repair: bool,
    /// With `repair`: delete objects the primary lacks from the other
    /// stores instead of copying them to the primary.
    pub delete_extra: bool,
}

/// What was found and done.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// The stores compared, primary first.
    pub stores: Vec<String>,
    /// Distinct objects across all stores.
    pub objects: u64,
    /// Bytes downloaded to check copies.
    pub bytes_read: u64,
    /// Every disagreement, naming the object and the store.
    pub problems: Vec<String>,
    /// Copies written (with `repair`).
    pub copied: u64,
    /// Bytes written (with `repair`).
    pub bytes_copied: u64,
    /// Extra objects deleted (with `delete_extra`).
    pub deleted: u64,
    /// Problems that could not be mended (no good copy anywhere, or the write failed).
    pub unrepaired: Vec<String>,
}

/// One store's copy of one object.
#[derive(Debug, Clone)]
enum Copy {
    Absent,
    Good,
    Bad(String),
}

/// Compares `stores` (primary first) object by object; with
/// `opts.repair`, copies a good copy over every missing or damaged one.
#[tracing::instrument(skip_all, fields(stores = stores.len(), read_data = opts.read_data, repair = opts.repair))]
pub async fn reconcile(
    repo: &Repository,
    stores: &[Arc<dyn ObjectStore>],
    opts: ReconcileOptions,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<ReconcileReport, RepoError> {
    let mut report = ReconcileReport { stores: stores.iter().map(|s| s.describe()).collect(), ..Default::default() };
    // key -> size in each store (None: absent).
    let mut listed: BTreeMap<String, Vec<Option<u64>>> = BTreeMap::new();
    for (i, store) in stores.iter().enumerate() {
        for meta in store.list("").await? {
            listed.entry(meta.key).or_insert_with(|| vec![None; stores.len()])[i] = Some(meta.size);
        }
    }
    report.objects = listed.len() as u64;
    let indexed: HashMap<String, u64> =
        repo.index().packs().iter().map(|p| (super::repository::pack_key(&p.id), p.size)).collect();
    let bytes_read = Arc::new(AtomicU64::new(0));

    let examined: Vec<(String, Vec<Copy>)> = futures::stream::iter(listed)
        .map(|(key, sizes)| {
            let expected = indexed.get(&key).copied();
            let (bytes_read, on_bytes) = (bytes_read.clone(), on_bytes.clone());
            async move {
                let copies = examine(repo, stores, &key, &sizes, expected, opts.read_data, |n| {
                    bytes_read.fetch_add(n, Ordering::Relaxed);
                    on_bytes(n);
                })
                .await?;
                Ok::<_, RepoError>((key, copies))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    report.bytes_read = bytes_read.load(Ordering::Relaxed);

    let mut examined = examined;
    examined.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, copies) in examined {
        if copies.iter().all(|c| matches!(c, Copy::Good)) {
            continue;
        }
        let extra = matches!(copies[0], Copy::Absent) && copies.iter().any(|c| matches!(c, Copy::Good));
        for (i, copy) in copies.iter().enumerate() {
            match copy {
                Copy::Good => {}
                Copy::Absent if extra && opts.delete_extra => {}
                Copy::Absent => report.problems.push(format!("{key} is missing from {}", report.stores[i])),
                Copy::Bad(why) => report.problems.push(format!("{key} in {} is damaged: {why}", report.stores[i])),
            }
        }
        if extra && opts.delete_extra {
            report.problems.push(format!("{key} exists only outside the primary {}", report.stores[0]));
        }
        if opts.repair {
            mend(stores, &key, &copies, extra && opts.delete_extra, &mut report).await;
        }
    }
    Ok(report)
}

/// Judges each store's copy of `key`.
async fn examine(
    repo: &Repository,
    stores: &[Arc<dyn ObjectStore>],
    key: &str,
    sizes: &[Option<u64>],
    expected: Option<u64>,
    read_data: bool,
    on_bytes: impl Fn(u64),
) -> Result<Vec<Copy>, RepoError> {
    let is_pack = key.starts_with("data/");
    let sizes_agree = sizes.iter().flatten().all(|s| Some(*s) == sizes.iter().flatten().next().copied());
    let must_read = !is_pack || read_data || !sizes_agree;
    let mut copies = Vec::with_capacity(stores.len());
    let mut reference: Option<bytes::Bytes> = None;
    for (store, size) in stores.iter().zip(sizes) {
        let Some(size) = *size else {
            copies.push(Copy::Absent);
            continue;
        };
        if let Some(want) = expected.filter(|w| *w != size) {
            copies.push(Copy::Bad(format!("{size} bytes, the index says {want}")));
            continue;
        }
        if !must_read {
            copies.push(Copy::Good);
            continue;
        }
        let bytes = match store.get(key).await {
            Ok(b) => b,
            Err(e) => {
                copies.push(Copy::Bad(format!("unreadable: {e}")));
                continue;
            }
        };
        on_bytes(bytes.len() as u64);
        let verdict = check_content(repo, key, &bytes, reference.as_ref());
        if verdict.is_ok() && reference.is_none() {
            reference = Some(bytes);
        }
        copies.push(match verdict {
            Ok(()) => Copy::Good,
            Err(why) => Copy::Bad(why),
        });
    }
    Ok(copies)
}

/// Whether `bytes` is a sound copy of `key`. Objects whose soundness cannot
/// be proven alone (a keyring wrapped by another master key, unknown
/// objects) must equal the first sound copy seen.
fn check_content(repo: &Repository, key: &str, bytes: &[u8], reference: Option<&bytes::Bytes>) -> Result<(), String> {
    let same_as_reference = || match reference {
        Some(r) if r.as_ref() != bytes => Err("differs from the other stores' copy".to_owned()),
        _ => Ok(()),
    };
    if let Some(name) = key.strip_prefix("data/").and_then(|k| k.rsplit('/').next()) {
        let id: PackId = name.parse().map_err(|_| format!("{name:?} is not a pack id"))?;
        let actual = blake3::hash(bytes);
        return if actual.as_bytes() == &id.0 { Ok(()) } else { Err(format!("contents hash to {}", actual.to_hex())) };
    }
    if key.starts_with("index/") {
        return object::open(repo.keyring(), "index", key, bytes).map(drop).map_err(|e| e.to_string());
    }
    if key.starts_with("snapshots/") {
        return object::open(repo.keyring(), "snapshot", key, bytes).map(drop).map_err(|e| e.to_string());
    }
    if key.starts_with("keys/") {
        serde_json::from_slice::<WrappedKeyring>(bytes).map_err(|e| format!("not a wrapped keyring: {e}"))?;
        return same_as_reference();
    }
    if key == "config" {
        let config: RepoConfig = serde_json::from_slice(bytes).map_err(|e| format!("not a config: {e}"))?;
        return if config.id == repo.config().id {
            Ok(())
        } else {
            Err(format!("belongs to repository {}", config.id))
        };
    }
    same_as_reference()
}

/// Copies a good copy of `key` over every missing or damaged one, or (for
/// an object the primary lacks, when asked) deletes it everywhere.
async fn mend(stores: &[Arc<dyn ObjectStore>], key: &str, copies: &[Copy], delete: bool, report: &mut ReconcileReport) {
    if delete {
        for (store, copy) in stores.iter().zip(copies) {
            if matches!(copy, Copy::Absent) {
                continue;
            }
            match store.delete(key).await {
                Ok(()) => report.deleted += 1,
                Err(e) => report.unrepaired.push(format!("deleting {key} from {}: {e}", store.describe())),
            }
        }
        return;
    }
    let Some(source) = copies.iter().position(|c| matches!(c, Copy::Good)) else {
        report.unrepaired.push(format!("{key}: no store holds a good copy"));
        return;
    };
    let data = match stores[source].get(key).await {
        Ok(d) => d,
        Err(e) => {
            report.unrepaired.push(format!("{key}: reading the good copy from {}: {e}", stores[source].describe()));
            return;
        }
    };
    for (store, copy) in stores.iter().zip(copies) {
        if matches!(copy, Copy::Good) {
            continue;
        }
        match store.put(key, data.clone()).await {
            Ok(()) => {
                report.copied += 1;
                report.bytes_copied += data.len() as u64;
            }
            Err(e) => report.unrepaired.push(format!("copying {key} to {}: {e}", store.describe())),
        }
    }
}
