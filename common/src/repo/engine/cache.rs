//! A local cache of a remote repository's metadata: index objects,
//! snapshot manifests and tree packs, the objects every backup and restore
//! reads before it touches data. Without it each parent tree is its own
//! round trip to the object store.
//!
//! Every cached object is immutable in the repository and is checked when
//! used (sealed objects authenticate, packs hash to their name), so a
//! damaged cache entry is detected, dropped and fetched again; nothing here
//! is ever the only copy. Writes are temp file + rename, without fsync: a
//! crash can only lose cache entries.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The cache of one repository.
#[derive(Debug)]
pub struct MetadataCache {
    dir: PathBuf,
}

impl MetadataCache {
    /// The cache of repository `repo_id` under `root`; created on first
    /// write. None unless the id is 64 hex digits: it comes from the
    /// store's unauthenticated config and becomes a directory name.
    pub fn new(root: &Path, repo_id: &str) -> Option<Self> {
        let valid = repo_id.len() == 64 && repo_id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| MetadataCache { dir: root.join(repo_id) })
    }

    /// Where `key` is cached; None for a key that could leave the cache
    /// directory (keys come from listings of a store nobody vouches for).
    fn path(&self, key: &str) -> Option<PathBuf> {
        crate::store::check_key(key).ok().map(|_| self.dir.join(key))
    }

    /// The cached copy of `key`, if any.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        fs::read(self.path(key)?).ok().map(Bytes::from)
    }

    /// Caches `data` as `key`. Failures only cost a later fetch, so they
    /// are logged, not returned.
    pub fn put(&self, key: &str, data: &[u8]) {
        let Some(dest) = self.path(key) else { return };
        let write = || -> io::Result<()> {
            let dir = dest.parent().unwrap_or(&self.dir);
            fs::create_dir_all(dir)?;
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
            fs::write(&tmp, data)?;
            fs::rename(&tmp, &dest).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        };
        if let Err(e) = write() {
            tracing::debug!(key, error = %e, "could not cache object");
        }
    }

    /// Drops the cached copy of `key` (found damaged).
    pub fn remove(&self, key: &str) {
        if let Some(path) = self.path(key) {
            let _ = fs::remove_file(path);
        }
    }

    /// Drops every cached object under `prefix` (a directory such as
    /// `index/`) whose key `keep` rejects: objects the repository no longer has.
    pub fn retain(&self, prefix: &str, keep: impl Fn(&str) -> bool) {
        let mut stack = vec![self.dir.join(prefix)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                    continue;
                }
                let key = path.strip_prefix(&self.dir).ok().and_then(|k| k.to_str()).map(str::to_owned);
                if key.is_none_or(|k| !keep(&k)) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove_retain() {
        let root = tempfile::tempdir().unwrap();
        assert!(MetadataCache::new(root.path(), "../../etc").is_none());
        let cache = MetadataCache::new(root.path(), &"ab".repeat(32)).unwrap();
        cache.put("index/../../escape", b"x");
        assert!(!root.path().join("escape").exists() && cache.get("index/../../escape").is_none());
        assert!(cache.get("index/a").is_none());
        cache.put("index/a", b"a");
        cache.put("index/b", b"b");
        cache.put("data/ab/c", b"c");
        assert_eq!(cache.get("index/a").unwrap(), Bytes::from_static(b"a"));
        cache.remove("index/a");
        assert!(cache.get("index/a").is_none());
        cache.retain("data/", |k| k != "data/ab/c");
        assert!(cache.get("data/ab/c").is_none());
        assert!(cache.get("index/b").is_some());
    }
}
