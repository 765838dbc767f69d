//! Writing blobs from blocking worker threads: per-thread packers feeding a
//! shared pool of uploaders, with indexes written as packs land.
//!
//! Memory stays bounded and allocation-free in the steady state: each packer
//! holds at most one pack, the upload queue at most one pack per uploader, and
//! pack buffers go back to the packers once stored.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, bounded};
use tokio::runtime::Handle;

use crate::repo::engine::repository::Repository;
use crate::repo::error::RepoError;
use crate::repo::format::compress::compress;
use crate::repo::format::id::{BlobId, PackId};
use crate::repo::format::index::IndexedPack;
use crate::repo::format::layout::pack_key;
use crate::repo::format::pack::{BlobKind, FinishedPack, PackBuilder, blob_id};

/// Packs that landed are indexed in batches of this many, so an interrupted
/// backup leaves its finished work indexed for the next run to reuse.
const INDEX_BATCH: usize = 64;

/// Blobs this writer has claimed, so two threads never store the same
/// blob, and the packs it leans on for the blobs it did not store.
#[derive(Default)]
pub struct SeenBlobs {
    claimed: Mutex<HashSet<BlobId>>,
    reused: Mutex<HashSet<PackId>>,
}

impl SeenBlobs {
    /// True if `id` is neither in the repository nor claimed yet; claims it.
    pub fn claim(&self, repo: &Repository, id: BlobId) -> bool {
        if let Some(pack) = repo.index().live_pack(&id) {
            self.reused.lock().unwrap_or_else(|p| p.into_inner()).insert(pack);
            return false;
        }
        self.claimed.lock().unwrap_or_else(|p| p.into_inner()).insert(id)
    }

    /// Stores a data chunk through `packer` unless the repository or this
    /// writer has it already: its id, and the bytes it took if stored.
    pub fn store(
        &self,
        repo: &Repository,
        packer: &mut Packer,
        chunk: &[u8],
    ) -> Result<(BlobId, Option<u64>), RepoError> {
        let id = blob_id(repo.keyring(), chunk);
        let stored = if self.claim(repo, id) { Some(packer.add(id, chunk)?) } else { None };
        Ok((id, stored))
    }

    /// Leans on the stored copies of `ids` (content taken unread from an
    /// earlier snapshot); false, leaning on nothing, unless every one is
    /// in a pack not marked for deletion.
    pub fn lean_on(&self, repo: &Repository, ids: &[BlobId]) -> bool {
        let index = repo.index();
        let packs: Option<Vec<PackId>> = ids.iter().map(|id| index.live_pack(id)).collect();
        let Some(packs) = packs else { return false };
        self.reused.lock().unwrap_or_else(|p| p.into_inner()).extend(packs);
        true
    }

    /// The packs leaned on so far.
    pub fn reused_packs(&self) -> HashSet<PackId> {
        self.reused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters an operator would graph.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Packs stored.
    pub packs: AtomicU64,
    /// Bytes of packs stored.
    pub bytes: AtomicU64,
}

/// State the uploader threads share.
struct Shared {
    repo: Repository,
    runtime: Handle,
    landed: Mutex<Vec<IndexedPack>>,
    /// Every pack stored, indexed or not yet.
    stored: Mutex<HashSet<PackId>>,
    stats: Arc<UploadStats>,
    /// Stored packs' buffers, for the packers to reuse.
    spare: (Sender<Vec<u8>>, Receiver<Vec<u8>>),
}

/// A pool of threads storing finished packs and indexing them.
pub struct PackUploader {
    shared: Arc<Shared>,
    tx: Option<Sender<FinishedPack>>,
    workers: Vec<JoinHandle<Result<(), RepoError>>>,
}

impl PackUploader {
    /// Starts `workers` upload threads that run store calls on `runtime`.
    pub fn start(repo: &Repository, runtime: Handle, workers: usize) -> Self {
        let workers = workers.max(1);
        // A short queue: packs waiting here are memory, not progress.
        let (tx, rx) = bounded::<FinishedPack>(2);
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            runtime,
            landed: Mutex::new(Vec::new()),
            stored: Mutex::new(HashSet::new()),
            stats: Arc::new(UploadStats::default()),
            spare: bounded(workers * 2),
        });
        let handles = (0..workers)
            .map(|_| {
                let (shared, rx) = (shared.clone(), rx.clone());
                std::thread::spawn(move || upload_loop(&shared, &rx))
            })
            .collect();
        PackUploader { shared, tx: Some(tx), workers: handles }
    }

    /// A packer for one worker thread.
    pub fn packer(&self, kind: BlobKind) -> Packer {
        Packer {
            repo: self.shared.repo.clone(),
            kind,
            tx: self.tx.clone(),
            spare: self.shared.spare.1.clone(),
            builder: None,
            target: self.shared.repo.config().pack_size as usize,
            level: self.shared.repo.config().compression_level,
        }
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<UploadStats> {
        self.shared.stats.clone()
    }

    /// Waits for every queued pack to land, then indexes what is left;
    /// returns the packs stored. Every [`Packer`] must have been flushed
    /// and dropped first.
    pub fn finish(mut self) -> Result<HashSet<PackId>, RepoError> {
        drop(self.tx.take());
        let mut first_err = None;
        for h in self.workers.drain(..) {
            let r = h.join().unwrap_or(Err(RepoError::Interrupted("an upload thread panicked")));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        // Index what landed even after a failure: those packs are good.
        let rest = std::mem::take(&mut *self.shared.landed.lock().unwrap_or_else(|p| p.into_inner()));
        let indexed = self.shared.runtime.block_on(self.shared.repo.save_index(rest));
        match first_err {
            Some(e) => Err(e),
            None => indexed.map(|_| std::mem::take(&mut *self.shared.stored.lock().unwrap_or_else(|p| p.into_inner()))),
        }
    }
}

fn upload_loop(shared: &Shared, rx: &Receiver<FinishedPack>) -> Result<(), RepoError> {
    for pack in rx {
        let size = pack.bytes.len() as u64;
        let bytes = Bytes::from(pack.bytes);
        let kind = pack.blobs.first().map_or(BlobKind::Data, |b| b.kind);
        shared.runtime.block_on(shared.repo.store().put(&pack_key(&pack.id, kind), bytes.clone()))?;
        if kind == BlobKind::Tree {
            shared.repo.cache_tree_pack(&pack.id, &bytes);
        }
        // The store has let go of its reference: recycle the buffer.
        if let Ok(buf) = bytes.try_into_mut() {
            let _ = shared.spare.0.try_send(buf.into());
        }
        shared.stored.lock().unwrap_or_else(|p| p.into_inner()).insert(pack.id);
        shared.stats.packs.fetch_add(1, Ordering::Relaxed);
        shared.stats.bytes.fetch_add(size, Ordering::Relaxed);
        let batch = {
            let mut l = shared.landed.lock().unwrap_or_else(|p| p.into_inner());
            l.push(IndexedPack { id: pack.id, seal: pack.seal, size, blobs: pack.blobs });
            if l.len() >= INDEX_BATCH { std::mem::take(&mut *l) } else { Vec::new() }
        };
        shared.runtime.block_on(shared.repo.save_index(batch))?;
    }
    Ok(())
}

/// Collects blobs of one kind into packs on one thread.
pub struct Packer {
    repo: Repository,
    kind: BlobKind,
    tx: Option<Sender<FinishedPack>>,
    spare: Receiver<Vec<u8>>,
    builder: Option<PackBuilder>,
    target: usize,
    level: i32,
}

impl Packer {
    /// Compresses at `level` instead of the repository's default (a source
    /// whose backups must be fast, like a database, trades a little size).
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }

    /// Compresses (where it pays), seals and packs a blob; returns the bytes
    /// it will take in the repository.
    pub fn add(&mut self, id: BlobId, raw: &[u8]) -> Result<u64, RepoError> {
        let payload = compress(raw, self.level);
        let mut builder = match self.builder.take() {
            Some(b) => b,
            None => {
                let buf = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(self.target + (1 << 20)));
                PackBuilder::new(self.repo.keyring(), buf)?
            }
        };
        let stored = builder.add(id, self.kind, payload, raw.len())?;
        let full = builder.len() >= self.target;
        self.builder = Some(builder);
        if full {
            self.flush()?;
        }
        Ok(u64::from(stored))
    }

    /// Sends the pack being built, if any, to the uploaders.
    pub fn flush(&mut self) -> Result<(), RepoError> {
        let Some(builder) = self.builder.take() else { return Ok(()) };
        if builder.is_empty() {
            return Ok(());
        }
        let pack = builder.finish()?;
        let stopped = || RepoError::Interrupted("the uploaders stopped after an error");
        self.tx.as_ref().ok_or_else(stopped)?.send(pack).map_err(|_| stopped())
    }
}
