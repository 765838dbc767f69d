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
//! backup that started before the mark and finishes before the sweep is
//! caught by the re-check; the grace period must exceed the longest backup.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::{BlobId, PackId, SnapshotId};
use super::index::IndexedPack;
use super::repository::{INDEX_PREFIX, Repository, snapshot_key};
use super::tree::NodeKind;
use super::{RepoError, object};

/// Where plans are kept.
pub const PRUNE_PREFIX: &str = "prune/";

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
    /// Index objects rewritten without the deleted packs.
    pub indexes_rewritten: u64,
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

/// Every plan stored, by key.
pub async fn load_plans(repo: &Repository) -> Result<Vec<(String, PrunePlan)>, RepoError> {
    let mut plans = Vec::new();
    for meta in repo.store().list(PRUNE_PREFIX).await? {
        let bytes = repo.store().get(&meta.key).await?;
        let plain = object::open(repo.keyring(), "prune plan", &meta.key, &bytes)?;
        let plan: PrunePlan = serde_json::from_slice(&plain).map_err(|e| RepoError::corrupt(&meta.key, e))?;
        plans.push((meta.key, plan));
    }
    Ok(plans)
}

/// Every blob (trees and data) the snapshots that exist now refer to.
async fn referenced(repo: &Repository, report: &mut PruneReport) -> Result<HashSet<BlobId>, RepoError> {
    let mut used = HashSet::new();
    for (_, snapshot) in repo.snapshots().await? {
        report.snapshots += 1;
        let mut stack = vec![snapshot.tree];
        while let Some(tree_id) = stack.pop() {
            if !used.insert(tree_id) {
                continue;
            }
            // A tree that cannot be read keeps everything: never delete on doubt.
            let tree = repo.load_tree(&tree_id).await?;
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

/// One prune run at `now`: sweep what was marked at least `grace` ago and
/// is still unreferenced, then mark what is unreferenced now.
#[tracing::instrument(skip_all)]
pub async fn prune(repo: &Repository, grace: chrono::Duration, now: DateTime<Utc>) -> Result<PruneReport, RepoError> {
    let mut report = PruneReport::default();
    repo.reload_index().await?;
    let used = referenced(repo, &mut report).await?;
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

    let plans = load_plans(repo).await?;
    let mut planned: HashSet<PackId> = HashSet::new();
    let mut doomed: HashSet<PackId> = HashSet::new();
    let mut done_plans = Vec::new();
    for (key, plan) in &plans {
        let ripe = plan.marked + grace <= now;
        for id in &plan.packs {
            match packs.get(id) {
                // Gone already (an earlier sweep, or another coordinator's).
                None => {}
                Some((_, _, true)) => report.revived_packs += 1,
                Some((_, _, false)) if ripe => {
                    doomed.insert(*id);
                }
                Some((_, _, false)) => {
                    report.waiting_packs += 1;
                    planned.insert(*id);
                }
            }
        }
        if ripe {
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
        let sealed = object::seal(repo.keyring(), "prune plan", payload, repo.config().compression_level)?;
        repo.store().put(&plan_key(now), sealed.into()).await?;
    }
    repo.reload_index().await?;
    tracing::info!(?report, "prune done");
    Ok(report)
}

/// Rewrites every index object that lists a doomed pack without it: the
/// rest of its packs go into one new index object, written before the old
/// ones are deleted. Returns how many were rewritten.
async fn drop_from_indexes(repo: &Repository, doomed: &HashSet<PackId>) -> Result<u64, RepoError> {
    let mut keep: Vec<IndexedPack> = Vec::new();
    let mut rewritten = Vec::new();
    for meta in repo.store().list(INDEX_PREFIX).await? {
        let file = repo.read_index_object(&meta.key).await?;
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
