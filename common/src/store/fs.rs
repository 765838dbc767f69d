//! The embedded default: a repository in a local directory.
//!
//! Every write goes to a temporary file in the destination directory, is
//! fsynced, then renamed (or hard-linked, for create-if-absent) into place and
//! the directory fsynced, so a crash leaves either the old state or the new
//! object, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, StoreError, check_key};

const TEMP_PREFIX: &str = ".tmp-";

/// An object store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Objects (and ranges) at least this large, i.e. packs, are written and read
/// with `O_DIRECT`: a pack is written once and read rarely, and moving it
/// through the page cache costs more CPU than everything else a backup does
/// (measured on the CI machine: writing 1 GiB buffered 3.4 s, direct 0.8 s).
const DIRECT_MIN: usize = 1 << 20;
const DIRECT_ALIGN: usize = 4096;

/// Staging buffers for direct I/O, reused so they cost no page faults.
static DIRECT_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const DIRECT_POOL: usize = 8;

/// A buffer from the pool, with room for `len` bytes at an aligned offset.
fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
    let mut buf = DIRECT_BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
    if buf.len() < len + DIRECT_ALIGN {
        buf.resize(len + DIRECT_ALIGN, 0);
    }
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    (buf, start)
}

fn recycle(buf: Vec<u8>) {
    let mut pool = DIRECT_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < DIRECT_POOL {
        pool.push(buf);
    }
}

/// Bytes read directly into a pooled buffer; the buffer returns to the pool
/// when the last reference is dropped.
struct DirectRead {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for DirectRead {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for DirectRead {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.buf));
    }
}

/// Opens `path` for direct I/O; `None` when the filesystem refuses it.
fn open_direct(opts: &mut OpenOptions, path: &Path) -> io::Result<Option<File>> {
    match opts.custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `range` of `path` bypassing the page cache; `None` when the
/// filesystem refuses `O_DIRECT`. A short result means the file ended early.
fn read_direct(path: &Path, range: Range<u64>) -> io::Result<Option<Bytes>> {
    use std::os::unix::fs::FileExt;
    let Some(f) = open_direct(OpenOptions::new().read(true), path)? else { return Ok(None) };
    let align = DIRECT_ALIGN as u64;
    let first = range.start / align * align;
    let last = range.end.div_ceil(align) * align;
    let span = (last - first) as usize;
    let (mut buf, start) = aligned_buffer(span);
    let mut done = 0usize;
    let wanted = (range.end - first) as usize;
    while done < wanted {
        match f.read_at(&mut buf[start + done..start + span], first + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                recycle(buf);
                return Err(e);
            }
        }
    }
    let skip = (range.start - first) as usize;
    let len = done.min(wanted).saturating_sub(skip);
    Ok(Some(Bytes::from_owner(DirectRead { buf, start: start + skip, len })))
}

/// Writes `data` to the new file `path` bypassing the page cache, and fsyncs
/// it. `Ok(false)` means the filesystem refuses `O_DIRECT` (nothing is left
/// behind): write it the ordinary way.
fn write_direct(path: &Path, data: &[u8]) -> io::Result<bool> {
    let Some(f) = open_direct(OpenOptions::new().write(true).create_new(true), path)? else {
        // Some filesystems create the file before refusing the flag.
        let _ = fs::remove_file(path);
        return Ok(false);
    };
    let padded = data.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let (mut buf, start) = aligned_buffer(padded);
    let block = &mut buf[start..start + padded];
    block[..data.len()].copy_from_slice(data);
    block[data.len()..].fill(0);
    // Whole aligned blocks go out; the padding is then cut off.
    let result = (&f).write_all(block).and_then(|_| f.set_len(data.len() as u64)).and_then(|_| f.sync_all());
    recycle(buf);
    result.map(|_| true)
}

impl LocalStore {
    /// A store at `root`; the directory is created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn io_err(&self, op: &'static str, what: impl std::fmt::Display, cause: io::Error) -> StoreError {
        StoreError::Io { store: self.describe(), op, what: what.to_string(), cause }
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound { store: self.describe(), key: key.to_owned() }
    }

    /// Writes `data` to a fresh temporary file beside `dest` and fsyncs it.
    fn write_temp(&self, dest: &Path, data: &[u8]) -> Result<PathBuf, StoreError> {
        let dir = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| self.io_err("creating directory", dir.display(), e))?;
        let name = format!("{TEMP_PREFIX}{}-{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed));
        let tmp = dir.join(name);
        let result = (|| {
            if data.len() >= DIRECT_MIN && write_direct(&tmp, data)? {
                return Ok(());
            }
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_err("writing", dest.display(), e));
        }
        Ok(tmp)
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| self.io_err("syncing directory", dir.display(), e))
    }

    fn put_blocking(&self, key: &str, data: &[u8], if_absent: bool) -> Result<(), StoreError> {
        let dest = self.path_of(key)?;
        let tmp = self.write_temp(&dest, data)?;
        let placed = if if_absent {
            // link(2) fails with EEXIST instead of replacing: an atomic create-if-absent.
            let r = fs::hard_link(&tmp, &dest);
            let _ = fs::remove_file(&tmp);
            r
        } else {
            fs::rename(&tmp, &dest)
        };
        match placed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists { store: self.describe(), key: key.to_owned() });
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(self.io_err("placing", dest.display(), e));
            }
        }
        self.sync_dir(dest.parent().unwrap_or(&self.root))
    }

    fn get_range_blocking(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
        let path = self.path_of(key)?;
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.not_found(key)),
            Err(e) => return Err(self.io_err("opening", path.display(), e)),
        };
        let size = f.metadata().map_err(|e| self.io_err("reading size of", path.display(), e))?.len();
        let range = range.unwrap_or(0..size);
        if range.end > size || range.start > range.end {
            return Err(StoreError::Truncated { store: self.describe(), key: key.to_owned(), size, wanted: range.end });
        }
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| self.io_err("reading", path.display(), io::Error::other("range too large")))?;
        if len >= DIRECT_MIN {
            match read_direct(&path, range.clone()) {
                Ok(Some(bytes)) if bytes.len() == len => return Ok(bytes),
                Ok(Some(bytes)) => {
                    let wanted = range.start + bytes.len() as u64;
                    return Err(StoreError::Truncated {
                        store: self.describe(),
                        key: key.to_owned(),
                        size: wanted,
                        wanted: range.end,
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(self.io_err("reading", path.display(), e)),
            }
        }
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(range.start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| self.io_err("reading", path.display(), e))?;
        Ok(Bytes::from(buf))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        // Walk only the deepest directory the prefix names, then filter.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() { self.root.clone() } else { self.root.join(dir_part) };
        let mut out = Vec::new();
        self.files_below(start, |path, name, meta| {
            if name.starts_with(TEMP_PREFIX) {
                return Ok(());
            }
            let Some(key) = path.strip_prefix(&self.root).ok().and_then(Path::to_str) else { return Ok(()) };
            if key.starts_with(prefix) {
                let modified = meta.modified().ok().map(chrono::DateTime::<chrono::Utc>::from);
                out.push(ObjectMeta { key: key.to_owned(), size: meta.len(), modified });
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `each` with the path, name and metadata of every file below `start`.
    fn files_below(
        &self,
        start: PathBuf,
        mut each: impl FnMut(&Path, &str, &fs::Metadata) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_err("listing", dir.display(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_err("listing", dir.display(), e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    // Renamed into place or removed since the listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.io_err("reading", entry.path().display(), e)),
                };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    each(&entry.path(), name, &meta)?;
                }
            }
        }
        Ok(())
    }

    /// Removes temporary files of writes that never finished, from before `before`.
    fn reclaim_blocking(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let mut removed = 0;
        self.files_below(self.root.clone(), |path, name, meta| {
            let old = meta.modified().ok().map(chrono::DateTime::<chrono::Utc>::from).is_some_and(|m| m < before);
            if name.starts_with(TEMP_PREFIX) && old {
                match fs::remove_file(path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io_err("removing", path.display(), e)),
                }
            }
            Ok(())
        })?;
        Ok(removed)
    }
}

/// Runs blocking filesystem work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            store: "local".into(),
            op: "running",
            what: "blocking task".into(),
            cause: io::Error::other(e.to_string()),
        }),
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    fn is_local(&self) -> bool {
        true
    }

    fn parallelism(&self) -> usize {
        2
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || this.put_blocking(&key, &data, false)).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || this.put_blocking(&key, &data, true)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || this.get_range_blocking(&key, None)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (this, key) = (self.clone(), key.to_owned());
        blocking(move || this.get_range_blocking(&key, Some(range))).await
    }

    async fn head(&self, key: &str) -> Result<u64, StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(self.io_err("reading size of", path.display(), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let (this, prefix) = (self.clone(), prefix.to_owned());
        blocking(move || this.list_blocking(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err("deleting", path.display(), e)),
        }
    }

    async fn reclaim_temporaries(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let this = self.clone();
        blocking(move || this.reclaim_blocking(before)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store.put("data/ab/abc", Bytes::from_static(b"hello world")).await.unwrap();
        store.put("snapshots/s1", Bytes::from_static(b"s")).await.unwrap();
        assert_eq!(store.get("data/ab/abc").await.unwrap(), Bytes::from_static(b"hello world"));
        assert_eq!(store.get_range("data/ab/abc", 6..11).await.unwrap(), Bytes::from_static(b"world"));
        assert_eq!(store.head("data/ab/abc").await.unwrap(), 11);
        let listed = store.list("data/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].key.as_str(), listed[0].size), ("data/ab/abc", 11));
        assert!(listed[0].modified.is_some());
        assert_eq!(store.list("").await.unwrap().len(), 2);
        store.delete("data/ab/abc").await.unwrap();
        store.delete("data/ab/abc").await.unwrap();
        assert!(store.get("data/ab/abc").await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn put_if_absent_refuses_second_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store.put_if_absent("config", Bytes::from_static(b"one")).await.unwrap();
        let err = store.put_if_absent("config", Bytes::from_static(b"two")).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
        assert_eq!(store.get("config").await.unwrap(), Bytes::from_static(b"one"));
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn large_objects_round_trip_through_direct_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        for len in [DIRECT_MIN, DIRECT_MIN + 1, 3 * DIRECT_MIN + 4095] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            store.put("data/big", Bytes::from(data.clone())).await.unwrap();
            assert_eq!(store.head("data/big").await.unwrap(), len as u64);
            assert_eq!(store.get("data/big").await.unwrap(), Bytes::from(data.clone()));
            let (a, b) = (1000u64, len as u64 - 7);
            assert_eq!(store.get_range("data/big", a..b).await.unwrap(), &data[a as usize..b as usize]);
        }
    }

    #[tokio::test]
    async fn range_past_end_is_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store.put("data/x", Bytes::from_static(b"12345")).await.unwrap();
        let err = store.get_range("data/x", 2..9).await.unwrap_err();
        assert!(matches!(err, StoreError::Truncated { size: 5, wanted: 9, .. }), "{err}");
    }
}
