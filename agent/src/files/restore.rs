//! File-tree restore: plan from the snapshot's trees, fetch each pack once
//! (ranged reads of the blobs needed), write chunks in parallel at their
//! offsets, then set metadata bottom-up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_channel::bounded;
use lifeboat_common::repo::chunker::Chunker;
use lifeboat_common::repo::pack::{BlobKind, PackBlob, PackSeal, blob_id, open_blob};
use lifeboat_common::repo::repository::pack_key;
use lifeboat_common::repo::snapshot::Snapshot;
use lifeboat_common::repo::tree::{Metadata, Node, NodeKind, Tree};
use lifeboat_common::repo::{BlobId, PackId, RepoError, Repository};
use tokio::runtime::Handle;

use super::FilesError;
use super::backup::{FixedChunks, read_fixed};
use super::meta::file_time;
use crate::progress::Progress;

/// Two blobs of one pack closer than this are fetched in one request.
const MERGE_GAP: u64 = 1024 * 1024;

/// Where and how to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Directory that receives the snapshot (or the sub-path's contents).
    pub target: PathBuf,
    /// Absolute path inside the snapshot to restore instead of everything.
    pub sub_path: Option<String>,
    /// Remove entries in the target that the snapshot does not have.
    pub delete: bool,
    /// Keep what files already in the target hold where it matches the
    /// snapshot (chunk by chunk, checked by content hash) and write only the rest.
    pub delta: bool,
    /// Files the backup cut into fixed-size chunks (`delta` must cut the
    /// target's files the same way to recognise them).
    pub fixed_chunks: Option<Arc<dyn FixedChunks>>,
    /// Worker threads (0: one per core, at least 2).
    pub threads: usize,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Regular files restored intact.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks, hard links and special files.
    pub others: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Bytes already in the target with the right content (`delta`), not written.
    pub bytes_reused: u64,
    /// Entries removed from the target (`delete`).
    pub deleted: u64,
    /// Files that could not be restored, each with the reason (naming the object).
    pub failed: Vec<String>,
    /// Metadata that could not be applied (e.g. ownership as non-root).
    pub warnings: Vec<String>,
}

impl RestoreReport {
    /// Adds another restore's counts (e.g. of a second root) to this one.
    pub fn absorb(&mut self, other: RestoreReport) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.others += other.others;
        self.bytes += other.bytes;
        self.bytes_reused += other.bytes_reused;
        self.deleted += other.deleted;
        self.failed.extend(other.failed);
        self.warnings.extend(other.warnings);
    }
}

struct PlannedFile {
    path: PathBuf,
    meta: Metadata,
    content: Vec<BlobId>,
}

#[derive(Default)]
struct Plan {
    /// Directories, parents before children; the target itself first.
    dirs: Vec<(PathBuf, Option<Metadata>)>,
    files: Vec<PlannedFile>,
    /// Later occurrences of a hard-linked file: (path, index of the first in `files`).
    hardlinks: Vec<(PathBuf, usize)>,
    others: Vec<(PathBuf, NodeKind, Metadata)>,
    /// Every path the snapshot puts in the target, for `delete`.
    wanted: HashSet<PathBuf>,
}

/// Where one blob goes: file index and byte offset.
type Targets = Vec<(usize, u64)>;

/// Restores a snapshot (or part of it) into `opts.target`.
#[tracing::instrument(skip_all, fields(target = %opts.target.display(), path = ?opts.sub_path))]
pub async fn restore_files(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport, FilesError> {
    let root = resolve_sub_path(repo, snapshot, opts.sub_path.as_deref()).await?;
    let mut plan = Plan::default();
    plan.dirs.push((opts.target.clone(), root.dir_meta.clone()));
    plan.wanted.insert(opts.target.clone());
    match root.node {
        Some(node) => {
            let path = opts.target.join(OsStr::from_bytes(&node.name));
            add_leaf(&mut plan, path, node, &mut HashMap::new());
        }
        None => add_tree(repo, &mut plan, &opts.target, &root.tree, &mut HashMap::new()).await?,
    }
    let total: u64 = plan.files.iter().map(|f| f.meta.size).sum();
    progress.files_total.store(plan.files.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(total, Ordering::Relaxed);
    progress.totals_known.store(true, Ordering::Relaxed);

    let repo = repo.clone();
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || execute(&repo, &runtime, plan, &opts, &progress))
        .await
        .map_err(|_| FilesError::Internal("restore panicked"))?
}

struct Root {
    tree: Tree,
    /// Set when the sub-path is a single non-directory entry.
    node: Option<Node>,
    dir_meta: Option<Metadata>,
}

async fn resolve_sub_path(repo: &Repository, snapshot: &Snapshot, sub: Option<&str>) -> Result<Root, FilesError> {
    let mut tree = repo.load_tree(&snapshot.tree).await?;
    let mut dir_meta = None;
    let Some(sub) = sub else {
        return Ok(Root { tree, node: None, dir_meta });
    };
    let parts: Vec<&str> = sub.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    for (i, part) in parts.iter().enumerate() {
        let node = tree.find(part.as_bytes()).ok_or_else(|| FilesError::NotInSnapshot(sub.to_owned()))?.clone();
        match node.kind {
            NodeKind::Dir { subtree } => {
                tree = repo.load_tree(&subtree).await?;
                dir_meta = Some(node.meta);
            }
            _ if i + 1 == parts.len() => {
                return Ok(Root { tree, node: Some(node), dir_meta: None });
            }
            _ => return Err(FilesError::NotInSnapshot(sub.to_owned())),
        }
    }
    Ok(Root { tree, node: None, dir_meta })
}

/// Adds a tree's entries below `dir` to the plan, depth-first.
async fn add_tree(
    repo: &Repository,
    plan: &mut Plan,
    dir: &Path,
    tree: &Tree,
    links: &mut HashMap<(u64, u64), usize>,
) -> Result<(), FilesError> {
    // Iterative over a stack of (dir, tree) so deep trees cannot overflow the async stack.
    let mut stack: Vec<(PathBuf, Tree)> = vec![(dir.to_owned(), tree.clone())];
    while let Some((dir, tree)) = stack.pop() {
        for node in tree.nodes {
            let path = dir.join(OsStr::from_bytes(&node.name));
            if let NodeKind::Dir { subtree } = &node.kind {
                let sub = repo.load_tree(subtree).await?;
                plan.wanted.insert(path.clone());
                plan.dirs.push((path.clone(), Some(node.meta.clone())));
                stack.push((path, sub));
            } else {
                add_leaf(plan, path, node, links);
            }
        }
    }
    Ok(())
}

fn add_leaf(plan: &mut Plan, path: PathBuf, node: Node, links: &mut HashMap<(u64, u64), usize>) {
    plan.wanted.insert(path.clone());
    match node.kind {
        NodeKind::File { content } => {
            if node.meta.nlink > 1 {
                if let Some(&first) = links.get(&(node.meta.dev, node.meta.inode)) {
                    plan.hardlinks.push((path, first));
                    return;
                }
                links.insert((node.meta.dev, node.meta.inode), plan.files.len());
            }
            plan.files.push(PlannedFile { path, meta: node.meta, content });
        }
        other => plan.others.push((path, other, node.meta)),
    }
}

fn execute(
    repo: &Repository,
    runtime: &Handle,
    plan: Plan,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport, FilesError> {
    let mut report = RestoreReport::default();
    for (dir, _) in &plan.dirs {
        make_dir(dir)?;
        report.dirs += 1;
    }
    // Chunked before anything is written: an existing file is kept (not
    // truncated) and each chunk already at its place is left alone.
    let reusable = if opts.delta {
        existing_chunks(repo, &plan.files, opts.threads, opts.fixed_chunks.as_deref())
    } else {
        Vec::new()
    };
    for (i, f) in plan.files.iter().enumerate() {
        create_file(&f.path, f.meta.size, reusable.get(i).is_some_and(|c| !c.is_empty()))?;
    }

    // Which blob goes where, grouped by pack.
    let mut by_pack: BTreeMap<PackId, (PackSeal, Vec<(PackBlob, Targets)>)> = BTreeMap::new();
    let mut failed: HashMap<usize, String> = HashMap::new();
    {
        let index = repo.index();
        let mut blob_targets: HashMap<BlobId, Targets> = HashMap::new();
        for (i, f) in plan.files.iter().enumerate() {
            let mut offset = 0u64;
            let there = reusable.get(i);
            for id in &f.content {
                match index.get(id) {
                    Some(loc) => {
                        if there.is_some_and(|c| c.contains(&(offset, *id))) {
                            report.bytes_reused += u64::from(loc.blob.raw_len);
                        } else {
                            blob_targets.entry(*id).or_default().push((i, offset));
                        }
                        offset += u64::from(loc.blob.raw_len);
                    }
                    None => {
                        failed.entry(i).or_insert_with(|| {
                            format!("{}: {}", f.path.display(), RepoError::BlobNotIndexed(id.to_hex()))
                        });
                        break;
                    }
                }
            }
        }
        for (id, targets) in blob_targets {
            let targets: Targets = targets.into_iter().filter(|(i, _)| !failed.contains_key(i)).collect();
            let Some(loc) = index.get(&id) else { continue };
            if targets.is_empty() {
                continue;
            }
            by_pack
                .entry(loc.pack.id)
                .or_insert_with(|| (loc.pack.seal, Vec::new()))
                .1
                .push((loc.blob.clone(), targets));
        }
    }

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let threads = if opts.threads == 0 { (cores * 2).max(repo.store().parallelism()).max(4) } else { opts.threads };
    let writer = DataWriter {
        repo,
        runtime,
        files: &plan.files,
        failed: Mutex::new(failed),
        bytes: AtomicU64::new(0),
        progress,
    };
    let fatal: Mutex<Option<FilesError>> = Mutex::new(None);
    let (tx, rx) = bounded::<(PackId, PackSeal, Vec<(PackBlob, Targets)>)>(threads);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (rx, writer, fatal) = (rx.clone(), &writer, &fatal);
            s.spawn(move || {
                for (pack, seal, blobs) in rx {
                    if let Err(e) = writer.restore_pack(pack, &seal, blobs) {
                        fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        return;
                    }
                }
            });
        }
        drop(rx);
        for (pack, (seal, mut blobs)) in by_pack {
            blobs.sort_by_key(|(b, _)| b.offset);
            if tx.send((pack, seal, blobs)).is_err() {
                break;
            }
        }
        drop(tx);
    });
    if let Some(e) = fatal.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    report.bytes = writer.bytes.load(Ordering::Relaxed);

    let failed = writer.failed.into_inner().unwrap_or_else(|p| p.into_inner());
    for (i, f) in plan.files.iter().enumerate() {
        if let Some(why) = failed.get(&i) {
            // A file with a hole where a chunk should be must not pass for restored.
            let _ = fs::remove_file(&f.path);
            report.failed.push(why.clone());
        } else {
            set_meta(&f.path, &f.meta, false, &mut report.warnings);
            report.files += 1;
            progress.files_done.fetch_add(1, Ordering::Relaxed);
        }
    }
    for (path, first) in &plan.hardlinks {
        if failed.contains_key(first) {
            report.failed.push(format!("{}: hard link to a file that failed", path.display()));
            continue;
        }
        replace_non_dir(path)?;
        fs::hard_link(&plan.files[*first].path, path).map_err(|e| FilesError::io("linking", path, e))?;
        report.others += 1;
    }
    for (path, kind, meta) in &plan.others {
        replace_non_dir(path)?;
        match kind {
            NodeKind::Symlink { target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), path)
                    .map_err(|e| FilesError::io("creating symlink", path, e))?;
            }
            NodeKind::Fifo | NodeKind::Device { .. } => {
                let (kind_bits, rdev) = match kind {
                    NodeKind::Device { rdev, block: true } => (libc::S_IFBLK, *rdev),
                    NodeKind::Device { rdev, block: false } => (libc::S_IFCHR, *rdev),
                    _ => (libc::S_IFIFO, 0),
                };
                if let Err(e) = mknod(path, kind_bits | (meta.mode & 0o7777), rdev) {
                    report.warnings.push(format!("creating special file {}: {e}", path.display()));
                    continue;
                }
            }
            _ => continue,
        }
        set_meta(path, meta, true, &mut report.warnings);
        report.others += 1;
    }
    if opts.delete {
        report.deleted = delete_extras(&opts.target, &plan.wanted)?;
    }
    // Directories last and deepest first, so writing inside them does not
    // disturb their times.
    for (dir, meta) in plan.dirs.iter().rev() {
        if let Some(meta) = meta {
            set_meta(dir, meta, false, &mut report.warnings);
        }
    }
    Ok(report)
}

/// Writes blobs into the files that need them; shared by the restore workers.
struct DataWriter<'a> {
    repo: &'a Repository,
    runtime: &'a Handle,
    files: &'a [PlannedFile],
    /// Files that could not be restored, by index, with the reason.
    failed: Mutex<HashMap<usize, String>>,
    bytes: AtomicU64,
    progress: &'a Progress,
}

impl DataWriter<'_> {
    /// Fetches the blobs of one pack (neighbours in one ranged read) and
    /// writes each where it belongs. A bad blob fails only the files that
    /// need it; an error writing the target stops the restore.
    fn restore_pack(&self, pack: PackId, seal: &PackSeal, blobs: Vec<(PackBlob, Targets)>) -> Result<(), FilesError> {
        let (repo, files) = (self.repo, self.files);
        // File contents are data blobs, and data blobs live in data packs.
        let key = pack_key(&pack, BlobKind::Data);
        // Whole copies from every store, fetched only if a blob read first is damaged.
        let mut copies: Option<Vec<Bytes>> = None;
        let mut i = 0;
        while i < blobs.len() {
            // Merge neighbouring blobs into one ranged read.
            let start = u64::from(blobs[i].0.offset);
            let mut end = blobs[i].0.range().end;
            let mut j = i + 1;
            while j < blobs.len() && u64::from(blobs[j].0.offset) <= end + MERGE_GAP {
                end = end.max(blobs[j].0.range().end);
                j += 1;
            }
            let fetched = self.runtime.block_on(repo.store().get_range(&key, start..end));
            for (blob, targets) in &blobs[i..j] {
                let r = blob.range();
                let data = fetched.as_ref().map_err(|e| e.to_string()).and_then(|range| {
                    let slice = &range[(r.start - start) as usize..(r.end - start) as usize];
                    open_blob(repo.keyring(), seal, blob, slice, &key).map_err(|e| e.to_string())
                });
                let data = data.or_else(|why| {
                    let copies = copies.get_or_insert_with(|| {
                        self.runtime.block_on(repo.store().get_copies(&key)).into_iter().flatten().collect()
                    });
                    copies
                        .iter()
                        .filter_map(|c| c.get(r.start as usize..r.end as usize))
                        .find_map(|slice| open_blob(repo.keyring(), seal, blob, slice, &key).ok())
                        .ok_or(why)
                });
                match data {
                    Ok(data) => {
                        for &(file, offset) in targets {
                            let path = &files[file].path;
                            write_at(path, &data, offset)?;
                            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                            self.progress.bytes(data.len() as u64);
                        }
                    }
                    Err(why) => {
                        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                        for &(file, _) in targets {
                            failed.entry(file).or_insert_with(|| format!("{}: {why}", files[file].path.display()));
                        }
                    }
                }
            }
            i = j;
        }
        Ok(())
    }
}

fn write_at(path: &Path, data: &[u8], offset: u64) -> Result<(), FilesError> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| FilesError::io("opening", path, e))?;
    f.write_all_at(data, offset).map_err(|e| FilesError::io("writing", path, e))
}

/// Creates a directory; an existing directory is kept, an existing file or
/// symlink in its place is an error (it is never removed silently).
fn make_dir(dir: &Path) -> Result<(), FilesError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(FilesError::io(
            "creating directory",
            dir,
            io::Error::new(io::ErrorKind::AlreadyExists, "a non-directory is in the way"),
        )),
        Err(_) => fs::create_dir_all(dir).map_err(|e| FilesError::io("creating directory", dir, e)),
    }
}

/// Removes a file or symlink standing where the snapshot puts another entry
/// of the same name (that is overwriting it, not deleting an extra entry).
fn replace_non_dir(path: &Path) -> Result<(), FilesError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(FilesError::io(
            "restoring",
            path,
            io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way"),
        )),
        Ok(_) => fs::remove_file(path).map_err(|e| FilesError::io("replacing", path, e)),
        Err(_) => Ok(()),
    }
}

/// The chunks each planned file's current occupant of the target holds,
/// by offset and content id (empty where there is no regular file), cut
/// and hashed as a backup would, on `threads` threads.
fn existing_chunks(
    repo: &Repository,
    files: &[PlannedFile],
    threads: usize,
    fixed: Option<&dyn FixedChunks>,
) -> Vec<HashSet<(u64, BlobId)>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let threads = if threads == 0 { cores } else { threads }.clamp(1, files.len().max(1));
    let next = AtomicU64::new(0);
    let found: Mutex<Vec<HashSet<(u64, BlobId)>>> = Mutex::new(vec![HashSet::new(); files.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut chunker = Chunker::new(repo.config().chunker, repo.keyring().chunker_seed);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(f) = files.get(i) else { return };
                    let Ok(meta) = fs::symlink_metadata(&f.path) else { continue };
                    if !meta.is_file() || f.content.is_empty() {
                        continue;
                    }
                    let Ok(file) = fs::File::open(&f.path) else { continue };
                    let mut chunks = HashSet::new();
                    let mut offset = 0u64;
                    let mut each = |chunk: &[u8]| -> io::Result<()> {
                        chunks.insert((offset, blob_id(repo.keyring(), chunk)));
                        offset += chunk.len() as u64;
                        Ok(())
                    };
                    let read = match fixed.and_then(|policy| policy.chunk_size(&f.path)) {
                        Some(size) => read_fixed(file, size, &mut each),
                        None => chunker.chunk_reader(file, &mut each),
                    };
                    if read.is_ok() {
                        found.lock().unwrap_or_else(|p| p.into_inner())[i] = chunks;
                    }
                }
            });
        }
    });
    found.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Creates (or, with `keep`, reuses without truncating) a regular file of `size` bytes.
fn create_file(path: &Path, size: u64, keep: bool) -> Result<(), FilesError> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        replace_non_dir(path)?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(!keep)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| FilesError::io("creating", path, e))?;
    f.set_len(size).map_err(|e| FilesError::io("sizing", path, e))
}

fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod has no other pointer arguments.
    let r = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Applies owner (when permitted), mode and times; failures become warnings.
fn set_meta(path: &Path, meta: &Metadata, is_link: bool, warnings: &mut Vec<String>) {
    if let Err(e) = std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)) {
        // Only root may give files away; as another user keep our ownership quietly.
        if e.kind() != io::ErrorKind::PermissionDenied {
            warnings.push(format!("setting owner of {}: {e}", path.display()));
        }
    }
    if !is_link && let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(meta.mode & 0o7777)) {
        warnings.push(format!("setting mode of {}: {e}", path.display()));
    }
    let (atime, mtime) = (file_time(meta.atime_ns), file_time(meta.mtime_ns));
    if let Err(e) = filetime::set_symlink_file_times(path, atime, mtime) {
        warnings.push(format!("setting times of {}: {e}", path.display()));
    }
}

/// Removes everything below `target` that the snapshot does not contain.
fn delete_extras(target: &Path, wanted: &HashSet<PathBuf>) -> Result<u64, FilesError> {
    let mut deleted = 0;
    let mut stack = vec![target.to_owned()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| FilesError::io("listing", &dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| FilesError::io("listing", &dir, e))?;
            let path = entry.path();
            let is_dir = entry.file_type().map_err(|e| FilesError::io("reading", &path, e))?.is_dir();
            if wanted.contains(&path) {
                if is_dir {
                    stack.push(path);
                }
                continue;
            }
            let r = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            r.map_err(|e| FilesError::io("deleting", &path, e))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
