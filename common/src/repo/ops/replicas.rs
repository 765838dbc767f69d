//! Comparing the stores of a replicated repository (`verify --stores`) and
//! bringing them into agreement (`repo sync`).
//!
//! Every copy is judged by what it is, not by a majority vote: a pack must
//! hash to its name, index and snapshot objects must authenticate under the
//! keyring, this master key's keyring must unwrap, the config must be this
//! repository's. So a copy damaged in one store is told apart from the good
//! one even when only two stores exist. Objects that cannot be judged alone
//! (another master key's keyring, unknown objects) are only ever copied
//! where they are missing; if their copies differ, that is reported, never
//! "repaired" by guessing.

use crate::repo::format::layout::{INDEX_KIND, SNAPSHOT_KIND};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::crypto::{MasterKey, WrappedKeyring};
use crate::store::ObjectStore;

use crate::repo::engine::repository::Repository;
use crate::repo::error::RepoError;
use crate::repo::format::id::PackId;
use crate::repo::format::index::IndexFile;
use crate::repo::format::layout::{CONFIG_KEY, INDEX_PREFIX, KEYS_PREFIX, PACK_PREFIXES, SNAPSHOTS_PREFIX, pack_key};
use crate::repo::format::object;
use crate::repo::format::pack::BlobKind;

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
    /// With `repair`: delete packs that the primary lacks and no index in
    /// any store refers to, instead of copying them to the primary.
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
    /// Extra packs deleted (with `delete_extra`).
    pub deleted: u64,
    /// Problems that could not be mended (no good copy anywhere, copies
    /// that cannot be judged and differ, or a write that failed).
    pub unrepaired: Vec<String>,
}

/// One store's copy of one object.
#[derive(Debug, Clone)]
enum Copy {
    Absent,
    Good,
    Bad(String),
    /// Present, but its soundness cannot be proven alone.
    Unjudged(Bytes),
}

/// Whether a copy is sound, and which packs a sound index object lists.
enum Verdict {
    Good(Vec<String>),
    Bad(String),
    Unjudged,
}

/// The keys and sizes of one object across the stores (None: absent there).
type Listing = BTreeMap<String, Vec<Option<u64>>>;

/// Compares `stores` (primary first) object by object; with
/// `opts.repair`, copies a good copy over every missing or damaged one.
/// `master` lets this master key's keyring object be judged.
#[tracing::instrument(skip_all, fields(stores = stores.len(), read_data = opts.read_data, repair = opts.repair))]
pub async fn reconcile(
    repo: &Repository,
    master: Option<&MasterKey>,
    stores: &[Arc<dyn ObjectStore>],
    opts: ReconcileOptions,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<ReconcileReport, RepoError> {
    let mut report = ReconcileReport { stores: stores.iter().map(|s| s.describe()).collect(), ..Default::default() };
    let mut listed = Listing::new();
    for (i, store) in stores.iter().enumerate() {
        for meta in store.list("").await? {
            listed.entry(meta.key).or_insert_with(|| vec![None; stores.len()])[i] = Some(meta.size);
        }
    }
    report.objects = listed.len() as u64;
    let is_pack = |k: &str| PACK_PREFIXES.iter().any(|p| k.starts_with(p));
    let (packs, others): (Listing, Listing) = listed.into_iter().partition(|(k, _)| is_pack(k));

    let judge = Judge { repo, master, stores, read_data: opts.read_data, bytes_read: AtomicU64::new(0), on_bytes };
    // Metadata first: the sound index objects of every store say which
    // packs are needed, even ones the primary has lost.
    let mut examined = judge.examine_all(others, &HashMap::new()).await?;
    let mut referenced: HashSet<String> = repo.index().packs().iter().map(|p| p.key()).collect();
    for (_, _, listed_packs) in &examined {
        referenced.extend(listed_packs.iter().cloned());
    }
    let sizes: HashMap<String, u64> = repo.index().packs().iter().map(|p| (p.key(), p.size)).collect();
    examined.extend(judge.examine_all(packs, &sizes).await?);
    report.bytes_read = judge.bytes_read.load(Ordering::Relaxed);
    examined.sort_by(|a, b| a.0.cmp(&b.0));

    for (key, mut copies, _) in examined {
        settle_unjudged(&mut copies);
        if copies.iter().all(|c| matches!(c, Copy::Good)) {
            continue;
        }
        let only_outside_primary = matches!(copies[0], Copy::Absent) && copies.iter().any(|c| matches!(c, Copy::Good));
        let delete = opts.delete_extra && only_outside_primary && is_pack(&key) && !referenced.contains(&key);
        if delete {
            report
                .problems
                .push(format!("{key} is a pack no index refers to, outside the primary {}", report.stores[0]));
        } else {
            for (i, copy) in copies.iter().enumerate() {
                match copy {
                    Copy::Good => {}
                    Copy::Absent => report.problems.push(format!("{key} is missing from {}", report.stores[i])),
                    Copy::Bad(why) => report.problems.push(format!("{key} in {} is damaged: {why}", report.stores[i])),
                    Copy::Unjudged(_) => report
                        .problems
                        .push(format!("{key} in {} differs from the other stores' copy", report.stores[i])),
                }
            }
        }
        if opts.repair {
            judge.mend(&key, &copies, delete, &mut report).await;
        }
    }
    Ok(report)
}

/// Copies that cannot be judged alone are good when they all agree.
fn settle_unjudged(copies: &mut [Copy]) {
    let mut seen = copies.iter().filter_map(|c| if let Copy::Unjudged(b) = c { Some(b) } else { None });
    let Some(first) = seen.next() else { return };
    if seen.all(|b| b == first) {
        for c in copies.iter_mut() {
            if matches!(c, Copy::Unjudged(_)) {
                *c = Copy::Good;
            }
        }
    }
}

struct Judge<'a> {
    repo: &'a Repository,
    master: Option<&'a MasterKey>,
    stores: &'a [Arc<dyn ObjectStore>],
    read_data: bool,
    bytes_read: AtomicU64,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Judge<'_> {
    /// Examines every object of `listed`; `sizes` are the sizes the index records.
    async fn examine_all(
        &self,
        listed: Listing,
        sizes: &HashMap<String, u64>,
    ) -> Result<Vec<(String, Vec<Copy>, Vec<String>)>, RepoError> {
        futures::stream::iter(listed)
            .map(|(key, present)| async move {
                let (copies, packs) = self.examine(&key, &present, sizes.get(&key).copied()).await;
                Ok::<_, RepoError>((key, copies, packs))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
    }

    /// Judges each store's copy of `key`; also returns the packs a sound
    /// copy of an index object lists.
    async fn examine(&self, key: &str, sizes: &[Option<u64>], expected: Option<u64>) -> (Vec<Copy>, Vec<String>) {
        let is_pack = PACK_PREFIXES.iter().any(|p| key.starts_with(p));
        let sizes_agree = sizes.iter().flatten().all(|s| Some(*s) == sizes.iter().flatten().next().copied());
        let must_read = !is_pack || self.read_data || !sizes_agree;
        let mut copies = Vec::with_capacity(self.stores.len());
        let mut listed_packs = Vec::new();
        for (store, size) in self.stores.iter().zip(sizes) {
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
            self.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            (self.on_bytes)(bytes.len() as u64);
            copies.push(match self.verdict(key, &bytes) {
                Verdict::Good(packs) => {
                    if listed_packs.is_empty() {
                        listed_packs = packs;
                    }
                    Copy::Good
                }
                Verdict::Bad(why) => Copy::Bad(why),
                Verdict::Unjudged => Copy::Unjudged(bytes),
            });
        }
        (copies, listed_packs)
    }

    /// Whether `bytes` is a sound copy of `key`.
    fn verdict(&self, key: &str, bytes: &[u8]) -> Verdict {
        let (repo, keyring) = (self.repo, self.repo.keyring());
        let from = |r: Result<Vec<String>, String>| match r {
            Ok(packs) => Verdict::Good(packs),
            Err(why) => Verdict::Bad(why),
        };
        if let Some(rest) = PACK_PREFIXES.iter().find_map(|p| key.strip_prefix(p)) {
            let name = rest.rsplit('/').next().unwrap_or_default();
            let Ok(id) = name.parse::<PackId>() else { return Verdict::Bad(format!("{name:?} is not a pack id")) };
            let actual = blake3::hash(bytes);
            return if actual.as_bytes() == &id.0 {
                Verdict::Good(Vec::new())
            } else {
                Verdict::Bad(format!("contents hash to {}", actual.to_hex()))
            };
        }
        if key.starts_with(INDEX_PREFIX) {
            return from(object::open(keyring, INDEX_KIND, key, bytes).map_err(|e| e.to_string()).and_then(|plain| {
                let file: IndexFile = postcard::from_bytes(&plain).map_err(|e| format!("undecodable index: {e}"))?;
                Ok(file
                    .packs
                    .iter()
                    .map(|p| pack_key(&p.id, p.blobs.first().map_or(BlobKind::Data, |b| b.kind)))
                    .collect())
            }));
        }
        if key.starts_with(SNAPSHOTS_PREFIX) {
            return from(
                object::open(keyring, SNAPSHOT_KIND, key, bytes).map(|_| Vec::new()).map_err(|e| e.to_string()),
            );
        }
        if let Some(id) = key.strip_prefix(KEYS_PREFIX) {
            let wrapped = match serde_json::from_slice::<WrappedKeyring>(bytes) {
                Ok(w) => w,
                Err(e) => return Verdict::Bad(format!("not a wrapped keyring: {e}")),
            };
            return match self.master.filter(|m| m.id.to_string() == id) {
                Some(m) => from(
                    wrapped
                        .unwrap_with(m)
                        .map(|_| Vec::new())
                        .map_err(|_| "does not open with this master key".to_owned()),
                ),
                None => Verdict::Unjudged,
            };
        }
        if key == CONFIG_KEY {
            let ours = serde_json::to_value(repo.config()).ok();
            let theirs = serde_json::from_slice::<serde_json::Value>(bytes).ok();
            return match (ours, theirs) {
                (Some(a), Some(b)) if a == b => Verdict::Good(Vec::new()),
                _ => Verdict::Bad("not this repository's config".into()),
            };
        }
        Verdict::Unjudged
    }

    /// Copies a good copy of `key` over every missing or damaged one, or
    /// deletes an unreferenced extra pack.
    async fn mend(&self, key: &str, copies: &[Copy], delete: bool, report: &mut ReconcileReport) {
        if delete {
            for (store, copy) in self.stores.iter().zip(copies) {
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
        if copies.iter().any(|c| matches!(c, Copy::Unjudged(_))) {
            report.unrepaired.push(format!("{key}: the stores' copies differ and none can be proven right"));
            return;
        }
        // The first good copy that still checks out when read again: a copy
        // judged by its size alone is hashed before it is spread.
        let mut data = None;
        for (store, _) in self.stores.iter().zip(copies).filter(|(_, c)| matches!(c, Copy::Good)) {
            match store.get(key).await {
                Ok(d) if !matches!(self.verdict(key, &d), Verdict::Bad(_)) => {
                    data = Some(d);
                    break;
                }
                Ok(_) => {
                    report.problems.push(format!("{key} in {} is damaged (found while copying)", store.describe()))
                }
                Err(e) => report.problems.push(format!("{key}: reading from {}: {e}", store.describe())),
            }
        }
        let Some(data) = data else {
            report.unrepaired.push(format!("{key}: no store holds a good copy"));
            return;
        };
        for (store, copy) in self.stores.iter().zip(copies) {
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
}
