//! `lifeboat repair`: the way back from a lost or damaged index (rebuilt
//! from the packs' own headers, as restic's `repair index` does) and from
//! snapshots whose data is gone (found, and with `forget` removed). Both
//! are safe while backups run: a repair keeps a writer marker that holds
//! every prune sweep, deletes only the index objects it read before it
//! wrote their replacements, and judges only snapshots that existed before
//! it loaded the index.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use crate::repo::engine::repository::Repository;
use crate::repo::engine::writers::WriterSession;
use crate::repo::error::RepoError;
use crate::repo::format::id::{BlobId, PackId};
use crate::repo::format::index::IndexedPack;
use crate::repo::format::layout::{INDEX_PREFIX, PACK_PREFIXES, snapshot_key};
use crate::repo::format::pack::{PACK_PREFIX_LEN, header_len, parse_header};
use crate::repo::format::tree::NodeKind;

/// Packs written into one rebuilt index object.
const PACKS_PER_INDEX: usize = 256;

/// What rebuilding the index did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexRepair {
    /// Packs whose header was read.
    pub packs: u64,
    /// Of those, packs no readable index listed before.
    pub packs_added: u64,
    /// Index objects written.
    pub indexes_written: u64,
    /// Old index objects replaced (damaged ones among them).
    pub indexes_removed: u64,
    /// Packs whose header cannot be read, each with the reason: their data
    /// cannot be indexed.
    pub unreadable: Vec<String>,
}

/// Rebuilds the index from the packs in the store.
#[tracing::instrument(skip_all)]
pub async fn repair_index(repo: &Repository) -> Result<IndexRepair, RepoError> {
    let session = WriterSession::start_holding_sweeps(repo, "repair index").await?;
    let result = rebuild(repo).await;
    session.finish().await;
    result
}

async fn rebuild(repo: &Repository) -> Result<IndexRepair, RepoError> {
    let mut report = IndexRepair::default();
    let store = repo.store();
    // Only these are replaced: index objects written meanwhile by running
    // backups stay.
    let old_indexes: Vec<String> = store.list(INDEX_PREFIX).await?.into_iter().map(|m| m.key).collect();
    repo.reload_index().await?;
    let known: HashSet<PackId> = repo.index().packs().iter().map(|p| p.id).collect();
    let mut listed = Vec::new();
    for prefix in PACK_PREFIXES {
        listed.extend(store.list(prefix).await?);
    }
    let mut read = futures::stream::iter(listed)
        .map(|meta| async move {
            let id = meta.key.rsplit('/').next().and_then(|h| h.parse::<PackId>().ok());
            (meta.key.clone(), id, read_pack_header(repo, &meta.key, meta.size).await, meta.size)
        })
        .buffer_unordered(store.parallelism() * 2);
    let mut packs = Vec::new();
    while let Some((key, id, header, size)) = read.next().await {
        let Some(id) = id else {
            report.unreadable.push(format!("{key}: not named by a pack id"));
            continue;
        };
        match header {
            Ok((seal, blobs)) => {
                report.packs += 1;
                report.packs_added += u64::from(!known.contains(&id));
                packs.push(IndexedPack { id, seal, size, blobs });
            }
            Err(e) if e.is_damage() => report.unreadable.push(e.to_string()),
            Err(RepoError::Store(e)) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    packs.sort_by_key(|p| p.id);
    for chunk in packs.chunks(PACKS_PER_INDEX) {
        repo.save_index(chunk.to_vec()).await?;
        report.indexes_written += 1;
    }
    for key in &old_indexes {
        store.delete(key).await?;
        report.indexes_removed += 1;
    }
    repo.reload_index().await?;
    Ok(report)
}

/// A pack's seal and header, with ranged reads of its two ends.
async fn read_pack_header(
    repo: &Repository,
    key: &str,
    size: u64,
) -> Result<(crate::repo::format::pack::PackSeal, Vec<crate::repo::format::pack::PackBlob>), RepoError> {
    let truncated = || RepoError::corrupt(key, format!("truncated: {size} bytes"));
    if size < (PACK_PREFIX_LEN + 4) as u64 {
        return Err(truncated());
    }
    let store = repo.store();
    let prefix = store.get_range(key, 0..PACK_PREFIX_LEN as u64).await?;
    let len = header_len(&store.get_range(key, size - 4..size).await?) as u64;
    if len + 4 + PACK_PREFIX_LEN as u64 > size {
        return Err(truncated());
    }
    let tail = store.get_range(key, size - 4 - len..size).await?;
    parse_header(repo.keyring(), key, &prefix, &tail, size)
}

/// A snapshot whose data is (partly) gone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Broken {
    /// Its store key.
    pub key: String,
    /// The first thing found missing.
    pub reason: String,
    /// Whether it was forgotten.
    pub forgotten: bool,
}

/// What checking the snapshots found.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotRepair {
    /// Snapshots whose trees were walked.
    pub checked: u64,
    /// Those that cannot be restored whole.
    pub broken: Vec<Broken>,
}

/// Finds snapshots whose data is gone (their object unreadable, a tree or a
/// chunk in no index, or a pack missing from the store); with `forget`,
/// removes them, so that backups and prunes stop tripping over them.
#[tracing::instrument(skip_all)]
pub async fn repair_snapshots(repo: &Repository, forget_broken: bool) -> Result<SnapshotRepair, RepoError> {
    // Snapshots first: every one listed had its index written before it.
    let list = repo.snapshot_list().await?;
    repo.reload_index().await?;
    let mut stored: HashSet<String> = HashSet::new();
    for prefix in PACK_PREFIXES {
        stored.extend(repo.store().list(prefix).await?.into_iter().map(|m| m.key));
    }
    let mut report = SnapshotRepair::default();
    for d in &list.damaged {
        report.broken.push(Broken { key: d.key.clone(), reason: d.error.clone(), forgotten: false });
    }
    let mut judged: HashMap<BlobId, Option<String>> = HashMap::new();
    for (id, snapshot) in &list.good {
        report.checked += 1;
        if let Some(why) = missing_below(repo, &stored, snapshot.tree, "/".into(), &mut judged).await? {
            report.broken.push(Broken { key: snapshot_key(id), reason: why, forgotten: false });
        }
    }
    if forget_broken {
        for b in &mut report.broken {
            repo.store().delete(&b.key).await?;
            b.forgotten = true;
        }
    }
    Ok(report)
}

/// The first thing missing below the tree `id` (at `path`), or `None` when
/// all of it is there; each tree is judged once across all snapshots.
fn missing_below<'a>(
    repo: &'a Repository,
    stored: &'a HashSet<String>,
    id: BlobId,
    path: String,
    judged: &'a mut HashMap<BlobId, Option<String>>,
) -> futures::future::BoxFuture<'a, Result<Option<String>, RepoError>> {
    Box::pin(async move {
        if let Some(known) = judged.get(&id) {
            return Ok(known.clone());
        }
        let present = |blob: &BlobId| {
            let index = repo.index();
            index.get(blob).is_some_and(|loc| stored.contains(&loc.pack.key()))
        };
        let found = if !present(&id) {
            Some(format!("directory {path}: its tree {} is gone", id.short()))
        } else {
            match repo.load_tree(&id).await {
                Ok(tree) => {
                    let mut found = None;
                    for node in &tree.nodes {
                        let child = format!("{path}{}", node.display_name());
                        found = match &node.kind {
                            NodeKind::Dir { subtree } => {
                                missing_below(repo, stored, *subtree, format!("{child}/"), judged).await?
                            }
                            NodeKind::File { content } => content
                                .iter()
                                .find(|b| !present(b))
                                .map(|b| format!("file {child}: chunk {} is gone", b.short())),
                            _ => None,
                        };
                        if found.is_some() {
                            break;
                        }
                    }
                    found
                }
                Err(e) if e.is_damage() => Some(format!("directory {path}: {e}")),
                Err(e) => return Err(e),
            }
        };
        judged.insert(id, found.clone());
        Ok(found)
    })
}
