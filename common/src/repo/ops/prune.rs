//! Forgetting snapshots and pruning the data no snapshot needs, safely
//! while backups run: two phases with a grace period, never a lock.
//!
//! A prune run first *sweeps*: packs marked at least the grace period ago
//! are checked again against every snapshot that exists now, and those
//! still unreferenced are deleted (their index entries are rewritten
//! first, so a crash leaves only unindexed packs, never an index entry
//! without its pack). It then *marks*: packs whose blobs no snapshot
//! references are listed in a plan object under `prune/`.
//!
//! Writers treat the blobs of marked packs as absent (the repository's
//! index hides them from deduplication), so a backup that starts after a
//! mark stores its own copy instead of leaning on a pack about to go. A
//! backup that started before the mark keeps a live marker (see
//! `writers`) naming the plans it knew: a plan it did not know is not
//! swept while it runs, and once it has finished its snapshot exists for
//! the sweep's re-check to see.
//!
//! Nothing is deleted on doubt: while a snapshot or one of its trees
//! cannot be read, no pack is marked or swept; while an index object
//! cannot be read, no unindexed pack is taken for a leftover.

use crate::repo::format::layout::PRUNE_PLAN_KIND;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repo::RepoError;
use crate::repo::engine::repository::{Damaged, Repository};
use crate::repo::engine::writers::{self, STALE_AFTER, WriterMarker};
use crate::repo::format::id::{BlobId, PackId, SnapshotId};
use crate::repo::format::index::IndexedPack;
pub use crate::repo::format::layout::PRUNE_PREFIX;
use crate::repo::format::layout::{INDEX_PREFIX, PACK_PREFIXES, WRITERS_PREFIX, snapshot_key};
use crate::repo::format::object;
use crate::repo::format::tree::NodeKind;

/// The shortest grace period a prune takes without being told it is
/// unsafe: longer than a writer marker takes to go stale, so a backup that
/// died without its marker cannot have its half-indexed data swept.
pub const SAFE_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Packs found unreferenced at one time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrunePlan {
    /// When they were found so.
    pub marked: DateTime<Utc>,
    /// The packs.
    pub packs: Vec<PackId>,
}

/// What a prune run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Snapshots whose trees were walked.
    pub snapshots: u64,
    /// Packs newly marked, and their bytes.
    pub marked_packs: u64,
    /// Their stored bytes.
    pub marked_bytes: u64,
    /// Packs deleted, and their bytes.
    pub deleted_packs: u64,
    /// Their stored bytes.
    pub deleted_bytes: u64,
    /// Marked packs a snapshot made since refers to again: kept.
    pub revived_packs: u64,
    /// Packs still waiting out the grace period.
    pub waiting_packs: u64,
    /// Packs past the grace period kept while a backup that may lean on
    /// them runs.
    pub held_for_writers: u64,
    /// Index objects rewritten without the deleted packs.
    pub indexes_rewritten: u64,
    /// Packs no index lists (left by interrupted backups) deleted, and their bytes.
    pub leftover_packs: u64,
    /// Their stored bytes.
    pub leftover_bytes: u64,
    /// Temporary files of interrupted writes removed.
    pub temporaries: u64,
    /// Markers of writers that died, removed.
    pub stale_writers: u64,
    /// Why no data was marked or deleted this run, when something could not be read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<String>,
}

/// Deletes the manifests of `ids`: their data stays until pruned.
pub async fn forget(repo: &Repository, ids: &[SnapshotId]) -> Result<(), RepoError> {
    for id in ids {
        repo.store().delete(&snapshot_key(id)).await?;
    }
    Ok(())
}

fn plan_key(marked: DateTime<Utc>) -> String {
    format!("{PRUNE_PREFIX}{}", marked.format("%Y%m%dT%H%M%S%.9fZ"))
}

/// The plans stored: those that can be read, by key, and those that cannot.
#[derive(Debug, Default)]
pub struct Plans {
    /// Readable plans, by key.
    pub good: Vec<(String, PrunePlan)>,
    /// Plans that cannot be read.
    pub damaged: Vec<Damaged>,
}

/// Every plan stored.
pub async fn load_plans(repo: &Repository) -> Result<Plans, RepoError> {
    let (good, damaged) = repo.sealed_objects(PRUNE_PREFIX, PRUNE_PLAN_KIND).await?;
    Ok(Plans { good, damaged })
}

/// Every blob (trees and data) the snapshots that exist now refer to, or
/// why that cannot be known.
async fn referenced(repo: &Repository, report: &mut PruneReport) -> Result<HashSet<BlobId>, RepoError> {
    let list = repo.snapshot_list().await?;
    for d in &list.damaged {
        report.held_back.push(format!("{} cannot be read ({}): the data it needs is unknown", d.key, d.error));
    }
    let mut used = HashSet::new();
    for (id, snapshot) in list.good {
        report.snapshots += 1;
        let mut stack = vec![snapshot.tree];
        while let Some(tree_id) = stack.pop() {
            if !used.insert(tree_id) {
                continue;
            }
            let tree = match repo.load_tree(&tree_id).await {
                Ok(t) => t,
                Err(e) if e.is_damage() || matches!(e, RepoError::BlobNotIndexed(_)) => {
                    report.held_back.push(format!("a directory of snapshot {} cannot be read: {e}", id.short()));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for node in &tree.nodes {
                match &node.kind {
                    NodeKind::Dir { subtree } => stack.push(*subtree),
                    NodeKind::File { content } => used.extend(content.iter().copied()),
                    _ => {}
                }
            }
        }
    }
    Ok(used)
}

/// The writers running now (markers of dead ones are removed), and whether
/// one cannot be read (then every plan is held: what it knew is unknown).
async fn running_writers(repo: &Repository, report: &mut PruneReport) -> Result<(Vec<WriterMarker>, bool), RepoError> {
    let (markers, damaged) = writers::list(repo).await?;
    let now = Utc::now();
    let mut live = Vec::new();
    for (key, marker) in markers {
        if marker.live(now) {
            live.push(marker);
        } else {
            tracing::warn!(marker = %key, host = %marker.host, pid = marker.pid, "removing the marker of a writer that stopped refreshing it");
            repo.store().delete(&key).await?;
            report.stale_writers += 1;
        }
    }
    // A damaged marker is a writer's until it is old enough to be a dead one's.
    let stale = chrono::Duration::from_std(STALE_AFTER).unwrap_or(chrono::Duration::MAX);
    let listed = repo.store().list(WRITERS_PREFIX).await?;
    let mut unknown = false;
    for d in damaged {
        let modified = listed.iter().find(|m| m.key == d.key).and_then(|m| m.modified);
        if modified.is_some_and(|m| m + stale < now) {
            repo.store().delete(&d.key).await?;
            report.stale_writers += 1;
        } else {
            tracing::warn!(marker = %d.key, error = %d.error, "an unreadable writer marker holds every sweep");
            unknown = true;
        }
    }
    Ok((live, unknown))
}

/// One prune run at `now`: sweep what was marked at least `grace` ago and
/// is still unreferenced (unless a running writer may lean on it), delete
/// leftovers of interrupted writes older than `grace`, then mark what is
/// unreferenced now.
#[tracing::instrument(skip_all)]
pub async fn prune(repo: &Repository, grace: chrono::Duration, now: DateTime<Utc>) -> Result<PruneReport, RepoError> {
    let mut report = PruneReport::default();
    // Writers first: one that finished after this listing wrote its
    // snapshot before it removed its marker, so the listing below sees it.
    let (live, unknown_writer) = running_writers(repo, &mut report).await?;
    repo.reload_index().await?;
    let used = referenced(repo, &mut report).await?;
    let plans = load_plans(repo).await?;
    for d in &plans.damaged {
        // A plan only says what may go: without it, that is found again.
        tracing::warn!(plan = %d.key, error = %d.error, "deleting an unreadable prune plan");
        repo.store().delete(&d.key).await?;
    }
    // What interrupted writers left: from before the grace period, and
    // before every running writer began (allowing for clocks that differ).
    let oldest_writer = live.iter().map(|w| w.started - chrono::Duration::minutes(5)).min();
    let leftovers_before = oldest_writer.map_or(now - grace, |w| w.min(now - grace));
    if !unknown_writer {
        report.temporaries = repo.store().reclaim_temporaries(leftovers_before).await?;
    }
    if !report.held_back.is_empty() {
        for why in &report.held_back {
            tracing::warn!("prune deletes and marks nothing: {why}");
        }
        return Ok(report);
    }
    // Packs, their sizes and keys, and whether any of their blobs is used.
    let mut packs: HashMap<PackId, (u64, String, bool)> =
        repo.index().packs().iter().map(|p| (p.id, (p.size, p.key(), false))).collect();
    for location in repo.index().blobs() {
        if used.contains(&location.blob.id)
            && let Some(p) = packs.get_mut(&location.pack.id)
        {
            p.2 = true;
        }
    }

    let mut planned: HashSet<PackId> = HashSet::new();
    let mut doomed: HashSet<PackId> = HashSet::new();
    let mut done_plans = Vec::new();
    for (key, plan) in &plans.good {
        let ripe = plan.marked + grace <= now;
        let held = unknown_writer || live.iter().any(|w| !w.plans_seen.contains(key));
        for id in &plan.packs {
            match packs.get(id) {
                // Gone already (an earlier sweep, or another coordinator's).
                None => {}
                Some((_, _, true)) => report.revived_packs += 1,
                Some((_, _, false)) if ripe && !held => {
                    doomed.insert(*id);
                }
                Some((_, _, false)) => {
                    if ripe {
                        report.held_for_writers += 1;
                    } else {
                        report.waiting_packs += 1;
                    }
                    planned.insert(*id);
                }
            }
        }
        if ripe && !held {
            done_plans.push(key.clone());
        }
    }

    if !doomed.is_empty() {
        report.indexes_rewritten = drop_from_indexes(repo, &doomed).await?;
        for id in &doomed {
            if let Some((size, key, _)) = packs.get(id) {
                repo.store().delete(key).await?;
                report.deleted_packs += 1;
                report.deleted_bytes += size;
            }
        }
    }
    for key in &done_plans {
        repo.store().delete(key).await?;
    }
    if !unknown_writer {
        delete_leftovers(repo, leftovers_before, &mut report).await?;
    }

    let fresh: Vec<PackId> = packs
        .iter()
        .filter(|(id, (_, _, in_use))| !in_use && !planned.contains(id) && !doomed.contains(id))
        .map(|(id, _)| *id)
        .collect();
    if !fresh.is_empty() {
        report.marked_packs = fresh.len() as u64;
        report.marked_bytes = fresh.iter().filter_map(|id| packs.get(id)).map(|p| p.0).sum();
        let plan = PrunePlan { marked: now, packs: fresh };
        let payload =
            serde_json::to_vec(&plan).map_err(|e| RepoError::Encode { what: "prune plan", reason: e.to_string() })?;
        let key = plan_key(now);
        let sealed = object::seal(repo.keyring(), PRUNE_PLAN_KIND, &key, payload, repo.config().compression_level)?;
        repo.store().put(&key, sealed.into()).await?;
    }
    repo.reload_index().await?;
    tracing::info!(?report, "prune done");
    Ok(report)
}

/// Deletes packs no index lists (a backup killed before indexing them)
/// last written before `before`. Not while an index object cannot be read:
/// its packs would look unlisted.
async fn delete_leftovers(repo: &Repository, before: DateTime<Utc>, report: &mut PruneReport) -> Result<(), RepoError> {
    if !repo.index_problems().is_empty() {
        return Ok(());
    }
    let indexed: HashSet<String> = repo.index().packs().iter().map(|p| p.key()).collect();
    for prefix in PACK_PREFIXES {
        for meta in repo.store().list(prefix).await? {
            if indexed.contains(&meta.key) || meta.modified.is_none_or(|m| m >= before) {
                continue;
            }
            repo.store().delete(&meta.key).await?;
            report.leftover_packs += 1;
            report.leftover_bytes += meta.size;
        }
    }
    Ok(())
}

/// Rewrites every index object that lists a doomed pack without it: the
/// rest of its packs go into one new index object, written before the old
/// ones are deleted. Returns how many were rewritten.
async fn drop_from_indexes(repo: &Repository, doomed: &HashSet<PackId>) -> Result<u64, RepoError> {
    let mut keep: Vec<IndexedPack> = Vec::new();
    let mut rewritten = Vec::new();
    for meta in repo.store().list(INDEX_PREFIX).await? {
        let file = match repo.read_index_object(&meta.key).await {
            Ok(f) => f,
            // Unreadable: none of its packs is in the index, so none is doomed.
            Err(e) if e.is_damage() => continue,
            Err(e) => return Err(e),
        };
        if !file.packs.iter().any(|p| doomed.contains(&p.id)) {
            continue;
        }
        keep.extend(file.packs.into_iter().filter(|p| !doomed.contains(&p.id)));
        rewritten.push(meta.key);
    }
    if !keep.is_empty() {
        repo.save_index(keep).await?;
    }
    for key in &rewritten {
        repo.store().delete(key).await?;
    }
    Ok(rewritten.len() as u64)
}
