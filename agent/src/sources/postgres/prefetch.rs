//! Fetching ahead: PostgreSQL runs `restore_command` once per segment, one
//! at a time, so recovery would wait for one process start and one
//! download per 16 MiB. A call that restored a whole segment and whose
//! window (the segments after it) is more than half missing from the spool
//! in `pg_wal` therefore starts a prefetcher (the same command with
//! `--fill`), which it does not wait for: that process fetches the window
//! into the spool, a few at a time, and later calls take their segment
//! from there (same file system, so handing one over is a rename). A
//! prefetcher runs only while it holds the spool's lock file, so one at a
//! time; recovery never waits on one. At the end of the archive (a segment
//! missing or streamed in part) none is started: a standby that has caught
//! up asks every second for what is not there yet.
//!
//! Only whole segments are spooled: one streamed in part may still grow
//! while the streamer runs, so it is always read fresh.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use lifeboat_common::repo::Repository;

use super::PgError;
use super::wal::{self, Restored, is_segment, next_segment};

/// Segments a prefetcher fetches at once.
const PARALLEL: usize = 4;

/// The spool for the cluster whose `restore_command` writes to `dest`
/// (`pg_wal/RECOVERYXLOG`), one per repository so two never mix.
pub fn spool_for(repo: &Repository, dest: &Path) -> PathBuf {
    let pg_wal = dest.parent().unwrap_or(Path::new("."));
    pg_wal.join("lifeboat-prefetch").join(&repo.config().id)
}

/// Restores WAL file `name` to `dest` like [`wal::fetch`], from the spool
/// when a prefetcher fetched it ahead. At the end of the archive the spool
/// is removed: nothing in it will be asked for.
#[tracing::instrument(skip(repo))]
pub async fn fetch_spooled(repo: &Repository, name: &str, dest: &Path, spool: &Path) -> Result<Restored, PgError> {
    if tokio::fs::rename(spool.join(name), dest).await.is_ok() {
        return Ok(Restored::Whole);
    }
    if is_segment(name) {
        forget_older(spool, name);
    }
    let fetched = wal::fetch(repo, name, dest).await;
    if let Ok(Restored::Missing) = fetched
        && is_segment(name)
        && spool.exists()
    {
        let _ = std::fs::remove_dir_all(spool);
        if let Some(parent) = spool.parent() {
            // Empty unless another repository's spool is there.
            let _ = std::fs::remove_dir(parent);
        }
    }
    fetched
}

/// The segments of `name`'s window (the `ahead` after it, never further:
/// the spool must not run on to the end of the archive) not spooled yet.
fn missing_ahead(spool: &Path, name: &str, ahead: usize, segment_size: u64) -> Vec<String> {
    if !is_segment(name) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    let mut next = next_segment(name, segment_size);
    for _ in 0..ahead {
        let Some(n) = next else { break };
        if !spool.join(&n).exists() {
            missing.push(n.clone());
        }
        next = next_segment(&n, segment_size);
    }
    missing
}

/// Whether a call that restored segment `name` whole should start a
/// prefetcher: more than half of its window is missing from the spool and
/// none runs. Makes the spool for it.
pub fn wants_fill(spool: &Path, name: &str, ahead: usize, segment_size: u64) -> bool {
    if ahead == 0 || missing_ahead(spool, name, ahead, segment_size).len() <= ahead / 2 {
        return false;
    }
    std::fs::create_dir_all(spool).is_ok() && lock(spool).is_some()
}

/// The spool's lock, when no prefetcher holds it.
fn lock(spool: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(spool.join(LOCK_FILE)).ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(file)
}

/// The spool's lock file.
const LOCK_FILE: &str = ".lock";

/// The prefetcher: fetches what `name`'s window misses into the spool,
/// [`PARALLEL`] at a time. Returns at once when the spool is gone (the
/// end of the archive) or another holds its lock. Best effort: a segment
/// that is missing or fails here is fetched, and its error reported, when
/// PostgreSQL asks for it.
pub async fn fill(repo: &Repository, spool: &Path, name: &str, ahead: usize, segment_size: u64) {
    // Never made again once removed at the end of the archive.
    if !spool.is_dir() {
        return;
    }
    let Some(_held) = lock(spool) else { return };
    let wanted = missing_ahead(spool, name, ahead, segment_size);
    futures::stream::iter(wanted)
        .for_each_concurrent(PARALLEL, |n| async move {
            let target = spool.join(&n);
            // Recovery may have taken it meanwhile, or ended and removed the spool.
            if let Ok(Some(found)) = wal::read(repo, &n).await
                && !found.partial
                && spool.is_dir()
            {
                let _ = wal::write_whole(&target, &found.content).await;
            }
        })
        .await;
}

/// Removes spooled segments before `name` on its timeline: recovery has
/// moved past them (a different timeline's are left for it to ask for).
fn forget_older(spool: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if is_segment(n) && n[..8] == name[..8] && n < name {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lifeboat_common::crypto::MasterKey;
    use lifeboat_common::store::LocalStore;

    use super::*;

    async fn repo_with(dir: &Path, count: u8) -> (Repository, Vec<String>) {
        let store = Arc::new(LocalStore::new(dir.join("repo")));
        let repo = Repository::init(store, &MasterKey::generate().unwrap()).await.unwrap();
        let names: Vec<String> = (1..=count).map(|i| format!("0000000100000000000000{i:02X}")).collect();
        for (i, n) in names.iter().enumerate() {
            wal::push_content(&repo, n, vec![i as u8; 4096]).await.unwrap();
        }
        (repo, names)
    }

    #[tokio::test]
    async fn the_window_is_filled_and_handed_over_then_dropped_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, names) = repo_with(dir.path(), 3).await;
        let size = 16 << 20;
        // The fourth is only streamed so far: never spooled.
        let fourth = "000000010000000000000004";
        let key = wal::wal_key(&format!("{fourth}{}", wal::STREAMING_SUFFIX)).unwrap();
        let (sealed, _) = wal::seal(&repo, &key, vec![3u8; 4096]).await.unwrap();
        repo.store().put(&key, sealed).await.unwrap();

        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(&pg_wal).unwrap();
        let dest = pg_wal.join("RECOVERYXLOG");
        let spool = spool_for(&repo, &dest);
        assert!(wants_fill(&spool, &names[0], 4, size));
        fill(&repo, &spool, &names[0], 4, size).await;
        assert!(spool.join(&names[1]).exists() && spool.join(&names[2]).exists());
        assert!(!spool.join(fourth).exists(), "a partial segment was spooled");
        assert!(!wants_fill(&spool, &names[0], 4, size), "half the window is there");

        assert_eq!(fetch_spooled(&repo, &names[0], &dest, &spool).await.unwrap(), Restored::Whole);
        assert_eq!(std::fs::read(&dest).unwrap(), vec![0u8; 4096]);
        // Handed over from the spool, content intact; those passed are dropped.
        assert_eq!(fetch_spooled(&repo, &names[2], &dest, &spool).await.unwrap(), Restored::Whole);
        assert_eq!(std::fs::read(&dest).unwrap(), vec![2u8; 4096]);
        assert_eq!(fetch_spooled(&repo, fourth, &dest, &spool).await.unwrap(), Restored::Partial);
        assert_eq!(std::fs::read(&dest).unwrap(), vec![3u8; 4096]);
        assert!(!spool.join(&names[1]).exists(), "a segment recovery moved past stays spooled");

        let after = next_segment(fourth, size).unwrap();
        assert_eq!(fetch_spooled(&repo, &after, &dest, &spool).await.unwrap(), Restored::Missing);
        assert!(!spool.exists(), "the spool outlived the end of the archive");
        // A prefetcher started before the end does not make it again.
        fill(&repo, &spool, &names[0], 4, size).await;
        assert!(!spool.exists() && !pg_wal.join("lifeboat-prefetch").exists());
    }

    #[tokio::test]
    async fn the_window_moves_with_recovery_never_runs_on_and_one_fills_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, names) = repo_with(dir.path(), 16).await;
        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(&pg_wal).unwrap();
        let dest = pg_wal.join("RECOVERYXLOG");
        let spool = spool_for(&repo, &dest);
        let size = 16 << 20;
        for n in &names[..8] {
            assert_eq!(fetch_spooled(&repo, n, &dest, &spool).await.unwrap(), Restored::Whole);
            if wants_fill(&spool, n, 4, size) {
                fill(&repo, &spool, n, 4, size).await;
            }
            let spooled = std::fs::read_dir(&spool)
                .map(|d| d.flatten().filter(|e| e.file_name() != ".lock").count())
                .unwrap_or(0);
            assert!(spooled <= 4, "{spooled:?} segments spooled after {n}, for a window of 4");
        }
        // A prefetcher holding the lock: another returns at once, fetching nothing.
        let held = std::fs::File::open(spool.join(".lock")).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        let before = std::fs::read_dir(&spool).unwrap().count();
        assert!(!wants_fill(&spool, &names[11], 4, size), "a second prefetcher was wanted");
        fill(&repo, &spool, &names[11], 4, size).await;
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), before);
    }
}
