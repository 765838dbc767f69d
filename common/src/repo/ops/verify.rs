//! `verify`: is every referenced object there, and (with `read_data`) intact?

use crate::repo::format::layout::{INDEX_KIND, SNAPSHOT_KIND, WAL_KIND};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use crate::repo::engine::repository::{Damaged, Repository};
use crate::repo::error::RepoError;
use crate::repo::format::id::{BlobId, PackId};
use crate::repo::format::layout::{INDEX_PREFIX, PACK_PREFIXES, SNAPSHOTS_PREFIX, WAL_PREFIX};
use crate::repo::format::object;
use crate::repo::format::pack::{open_blob, read_header};
use crate::repo::format::tree::NodeKind;
use crate::repo::ops::prune::load_plans;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Snapshots walked.
    pub snapshots: u64,
    /// Distinct trees read.
    pub trees: u64,
    /// Indexed packs checked for presence and size.
    pub packs: u64,
    /// Blobs decrypted and hashed (with `read_data`).
    pub blobs_read: u64,
    /// Bytes downloaded (with `read_data`).
    pub bytes_read: u64,
    /// WAL objects authenticated (with `read_data`).
    pub wal_objects: u64,
    /// Packs in the store that no index lists (left by an interrupted
    /// backup; harmless, reclaimed by prune).
    pub unindexed_packs: u64,
    /// Every problem, each naming the object involved.
    pub problems: Vec<String>,
    /// What is sound but worth knowing (a repository not yet migrated).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the repository. Problems are collected, not returned as errors,
/// so one bad object does not hide the others.
#[tracing::instrument(skip_all, fields(read_data))]
pub async fn verify(
    repo: &Repository,
    read_data: bool,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<VerifyReport, RepoError> {
    let mut report = VerifyReport::default();
    if repo.keyring().object_format < 2 {
        report.notes.push(
            "repository format 1: indexes, snapshots and WAL files are not bound to their names; `lifeboat repo migrate` binds them"
                .into(),
        );
    }
    // Unreadable index objects were found when the repository was opened.
    let index_problems = repo.index_problems();
    report.problems.extend(index_problems.iter().map(|d| d.error.clone()));
    report.problems.extend(misplaced(repo, INDEX_PREFIX, INDEX_KIND, &index_problems).await?);
    let plans = load_plans(repo).await?;
    report.problems.extend(plans.damaged.iter().map(|d| d.error.clone()));

    // Every indexed pack exists with the size the index records.
    let mut stored: HashMap<String, u64> = HashMap::new();
    for prefix in PACK_PREFIXES {
        stored.extend(repo.store().list(prefix).await?.into_iter().map(|m| (m.key, m.size)));
    }
    let indexed: Vec<(PackId, String, u64)> = repo.index().packs().iter().map(|p| (p.id, p.key(), p.size)).collect();
    let indexed_keys: HashSet<&str> = indexed.iter().map(|(_, key, _)| key.as_str()).collect();
    report.unindexed_packs = stored.keys().filter(|k| !indexed_keys.contains(k.as_str())).count() as u64;
    let mut present = Vec::new();
    for (id, key, size) in &indexed {
        report.packs += 1;
        match stored.get(key) {
            None => report.problems.push(format!("pack {key} is missing")),
            Some(&s) if s != *size => {
                report.problems.push(format!("pack {key} is {s} bytes, the index says {size} (truncated or altered)"))
            }
            Some(_) => present.push((*id, key.clone())),
        }
    }

    walk_snapshots(repo, &mut report).await?;

    if read_data {
        read_packs(repo, present, &mut report, on_bytes.clone()).await?;
        read_wal(repo, &mut report, on_bytes).await?;
    }
    Ok(report)
}

/// For each object that cannot be read, whether it is another object of
/// its kind stored under the wrong name (it opens under that name).
async fn misplaced(repo: &Repository, prefix: &str, kind: &str, damaged: &[Damaged]) -> Result<Vec<String>, RepoError> {
    if damaged.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = repo.store().list(prefix).await?.into_iter().map(|m| m.key).collect();
    let mut found = Vec::new();
    for d in damaged {
        let Ok(bytes) = repo.store().get(&d.key).await else { continue };
        let other =
            keys.iter().filter(|k| **k != d.key).find(|k| object::open(repo.keyring(), kind, k, &bytes).is_ok());
        if let Some(real) = other {
            found.push(format!("{}: holds the object named {real} (a copy stored under the wrong name)", d.key));
        }
    }
    Ok(found)
}

/// Walks every snapshot's trees; every referenced blob must be indexed.
async fn walk_snapshots(repo: &Repository, report: &mut VerifyReport) -> Result<(), RepoError> {
    let mut seen_trees: HashSet<BlobId> = HashSet::new();
    let list = repo.snapshot_list().await?;
    report.problems.extend(list.damaged.iter().map(|d| d.error.clone()));
    report.problems.extend(misplaced(repo, SNAPSHOTS_PREFIX, SNAPSHOT_KIND, &list.damaged).await?);
    for (sid, snap) in list.good {
        report.snapshots += 1;
        let mut stack = vec![(snap.tree, String::from("/"))];
        while let Some((tree_id, path)) = stack.pop() {
            if !seen_trees.insert(tree_id) {
                continue;
            }
            report.trees += 1;
            let tree = match repo.load_tree(&tree_id).await {
                Ok(t) => t,
                Err(e) => {
                    report.problems.push(format!("snapshot {}: directory {path}: {e}", sid.short()));
                    continue;
                }
            };
            let index = repo.index();
            for node in &tree.nodes {
                let child = format!("{}{}", path, node.display_name());
                match &node.kind {
                    NodeKind::Dir { subtree } => stack.push((*subtree, format!("{child}/"))),
                    NodeKind::File { content } => {
                        for blob in content.iter().filter(|b| index.get(b).is_none()) {
                            report.problems.push(format!(
                                "snapshot {}: file {child}: blob {} is not in any index",
                                sid.short(),
                                blob.short()
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Downloads and authenticates every WAL object.
async fn read_wal(
    repo: &Repository,
    report: &mut VerifyReport,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(), RepoError> {
    let keys: Vec<String> = repo.store().list(WAL_PREFIX).await?.into_iter().map(|m| m.key).collect();
    let mut read = futures::stream::iter(keys)
        .map(|key| async move {
            let checked = match repo.store().get(&key).await {
                Ok(bytes) => {
                    let len = bytes.len() as u64;
                    object::open(repo.keyring(), WAL_KIND, &key, &bytes).map(|_| len).map_err(|e| e.to_string())
                }
                // Expired by retention since the listing.
                Err(e) if e.is_not_found() => Ok(0),
                Err(e) => Err(e.to_string()),
            };
            (key, checked)
        })
        .buffer_unordered(repo.store().parallelism());
    let mut damaged = Vec::new();
    while let Some((key, checked)) = read.next().await {
        match checked {
            Ok(len) => {
                on_bytes(len);
                report.bytes_read += len;
                report.wal_objects += 1;
            }
            Err(error) => {
                report.problems.push(error.clone());
                damaged.push(Damaged { key, error });
            }
        }
    }
    report.problems.extend(misplaced(repo, WAL_PREFIX, WAL_KIND, &damaged).await?);
    Ok(())
}

/// Downloads each pack, checks its hash, header and every blob.
async fn read_packs(
    repo: &Repository,
    packs: Vec<(PackId, String)>,
    report: &mut VerifyReport,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<(), RepoError> {
    let parallel = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let mut set = tokio::task::JoinSet::new();
    let mut queue = packs.into_iter();
    loop {
        while set.len() < parallel {
            let Some((id, key)) = queue.next() else { break };
            let (repo, on_bytes) = (repo.clone(), on_bytes.clone());
            set.spawn(async move {
                let bytes = match repo.store().get(&key).await {
                    Ok(b) => b,
                    Err(e) => return (0, 0, vec![e.to_string()]),
                };
                on_bytes(bytes.len() as u64);
                let len = bytes.len() as u64;
                let checked = tokio::task::spawn_blocking(move || check_pack(&repo, &id, &key, &bytes)).await;
                match checked {
                    Ok((blobs, problems)) => (len, blobs, problems),
                    Err(e) => (len, 0, vec![format!("checking pack {id}: {e}")]),
                }
            });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let (bytes, blobs, problems) = done.unwrap_or_else(|e| (0, 0, vec![format!("verify task failed: {e}")]));
        report.bytes_read += bytes;
        report.blobs_read += blobs;
        report.problems.extend(problems);
    }
    Ok(())
}

fn check_pack(repo: &Repository, id: &PackId, key: &str, bytes: &[u8]) -> (u64, Vec<String>) {
    let mut problems = Vec::new();
    if blake3::hash(bytes).as_bytes() != &id.0 {
        problems.push(format!("pack {key}: content does not match its id (altered on storage)"));
    }
    let (seal, blobs) = match read_header(repo.keyring(), key, bytes) {
        Ok(h) => h,
        Err(e) => {
            problems.push(e.to_string());
            return (0, problems);
        }
    };
    let mut checked = 0;
    for blob in &blobs {
        let r = blob.range();
        match open_blob(repo.keyring(), &seal, blob, &bytes[r.start as usize..r.end as usize], key) {
            Ok(_) => checked += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    (checked, problems)
}

/// What [`check_snapshot`] found.
#[derive(Debug, Default)]
pub struct SnapshotCheck {
    /// Distinct trees read (each authenticated).
    pub trees: u64,
    /// Distinct packs the snapshot's blobs live in, each checked present.
    pub packs: u64,
    /// Packs read whole and checked blob by blob.
    pub packs_read: u64,
    /// Bytes of those.
    pub bytes_read: u64,
    /// Every problem, each naming the object involved.
    pub problems: Vec<String>,
}

/// Checks what a restore of one snapshot needs, before it starts: every
/// tree read and authenticated, every pack holding its files' blobs present
/// at its indexed size, and `sample` of those packs (chosen at random with
/// `seed`) read whole, hash, header and blobs.
#[tracing::instrument(skip_all, fields(sample))]
pub async fn check_snapshot(
    repo: &Repository,
    snapshot: &crate::repo::format::snapshot::Snapshot,
    sample: u32,
    seed: u64,
) -> Result<SnapshotCheck, RepoError> {
    use rand::SeedableRng;

    let mut check = SnapshotCheck::default();
    let mut seen_trees: HashSet<BlobId> = HashSet::new();
    let mut packs: HashMap<PackId, (String, u64)> = HashMap::new();
    let mut stack = vec![(snapshot.tree, String::from("/"))];
    while let Some((tree_id, path)) = stack.pop() {
        if !seen_trees.insert(tree_id) {
            continue;
        }
        check.trees += 1;
        let tree = match repo.load_tree(&tree_id).await {
            Ok(t) => t,
            Err(e) => {
                check.problems.push(format!("directory {path}: {e}"));
                continue;
            }
        };
        let index = repo.index();
        if let Some(at) = index.get(&tree_id) {
            packs.entry(at.pack.id).or_insert_with(|| (at.pack.key(), at.pack.size));
        }
        for node in &tree.nodes {
            let child = format!("{path}{}", node.display_name());
            match &node.kind {
                NodeKind::Dir { subtree } => stack.push((*subtree, format!("{child}/"))),
                NodeKind::File { content } => {
                    for blob in content {
                        match index.get(blob) {
                            Some(at) => {
                                packs.entry(at.pack.id).or_insert_with(|| (at.pack.key(), at.pack.size));
                            }
                            None => {
                                check.problems.push(format!("file {child}: blob {} is not in any index", blob.short()))
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    check.packs = packs.len() as u64;

    let mut present = Vec::new();
    let mut heads = futures::stream::iter(packs)
        .map(|(id, (key, size))| async move { (id, key.clone(), size, repo.store().head(&key).await) })
        .buffer_unordered(repo.store().parallelism());
    while let Some((id, key, size, found)) = heads.next().await {
        match found {
            Ok(s) if s == size => present.push((id, key)),
            Ok(s) => {
                check.problems.push(format!("pack {key} is {s} bytes, the index says {size} (truncated or altered)"))
            }
            Err(e) if e.is_not_found() => check.problems.push(format!("pack {key} is missing")),
            Err(e) => check.problems.push(format!("pack {key}: {e}")),
        }
    }
    drop(heads);
    // Sorted first, so the seed alone decides which are read.
    present.sort_by(|a, b| a.1.cmp(&b.1));
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let picked = rand::seq::index::sample(&mut rng, present.len(), (sample as usize).min(present.len()));
    let chosen: Vec<(PackId, String)> = picked.into_iter().map(|i| present[i].clone()).collect();
    check.packs_read = chosen.len() as u64;
    let mut read = VerifyReport::default();
    read_packs(repo, chosen, &mut read, Arc::new(|_| {})).await?;
    check.bytes_read = read.bytes_read;
    check.problems.extend(read.problems);
    Ok(check)
}
