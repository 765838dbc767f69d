//! Opening, initialising and reading a repository.

use crate::repo::format::layout::{INDEX_KIND, SNAPSHOT_KIND};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;
use futures::StreamExt;

use crate::crypto::{CryptoError, Keyring, MasterKey, WrappedKeyring};
use crate::store::{ObjectStore, StoreError};

use crate::repo::engine::cache::MetadataCache;
use crate::repo::error::RepoError;
use crate::repo::format::config::{FORMAT_VERSION, RepoConfig};
use crate::repo::format::id::{BlobId, IndexId, PackId, SnapshotId, random_id_bytes};
use crate::repo::format::index::{Index, IndexFile, IndexedPack};
use crate::repo::format::object;
use crate::repo::format::pack::{BlobKind, open_blob};
use crate::repo::format::snapshot::Snapshot;
use crate::repo::format::tree::Tree;

use crate::repo::format::layout::{
    CONFIG_KEY, INDEX_PREFIX, KEYS_PREFIX, SNAPSHOTS_PREFIX, TREE_PREFIX, index_key, keyring_key, pack_key,
    snapshot_key,
};

/// Metadata objects fetched at once when loading indexes and snapshots.
const METADATA_FETCHES: usize = 16;

/// An open repository: store, config, keyring and the merged index.
#[derive(Clone, Debug)]
pub struct Repository {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ObjectStore>,
    config: RepoConfig,
    keyring: Keyring,
    index: RwLock<Index>,
    /// Index objects the last load could not read, each error as text.
    index_problems: RwLock<Vec<Damaged>>,
    /// The index objects and prune plans the last index load read.
    loaded: RwLock<Loaded>,
    /// Local copies of metadata, for remote stores.
    cache: Option<MetadataCache>,
}

impl Repository {
    /// Creates a repository in an empty store, its keyring wrapped by `master`.
    pub async fn init(store: Arc<dyn ObjectStore>, master: &MasterKey) -> Result<Self, RepoError> {
        let config = RepoConfig::new(hex::encode(random_id_bytes()?));
        let keyring = Keyring::generate()?;
        let wrapped = keyring.wrap(master)?;
        let config_bytes = serde_json::to_vec_pretty(&config)
            .map_err(|e| RepoError::Encode { what: "config", reason: e.to_string() })?;
        // Keys first (create-if-absent, so an existing keyring is never
        // replaced): a config without keys would be a repository nobody can open.
        let keys_key = keyring_key(&master.id);
        match store.put_if_absent(&keys_key, json_bytes(&wrapped, "keyring")?).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(RepoError::AlreadyInitialised(store.describe()));
            }
            Err(e) => return Err(e.into()),
        }
        match store.put_if_absent(CONFIG_KEY, Bytes::from(config_bytes)).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                // Another repository was there: take back the keyring we just created.
                store.delete(&keys_key).await?;
                return Err(RepoError::AlreadyInitialised(store.describe()));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Self::from_parts(store, config, keyring, None))
    }

    /// Opens an existing repository with `master` and loads its index.
    pub async fn open(store: Arc<dyn ObjectStore>, master: &MasterKey) -> Result<Self, RepoError> {
        Self::open_cached(store, master, None).await
    }

    /// Opens a repository without loading its index: enough to read and
    /// write single sealed objects (WAL files), not blobs. Cheap enough to
    /// run once per archived WAL segment.
    pub async fn open_for_objects(store: Arc<dyn ObjectStore>, master: &MasterKey) -> Result<Self, RepoError> {
        let config = Self::read_config(store.as_ref()).await?;
        let keyring = Self::unwrap_keyring(store.as_ref(), master).await?;
        Self::check_formats(&config, &keyring, master)?;
        Ok(Self::from_parts(store, config, keyring, None))
    }

    /// Opens a repository keeping a local metadata cache (indexes,
    /// snapshots, tree packs) under `cache_root`, if given.
    #[tracing::instrument(skip_all, fields(store = %store.describe()))]
    pub async fn open_cached(
        store: Arc<dyn ObjectStore>,
        master: &MasterKey,
        cache_root: Option<&Path>,
    ) -> Result<Self, RepoError> {
        let config = Self::read_config(store.as_ref()).await?;
        let keyring = Self::unwrap_keyring(store.as_ref(), master).await?;
        Self::check_formats(&config, &keyring, master)?;
        let cache = cache_root.and_then(|root| MetadataCache::new(root, &config.id));
        let repo = Self::from_parts(store, config, keyring, cache);
        repo.reload_index().await?;
        Ok(repo)
    }

    async fn read_config(store: &dyn ObjectStore) -> Result<RepoConfig, RepoError> {
        let config_bytes = match store.get(CONFIG_KEY).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                return Err(RepoError::NotInitialised(store.describe()));
            }
            Err(e) => return Err(e.into()),
        };
        let config: RepoConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| RepoError::corrupt(CONFIG_KEY, e))?;
        if config.version == 0 || config.version > FORMAT_VERSION {
            return Err(RepoError::UnsupportedVersion { found: config.version, supported: FORMAT_VERSION });
        }
        Ok(config)
    }

    /// Refuses a keyring whose object format is older than the config's:
    /// the config moves to format 2 only after the keyring did, so an old
    /// copy of the keyring was put back (which would let objects unbound to
    /// their names pass).
    fn check_formats(config: &RepoConfig, keyring: &Keyring, master: &MasterKey) -> Result<(), RepoError> {
        if config.version >= 2 && keyring.object_format < 2 {
            return Err(RepoError::corrupt(
                keyring_key(&master.id),
                "a keyring of object format 1 in a repository of format 2: an old copy of it was put back",
            ));
        }
        Ok(())
    }

    fn from_parts(
        store: Arc<dyn ObjectStore>,
        config: RepoConfig,
        keyring: Keyring,
        cache: Option<MetadataCache>,
    ) -> Self {
        Repository {
            inner: Arc::new(Inner {
                store,
                config,
                keyring,
                index: RwLock::new(Index::default()),
                index_problems: RwLock::new(Vec::new()),
                loaded: RwLock::new(Loaded::default()),
                cache,
            }),
        }
    }

    /// Reads and opens a sealed metadata object, from the cache when it
    /// holds a copy that authenticates.
    async fn read_sealed(&self, key: &str, kind: &str) -> Result<Vec<u8>, RepoError> {
        let cache = self.inner.cache.as_ref();
        if let Some(bytes) = cache.and_then(|c| c.get(key)) {
            match object::open(&self.inner.keyring, kind, key, &bytes) {
                Ok(plain) => return Ok(plain),
                Err(_) => cache.into_iter().for_each(|c| c.remove(key)),
            }
        }
        let bytes = self.inner.store.get(key).await?;
        let (bytes, plain) =
            sound_copy(self.inner.store.as_ref(), key, bytes, |b| object::open(&self.inner.keyring, kind, key, b))
                .await?;
        if let Some(c) = cache {
            c.put(key, &bytes);
        }
        Ok(plain)
    }

    /// Writes a metadata object, and keeps a copy in the cache.
    async fn write_through(&self, key: &str, sealed: Vec<u8>, if_absent: bool) -> Result<(), RepoError> {
        let bytes = Bytes::from(sealed);
        if if_absent {
            self.inner.store.put_if_absent(key, bytes.clone()).await?;
        } else {
            self.inner.store.put(key, bytes.clone()).await?;
        }
        if let Some(c) = &self.inner.cache {
            c.put(key, &bytes);
        }
        Ok(())
    }

    /// Keeps a copy of a tree pack just stored, so the next backup's parent
    /// trees are read locally.
    pub fn cache_tree_pack(&self, id: &PackId, bytes: &[u8]) {
        if let Some(c) = &self.inner.cache {
            c.put(&pack_key(id, BlobKind::Tree), bytes);
        }
    }

    async fn unwrap_keyring(store: &dyn ObjectStore, master: &MasterKey) -> Result<Keyring, RepoError> {
        let own_key = keyring_key(&master.id);
        let mut wanted = Vec::new();
        let unwrap = |bytes: &[u8]| -> Result<Keyring, RepoError> {
            let wrapped: WrappedKeyring = serde_json::from_slice(bytes).map_err(|e| RepoError::corrupt(&own_key, e))?;
            wrapped.unwrap_with(master).map_err(|_| {
                RepoError::corrupt(
                    &own_key,
                    "master key with this id does not open it: the key file is not the one that wrapped it, or the object is damaged",
                )
            })
        };
        for meta in store.list(KEYS_PREFIX).await? {
            let bytes = store.get(&meta.key).await?;
            if meta.key == own_key {
                return Ok(sound_copy(store, &own_key, bytes, unwrap).await?.1);
            }
            let wrapped: WrappedKeyring =
                serde_json::from_slice(&bytes).map_err(|e| RepoError::corrupt(&meta.key, e))?;
            wanted.push(wrapped.master_key_id.to_string());
        }
        Err(CryptoError::WrongKey { have: master.id, wanted: wanted.join(", ") }.into())
    }

    /// Wraps the keyring under `new` as well, then removes `old`'s copy:
    /// rotating a master key rewrites one small object, no data.
    pub async fn rotate_master_key(&self, old: &MasterKey, new: &MasterKey) -> Result<(), RepoError> {
        let wrapped = self.inner.keyring.wrap(new)?;
        let new_key = keyring_key(&new.id);
        self.inner.store.put(&new_key, json_bytes(&wrapped, "keyring")?).await?;
        // Read back before deleting the old copy, so a failure never leaves no key.
        let check: WrappedKeyring = serde_json::from_slice(&self.inner.store.get(&new_key).await?)
            .map_err(|e| RepoError::corrupt(&new_key, e))?;
        check.unwrap_with(new)?;
        if old.id != new.id {
            self.inner.store.delete(&keyring_key(&old.id)).await?;
        }
        Ok(())
    }

    /// Re-reads every index object. An unreadable index object does not stop
    /// the repository from opening (what it listed becomes unreachable, and
    /// `verify` reports it); the errors are logged and kept for
    /// [`Repository::index_problems`].
    pub async fn reload_index(&self) -> Result<(), RepoError> {
        let mut index = Index::default();
        let mut problems = Vec::new();
        let keys: Vec<String> = self.inner.store.list(INDEX_PREFIX).await?.into_iter().map(|m| m.key).collect();
        // Owned keys: a future borrowing them would not be `Send` for every
        // lifetime, and callers spawn this (the coordinator's retention).
        let mut loaded = futures::stream::iter(keys.clone())
            .map(|key| async move {
                let read = self.read_index_object(&key).await;
                (key, read)
            })
            .buffer_unordered(METADATA_FETCHES);
        while let Some((key, result)) = loaded.next().await {
            match result {
                Ok(file) => index.add(file),
                Err(e) if e.is_damage() => {
                    tracing::warn!(object = %key, error = %e, "skipping unreadable index object");
                    problems.push(Damaged { key, error: e.to_string() });
                }
                // Deleted by a prune between the listing and the read.
                Err(RepoError::Store(e)) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(c) = &self.inner.cache {
            let listed: HashSet<&str> = keys.iter().map(String::as_str).collect();
            c.retain(INDEX_PREFIX, |k| listed.contains(k));
            c.retain(TREE_PREFIX, |k| {
                k.rsplit('/').next().and_then(|h| h.parse::<PackId>().ok()).is_some_and(|id| index.has_pack(&id))
            });
        }
        // Packs a prune marked: their blobs are not to be leaned on by new backups.
        let plans = crate::repo::ops::prune::load_plans(self).await?;
        let loaded = Loaded {
            index_keys: keys.into_iter().collect(),
            plans: plans.good.iter().map(|(key, _)| key.clone()).collect(),
        };
        index.doom(plans.good.into_iter().flat_map(|(_, p)| p.packs));
        *self.inner.loaded.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        *self.inner.index.write().unwrap_or_else(|p| p.into_inner()) = index;
        *self.inner.index_problems.write().unwrap_or_else(|p| p.into_inner()) = problems;
        Ok(())
    }

    /// The prune plans (their keys) the last index load took into account:
    /// the packs they mark are not leaned on.
    pub fn plans_seen(&self) -> Vec<String> {
        self.inner.loaded.read().unwrap_or_else(|p| p.into_inner()).plans.clone()
    }

    /// Whether an index object the last load read is gone from the store:
    /// only then can a pack it listed have been deleted (a prune rewrites
    /// the index objects before it deletes packs).
    pub async fn index_objects_gone(&self) -> Result<bool, RepoError> {
        let now: HashSet<String> = self.inner.store.list(INDEX_PREFIX).await?.into_iter().map(|m| m.key).collect();
        let loaded = self.inner.loaded.read().unwrap_or_else(|p| p.into_inner());
        Ok(loaded.index_keys.iter().any(|k| !now.contains(k)))
    }

    /// Index objects the last index load could not read.
    pub fn index_problems(&self) -> Vec<Damaged> {
        self.inner.index_problems.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every sealed JSON object of `kind` under `prefix` (prune plans,
    /// writer markers), read from the store itself, never the cache (a
    /// marker changes under the same name); and those that cannot be read.
    pub async fn sealed_objects<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        kind: &str,
    ) -> Result<(Vec<(String, T)>, Vec<Damaged>), RepoError> {
        let (mut good, mut damaged) = (Vec::new(), Vec::new());
        for meta in self.inner.store.list(prefix).await? {
            let read = async {
                let bytes = self.inner.store.get(&meta.key).await?;
                let plain = object::open(&self.inner.keyring, kind, &meta.key, &bytes)?;
                serde_json::from_slice::<T>(&plain).map_err(|e| RepoError::corrupt(&meta.key, e))
            };
            match read.await {
                Ok(value) => good.push((meta.key, value)),
                // Removed between the listing and the read.
                Err(RepoError::Store(e)) if e.is_not_found() => {}
                Err(e) if e.is_damage() => damaged.push(Damaged { key: meta.key, error: e.to_string() }),
                Err(e) => return Err(e),
            }
        }
        Ok((good, damaged))
    }

    /// Reads and opens one index object.
    pub async fn read_index_object(&self, key: &str) -> Result<IndexFile, RepoError> {
        let plain = self.read_sealed(key, INDEX_KIND).await?;
        postcard::from_bytes(&plain).map_err(|e| RepoError::corrupt(key, e))
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    /// The config object.
    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    /// The merged index (read lock).
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.inner.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes an index object for packs already stored, and adds them to the
    /// in-memory index. Call only after every pack listed has landed.
    pub async fn save_index(&self, packs: Vec<IndexedPack>) -> Result<Option<IndexId>, RepoError> {
        if packs.is_empty() {
            return Ok(None);
        }
        let file = IndexFile { packs };
        let payload =
            postcard::to_allocvec(&file).map_err(|e| RepoError::Encode { what: "index", reason: e.to_string() })?;
        let id = IndexId(random_id_bytes()?);
        let key = index_key(&id);
        let sealed = object::seal(&self.inner.keyring, INDEX_KIND, &key, payload, self.inner.config.compression_level)?;
        self.write_through(&key, sealed, false).await?;
        self.inner.index.write().unwrap_or_else(|p| p.into_inner()).add(file);
        Ok(Some(id))
    }

    /// Writes a snapshot manifest: the step that makes a backup visible.
    pub async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<SnapshotId, RepoError> {
        let payload =
            serde_json::to_vec(snapshot).map_err(|e| RepoError::Encode { what: "snapshot", reason: e.to_string() })?;
        let id = SnapshotId(random_id_bytes()?);
        let key = snapshot_key(&id);
        let sealed =
            object::seal(&self.inner.keyring, SNAPSHOT_KIND, &key, payload, self.inner.config.compression_level)?;
        self.write_through(&key, sealed, true).await?;
        Ok(id)
    }

    /// Loads one snapshot manifest.
    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, RepoError> {
        let key = snapshot_key(id);
        let plain = self.read_sealed(&key, SNAPSHOT_KIND).await?;
        serde_json::from_slice(&plain).map_err(|e| RepoError::corrupt(&key, e))
    }

    /// Every snapshot that can be read, oldest first; a damaged one is
    /// logged and left out (see [`Repository::snapshot_list`]).
    pub async fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
        let list = self.snapshot_list().await?;
        for d in &list.damaged {
            tracing::warn!(object = %d.key, error = %d.error, "skipping a damaged snapshot");
        }
        Ok(list.good)
    }

    /// Every snapshot, oldest first, and every snapshot object that cannot
    /// be read: one damaged object does not hide the others. Only a store
    /// that cannot be read at all is an error.
    pub async fn snapshot_list(&self) -> Result<SnapshotList, RepoError> {
        let listed = self.inner.store.list(SNAPSHOTS_PREFIX).await?;
        if let Some(c) = &self.inner.cache {
            let keys: HashSet<&str> = listed.iter().map(|m| m.key.as_str()).collect();
            c.retain(SNAPSHOTS_PREFIX, |k| keys.contains(k));
        }
        let mut list = SnapshotList::default();
        let mut ids = Vec::with_capacity(listed.len());
        for meta in listed {
            match meta.key.strip_prefix(SNAPSHOTS_PREFIX).and_then(|s| s.parse::<SnapshotId>().ok()) {
                Some(id) => ids.push(id),
                None => {
                    let error = format!("object {} is not named by a snapshot id", meta.key);
                    list.damaged.push(Damaged { key: meta.key, error });
                }
            }
        }
        let mut loaded = futures::stream::iter(ids)
            .map(|id| async move { (id, self.load_snapshot(&id).await) })
            .buffer_unordered(METADATA_FETCHES);
        while let Some((id, result)) = loaded.next().await {
            match result {
                Ok(snapshot) => list.good.push((id, snapshot)),
                // Forgotten between the listing and the read.
                Err(RepoError::Store(e)) if e.is_not_found() => {}
                Err(e) if e.is_damage() => list.damaged.push(Damaged { key: snapshot_key(&id), error: e.to_string() }),
                Err(e) => return Err(e),
            }
        }
        list.good.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        list.damaged.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(list)
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix. A
    /// damaged snapshot is never `latest`; named, it is an error saying so.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot), RepoError> {
        let list = self.snapshot_list().await?;
        if spec == "latest" {
            return list
                .good
                .into_iter()
                .next_back()
                .ok_or_else(|| RepoError::SnapshotLookup("latest: the repository has no readable snapshots".into()));
        }
        let spec_hex = spec.to_lowercase();
        let damaged = list.damaged.iter().find(|d| {
            d.key.strip_prefix(SNAPSHOTS_PREFIX).is_some_and(|id| !spec.is_empty() && id.starts_with(&spec_hex))
        });
        let mut matches = list.good.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec_hex));
        match (matches.next(), matches.next(), damaged) {
            (Some(found), None, None) if !spec.is_empty() => Ok(found),
            (None, _, Some(d)) => Err(RepoError::corrupt(&d.key, &d.error)),
            (None, _, None) => Err(RepoError::SnapshotLookup(format!("{spec}: no such snapshot"))),
            _ => Err(RepoError::SnapshotLookup(format!("{spec}: prefix matches several snapshots"))),
        }
    }

    /// Reads one blob through the index with a ranged request; a tree blob
    /// comes from its cached pack, when the repository has a cache.
    pub async fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>, RepoError> {
        let (seal, blob, pack_id, key) = {
            let index = self.index();
            let loc = index.get(id).ok_or_else(|| RepoError::BlobNotIndexed(id.to_hex()))?;
            (loc.pack.seal, loc.blob.clone(), loc.pack.id, loc.pack.key())
        };
        if let (Some(cache), BlobKind::Tree) = (&self.inner.cache, blob.kind) {
            let range = blob.range();
            let (start, end) = (range.start as usize, range.end as usize);
            if let Some(pack) = cache.get(&key).filter(|p| p.len() >= end) {
                if let Ok(plain) = open_blob(&self.inner.keyring, &seal, &blob, &pack[start..end], &key) {
                    return Ok(plain);
                }
                cache.remove(&key);
            }
            let pack = self.inner.store.get(&key).await?;
            if blake3::hash(&pack).as_bytes() == &pack_id.0 && pack.len() >= end {
                cache.put(&key, &pack);
                return open_blob(&self.inner.keyring, &seal, &blob, &pack[start..end], &key);
            }
        }
        let sealed = self.inner.store.get_range(&key, blob.range()).await?;
        open_blob(&self.inner.keyring, &seal, &blob, &sealed, &key)
    }

    /// Reads and decodes a tree.
    pub async fn load_tree(&self, id: &BlobId) -> Result<Tree, RepoError> {
        let bytes = self.read_blob(id).await?;
        Tree::decode(id, &bytes)
    }
}

/// What the last index load read.
#[derive(Debug, Default)]
struct Loaded {
    index_keys: HashSet<String>,
    plans: Vec<String>,
}

/// The snapshots of a repository: those that can be read, and the objects
/// that cannot.
#[derive(Debug, Default)]
pub struct SnapshotList {
    /// Readable snapshots, oldest first.
    pub good: Vec<(SnapshotId, Snapshot)>,
    /// Objects under `snapshots/` that cannot be read, by key.
    pub damaged: Vec<Damaged>,
}

/// An object that cannot be read, and why.
#[derive(Debug, Clone)]
pub struct Damaged {
    /// Its store key.
    pub key: String,
    /// What is wrong with it.
    pub error: String,
}

/// `first` (the copy of `key` read already) if `judge` accepts it, else
/// the first other store's copy it accepts: an object damaged where it was
/// read first may be whole in another store of a replicated repository.
async fn sound_copy<T>(
    store: &dyn ObjectStore,
    key: &str,
    first: Bytes,
    judge: impl Fn(&[u8]) -> Result<T, RepoError>,
) -> Result<(Bytes, T), RepoError> {
    let first_err = match judge(&first) {
        Ok(v) => return Ok((first, v)),
        Err(e) => e,
    };
    let copies = store.get_copies(key).await;
    copies.into_iter().flatten().find_map(|b| judge(&b).ok().map(|v| (b, v))).ok_or(first_err)
}

fn json_bytes<T: serde::Serialize>(value: &T, what: &'static str) -> Result<Bytes, RepoError> {
    serde_json::to_vec_pretty(value).map(Bytes::from).map_err(|e| RepoError::Encode { what, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn init_open_wrong_key_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let master = MasterKey::generate().unwrap();
        let repo = Repository::init(store.clone(), &master).await.unwrap();
        assert!(matches!(Repository::init(store.clone(), &master).await, Err(RepoError::AlreadyInitialised(_))));
        let chunk_key = repo.keyring().chunk_id_key.clone();
        let reopened = Repository::open(store.clone(), &master).await.unwrap();
        assert_eq!(reopened.keyring().chunk_id_key, chunk_key);

        let stranger = MasterKey::generate().unwrap();
        let err = Repository::open(store.clone(), &stranger).await.unwrap_err();
        assert!(err.to_string().starts_with("wrong key"), "{err}");

        let next = MasterKey::generate().unwrap();
        repo.rotate_master_key(&master, &next).await.unwrap();
        assert!(Repository::open(store.clone(), &master).await.is_err());
        let rotated = Repository::open(store.clone(), &next).await.unwrap();
        assert_eq!(rotated.keyring().chunk_id_key, chunk_key);
    }

    #[tokio::test]
    async fn open_missing_repository() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join("nothing")));
        let err = Repository::open(store, &MasterKey::generate().unwrap()).await.unwrap_err();
        assert!(matches!(err, RepoError::NotInitialised(_)), "{err}");
    }
}
