//! File-tree restore: plan from the snapshot's trees, fetch each pack once
//! (ranged reads of the blobs needed), write chunks in parallel at their
//! offsets, then set metadata bottom-up.
//!
//! Everything below the target is reached through the target's descriptor
//! without following a link (see `dirfd`), each file is written to a new
//! inode renamed into place once whole, and modes, owners and times are set
//! on descriptors: a link planted in the target, or a hard link to a file
//! outside it, cannot make a restore write or change anything outside the
//! target. An entry that cannot be restored is listed with its reason and
//! the rest goes on.

use lifeboat_common::invalid::Invalid;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use bytes::Bytes;
use crossbeam_channel::bounded;
use lifeboat_common::repo::engine::chunker::Chunker;
use lifeboat_common::repo::format::layout::pack_key;
use lifeboat_common::repo::format::pack::{BlobKind, PackBlob, PackSeal, blob_id, open_blob};
use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::format::tree::{Metadata, Node, NodeKind, Tree, Xattr};
use lifeboat_common::repo::{BlobId, PackId, RepoError, Repository};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tokio::runtime::Handle;

use super::FilesError;
use super::backup::{FixedChunks, read_fixed};
use super::dirfd;
use crate::progress::Progress;

/// Two blobs of one pack closer than this are fetched in one request.
const MERGE_GAP: u64 = 1024 * 1024;

/// What to do with a file already in the target where the snapshot has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Always replace it (read-only and newer files too).
    #[default]
    Always,
    /// Replace it unless it has the snapshot's size and modification time.
    IfChanged,
    /// Replace it only if the snapshot's copy is newer.
    IfNewer,
    /// Never replace anything already there.
    Never,
}

impl std::str::FromStr for Overwrite {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "always" => Ok(Overwrite::Always),
            "if-changed" => Ok(Overwrite::IfChanged),
            "if-newer" => Ok(Overwrite::IfNewer),
            "never" => Ok(Overwrite::Never),
            _ => Err(Invalid(format!("{s:?} is not one of always, if-changed, if-newer, never"))),
        }
    }
}

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
    /// Files already in the target: replaced always, or only in some cases.
    pub overwrite: Overwrite,
    /// Paths a restore with `delete` must never remove (the repository, the
    /// master key): a target holding one is refused.
    pub protect: Vec<PathBuf>,
    /// Leave extended attributes and POSIX ACLs unset.
    pub skip_xattrs: bool,
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
    /// Files already in the target left as they were (`overwrite`).
    pub kept: u64,
    /// Entries removed from the target (`delete`).
    pub deleted: u64,
    /// Entries that could not be restored, each with the reason (naming the
    /// path, and the object when the repository was at fault).
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
        self.kept += other.kept;
        self.deleted += other.deleted;
        self.failed.extend(other.failed);
        self.warnings.extend(other.warnings);
    }
}

/// A file to restore; `rel` is relative to the target.
struct PlannedFile {
    rel: PathBuf,
    meta: Metadata,
    content: Vec<BlobId>,
    xattrs: Vec<Xattr>,
}

/// A directory's metadata and extended attributes, to set once it is full.
type DirMeta = Option<(Metadata, Vec<Xattr>)>;

#[derive(Default)]
struct Plan {
    /// Directories, parents before children, relative to the target (the
    /// target itself, the empty path, first).
    dirs: Vec<(PathBuf, DirMeta)>,
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
    if opts.delete {
        refuse_protected(&opts.target, &opts.protect)?;
    }
    let plan = async {
        let root = resolve_sub_path(repo, snapshot, opts.sub_path.as_deref()).await?;
        let mut plan = Plan::default();
        plan.dirs.push((PathBuf::new(), root.dir_meta.clone()));
        plan.wanted.insert(PathBuf::new());
        match root.node {
            Some(node) => {
                let path = PathBuf::from(OsStr::from_bytes(&node.name));
                add_leaf(&mut plan, path, node, &mut HashMap::new());
            }
            None => add_tree(repo, &mut plan, Path::new(""), &root.tree, &mut HashMap::new()).await?,
        }
        Ok::<_, FilesError>(plan)
    }
    .instrument(tracing::info_span!("read the trees"))
    .await?;
    let total: u64 = plan.files.iter().map(|f| f.meta.size).sum();
    progress.files_total.store(plan.files.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(total, Ordering::Relaxed);
    progress.totals_known.store(true, Ordering::Relaxed);

    let repo = repo.clone();
    let runtime = Handle::current();
    let span = tracing::info_span!("fetch and write", files = plan.files.len(), bytes = total);
    // The writing threads outlive this future: when it is dropped (a drill
    // timed out or cancelled, whose clean-up is about to remove the target;
    // a job cancelled; the agent stopping), each stops at its next read
    // instead of writing on, and the files half-written are removed.
    let abandoned = Arc::new(AtomicBool::new(false));
    let _abandon_on_drop = AbandonOnDrop(abandoned.clone());
    tokio::task::spawn_blocking(move || span.in_scope(|| execute(&repo, &runtime, plan, &opts, &progress, &abandoned)))
        .await
        .map_err(|_| FilesError::Internal("restore panicked"))?
}

/// Raises its flag when dropped.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Refuses a target that holds a protected path (the repository, the
/// master key): `delete` would remove it.
fn refuse_protected(target: &Path, protect: &[PathBuf]) -> Result<(), FilesError> {
    let Ok(target) = std::fs::canonicalize(target) else { return Ok(()) };
    for p in protect {
        let Ok(real) = std::fs::canonicalize(p) else { continue };
        if real.starts_with(&target) {
            return Err(FilesError::Usage(format!(
                "refusing to restore with --delete into {}: it holds {}, which --delete would remove; restore elsewhere, or without --delete",
                target.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

struct Root {
    tree: Tree,
    /// Set when the sub-path is a single non-directory entry.
    node: Option<Node>,
    dir_meta: DirMeta,
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
                dir_meta = Some((node.meta, node.xattrs));
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
                plan.dirs.push((path.clone(), Some((node.meta.clone(), node.xattrs.clone()))));
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
            plan.files.push(PlannedFile { rel: path, meta: node.meta, content, xattrs: node.xattrs });
        }
        other => plan.others.push((path, other, node.meta)),
    }
}

/// Device and inode: what a descriptor opened later must still be.
type Ident = (u64, u64);

#[allow(clippy::unnecessary_cast)] // The field types differ between architectures.
fn ident(st: &rustix::fs::Stat) -> Ident {
    (st.st_dev as u64, st.st_ino as u64)
}

/// Where a file's content is being written: a new inode under a temporary
/// name beside its final one, or (`delta`) the file already there.
struct Placed {
    /// Relative path written to.
    at: PathBuf,
    ident: Ident,
    /// A new inode (holes need no writing), renamed into place at the end.
    fresh: bool,
    /// The new inode kept open from its creation (for the first
    /// [`HELD_FILES`] files), so writing and finishing it opens nothing.
    held: Option<std::fs::File>,
}

/// New files kept open between their creation and their last write.
const HELD_FILES: usize = 2048;

/// The target, open, and what restoring into it needs at hand.
struct Target<'a> {
    root: OwnedFd,
    path: &'a Path,
    /// The directory opened last, for the next entry of the same directory
    /// (entries are planned directory by directory). Holding it open lets
    /// no link in: it was reached without one, and names in it are still
    /// taken without following any.
    last_dir: Mutex<Option<(PathBuf, Arc<OwnedFd>)>>,
}

/// Errors that no other entry could escape either: stop the restore.
fn is_fatal(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EIO))
}

impl Target<'_> {
    /// The path for messages.
    fn show(&self, rel: &Path) -> String {
        self.path.join(rel).display().to_string()
    }

    fn open(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        dirfd::open_beneath(self.root.as_fd(), rel, flags, Mode::empty())
    }

    fn open_dir(&self, rel: &Path) -> io::Result<Arc<OwnedFd>> {
        let mut last = self.last_dir.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((path, fd)) = last.as_ref()
            && path == rel
        {
            return Ok(fd.clone());
        }
        let fd = Arc::new(self.open(rel, OFlags::RDONLY | OFlags::DIRECTORY)?);
        *last = Some((rel.to_owned(), fd.clone()));
        Ok(fd)
    }

    /// Opens `rel` for writing, checking it is still the inode `ident`.
    fn open_placed(&self, placed: &Placed) -> io::Result<OwnedFd> {
        let fd = self.open(&placed.at, OFlags::WRONLY)?;
        if ident(&rustix::fs::fstat(&fd)?) != placed.ident {
            return Err(io::Error::other("replaced by another file while the restore ran"));
        }
        Ok(fd)
    }
}

/// The parent directory and the name of `rel`.
fn split(rel: &Path) -> (&Path, &OsStr) {
    (rel.parent().unwrap_or(Path::new("")), rel.file_name().unwrap_or_default())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name beside the final one for an entry being built.
fn temp_name() -> String {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = PID.get_or_init(std::process::id);
    format!(".lifeboat-restore.{pid}.{}", TEMP_COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn execute(
    repo: &Repository,
    runtime: &Handle,
    plan: Plan,
    opts: &RestoreOptions,
    progress: &Progress,
    abandoned: &AtomicBool,
) -> Result<RestoreReport, FilesError> {
    dirfd::raise_fd_limit();
    let mut report = RestoreReport::default();
    std::fs::create_dir_all(&opts.target).map_err(|e| FilesError::io("creating directory", &opts.target, e))?;
    let opened = dirfd::open_dir_path(&opts.target).map_err(|e| FilesError::io("opening", &opts.target, e))?;
    let target = Target { root: opened.fd, path: &opts.target, last_dir: Mutex::new(None) };

    // Directories whose own creation failed: nothing below them is tried.
    let mut broken: HashSet<PathBuf> = HashSet::new();
    let fail = |report: &mut RestoreReport, broken: &HashSet<PathBuf>, rel: &Path, why: String| {
        let why = if broken.contains(split(rel).0) { "its directory could not be restored".to_owned() } else { why };
        report.failed.push(format!("{}: {why}", target.show(rel)));
    };
    for (rel, _) in &plan.dirs {
        if rel.as_os_str().is_empty() {
            report.dirs += 1;
            continue;
        }
        let parent = split(rel).0;
        if broken.contains(parent) {
            broken.insert(rel.clone());
            fail(&mut report, &broken, rel, String::new());
            continue;
        }
        match make_dir(&target, rel) {
            Ok(()) => report.dirs += 1,
            Err(e) if is_fatal(&e) => return Err(FilesError::io("creating directory", &opts.target.join(rel), e)),
            Err(e) => {
                fail(&mut report, &broken, rel, format!("creating directory: {e}"));
                broken.insert(rel.clone());
            }
        }
    }
    let in_broken = |rel: &Path| broken.contains(split(rel).0);

    // Chunked before anything is written: each chunk already at its place
    // in a file the target holds is left alone.
    let reusable = if opts.delta {
        existing_chunks(repo, &target, &plan.files, opts.threads, opts.fixed_chunks.as_deref())
    } else {
        Vec::new()
    };
    let mut placed: Vec<Option<Placed>> = Vec::with_capacity(plan.files.len());
    // Nothing half-written is left under a temporary name.
    let unplace = |placed: &[Option<Placed>]| {
        for (p, f) in placed.iter().zip(&plan.files) {
            if let Some(p) = p.as_ref().filter(|p| p.fresh) {
                let (dir, _) = split(&f.rel);
                if let Ok(d) = target.open_dir(dir) {
                    let _ = rustix::fs::unlinkat(&d, split(&p.at).1, AtFlags::empty());
                }
            }
        }
    };
    for (i, f) in plan.files.iter().enumerate() {
        if abandoned.load(Ordering::Relaxed) {
            unplace(&placed);
            return Err(FilesError::Abandoned);
        }
        if in_broken(&f.rel) {
            fail(&mut report, &broken, &f.rel, String::new());
            placed.push(None);
            continue;
        }
        if !opts.delta && keep_existing(&target, f, opts.overwrite) {
            report.kept += 1;
            progress.file_done(f.meta.size);
            placed.push(None);
            continue;
        }
        let reuse = reusable.get(i).and_then(Option::as_ref);
        let hold = placed.len() < HELD_FILES;
        match place_file(&target, f, reuse.map(|r| r.0), hold) {
            Ok(p) => placed.push(Some(p)),
            Err(e) if is_fatal(&e) => {
                unplace(&placed);
                return Err(FilesError::io("creating", &opts.target.join(&f.rel), e));
            }
            Err(e) => {
                fail(&mut report, &broken, &f.rel, format!("creating: {e}"));
                placed.push(None);
            }
        }
    }

    // Which blob goes where, grouped by pack; and how many writes each file waits for.
    let mut remaining = vec![0u32; plan.files.len()];
    let mut by_pack: BTreeMap<PackId, (PackSeal, Vec<(PackBlob, Targets)>)> = BTreeMap::new();
    let mut failed: HashMap<usize, String> = HashMap::new();
    {
        let index = repo.index();
        let mut blob_targets: HashMap<BlobId, Targets> = HashMap::new();
        for (i, f) in plan.files.iter().enumerate() {
            if placed[i].is_none() {
                continue;
            }
            let mut offset = 0u64;
            let there = reusable.get(i).and_then(Option::as_ref).map(|r| &r.1);
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
                            format!("{}: {}", target.show(&f.rel), RepoError::BlobNotIndexed(id.to_hex()))
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
            for &(i, _) in &targets {
                remaining[i] += 1;
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
        target: &target,
        files: &plan.files,
        placed: &placed,
        remaining: remaining.into_iter().map(AtomicU32::new).collect(),
        finished: Mutex::new(HashMap::new()),
        warnings: Mutex::new(Vec::new()),
        xattrs: !opts.skip_xattrs,
        failed: Mutex::new(failed),
        bytes: AtomicU64::new(0),
        progress,
        abandoned,
    };
    let fatal: Mutex<Option<FilesError>> = Mutex::new(None);
    let (tx, rx) = bounded::<(PackId, PackSeal, Vec<(PackBlob, Targets)>)>(threads);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (rx, writer, fatal) = (rx.clone(), &writer, &fatal);
            s.spawn(move || {
                for (pack, seal, blobs) in rx {
                    // Another worker failed for good: the restore is over.
                    if fatal.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                        return;
                    }
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
        unplace(&placed);
        return Err(e);
    }
    report.bytes = writer.bytes.load(Ordering::Relaxed);

    let failed = writer.failed.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut finished_early = writer.finished.into_inner().unwrap_or_else(|p| p.into_inner());
    report.warnings.extend(writer.warnings.into_inner().unwrap_or_else(|p| p.into_inner()));
    // Final identities of the files restored, for their hard links.
    let mut done: HashMap<usize, Ident> = HashMap::new();
    for (i, f) in plan.files.iter().enumerate() {
        let Some(p) = &placed[i] else { continue };
        let finished = match (failed.get(&i), finished_early.remove(&i)) {
            // A file with a hole where a chunk should be must not pass for restored.
            (Some(why), _) => Err(why.clone()),
            (None, Some(result)) => result,
            // Nothing was written into it (empty, or all in place already).
            (None, None) => finish_file(&target, f, p, None, !opts.skip_xattrs, &mut report.warnings)
                .map_err(|e| format!("{}: {e}", target.show(&f.rel))),
        };
        match finished {
            Ok(()) => {
                done.insert(i, p.ident);
                report.files += 1;
                progress.files_done.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                discard(&target, p);
                report.failed.push(why);
            }
        }
    }
    for (rel, first) in &plan.hardlinks {
        let result = match done.get(first) {
            _ if in_broken(rel) => Err("its directory could not be restored".to_owned()),
            None => Err("hard link to a file that was not restored".to_owned()),
            Some(&id) => link_file(&target, &plan.files[*first].rel, rel, id).map_err(|e| format!("linking: {e}")),
        };
        match result {
            Ok(()) => report.others += 1,
            Err(why) => report.failed.push(format!("{}: {why}", target.show(rel))),
        }
    }
    for (rel, kind, meta) in &plan.others {
        if in_broken(rel) {
            fail(&mut report, &broken, rel, String::new());
            continue;
        }
        match make_other(&target, rel, kind, meta, &mut report.warnings) {
            Ok(true) => report.others += 1,
            Ok(false) => {}
            Err(e) => report.failed.push(format!("{}: {e}", target.show(rel))),
        }
    }
    if opts.delete {
        report.deleted = delete_extras(&target, &plan.wanted, &mut report.failed);
    }
    // Directories last and deepest first, so writing inside them does not
    // disturb their times.
    for (rel, meta) in plan.dirs.iter().rev() {
        if let Some((meta, xattrs)) = meta
            && !broken.contains(rel)
        {
            let xattrs = if opts.skip_xattrs { &[][..] } else { xattrs };
            let applied = target
                .open_dir(rel)
                .map_err(|e| e.to_string())
                .map(|fd| set_meta_fd(fd.as_fd(), meta, xattrs, &mut report.warnings, &target.show(rel)));
            if let Err(e) = applied {
                report.warnings.push(format!("setting metadata of {}: {e}", target.show(rel)));
            }
        }
    }
    Ok(report)
}

/// Creates the directory `rel`; an existing directory is kept, anything
/// else in its place (a file, a link) is an error: it is never removed.
fn make_dir(target: &Target<'_>, rel: &Path) -> io::Result<()> {
    let (dir, name) = split(rel);
    let parent = target.open_dir(dir)?;
    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::AlreadyExists, "a non-directory is in the way"))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `--overwrite` keeps the file the target already has at `f`'s place.
fn keep_existing(target: &Target<'_>, f: &PlannedFile, overwrite: Overwrite) -> bool {
    if overwrite == Overwrite::Always {
        return false;
    }
    let (dir, name) = split(&f.rel);
    let Ok(parent) = target.open_dir(dir) else { return false };
    let Ok(st) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) else { return false };
    let there = dirfd::metadata(&st);
    let regular = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
    match overwrite {
        Overwrite::Always => false,
        Overwrite::Never => true,
        Overwrite::IfNewer => there.mtime_ns >= f.meta.mtime_ns,
        Overwrite::IfChanged => regular && there.size == f.meta.size && there.mtime_ns == f.meta.mtime_ns,
    }
}

/// Makes the inode `f`'s content is written to: the file already there
/// when `delta` reuses part of it (`reuse`: the inode it chunked, which no
/// other path shares), else a new one under a temporary name.
fn place_file(target: &Target<'_>, f: &PlannedFile, reuse: Option<Ident>, hold: bool) -> io::Result<Placed> {
    let (dir, _) = split(&f.rel);
    if let Some(id) = reuse {
        let fd = target.open(&f.rel, OFlags::WRONLY)?;
        if ident(&rustix::fs::fstat(&fd)?) == id {
            rustix::fs::ftruncate(&fd, f.meta.size)?;
            return Ok(Placed { at: f.rel.clone(), ident: id, fresh: false, held: None });
        }
    }
    let parent = target.open_dir(dir)?;
    let name = temp_name();
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&parent, name.as_str(), flags, Mode::from_raw_mode(0o600))?;
    let id = ident(&rustix::fs::fstat(&fd)?);
    if let Err(e) = rustix::fs::ftruncate(&fd, f.meta.size) {
        let _ = rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty());
        return Err(e.into());
    }
    Ok(Placed { at: dir.join(name), ident: id, fresh: true, held: hold.then(|| std::fs::File::from(fd)) })
}

/// Removes what was written for a file that could not be restored.
fn discard(target: &Target<'_>, p: &Placed) {
    let (dir, name) = split(&p.at);
    if let Ok(parent) = target.open_dir(dir)
        && rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| ident(&st) == p.ident)
    {
        let _ = rustix::fs::unlinkat(&parent, name, AtFlags::empty());
    }
}

/// Sets a restored file's metadata on its descriptor, then renames it
/// into place.
/// `fd`, when given, is the file open already (its last chunk just written).
fn finish_file(
    target: &Target<'_>,
    f: &PlannedFile,
    p: &Placed,
    fd: Option<BorrowedFd<'_>>,
    xattrs: bool,
    warnings: &mut Vec<String>,
) -> io::Result<()> {
    let opened;
    let fd = match fd.or_else(|| p.held.as_ref().map(|h| h.as_fd())) {
        Some(fd) => fd,
        None => {
            opened = target.open_placed(p)?;
            opened.as_fd()
        }
    };
    let xattrs = if xattrs { &f.xattrs[..] } else { &[] };
    set_meta_fd(fd, &f.meta, xattrs, warnings, &target.show(&f.rel));
    if p.fresh {
        let (dir, name) = split(&f.rel);
        let parent = target.open_dir(dir)?;
        rustix::fs::renameat(&parent, split(&p.at).1, &parent, name).map_err(|e| match e {
            Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => {
                io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way")
            }
            e => e.into(),
        })?;
    }
    Ok(())
}

/// Makes `rel` a hard link to the restored file `first` (inode `id`).
fn link_file(target: &Target<'_>, first: &Path, rel: &Path, id: Ident) -> io::Result<()> {
    let (first_dir, first_name) = split(first);
    let (dir, name) = split(rel);
    let from = target.open_dir(first_dir)?;
    let parent = target.open_dir(dir)?;
    let tmp = temp_name();
    rustix::fs::linkat(&from, first_name, &parent, tmp.as_str(), AtFlags::empty())?;
    let linked = rustix::fs::statat(&parent, tmp.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
    if ident(&linked) != id {
        let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
        return Err(io::Error::other("the file it links to was replaced while the restore ran"));
    }
    rename_into_place(&parent, &tmp, name)
}

fn rename_into_place(parent: &OwnedFd, tmp: &str, name: &OsStr) -> io::Result<()> {
    match rustix::fs::renameat(parent, tmp, parent, name) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = rustix::fs::unlinkat(parent, tmp, AtFlags::empty());
            Err(match e {
                Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => {
                    io::Error::new(io::ErrorKind::AlreadyExists, "a directory is in the way")
                }
                e => e.into(),
            })
        }
    }
}

/// Creates a symlink, FIFO or device node; `Ok(false)` when a special file
/// could not be made (a warning: only root makes devices).
fn make_other(
    target: &Target<'_>,
    rel: &Path,
    kind: &NodeKind,
    meta: &Metadata,
    warnings: &mut Vec<String>,
) -> io::Result<bool> {
    let (dir, name) = split(rel);
    let parent = target.open_dir(dir)?;
    let tmp = temp_name();
    match kind {
        NodeKind::Symlink { target: to } => {
            rustix::fs::symlinkat(OsStr::from_bytes(to), &parent, tmp.as_str())?;
        }
        NodeKind::Fifo | NodeKind::Device { .. } => {
            let (ft, rdev) = match kind {
                NodeKind::Device { rdev, block: true } => (FileType::BlockDevice, *rdev),
                NodeKind::Device { rdev, block: false } => (FileType::CharacterDevice, *rdev),
                _ => (FileType::Fifo, 0),
            };
            if let Err(e) = rustix::fs::mknodat(&parent, tmp.as_str(), ft, Mode::from_raw_mode(0o600), rdev) {
                warnings.push(format!("creating special file {}: {e}", target.show(rel)));
                return Ok(false);
            }
        }
        _ => return Ok(false),
    }
    set_meta_at(&parent, &tmp, kind, meta, warnings, &target.show(rel));
    rename_into_place(&parent, &tmp, name)?;
    Ok(true)
}

/// Owner, mode and times of an entry just created under `tmp` in `parent`,
/// never following a link.
fn set_meta_at(parent: &OwnedFd, tmp: &str, kind: &NodeKind, meta: &Metadata, warnings: &mut Vec<String>, shown: &str) {
    let nofollow = AtFlags::SYMLINK_NOFOLLOW;
    let owner = (Some(rustix::fs::Uid::from_raw(meta.uid)), Some(rustix::fs::Gid::from_raw(meta.gid)));
    if let Err(e) = rustix::fs::chownat(parent, tmp, owner.0, owner.1, nofollow)
        && e != Errno::PERM
    {
        warnings.push(format!("setting owner of {shown}: {e}"));
    }
    if !matches!(kind, NodeKind::Symlink { .. }) {
        // The node was made under a fresh name in a directory reached
        // without links, and is no link itself: changing its mode by name
        // cannot reach anything else.
        if let Err(e) = rustix::fs::chmodat(parent, tmp, Mode::from_raw_mode(meta.mode & 0o7777), AtFlags::empty()) {
            warnings.push(format!("setting mode of {shown}: {e}"));
        }
    }
    if let Err(e) = rustix::fs::utimensat(parent, tmp, &timestamps(meta), nofollow) {
        warnings.push(format!("setting times of {shown}: {e}"));
    }
}

fn timestamps(meta: &Metadata) -> Timestamps {
    let ts = |ns: i64| Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    Timestamps { last_access: ts(meta.atime_ns), last_modification: ts(meta.mtime_ns) }
}

/// Applies owner (when permitted), extended attributes, mode and times on
/// a descriptor, in that order (a change of owner drops file capabilities,
/// and setting an ACL changes the mode); failures become warnings.
fn set_meta_fd(fd: BorrowedFd<'_>, meta: &Metadata, xattrs: &[Xattr], warnings: &mut Vec<String>, shown: &str) {
    let owner = (Some(rustix::fs::Uid::from_raw(meta.uid)), Some(rustix::fs::Gid::from_raw(meta.gid)));
    // Only root may give files away; as another user keep our ownership quietly.
    if let Err(e) = rustix::fs::fchown(fd, owner.0, owner.1)
        && e != Errno::PERM
    {
        warnings.push(format!("setting owner of {shown}: {e}"));
    }
    dirfd::set_xattrs(fd, xattrs, warnings, shown);
    if let Err(e) = rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777)) {
        warnings.push(format!("setting mode of {shown}: {e}"));
    }
    if let Err(e) = rustix::fs::futimens(fd, &timestamps(meta)) {
        warnings.push(format!("setting times of {shown}: {e}"));
    }
}

/// Writes blobs into the files that need them; shared by the restore workers.
struct DataWriter<'a> {
    repo: &'a Repository,
    runtime: &'a Handle,
    target: &'a Target<'a>,
    files: &'a [PlannedFile],
    placed: &'a [Option<Placed>],
    /// Writes each file still waits for: at zero it is finished at once.
    remaining: Vec<AtomicU32>,
    /// Files finished by the writer of their last chunk, and how.
    finished: Mutex<HashMap<usize, Result<(), String>>>,
    warnings: Mutex<Vec<String>>,
    xattrs: bool,
    /// Files that could not be restored, by index, with the reason.
    failed: Mutex<HashMap<usize, String>>,
    bytes: AtomicU64,
    progress: &'a Progress,
    /// Raised when the restore's caller is gone: stop at the next read.
    abandoned: &'a AtomicBool,
}

impl DataWriter<'_> {
    /// Fetches the blobs of one pack (neighbours in one ranged read) and
    /// writes each where it belongs. A bad blob fails only the files that
    /// need it; a full or failing disk stops the restore.
    fn restore_pack(&self, pack: PackId, seal: &PackSeal, blobs: Vec<(PackBlob, Targets)>) -> Result<(), FilesError> {
        let repo = self.repo;
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
            if self.abandoned.load(Ordering::Relaxed) {
                return Err(FilesError::Abandoned);
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
                        // A run of zeros in a new file is left a hole: sparse
                        // files come back sparse.
                        let zeros = data.iter().all(|&b| b == 0);
                        for &(file, offset) in targets {
                            self.write(file, &data, offset, zeros)?;
                            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                            self.progress.bytes(data.len() as u64);
                        }
                    }
                    Err(why) => {
                        for &(file, _) in targets {
                            self.fail(file, why.clone());
                        }
                    }
                }
            }
            i = j;
        }
        Ok(())
    }

    fn fail(&self, file: usize, why: String) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.entry(file).or_insert_with(|| format!("{}: {why}", self.target.show(&self.files[file].rel)));
    }

    /// Writes one blob into file `file`; only a fault of the disk itself is
    /// an error, anything else fails that file alone.
    fn write(&self, file: usize, data: &[u8], offset: u64, zeros: bool) -> Result<(), FilesError> {
        use std::os::unix::fs::FileExt;
        let Some(placed) = &self.placed[file] else { return Ok(()) };
        let written = match (&placed.held, zeros && placed.fresh) {
            (_, true) => Ok(None),
            (Some(held), false) => held.write_all_at(data, offset).map(|()| None),
            (None, false) => self.target.open_placed(placed).and_then(|fd| {
                let file = std::fs::File::from(fd);
                file.write_all_at(data, offset).map(|()| Some(OwnedFd::from(file)))
            }),
        };
        let fd = match written {
            Ok(fd) => fd,
            Err(e) if is_fatal(&e) => {
                return Err(FilesError::io("writing", &self.target.path.join(&self.files[file].rel), e));
            }
            Err(e) => {
                self.fail(file, format!("writing: {e}"));
                return Ok(());
            }
        };
        // The last write finishes the file, on the descriptor at hand.
        if self.remaining[file].fetch_sub(1, Ordering::AcqRel) == 1 {
            let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&file);
            if !failed {
                let f = &self.files[file];
                let mut warnings = Vec::new();
                let result =
                    finish_file(self.target, f, placed, fd.as_ref().map(|fd| fd.as_fd()), self.xattrs, &mut warnings)
                        .map_err(|e| format!("{}: {e}", self.target.show(&f.rel)));
                self.warnings.lock().unwrap_or_else(|p| p.into_inner()).extend(warnings);
                self.finished.lock().unwrap_or_else(|p| p.into_inner()).insert(file, result);
            }
        }
        Ok(())
    }
}

/// The chunks each planned file's current occupant of the target holds,
/// by offset and content id, with the inode read (`None` where there is no
/// regular file only this path names), cut and hashed as a backup would,
/// on `threads` threads.
fn existing_chunks(
    repo: &Repository,
    target: &Target<'_>,
    files: &[PlannedFile],
    threads: usize,
    fixed: Option<&dyn FixedChunks>,
) -> Vec<Existing> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let threads = if threads == 0 { cores } else { threads }.clamp(1, files.len().max(1));
    let next = AtomicU64::new(0);
    let found: Mutex<Vec<Existing>> = Mutex::new((0..files.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut chunker = Chunker::new(repo.config().chunker, repo.keyring().chunker_seed);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(f) = files.get(i) else { return };
                    if f.content.is_empty() {
                        continue;
                    }
                    let Ok(fd) = target.open(&f.rel, OFlags::RDONLY | OFlags::NONBLOCK) else { continue };
                    let Ok(st) = rustix::fs::fstat(&fd) else { continue };
                    // Written in place later: only a regular file no other path shares.
                    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_nlink != 1 {
                        continue;
                    }
                    let file = std::fs::File::from(fd);
                    let mut chunks = HashSet::new();
                    let mut offset = 0u64;
                    let mut each = |chunk: &[u8]| -> io::Result<()> {
                        chunks.insert((offset, blob_id(repo.keyring(), chunk)));
                        offset += chunk.len() as u64;
                        Ok(())
                    };
                    let read = match fixed.and_then(|policy| policy.chunk_size(&target.path.join(&f.rel))) {
                        Some(size) => read_fixed(file, size, &mut each),
                        None => chunker.chunk_reader(file, &mut each),
                    };
                    if read.is_ok() {
                        found.lock().unwrap_or_else(|p| p.into_inner())[i] = Some((ident(&st), chunks));
                    }
                }
            });
        }
    });
    found.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// What a file of the target holds: the inode read, and its chunks by
/// offset and content id.
type Existing = Option<(Ident, HashSet<(u64, BlobId)>)>;

/// Removes everything below the target that the snapshot does not contain;
/// returns how many entries went. What cannot be removed is listed.
fn delete_extras(target: &Target<'_>, wanted: &HashSet<PathBuf>, failed: &mut Vec<String>) -> u64 {
    let mut deleted = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let listed = target.open_dir(&rel).and_then(|fd| Ok((dirfd::list(fd.as_fd())?, fd)));
        let (names, dir) = match listed {
            Ok(l) => l,
            Err(e) => {
                failed.push(format!("{}: listing for --delete: {e}", target.show(&rel)));
                continue;
            }
        };
        for name in names {
            let child = rel.join(OsStr::from_bytes(&name));
            let Ok(st) = dirfd::stat_at(dir.as_fd(), &name) else { continue };
            let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            if wanted.contains(&child) {
                if is_dir {
                    stack.push(child);
                }
                continue;
            }
            match remove_at(dir.as_fd(), &name, is_dir) {
                Ok(()) => deleted += 1,
                Err(e) => failed.push(format!("{}: deleting: {e}", target.show(&child))),
            }
        }
    }
    deleted
}

/// Removes entry `name` of `dir`, a whole tree if it is a directory,
/// through descriptors that never follow a link.
fn remove_at(dir: BorrowedFd<'_>, name: &[u8], is_dir: bool) -> io::Result<()> {
    let name_os = OsStr::from_bytes(name);
    if !is_dir {
        return Ok(rustix::fs::unlinkat(dir, name_os, AtFlags::empty())?);
    }
    let sub = rustix::fs::openat(
        dir,
        name_os,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for child in dirfd::list(sub.as_fd())? {
        let st = dirfd::stat_at(sub.as_fd(), &child)?;
        remove_at(sub.as_fd(), &child, FileType::from_raw_mode(st.st_mode) == FileType::Directory)?;
    }
    Ok(rustix::fs::unlinkat(dir, name_os, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lifeboat_common::crypto::MasterKey;
    use lifeboat_common::store::LocalStore;
    use rand::{RngCore, SeedableRng};

    use super::*;
    use crate::sources::files::backup::{BackupOptions, backup_files};

    /// Files below `dir` under a restore's temporary names.
    fn temp_files_below(dir: &Path) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(temp_files_below(&e.path()));
            } else if e.file_name().to_string_lossy().starts_with(".lifeboat-restore.") {
                out.push(e.path());
            }
        }
        out
    }

    /// Bytes in the regular files below `dir` (as far as written: blocks
    /// allocated, not the length a file was made with).
    fn bytes_below(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => bytes_below(&e.path()),
                Ok(m) => m.blocks() * 512,
                Err(_) => 0,
            })
            .sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_dropped_midway_stops_writing_and_removes_its_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Repository::init(store, &MasterKey::generate().unwrap()).await.unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        // Incompressible: every pack is read and written whole.
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
        let total = 96u64 << 20;
        for i in 0..96 {
            let mut data = vec![0u8; 1 << 20];
            rng.fill_bytes(&mut data);
            std::fs::write(src.join(format!("f{i:02}")), data).unwrap();
        }
        let opts = BackupOptions { paths: vec![src], hostname: "h".into(), ..Default::default() };
        let outcome = backup_files(&repo, opts, Arc::new(Progress::default())).await.unwrap();

        let target = dir.path().join("target");
        let progress = Arc::new(Progress::default());
        let opts = RestoreOptions { target: target.clone(), threads: 1, ..Default::default() };
        let mut restore = Box::pin(restore_files(&repo, &outcome.snapshot, opts, progress.clone()));
        // Dropped (as a drill's timeout drops it) once it has written something.
        loop {
            tokio::select! {
                done = &mut restore => panic!("the restore ended before it was dropped: {:?}", done.map(|r| r.bytes)),
                () = tokio::time::sleep(Duration::from_millis(1)) => {
                    if progress.bytes_done.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                }
            }
        }
        drop(restore);
        // Each writer finishes its read in flight, then stops and removes
        // what it half wrote: below, steady for a second.
        let (mut last, mut steady) = (u64::MAX, 0);
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = bytes_below(&target);
            steady = if now == last { steady + 1 } else { 0 };
            last = now;
            if steady == 5 {
                break;
            }
        }
        assert_eq!(steady, 5, "the restore went on writing for 30 s after it was dropped");
        assert!(temp_files_below(&target).is_empty(), "half-written files left: {:?}", temp_files_below(&target));
        assert!(last < total, "the whole snapshot was written ({last} bytes): it was not stopped");
    }
}
