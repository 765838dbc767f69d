//! A Redis capture: the RDB asked for over the replication protocol and
//! streamed straight through chunking, deduplication, compression,
//! encryption and packing, with no temporary file. The socket is read by a
//! task that hands pieces through a short queue to a thread that checks
//! and chunks them, and chunks to workers that hash, compress, seal and
//! pack: every queue is bounded, so memory does not grow with the dataset.
//! The snapshot (one file, `dump.rdb`) is saved only once the whole RDB has
//! arrived and passed its checks.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use crossbeam_channel::bounded;
use lifeboat_common::repo::engine::chunker::{Chunker, ChunkerParams};
use lifeboat_common::repo::engine::packer::{PackUploader, SeenBlobs};
use lifeboat_common::repo::engine::writers::WriterSession;
use lifeboat_common::repo::format::pack::{BlobKind, blob_id};
use lifeboat_common::repo::format::snapshot::{BackupSummary, RedisCapture, Snapshot};
use lifeboat_common::repo::format::tree::{Metadata, Node, NodeKind, Tree};
use lifeboat_common::repo::{BlobId, PackId, Repository, SnapshotId};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::RedisError;
use super::endpoint::Connection;
use super::rdb::{RdbCheck, RdbFacts};
use super::replication::{RdbLink, RdbPayload};
use super::sentinel::locate;
use super::server::Role;
use crate::progress::Progress;
use crate::sources::files::{Captured, lost_footing};

/// Chunk sizes for RDBs, far smaller than for files: an RDB is rewritten
/// whole each time, with changed keys scattered through it, so a chunk
/// survives unchanged only if none of its keys changed. At 16 KiB on
/// average a chunk holds about fifty values of a few hundred bytes, and
/// changing 1 % of the keys leaves over half the chunks as they were (at
/// 64 KiB, one in seven; at 1 MiB, none).
pub const RDB_CHUNKS: ChunkerParams = ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };

/// zstd level for RDBs: their strings are often LZF-compressed already,
/// and a capture is on the clock.
pub const RDB_COMPRESSION_LEVEL: i32 = 1;

/// The name of the RDB in a Redis snapshot's tree.
pub const RDB_FILE: &str = "dump.rdb";

/// Pieces read from the socket and waiting to be chunked.
const QUEUED_PIECES: usize = 16;

/// What to capture and how to record it.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// How to reach the server.
    pub connection: Connection,
    /// Host name to record.
    pub hostname: String,
    /// Tags to record.
    pub tags: Vec<String>,
    /// zstd level (default [`RDB_COMPRESSION_LEVEL`]).
    pub compression_level: Option<i32>,
}

/// A saved capture.
#[derive(Debug)]
pub struct CaptureOutcome {
    /// The snapshot's id.
    pub id: SnapshotId,
    /// Its manifest.
    pub snapshot: Snapshot,
}

/// Captures the server `opts` names and saves a snapshot of it.
#[tracing::instrument(skip_all, fields(url = %opts.connection.url))]
pub async fn capture_redis(
    repo: &Repository,
    opts: CaptureOptions,
    progress: Arc<Progress>,
) -> Result<CaptureOutcome, RedisError> {
    let (url, access) = opts.connection.access()?;
    let started = Utc::now();
    let (mut server, role) = locate(&url, &access, opts.connection.prefer).await?;
    let addr = server.addr.clone();
    let info = server.info("server").await?;
    let version: String = info.get("redis_version").unwrap_or_default();
    let role = match role {
        Role::Master => "master".to_owned(),
        Role::Replica { .. } => "slave".to_owned(),
        Role::Other(other) => {
            return Err(RedisError::Topology(format!("{addr} is a {other}, not a Redis server to capture")));
        }
    };

    let session = WriterSession::start(repo, "backup redis").await?;
    let (link, resync) = RdbLink::open(&addr, &access).instrument(tracing::info_span!("PSYNC")).await?;
    // +FULLRESYNC comes as the server forks: these are the RDB's counts,
    // give or take the writes of a few milliseconds.
    let keyspace = server.keyspace().await?;
    let payload = link.payload().await?;
    tracing::info!(server = %addr, replication_id = resync.replication_id, offset = resync.offset, length = ?payload.length(), "RDB transfer started");
    if let Some(total) = payload.length() {
        progress.bytes_total.store(total, Ordering::Relaxed);
        progress.files_total.store(1, Ordering::Relaxed);
        progress.totals_known.store(true, Ordering::Relaxed);
    }

    let (tx, rx) = mpsc::channel(QUEUED_PIECES);
    let store = {
        let (repo, progress, runtime, server) = (repo.clone(), progress.clone(), Handle::current(), addr.to_string());
        let level = opts.compression_level.unwrap_or(RDB_COMPRESSION_LEVEL);
        let span = tracing::info_span!("check, chunk and upload");
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| store_rdb(&repo, runtime, rx, level, started, &progress, &server))
        })
    };
    let pumped = pump(payload, tx).await;
    let stored = store.await.map_err(|_| RedisError::Usage("the RDB pipeline panicked".into()))?;
    pumped?;
    let stored = stored?;

    // Never a snapshot that refers to data a prune marked or took away
    // meanwhile; an RDB cannot be read twice, so the capture is retried whole.
    let leaned: std::collections::HashSet<PackId> = stored.reused.difference(&stored.packs).copied().collect();
    let lost = lost_footing(repo, &leaned).await?;
    if !lost.is_empty() {
        return Err(RedisError::Usage(format!(
            "a prune removed data this capture leaned on ({}); nothing was saved, capture again",
            lost.join(", ")
        )));
    }
    let captured = Captured::new(started, vec![url.to_string()], stored.tree, stored.summary, session);
    let mut snapshot = captured.manifest("redis", opts.hostname, opts.tags);
    snapshot.redis = Some(RedisCapture {
        server: addr.to_string(),
        version,
        role,
        rdb_version: stored.facts.version,
        replication_id: resync.replication_id,
        replication_offset: resync.offset,
        rdb_bytes: stored.facts.bytes,
        checksum: stored.facts.checksum,
        keyspace,
    });
    let id = captured.save(repo, &snapshot).await?;
    Ok(CaptureOutcome { id, snapshot })
}

/// A message from the socket to the chunking thread.
enum Piece {
    /// The next bytes of the RDB.
    Data(Vec<u8>),
    /// The RDB has ended (its length reached, or its end mark seen).
    End,
}

/// Reads the RDB off the socket into the queue; a queue closed by the
/// other side means that side failed, and says why itself.
async fn pump(mut payload: RdbPayload, tx: mpsc::Sender<Piece>) -> Result<(), RedisError> {
    while let Some(piece) = payload.next().await? {
        if tx.send(Piece::Data(piece)).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx.send(Piece::End).await;
    Ok(())
}

/// What the chunking thread stored.
struct Stored {
    tree: BlobId,
    facts: RdbFacts,
    summary: BackupSummary,
    /// Packs written.
    packs: std::collections::HashSet<PackId>,
    /// Packs holding blobs the snapshot shares with others.
    reused: std::collections::HashSet<PackId>,
}

/// Chunks handed to a worker together: one wake-up per few hundred KiB
/// rather than per chunk.
#[derive(Default)]
struct Batch {
    /// The sequence number of the first chunk.
    first: usize,
    /// The chunks, end to end.
    data: Vec<u8>,
    /// Where each chunk ends in `data`.
    ends: Vec<usize>,
}

/// Bytes gathered before a batch goes to the workers.
const BATCH_BYTES: usize = 512 << 10;

impl Batch {
    /// Adds a chunk; true once the batch is big enough to send.
    fn push(&mut self, chunk: &[u8]) -> bool {
        self.data.extend_from_slice(chunk);
        self.ends.push(self.data.len());
        self.data.len() >= BATCH_BYTES
    }

    /// The batch to send; this one starts over after it.
    fn take(&mut self) -> Batch {
        let next = Batch { first: self.first + self.ends.len(), ..Default::default() };
        std::mem::replace(self, next)
    }

    /// Each chunk with its sequence number.
    fn chunks(&self) -> impl Iterator<Item = (usize, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).enumerate().map(|(i, (start, &end))| (self.first + i, &self.data[start..end]))
    }
}

/// The queue as a reader, checking the RDB as it goes.
struct QueueReader<'a> {
    rx: mpsc::Receiver<Piece>,
    piece: Vec<u8>,
    at: usize,
    ended: bool,
    check: RdbCheck,
    progress: &'a Progress,
}

impl Read for QueueReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(piece)) => {
                    self.check.update(&piece);
                    self.progress.bytes(piece.len() as u64);
                    (self.piece, self.at) = (piece, 0);
                }
                Some(Piece::End) => self.ended = true,
                None => return Err(io::Error::other("the transfer stopped")),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Chunks, stores and checks the RDB arriving on `rx`; stores the tree
/// holding it once it has passed its checks.
fn store_rdb(
    repo: &Repository,
    runtime: Handle,
    rx: mpsc::Receiver<Piece>,
    level: i32,
    started: DateTime<Utc>,
    progress: &Progress,
    server: &str,
) -> Result<Stored, RedisError> {
    let rdb_error = |what: String| RedisError::Rdb { server: server.to_owned(), what };
    let uploader = PackUploader::start(repo, runtime, repo.store().parallelism());
    let seen = SeenBlobs::default();
    let (blobs_new, bytes_new, bytes_stored) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let (chunk_tx, chunk_rx) = bounded::<Batch>(workers * 2);
    let mut reader = QueueReader { rx, piece: Vec::new(), at: 0, ended: false, check: RdbCheck::default(), progress };

    let chunked = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let chunk_rx = chunk_rx.clone();
                let mut packer = uploader.packer(BlobKind::Data).with_compression_level(level);
                let (seen, blobs_new, bytes_new, bytes_stored) = (&seen, &blobs_new, &bytes_new, &bytes_stored);
                s.spawn(move || {
                    let mut ids = Vec::new();
                    for batch in chunk_rx {
                        for (seq, chunk) in batch.chunks() {
                            let (id, stored) = seen.store(repo, &mut packer, chunk)?;
                            if let Some(stored) = stored {
                                blobs_new.fetch_add(1, Ordering::Relaxed);
                                bytes_new.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                bytes_stored.fetch_add(stored, Ordering::Relaxed);
                            }
                            ids.push((seq, id));
                        }
                    }
                    packer.flush()?;
                    Ok::<_, RedisError>(ids)
                })
            })
            .collect();
        drop(chunk_rx);
        let mut chunker = Chunker::new(RDB_CHUNKS, repo.keyring().chunker_seed);
        let mut batch = Batch::default();
        let stopped = || io::Error::other("the chunk workers stopped");
        let read = chunker
            .chunk_reader(&mut reader, |chunk| {
                if batch.push(chunk) {
                    chunk_tx.send(batch.take()).map_err(|_| stopped())?;
                }
                Ok::<_, io::Error>(())
            })
            .and_then(|()| chunk_tx.send(batch.take()).map_err(|_| stopped()));
        let seq = batch.first;
        drop(chunk_tx);
        let mut content: Vec<(usize, BlobId)> = Vec::with_capacity(seq);
        let mut failed = None;
        for h in handles {
            match h.join() {
                Ok(Ok(ids)) => content.extend(ids),
                Ok(Err(e)) => failed = failed.or(Some(e)),
                Err(_) => failed = failed.or(Some(RedisError::Usage("a chunk worker panicked".into()))),
            }
        }
        // A store failing is the cause of everything stopping after it.
        if let Some(e) = failed {
            return Err(e);
        }
        read.map_err(|e| rdb_error(format!("transfer failed: {e}")))?;
        content.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(content.into_iter().map(|(_, id)| id).collect::<Vec<BlobId>>())
    });

    let content = match chunked {
        Ok(content) => content,
        Err(e) => {
            // The uploaders' own failure, if any, is the better cause.
            uploader.finish()?;
            return Err(e);
        }
    };
    let facts = match std::mem::take(&mut reader.check).finish() {
        Ok(facts) => facts,
        Err(what) => {
            uploader.finish()?;
            return Err(rdb_error(what));
        }
    };
    let time_ns = started.timestamp_nanos_opt().unwrap_or(0);
    let node = Node {
        name: RDB_FILE.as_bytes().to_vec(),
        kind: NodeKind::File { content },
        meta: Metadata {
            mode: libc::S_IFREG | 0o600,
            size: facts.bytes,
            mtime_ns: time_ns,
            atime_ns: time_ns,
            ctime_ns: time_ns,
            nlink: 1,
            ..Default::default()
        },
        xattrs: Vec::new(),
    };
    let bytes = Tree { nodes: vec![node] }.encode()?;
    let tree = blob_id(repo.keyring(), &bytes);
    let mut tree_packer = uploader.packer(BlobKind::Tree);
    if seen.claim(repo, tree) {
        tree_packer.add(tree, &bytes)?;
    }
    tree_packer.flush()?;
    drop(tree_packer);
    let stats = uploader.stats();
    let packs = uploader.finish()?;
    let summary = BackupSummary {
        files: 1,
        dirs: 1,
        files_read: 1,
        bytes_total: facts.bytes,
        bytes_read: facts.bytes,
        blobs_new: blobs_new.load(Ordering::Relaxed),
        bytes_new: bytes_new.load(Ordering::Relaxed),
        bytes_stored: bytes_stored.load(Ordering::Relaxed),
        packs_written: stats.packs.load(Ordering::Relaxed),
        duration_secs: 0.0,
    };
    Ok(Stored { tree, facts, summary, packs, reused: seen.reused_packs() })
}
