//! File-tree backup: walk → read → chunk → hash → dedup → compress → seal →
//! pack → store, on every core, in bounded memory.
//!
//! Threads: one walker lists directories in order and hands each changed
//! file to a pool of file workers (read, chunk, hash, compress, seal, pack);
//! packs go to a pool of uploaders; the calling thread assembles directory
//! trees bottom-up as their files finish, and the snapshot manifest is
//! written last. Every queue between them is bounded, so memory does not grow
//! with the size of the tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::Instrument;

use chrono::Utc;
use crossbeam_channel::{Receiver, Sender, bounded};
use lifeboat_common::repo::engine::chunker::Chunker;
use lifeboat_common::repo::engine::packer::{PackUploader, Packer, SeenBlobs};
use lifeboat_common::repo::engine::writers::WriterSession;
use lifeboat_common::repo::format::pack::{BlobKind, blob_id};
use lifeboat_common::repo::format::snapshot::{BackupSummary, Snapshot};
use lifeboat_common::repo::format::tree::{Metadata, Node, NodeKind, Tree, Xattr};
use lifeboat_common::repo::ops::prune::load_plans;
use lifeboat_common::repo::{BlobId, PackId, RepoError, Repository, SnapshotId};
use tokio::runtime::Handle;

use rustix::fs::{FileType, Stat};

use super::FilesError;
use super::dirfd::{self, DirHandle, OpenError};
use super::filter::Filter;
use super::meta::unchanged;
use super::stall::{DEFAULT_READ_TIMEOUT, PatientReader};
use crate::progress::Progress;

/// How much older than the parent snapshot's start a file's times must be
/// for its metadata to prove it unchanged (clock ticks are coarser than ns).
const TIMESTAMP_MARGIN_NS: i64 = 1_000_000_000;

/// What to back up and how.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Roots to back up; made absolute.
    pub paths: Vec<PathBuf>,
    /// Glob patterns a file must match (none: every file).
    pub includes: Vec<String>,
    /// Glob patterns of entries to leave out.
    pub excludes: Vec<String>,
    /// Tags recorded in the snapshot.
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot.
    pub hostname: String,
    /// Read every file even if the parent snapshot says it is unchanged.
    pub force: bool,
    /// Parent snapshot; `None` picks the latest one of the same host and paths.
    pub parent: Option<SnapshotId>,
    /// File worker threads (0: one per core).
    pub threads: usize,
    /// A check run over each file's bytes as they are read.
    pub content_check: Option<Arc<dyn ContentCheck>>,
    /// zstd level for file data (default: the repository's).
    pub compression_level: Option<i32>,
    /// Files cut into fixed-size chunks instead of by content.
    pub fixed_chunks: Option<Arc<dyn FixedChunks>>,
    /// How long a read may wait for data before its file is left out
    /// (default [`DEFAULT_READ_TIMEOUT`]).
    pub read_timeout: Option<Duration>,
    /// Leave extended attributes and POSIX ACLs out.
    pub skip_xattrs: bool,
}

/// Files cut into fixed-size chunks at fixed offsets instead of by content:
/// data updated in place in fixed-size pages (database files), where a
/// changed page changes one chunk, and a large file is read as ranges in
/// parallel (content-defined cuts need the bytes before them).
pub trait FixedChunks: Send + Sync + std::fmt::Debug {
    /// The chunk size for `path`, or `None` to chunk it by content.
    fn chunk_size(&self, path: &Path) -> Option<usize>;

    /// Whether these files may change while they are read, something else
    /// mending them later (WAL replay, for a database's pages): a change of
    /// size then is not worth a warning.
    fn changes_expected(&self) -> bool {
        false
    }
}

/// Bytes of a fixed-chunk file one worker reads before the next range
/// goes to another (a multiple of any sensible chunk size).
const RANGE_BYTES: u64 = 64 << 20;

/// A check that sees a file's bytes as the backup reads them, so checking
/// costs no second read (PostgreSQL's page checksums are one).
pub trait ContentCheck: Send + Sync + std::fmt::Debug {
    /// The checker for one file from byte `offset` on (a file read in
    /// ranges gets one per range), or `None` for files it does not check; it
    /// is called with the bytes in order, in pieces of any size.
    fn for_file(&self, path: &Path, offset: u64) -> Option<FileChecker>;
}

/// One file's checker: called with the file's bytes in order.
pub type FileChecker = Box<dyn FnMut(&[u8]) + Send>;

/// Result of a backup: the snapshot, and what could not be read.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The manifest written.
    pub snapshot: Snapshot,
    /// Entries skipped because they could not be read, each with its reason.
    pub warnings: Vec<String>,
    /// Entries left out on purpose (sockets), each saying so.
    pub notices: Vec<String>,
}

/// File trees stored in the repository, not yet named by a snapshot.
#[derive(Debug)]
pub struct Captured {
    /// When the capture started.
    pub started: chrono::DateTime<Utc>,
    /// The roots, absolute.
    pub paths: Vec<String>,
    /// Root tree.
    pub tree: BlobId,
    /// Parent snapshot used to skip unchanged files.
    pub parent: Option<SnapshotId>,
    /// What was stored.
    pub summary: BackupSummary,
    /// Entries skipped because they could not be read.
    pub warnings: Vec<String>,
    /// Entries left out on purpose (sockets).
    pub notices: Vec<String>,
    /// This writer's marker, which keeps a prune from deleting what the
    /// capture leaned on until its snapshot is saved.
    session: WriterSession,
}

impl Captured {
    /// Content stored by another capture (a Redis RDB), to be named by a
    /// snapshot; `session` holds what it stored until then.
    pub(crate) fn new(
        started: chrono::DateTime<Utc>,
        paths: Vec<String>,
        tree: BlobId,
        summary: BackupSummary,
        session: WriterSession,
    ) -> Self {
        Captured { started, paths, tree, parent: None, summary, warnings: Vec::new(), notices: Vec::new(), session }
    }

    /// The manifest for these trees, from a source of kind `source`.
    pub fn manifest(&self, source: &str, hostname: String, tags: Vec<String>) -> Snapshot {
        let mut summary = self.summary.clone();
        summary.duration_secs = (Utc::now() - self.started).num_milliseconds() as f64 / 1000.0;
        Snapshot {
            time: self.started,
            hostname,
            source: source.into(),
            paths: self.paths.clone(),
            tags,
            tree: self.tree,
            parent: self.parent,
            summary,
            postgres: None,
            redis: None,
        }
    }

    /// Saves `snapshot` (this capture's manifest, completed), which makes
    /// the backup visible, then ends the writer's session.
    #[tracing::instrument(name = "index and snapshot", skip_all)]
    pub async fn save(self, repo: &Repository, snapshot: &Snapshot) -> Result<SnapshotId, RepoError> {
        let saved = repo.save_snapshot(snapshot).await;
        self.session.finish().await;
        saved
    }
}

/// Backs up file trees into `repo` and writes a snapshot.
#[tracing::instrument(skip_all, fields(paths = ?opts.paths))]
pub async fn backup_files(
    repo: &Repository,
    opts: BackupOptions,
    progress: Arc<Progress>,
) -> Result<BackupOutcome, FilesError> {
    let (hostname, tags) = (opts.hostname.clone(), opts.tags.clone());
    let mut captured = capture(repo, opts, "files", progress).await?;
    let snapshot = captured.manifest("files", hostname, tags);
    let (warnings, notices) = (std::mem::take(&mut captured.warnings), std::mem::take(&mut captured.notices));
    let id = captured.save(repo, &snapshot).await?;
    tracing::info!(snapshot = %id, files = snapshot.summary.files, bytes_new = snapshot.summary.bytes_new, "backup saved");
    Ok(BackupOutcome { id, snapshot, warnings, notices })
}

/// Stores file trees in `repo` without writing a snapshot; `source` is the
/// kind of snapshot whose parent may be used to skip unchanged files.
pub async fn capture(
    repo: &Repository,
    opts: BackupOptions,
    source: &str,
    progress: Arc<Progress>,
) -> Result<Captured, FilesError> {
    let filter = Filter::new(&opts.includes, &opts.excludes)?;
    let roots = normalise_roots(&opts.paths, &filter)?;
    let started = Utc::now();
    let path_strings: Vec<String> = roots.iter().map(|p| p.display().to_string()).collect();
    let parent = async {
        Ok::<_, RepoError>(match opts.parent {
            Some(id) => Some((id, repo.load_snapshot(&id).await?)),
            None if opts.force => None,
            None => repo
                .snapshots()
                .await?
                .into_iter()
                .rev()
                .find(|(_, s)| s.source == source && s.hostname == opts.hostname && s.paths == path_strings),
        })
    }
    .instrument(tracing::info_span!("find parent"))
    .await?;
    let parent_tree = match &parent {
        Some((id, snap)) if !opts.force => match repo.load_tree(&snap.tree).await {
            Ok(tree) => Some(tree),
            // A damaged parent only costs reading everything again.
            Err(e) => {
                tracing::warn!(parent = %id.short(), error = %e, "the parent snapshot's tree cannot be read; reading every file");
                None
            }
        },
        _ => None,
    };
    // A write in the same clock tick as the parent's read leaves the times
    // as they were: only times well before the parent began prove a file
    // unchanged since.
    let trust_before_ns =
        parent.as_ref().and_then(|(_, snap)| snap.time.timestamp_nanos_opt()).map(|ns| ns - TIMESTAMP_MARGIN_NS);

    let session = WriterSession::start(repo, &format!("backup {source}")).await?;
    // What this writer stored (in any attempt): unreferenced until its
    // snapshot exists, so a prune may mark it, but never sweep it while
    // the marker holds.
    let mut own: HashSet<PackId> = HashSet::new();
    let mut attempt = 0;
    let walked = loop {
        attempt += 1;
        let runtime = Handle::current();
        let job = {
            let (repo, progress, roots, opts) = (repo.clone(), progress.clone(), roots.clone(), opts.clone());
            let (filter, parent_tree) = (filter.clone(), parent_tree.clone());
            // One span for the whole pipeline (its threads walk, read, chunk
            // and upload at once), never one per file or chunk.
            let span = tracing::info_span!("walk, read, chunk and upload", attempt);
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    Pipeline::new(repo, runtime, filter, progress, &opts, trust_before_ns).run(&roots, parent_tree)
                })
            })
        };
        let walked = job.await.map_err(|_| FilesError::Internal("backup pipeline panicked"))??;
        own.extend(walked.stored.iter().copied());
        // Never a snapshot that refers to data of others a prune marked or
        // took away meanwhile.
        let leaned: HashSet<PackId> = walked.reused.difference(&own).copied().collect();
        let lost = lost_footing(repo, &leaned).await?;
        if lost.is_empty() {
            break walked;
        }
        if attempt > 1 {
            return Err(FilesError::LostFooting(lost.join(", ")));
        }
        tracing::warn!(packs = %lost.join(", "), "a prune marked data this backup leaned on; storing it again");
        repo.reload_index().await?;
    };
    Ok(Captured {
        started,
        paths: path_strings,
        tree: walked.root,
        parent: parent.map(|(id, _)| id),
        summary: walked.summary,
        warnings: walked.warnings,
        notices: walked.notices,
        session,
    })
}

/// The packs of `reused` a prune marked for deletion or deleted since the
/// index was loaded.
pub(crate) async fn lost_footing(repo: &Repository, reused: &HashSet<PackId>) -> Result<Vec<String>, RepoError> {
    if reused.is_empty() {
        return Ok(Vec::new());
    }
    let plans = load_plans(repo).await?;
    let marked: HashSet<PackId> = plans.good.iter().flat_map(|(_, p)| p.packs.iter().copied()).collect();
    // Packs are deleted only after the index objects listing them.
    if repo.index_objects_gone().await? {
        repo.reload_index().await?;
    }
    let index = repo.index();
    let mut lost: Vec<String> = reused
        .iter()
        .filter_map(|p| {
            if !index.has_pack(p) {
                Some(format!("pack {} deleted", p.short()))
            } else if marked.contains(p) {
                Some(format!("pack {} marked for deletion", p.short()))
            } else {
                None
            }
        })
        .collect();
    lost.sort();
    Ok(lost)
}

/// Makes roots absolute and checks they exist. A root inside another is
/// reached by the other's walk and dropped, unless that walk would not
/// reach it (through a link, which the walk keeps and never follows, or
/// past an exclusion): such a root is refused, for left in it would be
/// silently missing from the snapshot.
fn normalise_roots(paths: &[PathBuf], filter: &Filter) -> Result<Vec<PathBuf>, FilesError> {
    if paths.is_empty() {
        return Err(FilesError::Usage("no paths to back up".into()));
    }
    let mut roots = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| FilesError::io("resolving", p, e))?;
        let abs: PathBuf = abs.components().collect();
        fs::symlink_metadata(&abs).map_err(|e| FilesError::io("reading", &abs, e))?;
        roots.push(abs);
    }
    roots.sort();
    roots.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for r in roots {
        match kept.iter().find(|k| r.starts_with(k)) {
            Some(outer) => check_reached(outer, &r, filter)?,
            None => kept.push(r),
        }
    }
    Ok(kept)
}

/// Refuses `inner` (a root inside the root `outer`) when the walk of
/// `outer` would not reach it.
fn check_reached(outer: &Path, inner: &Path, filter: &Filter) -> Result<(), FilesError> {
    let Ok(rest) = inner.strip_prefix(outer) else { return Ok(()) };
    let parts: Vec<_> = rest.components().collect();
    let mut at = outer.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        if filter.excluded(&at) {
            return Err(FilesError::Usage(format!(
                "{} is inside {}, whose walk leaves out {} (excluded): drop the exclusion, or back {} up on its own",
                inner.display(),
                outer.display(),
                at.display(),
                inner.display()
            )));
        }
        let last = i + 1 == parts.len();
        let meta = fs::symlink_metadata(&at).map_err(|e| FilesError::io("reading", &at, e))?;
        if !last && !meta.is_dir() {
            return Err(FilesError::Usage(format!(
                "{} is inside {}, but {} is a symbolic link there (a backup keeps links and never follows them): name the directory it points to instead",
                inner.display(),
                outer.display(),
                at.display()
            )));
        }
    }
    Ok(())
}

/// A file's content: known already, or being read by workers (one per
/// range, in order).
enum Content {
    /// Taken unread from the parent snapshot, attributes and all.
    Ready(Vec<BlobId>, Vec<Xattr>),
    /// Being read in these ranges; `quiet`: a change of size while it is
    /// read is expected (WAL replay mends a relation file read during an
    /// online base backup), not worth a warning.
    Pending(Vec<Receiver<FileResult>>, bool),
}

enum PendingKind {
    File(Content),
    /// A directory: the walker's sequence number of its [`DirJob`].
    Dir(u64),
    Other(NodeKind),
}

struct PendingNode {
    name: Vec<u8>,
    kind: PendingKind,
    meta: Metadata,
    /// A directory's extended attributes (a file's come with its content).
    xattrs: Vec<Xattr>,
}

/// One directory, emitted after all its subdirectories (post-order).
struct DirJob {
    seq: u64,
    nodes: Vec<PendingNode>,
}

struct FileJob {
    /// The directory holding the file, and its name there.
    dir: Arc<DirHandle>,
    name: Vec<u8>,
    /// The file as the walk listed it: what is opened must be this file.
    listed: Stat,
    /// Its path, for messages and per-path policies.
    path: PathBuf,
    /// Where to start reading, and how much to read (`None`: to the end).
    start: u64,
    len: Option<u64>,
    /// Fixed chunk size, or `None` for content-defined chunks.
    fixed: Option<usize>,
    reply: Sender<FileResult>,
}

/// Why chunking a file stopped: its own read failed, or the repository did.
enum ChunkError {
    Io(std::io::Error),
    Repo(lifeboat_common::repo::RepoError),
}

impl From<std::io::Error> for ChunkError {
    fn from(e: std::io::Error) -> Self {
        ChunkError::Io(e)
    }
}

enum FileResult {
    /// Read to the end: its chunks, how many bytes they hold, and (from
    /// the range at offset 0) its extended attributes.
    Done(Vec<BlobId>, u64, Vec<Xattr>),
    /// The file could not be read; it is left out with this reason.
    Unreadable(String),
    /// The pipeline cannot go on.
    Fatal(FilesError),
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    files_read: AtomicU64,
    bytes_total: AtomicU64,
    bytes_read: AtomicU64,
    blobs_new: AtomicU64,
    bytes_new: AtomicU64,
    bytes_stored: AtomicU64,
}

struct Pipeline {
    repo: Repository,
    runtime: Handle,
    filter: Filter,
    progress: Arc<Progress>,
    threads: usize,
    seen: SeenBlobs,
    counters: Counters,
    content_check: Option<Arc<dyn ContentCheck>>,
    compression_level: Option<i32>,
    /// Parent entries whose times are not before this are read again.
    trust_before_ns: Option<i64>,
    fixed_chunks: Option<Arc<dyn FixedChunks>>,
    read_timeout: Duration,
    /// Whether extended attributes are captured.
    xattrs: bool,
}

/// What a walk stored: the root tree, counts, and what it left out.
struct Walked {
    root: BlobId,
    summary: BackupSummary,
    warnings: Vec<String>,
    notices: Vec<String>,
    /// Packs the snapshot refers to for blobs it did not store itself.
    reused: HashSet<PackId>,
    /// Packs this walk stored.
    stored: HashSet<PackId>,
}

impl Pipeline {
    fn new(
        repo: Repository,
        runtime: Handle,
        filter: Filter,
        progress: Arc<Progress>,
        opts: &BackupOptions,
        trust_before_ns: Option<i64>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let threads = if opts.threads == 0 { cores.max(2) } else { opts.threads };
        let (seen, counters) = (SeenBlobs::default(), Counters::default());
        Pipeline {
            repo,
            runtime,
            filter,
            progress,
            threads,
            seen,
            counters,
            content_check: opts.content_check.clone(),
            compression_level: opts.compression_level,
            trust_before_ns,
            fixed_chunks: opts.fixed_chunks.clone(),
            read_timeout: opts.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT),
            xattrs: !opts.skip_xattrs,
        }
    }

    fn run(self, roots: &[PathBuf], parent: Option<Tree>) -> Result<Walked, FilesError> {
        dirfd::raise_fd_limit();
        let uploader = PackUploader::start(&self.repo, self.runtime.clone(), self.repo.store().parallelism());
        let (job_tx, job_rx) = bounded::<FileJob>(self.threads * 4);
        let (dir_tx, dir_rx) = bounded::<DirJob>(4096);
        let mut tree_packer = uploader.packer(BlobKind::Tree);

        let result = std::thread::scope(|s| {
            if self.progress.want_totals.load(Ordering::Relaxed) {
                s.spawn(|| count_totals(roots, &self.filter, &self.progress));
            }
            let workers: Vec<_> = (0..self.threads)
                .map(|_| {
                    let rx = job_rx.clone();
                    let mut packer = uploader.packer(BlobKind::Data);
                    if let Some(level) = self.compression_level {
                        packer = packer.with_compression_level(level);
                    }
                    let mut chunker = Chunker::new(self.repo.config().chunker, self.repo.keyring().chunker_seed);
                    let this = &self;
                    s.spawn(move || {
                        for job in rx {
                            let r = this.read_file(&job, &mut chunker, &mut packer);
                            let fatal = matches!(r, FileResult::Fatal(_));
                            let _ = job.reply.send(r);
                            if fatal {
                                return Ok(());
                            }
                        }
                        packer.flush()
                    })
                })
                .collect();
            drop(job_rx);
            let walker = s.spawn(|| {
                let mut w = Walker {
                    pipe: &self,
                    jobs: job_tx,
                    dirs: dir_tx,
                    next_seq: 0,
                    warnings: Vec::new(),
                    notices: Vec::new(),
                };
                let r = w.walk_roots(roots, parent);
                (r, w.warnings, w.notices)
            });
            let assembled = self.assemble(&dir_rx, &mut tree_packer);
            drop(dir_rx);
            let (walked, mut warnings, notices) = walker.join().map_err(|_| FilesError::Internal("walker panicked"))?;
            let mut flushed = Ok(());
            for w in workers {
                let r = w.join().map_err(|_| FilesError::Internal("file worker panicked"))?;
                if flushed.is_ok() {
                    flushed = r;
                }
            }
            let (root, assembly_warnings) = assembled?;
            walked?;
            flushed?;
            warnings.extend(assembly_warnings);
            Ok::<_, FilesError>((root, warnings, notices))
        });
        let flushed = tree_packer.flush();
        drop(tree_packer);
        let stats = uploader.stats();
        // The uploaders' error, if any, is the real cause of a failure above.
        let stored = uploader.finish()?;
        let (root, warnings, notices) = result?;
        flushed?;
        let mut summary = self.summary();
        summary.packs_written = stats.packs.load(Ordering::Relaxed);
        let reused = self.seen.reused_packs();
        Ok(Walked { root, summary, warnings, notices, reused, stored })
    }

    fn summary(&self) -> BackupSummary {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BackupSummary {
            files: l(&c.files),
            dirs: l(&c.dirs),
            files_read: l(&c.files_read),
            bytes_total: l(&c.bytes_total),
            bytes_read: l(&c.bytes_read),
            blobs_new: l(&c.blobs_new),
            bytes_new: l(&c.bytes_new),
            bytes_stored: l(&c.bytes_stored),
            packs_written: 0,
            duration_secs: 0.0,
        }
    }

    /// Reads, chunks and stores one file (or one range of it); runs on a file worker.
    fn read_file(&self, job: &FileJob, chunker: &mut Chunker, packer: &mut Packer) -> FileResult {
        let path = &job.path;
        let mut file = match dirfd::open_file_at(job.dir.fd.as_fd(), &job.name, &job.listed) {
            Ok(fd) => PatientReader::new(fd, self.read_timeout),
            Err(OpenError::Replaced) => {
                return FileResult::Unreadable(format!("{}: {}", path.display(), OpenError::Replaced));
            }
            Err(e) => return FileResult::Unreadable(format!("opening {}: {e}", path.display())),
        };
        let xattrs = if job.start == 0 && self.xattrs { self.read_xattrs(file.file(), path) } else { Vec::new() };
        let mut content = Vec::new();
        let mut read = 0u64;
        let mut check = self.content_check.as_ref().and_then(|c| c.for_file(path, job.start));
        let mut each = |chunk: &[u8]| -> Result<(), ChunkError> {
            if let Some(check) = check.as_mut() {
                check(chunk);
            }
            let len = chunk.len() as u64;
            read += len;
            let (id, stored) = self.seen.store(&self.repo, packer, chunk).map_err(ChunkError::Repo)?;
            if let Some(stored) = stored {
                self.counters.blobs_new.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_new.fetch_add(len, Ordering::Relaxed);
                self.counters.bytes_stored.fetch_add(stored, Ordering::Relaxed);
            }
            self.counters.bytes_read.fetch_add(len, Ordering::Relaxed);
            self.progress.bytes(len);
            content.push(id);
            Ok(())
        };
        let r = match job.fixed {
            Some(size) => {
                use std::io::{Read, Seek, SeekFrom};
                match file.file().seek(SeekFrom::Start(job.start)) {
                    Ok(_) => read_fixed(file.take(job.len.unwrap_or(u64::MAX)), size, &mut each),
                    Err(e) => Err(ChunkError::Io(e)),
                }
            }
            None => chunker.chunk_reader(file, &mut each),
        };
        match r {
            Ok(()) => {}
            Err(ChunkError::Io(e)) => return FileResult::Unreadable(format!("reading {}: {e}", path.display())),
            Err(ChunkError::Repo(e)) => return FileResult::Fatal(e.into()),
        }
        if job.start == 0 {
            self.counters.files_read.fetch_add(1, Ordering::Relaxed);
            self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        }
        FileResult::Done(content, read, xattrs)
    }

    /// The extended attributes of a file or directory being read; a failure
    /// is logged, and the entry kept without them.
    fn read_xattrs(&self, fd: impl AsFd, path: &Path) -> Vec<Xattr> {
        dirfd::xattrs(fd.as_fd()).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "extended attributes unreadable; kept without them");
            Vec::new()
        })
    }

    /// Builds trees bottom-up as directories complete; returns the root tree.
    fn assemble(&self, dirs: &Receiver<DirJob>, packer: &mut Packer) -> Result<(BlobId, Vec<String>), FilesError> {
        let mut done: HashMap<u64, BlobId> = HashMap::new();
        let mut warnings = Vec::new();
        let mut last = None;
        for job in dirs {
            let mut tree = Tree::default();
            for mut node in job.nodes {
                let kind = match node.kind {
                    PendingKind::Other(k) => k,
                    PendingKind::Dir(seq) => match done.remove(&seq) {
                        Some(subtree) => NodeKind::Dir { subtree },
                        None => {
                            return Err(FilesError::Internal("directory finished out of order"));
                        }
                    },
                    PendingKind::File(Content::Ready(content, xattrs)) => {
                        node.xattrs = xattrs;
                        NodeKind::File { content }
                    }
                    PendingKind::File(Content::Pending(parts, quiet)) => match receive_parts(parts) {
                        Ok(FileResult::Done(content, read, xattrs)) => {
                            node.xattrs = xattrs;
                            // A file written to while it was read (a live log): record
                            // what was stored, so a restore is self-consistent.
                            if read != node.meta.size {
                                let file = String::from_utf8_lossy(&node.name);
                                let listed = node.meta.size;
                                if quiet {
                                    tracing::debug!(%file, stored = read, listed, "file changed size while it was read, as expected");
                                } else {
                                    tracing::warn!(%file, stored = read, listed, "file changed size while it was read");
                                }
                                node.meta.size = read;
                            }
                            NodeKind::File { content }
                        }
                        Ok(FileResult::Unreadable(why)) => {
                            warnings.push(why);
                            continue;
                        }
                        Ok(FileResult::Fatal(e)) => return Err(e),
                        Err(_) => {
                            return Err(FilesError::Internal("a file worker stopped"));
                        }
                    },
                };
                if let NodeKind::File { .. } = kind {
                    self.counters.files.fetch_add(1, Ordering::Relaxed);
                    self.counters.bytes_total.fetch_add(node.meta.size, Ordering::Relaxed);
                }
                tree.nodes.push(Node { name: node.name, kind, meta: node.meta, xattrs: node.xattrs });
            }
            self.counters.dirs.fetch_add(1, Ordering::Relaxed);
            let bytes = tree.encode()?;
            let id = blob_id(self.repo.keyring(), &bytes);
            if self.seen.claim(&self.repo, id) {
                packer.add(id, &bytes)?;
            }
            done.insert(job.seq, id);
            last = Some(id);
        }
        // The root directory is always the last one emitted.
        last.map(|id| (id, warnings)).ok_or(FilesError::Internal("the walk produced no root"))
    }
}

/// Lists directories depth-first and emits them in post-order.
struct Walker<'a> {
    pipe: &'a Pipeline,
    jobs: Sender<FileJob>,
    dirs: Sender<DirJob>,
    next_seq: u64,
    warnings: Vec<String>,
    notices: Vec<String>,
}

/// The tree of backup roots: intermediate directories down to each root.
#[derive(Default)]
struct RootTrie {
    children: BTreeMap<Vec<u8>, RootTrie>,
    is_root: bool,
}

impl Walker<'_> {
    fn walk_roots(&mut self, roots: &[PathBuf], parent: Option<Tree>) -> Result<(), FilesError> {
        let mut trie = RootTrie::default();
        for r in roots {
            let mut node = &mut trie;
            for c in r.components().skip(1) {
                node = node.children.entry(c.as_os_str().as_bytes().to_vec()).or_default();
            }
            node.is_root = true;
        }
        if trie.is_root {
            // Backing up `/` itself.
            let root = Arc::new(
                dirfd::open_dir_path(Path::new("/")).map_err(|e| FilesError::io("opening", Path::new("/"), e))?,
            );
            self.walk_dir(root, parent.as_ref())?;
        } else {
            self.walk_virtual(&trie, Path::new("/"), parent.as_ref())?;
        }
        Ok(())
    }

    /// Emits a directory on the way to a root, holding only what leads to
    /// roots. Such a directory is recorded with the metadata of the
    /// directory the named path leads to (a link in a path the operator
    /// named is followed, as for any path given on a command line).
    fn walk_virtual(&mut self, trie: &RootTrie, path: &Path, parent: Option<&Tree>) -> Result<u64, FilesError> {
        let mut nodes = Vec::new();
        let mut dir: Option<Arc<DirHandle>> = None;
        for (name, child) in &trie.children {
            let child_path = path.join(std::ffi::OsStr::from_bytes(name));
            let parent_node = parent.and_then(|t| t.find(name));
            let node = if child.is_root {
                let dir = match &dir {
                    Some(d) => d.clone(),
                    None => {
                        let opened = dirfd::open_dir_path(path).map_err(|e| FilesError::io("opening", path, e))?;
                        dir.insert(Arc::new(opened)).clone()
                    }
                };
                let st = dirfd::stat_at(dir.fd.as_fd(), name).map_err(|e| FilesError::io("reading", &child_path, e))?;
                self.entry(&dir, name.clone(), &st, parent_node)?
            } else {
                let meta = fs::metadata(&child_path).map_err(|e| FilesError::io("reading", &child_path, e))?;
                let sub = self.load_parent_subtree(parent_node)?;
                let seq = self.walk_virtual(child, &child_path, sub.as_ref())?;
                let meta = super::meta::from_fs(&meta);
                Some(PendingNode { name: name.clone(), kind: PendingKind::Dir(seq), meta, xattrs: Vec::new() })
            };
            nodes.extend(node);
        }
        self.emit(nodes)
    }

    fn emit(&mut self, nodes: Vec<PendingNode>) -> Result<u64, FilesError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.dirs.send(DirJob { seq, nodes }).map_err(|_| FilesError::Internal("tree assembly stopped"))?;
        Ok(seq)
    }

    fn load_parent_subtree(&self, node: Option<&Node>) -> Result<Option<Tree>, FilesError> {
        match node.map(|n| &n.kind) {
            Some(NodeKind::Dir { subtree }) => match self.pipe.runtime.block_on(self.pipe.repo.load_tree(subtree)) {
                Ok(t) => Ok(Some(t)),
                // A damaged parent only costs re-reading: never fail the backup for it.
                Err(e) => {
                    tracing::warn!(error = %e, "parent tree unreadable; reading the directory in full");
                    Ok(None)
                }
            },
            _ => Ok(None),
        }
    }

    /// Walks one open directory and emits it; returns its sequence number.
    fn walk_dir(&mut self, dir: Arc<DirHandle>, parent: Option<&Tree>) -> Result<u64, FilesError> {
        let names = match dirfd::list(dir.fd.as_fd()) {
            Ok(names) => names,
            Err(e) => {
                self.warnings.push(format!("listing {}: {e}", dir.path.display()));
                Vec::new()
            }
        };
        let mut nodes = Vec::with_capacity(names.len());
        for name in names {
            let child = dir.path.join(std::ffi::OsStr::from_bytes(&name));
            if self.pipe.filter.excluded(&child) {
                continue;
            }
            let st = match dirfd::stat_at(dir.fd.as_fd(), &name) {
                Ok(st) => st,
                Err(e) => {
                    self.warnings.push(format!("reading {}: {e}", child.display()));
                    continue;
                }
            };
            let parent_node = parent.and_then(|t| t.find(&name));
            nodes.extend(self.entry(&dir, name, &st, parent_node)?);
        }
        self.emit(nodes)
    }

    /// Entry `name` of `dir`, listed as `st`; `None` for what is not backed up.
    fn entry(
        &mut self,
        dir: &Arc<DirHandle>,
        name: Vec<u8>,
        st: &Stat,
        parent_node: Option<&Node>,
    ) -> Result<Option<PendingNode>, FilesError> {
        let path = dir.path.join(std::ffi::OsStr::from_bytes(&name));
        let m = dirfd::metadata(st);
        let mut xattrs = Vec::new();
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let fd = match dirfd::open_dir_at(dir.fd.as_fd(), &name, st) {
                    Ok(fd) => fd,
                    Err(e) => {
                        self.warnings.push(format!("{}: {e}", path.display()));
                        return Ok(None);
                    }
                };
                if self.pipe.xattrs {
                    xattrs = self.pipe.read_xattrs(&fd, &path);
                }
                let sub = self.load_parent_subtree(parent_node)?;
                PendingKind::Dir(self.walk_dir(Arc::new(DirHandle { fd, path }), sub.as_ref())?)
            }
            FileType::RegularFile => {
                if !self.pipe.filter.included(&path) {
                    return Ok(None);
                }
                PendingKind::File(self.file_content(dir, &name, st, &m, parent_node)?)
            }
            FileType::Symlink => {
                match rustix::fs::readlinkat(dir.fd.as_fd(), std::ffi::OsStr::from_bytes(&name), Vec::new()) {
                    Ok(t) => PendingKind::Other(NodeKind::Symlink { target: t.into_bytes() }),
                    Err(e) => {
                        self.warnings.push(format!("reading link {}: {e}", path.display()));
                        return Ok(None);
                    }
                }
            }
            FileType::Fifo => PendingKind::Other(NodeKind::Fifo),
            t @ (FileType::BlockDevice | FileType::CharacterDevice) => {
                PendingKind::Other(NodeKind::Device { rdev: dirfd::rdev(st), block: t == FileType::BlockDevice })
            }
            _ => {
                self.notices.push(format!(
                    "{}: a socket, not backed up (its server makes it anew when it starts)",
                    path.display()
                ));
                return Ok(None);
            }
        };
        Ok(Some(PendingNode { name, kind, meta: m, xattrs }))
    }

    fn file_content(
        &mut self,
        dir: &Arc<DirHandle>,
        name: &[u8],
        st: &Stat,
        m: &Metadata,
        parent: Option<&Node>,
    ) -> Result<Content, FilesError> {
        if let Some(Node { kind: NodeKind::File { content }, meta: old, xattrs, .. }) = parent {
            let settled = self.pipe.trust_before_ns.is_some_and(|t| old.mtime_ns < t && old.ctime_ns < t);
            if settled && unchanged(old, m) && self.pipe.seen.lean_on(&self.pipe.repo, content) {
                self.pipe.progress.file_done(m.size);
                return Ok(Content::Ready(content.clone(), xattrs.clone()));
            }
        }
        let path = dir.path.join(std::ffi::OsStr::from_bytes(name));
        let fixed = self.pipe.fixed_chunks.as_ref().and_then(|f| f.chunk_size(&path)).filter(|&s| s > 0);
        let step = fixed.map(|s| (RANGE_BYTES / s as u64).max(1) * s as u64);
        let mut ranges = vec![(0, None)];
        if let Some(step) = step {
            // The last range reads to the end, wherever that is by then.
            ranges = (0..m.size.div_ceil(step).max(1)).map(|i| (i * step, Some(step))).collect();
            if let Some(last) = ranges.last_mut() {
                last.1 = None;
            }
        }
        let mut parts = Vec::with_capacity(ranges.len());
        for (start, len) in ranges {
            let (tx, rx) = bounded(1);
            let job = FileJob {
                dir: dir.clone(),
                name: name.to_vec(),
                listed: *st,
                path: path.clone(),
                start,
                len,
                fixed,
                reply: tx,
            };
            self.jobs.send(job).map_err(|_| FilesError::Internal("file workers stopped"))?;
            parts.push(rx);
        }
        let quiet = fixed.is_some() && self.pipe.fixed_chunks.as_ref().is_some_and(|f| f.changes_expected());
        Ok(Content::Pending(parts, quiet))
    }
}

/// Cuts `source` into `size`-byte chunks (the last may be shorter).
pub(super) fn read_fixed<E: From<std::io::Error>>(
    mut source: impl std::io::Read,
    size: usize,
    each: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = vec![0u8; size];
    loop {
        let mut filled = 0;
        while filled < size {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        each(&buf[..filled])?;
        if filled < size {
            return Ok(());
        }
    }
}

/// A file's content from the results of its ranges, in order.
fn receive_parts(parts: Vec<Receiver<FileResult>>) -> Result<FileResult, crossbeam_channel::RecvError> {
    let (mut content, mut read, mut xattrs) = (Vec::new(), 0, Vec::new());
    for rx in parts {
        match rx.recv()? {
            FileResult::Done(c, r, x) => {
                content.extend(c);
                read += r;
                xattrs.extend(x);
            }
            other => return Ok(other),
        }
    }
    Ok(FileResult::Done(content, read, xattrs))
}

/// Counts files and bytes up front so progress can show an ETA.
fn count_totals(roots: &[PathBuf], filter: &Filter, progress: &Progress) {
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|c| !filter.excluded(c)));
            }
        } else if meta.is_file() && filter.included(&p) {
            progress.files_total.fetch_add(1, Ordering::Relaxed);
            progress.bytes_total.fetch_add(meta.len(), Ordering::Relaxed);
        }
    }
    progress.totals_known.store(true, Ordering::Relaxed);
}
