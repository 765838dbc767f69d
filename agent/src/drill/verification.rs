//! The fourth Monday's drill, backup verification: random snapshots of
//! each source, and random files of each, restored and compared byte for
//! byte with their blobs; stored objects shown to be ciphertext that opens
//! under the repository's keys and under no others; retention shown to
//! have run within the policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use lifeboat_common::crypto::{Keyring, MasterKey, Secret32};
use lifeboat_common::policy::drills::Drill;
use lifeboat_common::repo::format::compress::compress;
use lifeboat_common::repo::format::drill::{Check, SourceRun};
use lifeboat_common::repo::format::layout::{
    DATA_PREFIX, INDEX_KIND, INDEX_PREFIX, SNAPSHOT_KIND, SNAPSHOTS_PREFIX, TREE_PREFIX, WAL_KIND, WAL_PREFIX,
};
use lifeboat_common::repo::format::object;
use lifeboat_common::repo::format::pack::read_header;
use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::ops::retention::{expired, source_tag};
use lifeboat_common::repo::{Repository, SnapshotId};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::sources::files::drill::{Wanted, regular_files, restore_one};

use super::{DrillContext, Record};

/// Snapshots of each source restored in part, unless the drill says.
const SAMPLE_SNAPSHOTS: usize = 3;

/// Files of each of those restored, unless the drill says.
const SAMPLE_FILES: usize = 20;

/// Objects of each kind checked to be ciphertext.
const SAMPLE_OBJECTS: usize = 3;

/// How long past its retention a snapshot may linger before retention is
/// said not to run (it runs periodically, not at the instant).
const RETENTION_SLACK: chrono::Duration = chrono::Duration::days(1);

/// Runs the verification; its checks go into `record`, and one
/// [`SourceRun`] per source is returned.
pub(super) async fn verify(ctx: &DrillContext, drill: &Drill, dir: &Path, record: &mut Record) -> Vec<SourceRun> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(record.seed);
    let snapshots = match ctx.repo.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            record.error = Some(format!("listing the repository's snapshots: {e}"));
            return Vec::new();
        }
    };
    let mut runs = Vec::new();
    let restoring = std::time::Instant::now();
    for member in &drill.sources {
        let about = member.to_string();
        let tag = source_tag(&member.source);
        let of_source: Vec<&(SnapshotId, Snapshot)> =
            snapshots.iter().filter(|(_, s)| s.hostname == member.host && s.tags.contains(&tag)).collect();
        let kind = of_source.last().map(|(_, s)| s.source.clone()).unwrap_or_default();
        let mut run = SourceRun::new(about.clone(), kind);
        if of_source.is_empty() {
            record.checks.push(
                Check::failed("snapshot found", format!("{about} has no snapshot in the repository")).about(&about),
            );
            runs.push(run);
            continue;
        }
        let count = SAMPLE_SNAPSHOTS.min(of_source.len());
        let picked = rand::seq::index::sample(&mut rng, of_source.len(), count);
        let mut all_ok = true;
        let mut files_checked = 0;
        let mut names = Vec::new();
        for i in picked {
            let (id, snapshot) = of_source[i];
            let want = drill.checks.sample_files.map_or(SAMPLE_FILES, |n| n as usize);
            let target = dir.join(&member.source).join(id.short());
            let check = match restore_and_compare(&ctx.repo, snapshot, &target, want, &mut rng).await {
                Ok((n, total)) => {
                    files_checked += n;
                    Check::passed(
                        format!("random restore of snapshot {}", id.short()),
                        format!("{n} of its {total} files restored and compared byte for byte with their blobs"),
                    )
                }
                Err(e) => Check::failed(format!("random restore of snapshot {}", id.short()), e),
            };
            all_ok &= check.ok();
            record.checks.push(check.about(&about));
            names.push(id.short());
        }
        run.passed = all_ok;
        run.summary = format!(
            "{} of its {} snapshots sampled ({}), {files_checked} files compared",
            names.len(),
            of_source.len(),
            names.join(", ")
        );
        runs.push(run);
    }
    record.phase("restore", None, restoring.elapsed());

    let checking = std::time::Instant::now();
    record.checks.push(ciphertext(&ctx.repo, &mut rng).await);
    record.checks.push(wrong_master_key(&ctx.repo).await);
    record.checks.push(retention_ran(&snapshots, &ctx.retention_days));
    record.phase("checks", None, checking.elapsed());
    runs
}

/// Restores up to `want` random regular files of `snapshot` into `target`
/// and compares each with its blobs; the files compared and the total.
async fn restore_and_compare(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    want: usize,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<(usize, usize), String> {
    let files: Vec<Wanted> = regular_files(repo, snapshot.tree)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(p, _)| p.to_str().is_some())
        .collect();
    let total = files.len();
    let picked = rand::seq::index::sample(rng, total, want.min(total));
    for i in picked.iter() {
        let (path, content) = &files[i];
        let local = restore_one(repo, snapshot, target, path, Arc::default()).await?;
        let restored = std::fs::read(&local).map_err(|e| format!("{}: {e}", local.display()))?;
        let mut at = 0usize;
        for blob in content {
            let bytes = repo.read_blob(blob).await.map_err(|e| format!("{}: {e}", path.display()))?;
            if restored.get(at..at + bytes.len()) != Some(bytes.as_slice()) {
                return Err(format!(
                    "{}: the restored bytes at {at} differ from blob {}",
                    path.display(),
                    blob.short()
                ));
            }
            at += bytes.len();
        }
        if at != restored.len() {
            return Err(format!("{}: {} bytes restored, its blobs hold {at}", path.display(), restored.len()));
        }
    }
    Ok((picked.len(), total))
}

/// The repository's keyring with every data key's secret replaced: the
/// same key ids, so an object names a key it has, and only the
/// authentication of its ciphertext can refuse it.
fn impostor(keyring: &Keyring) -> Result<Keyring, String> {
    let mut wrong = keyring.clone();
    for k in &mut wrong.data_keys {
        k.key = Secret32::random().map_err(|e| e.to_string())?;
    }
    Ok(wrong)
}

/// Random stored objects of each kind: ciphertext that opens under the
/// repository's keys, not under others with the same ids, and that does
/// not compress (plaintext and mere compression would).
async fn ciphertext(repo: &Repository, rng: &mut Xoshiro256PlusPlus) -> Check {
    let name = "stored objects are ciphertext";
    let wrong = match impostor(repo.keyring()) {
        Ok(k) => k,
        Err(e) => return Check::failed(name, e),
    };
    let mut checked = Vec::new();
    for (prefix, kind) in [
        (DATA_PREFIX, None),
        (TREE_PREFIX, None),
        (SNAPSHOTS_PREFIX, Some(SNAPSHOT_KIND)),
        (INDEX_PREFIX, Some(INDEX_KIND)),
        (WAL_PREFIX, Some(WAL_KIND)),
    ] {
        let listed = match repo.store().list(prefix).await {
            Ok(l) => l,
            Err(e) => return Check::failed(name, format!("listing {prefix}: {e}")),
        };
        let picked = rand::seq::index::sample(rng, listed.len(), SAMPLE_OBJECTS.min(listed.len()));
        for i in picked {
            let key = &listed[i].key;
            let bytes = match repo.store().get(key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Check::failed(name, format!("{key}: {e}")),
            };
            let (right, other) = match kind {
                None => (read_header(repo.keyring(), key, &bytes).is_ok(), read_header(&wrong, key, &bytes).is_ok()),
                Some(kind) => (
                    object::open(repo.keyring(), kind, key, &bytes).is_ok(),
                    object::open(&wrong, kind, key, &bytes).is_ok(),
                ),
            };
            if !right {
                return Check::failed(name, format!("{key} does not open under the repository's keys"));
            }
            if other {
                return Check::failed(name, format!("{key} opens under keys that are not the repository's"));
            }
            let squeezed = compress(&bytes, 3);
            if bytes.len() > 256 && squeezed.compressed {
                return Check::failed(
                    name,
                    format!(
                        "{key} compresses from {} to {} bytes: ciphertext would not",
                        bytes.len(),
                        squeezed.data.len()
                    ),
                );
            }
            checked.push(key.clone());
        }
    }
    if checked.is_empty() {
        return Check::failed(name, "the repository holds no object to check");
    }
    Check::passed(
        name,
        format!(
            "{} objects ({}) open only under the repository's keys and do not compress",
            checked.len(),
            checked.join(", ")
        ),
    )
}

/// A master key that is not the repository's opens nothing.
async fn wrong_master_key(repo: &Repository) -> Check {
    let name = "unreadable under a wrong key";
    let wrong = match MasterKey::generate() {
        Ok(k) => k,
        Err(e) => return Check::failed(name, e.to_string()),
    };
    match Repository::open(repo.store().clone(), &wrong).await {
        Ok(_) => Check::failed(name, "a freshly made master key opened the repository"),
        Err(e) => Check::passed(name, format!("a freshly made master key is refused: {e}")),
    }
}

/// No snapshot lingers past its schedule's retention by more than a day.
fn retention_ran(snapshots: &[(SnapshotId, Snapshot)], days: &HashMap<String, u32>) -> Check {
    let name = "retention ran within policy";
    if days.is_empty() {
        return Check::passed(name, "the policy keeps every snapshot (no schedule has retention_days)");
    }
    let overdue = expired(snapshots, days, Utc::now() - RETENTION_SLACK);
    if overdue.is_empty() {
        return Check::passed(
            name,
            format!(
                "none of {} snapshots is kept past its schedule's retention ({} schedules with retention_days)",
                snapshots.len(),
                days.len()
            ),
        );
    }
    let shown: Vec<String> = overdue.iter().take(5).map(SnapshotId::short).collect();
    Check::failed(
        name,
        format!(
            "{} snapshots are past their retention by more than a day (first: {}): retention is not running",
            overdue.len(),
            shown.join(", ")
        ),
    )
}
