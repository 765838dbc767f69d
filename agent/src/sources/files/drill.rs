//! A drill's recovery of a file tree: the newest snapshot the host made
//! of the source (`DrillPlan::newest_snapshot`), restored whole into a
//! scratch directory or as a random sample of its files (the seed recorded
//! in the report), then every restored file cut and hashed again and
//! compared with the snapshot's content ids.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_common::repo::engine::chunker::Chunker;
use lifeboat_common::repo::format::drill::Check;
use lifeboat_common::repo::format::pack::blob_id;
use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::format::tree::NodeKind;
use lifeboat_common::repo::{BlobId, Repository};
use rand::SeedableRng;

use super::{FilesError, RestoreOptions, restore_files};
use crate::sources::rehearsal::{DrillPlan, Recovered, Scratch};
use crate::sources::{RestoreContext, SourceError};

/// A regular file of the snapshot: its path in it, and its content ids.
pub(crate) type Wanted = (PathBuf, Vec<BlobId>);

/// Every regular file of the snapshot, sorted by path.
pub(crate) async fn regular_files(repo: &Repository, root: BlobId) -> Result<Vec<Wanted>, FilesError> {
    let mut out = Vec::new();
    let mut stack = vec![(root, PathBuf::from("/"))];
    while let Some((tree, dir)) = stack.pop() {
        for node in repo.load_tree(&tree).await?.nodes {
            let path = dir.join(OsStr::from_bytes(&node.name));
            match node.kind {
                NodeKind::Dir { subtree } => stack.push((subtree, path)),
                NodeKind::File { content } => out.push((path, content)),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Restores the file at `path` of `snapshot` alone, to the same path below
/// `target` (a path that is not text cannot be named alone).
pub(crate) async fn restore_one(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    path: &Path,
    progress: Arc<crate::progress::Progress>,
) -> Result<PathBuf, String> {
    let text = path.to_str().ok_or_else(|| format!("{}: not a text path", path.display()))?;
    let relative = path.strip_prefix("/").unwrap_or(path);
    // A single file lands in its target directory by its name.
    let opts = RestoreOptions {
        target: target.join(relative.parent().unwrap_or(Path::new(""))),
        sub_path: Some(text.to_owned()),
        skip_xattrs: true,
        ..Default::default()
    };
    let report = restore_files(repo, snapshot, opts, progress).await.map_err(|e| format!("{}: {e}", path.display()))?;
    match report.failed.first() {
        Some(f) => Err(format!("{}: {f}", path.display())),
        None => Ok(target.join(relative)),
    }
}

/// Restores the snapshot (or a sample of its files) into `scratch.dir/files`.
pub async fn recover(
    ctx: RestoreContext,
    plan: &DrillPlan,
    scratch: Scratch,
) -> Result<Box<dyn Recovered>, SourceError> {
    let target = scratch.dir.join("files");
    let started = Instant::now();
    let all = regular_files(&ctx.repo, plan.manifest.tree).await.map_err(SourceError::kind)?;
    let (files, sampled) = match scratch.checks.sample_files {
        Some(n) if (n as usize) < all.len() => {
            // A file is restored alone by its path, written as text.
            let named: Vec<&Wanted> = all.iter().filter(|(p, _)| p.to_str().is_some()).collect();
            let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(scratch.seed);
            let count = (n as usize).min(named.len());
            let mut picked: Vec<usize> = rand::seq::index::sample(&mut rng, named.len(), count).into_vec();
            picked.sort_unstable();
            let files: Vec<Wanted> = picked.into_iter().map(|i| named[i].clone()).collect();
            for (path, _) in &files {
                restore_one(&ctx.repo, &plan.manifest, &target, path, ctx.progress.clone())
                    .await
                    .map_err(|e| SourceError::Request(format!("restoring {e}")))?;
            }
            (files, Some(all.len()))
        }
        _ => {
            let opts = RestoreOptions { target: target.clone(), ..Default::default() };
            let report = restore_files(&ctx.repo, &plan.manifest, opts, ctx.progress.clone())
                .await
                .map_err(SourceError::kind)?;
            if !report.failed.is_empty() {
                return Err(SourceError::Request(format!(
                    "{} entries could not be restored: {}",
                    report.failed.len(),
                    report.failed.join("; ")
                )));
            }
            (all, None)
        }
    };
    let summary = match sampled {
        Some(of) => format!(
            "snapshot {}: {} files of {of} restored, chosen at random with seed {}",
            plan.snapshot.short(),
            files.len(),
            scratch.seed
        ),
        None => format!("snapshot {}: all {} files restored", plan.snapshot.short(), files.len()),
    };
    Ok(Box::new(FilesRecovered {
        repo: ctx.repo,
        target,
        files: Arc::new(files),
        restore: started.elapsed(),
        summary,
        point: plan.manifest.time,
    }))
}

/// A drill's restored copy of a file tree.
struct FilesRecovered {
    repo: Repository,
    target: PathBuf,
    files: Arc<Vec<Wanted>>,
    restore: Duration,
    summary: String,
    point: DateTime<Utc>,
}

/// The files whose restored content differs from the snapshot's content
/// ids (each with why), and the bytes compared.
fn compare(repo: &Repository, target: &Path, files: &[Wanted]) -> (Vec<String>, u64) {
    let mut chunker = Chunker::new(repo.config().chunker, repo.keyring().chunker_seed);
    let (mut wrong, mut bytes) = (Vec::new(), 0u64);
    for (path, want) in files {
        let local = target.join(path.strip_prefix("/").unwrap_or(path));
        let file = match std::fs::File::open(&local) {
            Ok(f) => f,
            Err(e) => {
                wrong.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let mut got = Vec::with_capacity(want.len());
        let read = chunker.chunk_reader(file, |chunk: &[u8]| -> std::io::Result<()> {
            bytes += chunk.len() as u64;
            got.push(blob_id(repo.keyring(), chunk));
            Ok(())
        });
        match read {
            Err(e) => wrong.push(format!("{}: {e}", path.display())),
            Ok(()) if got != *want => {
                wrong.push(format!("{}: its content does not match the snapshot's", path.display()))
            }
            Ok(()) => {}
        }
    }
    (wrong, bytes)
}

#[async_trait::async_trait]
impl Recovered for FilesRecovered {
    fn summary(&self) -> String {
        self.summary.clone()
    }

    fn phases(&self) -> Vec<(&'static str, Duration)> {
        vec![("restore", self.restore)]
    }

    fn recovered_point(&self) -> Option<DateTime<Utc>> {
        Some(self.point)
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("LIFEBOAT_DRILL_FILES".into(), self.target.display().to_string())]
    }

    async fn check(&self) -> Vec<Check> {
        let (repo, target, files) = (self.repo.clone(), self.target.clone(), self.files.clone());
        let compared = tokio::task::spawn_blocking(move || compare(&repo, &target, &files)).await;
        let check = match compared {
            Ok((wrong, bytes)) if wrong.is_empty() => Check::passed(
                "content ids",
                format!(
                    "{} files ({bytes} bytes) read back: every chunk matches the snapshot's content id",
                    self.files.len()
                ),
            ),
            Ok((wrong, _)) => Check::failed(
                "content ids",
                format!(
                    "{} of {} files differ: {}",
                    wrong.len(),
                    self.files.len(),
                    wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
                ),
            ),
            Err(e) => Check::failed("content ids", format!("comparing panicked: {e}")),
        };
        vec![check]
    }

    async fn stop(&self) -> Result<(), String> {
        Ok(())
    }
}
