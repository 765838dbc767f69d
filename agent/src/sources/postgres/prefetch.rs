//! Fetching ahead: PostgreSQL runs `restore_command` once per segment, one
//! at a time, so recovery would wait for one process start and one
//! download per 16 MiB. Each call therefore also fetches, in parallel, the
//! next segments into a spool beside `pg_wal` (same file system, so handing
//! one over is a rename), and later calls take them from there.
//!
//! Only whole segments are spooled: one streamed in part may still grow
//! while the streamer runs, so it is always read fresh.

use std::path::{Path, PathBuf};

use lifeboat_common::repo::Repository;

use super::PgError;
use super::wal::{self, is_segment, next_segment};

/// The spool for the cluster whose `restore_command` writes to `dest`
/// (`pg_wal/RECOVERYXLOG`), one per repository so two never mix.
pub fn spool_for(repo: &Repository, dest: &Path) -> PathBuf {
    let pg_wal = dest.parent().unwrap_or(Path::new("."));
    pg_wal.join("lifeboat-prefetch").join(&repo.config().id)
}

/// Restores WAL file `name` to `dest` like [`wal::fetch`], from the spool
/// when an earlier call fetched it ahead, and fetches up to `ahead` of the
/// following segments into `spool` meanwhile.
#[tracing::instrument(skip(repo))]
pub async fn fetch_ahead(
    repo: &Repository,
    name: &str,
    dest: &Path,
    spool: &Path,
    ahead: usize,
    segment_size: u64,
) -> Result<bool, PgError> {
    let spooled = spool.join(name);
    let from_spool = tokio::fs::rename(&spooled, dest).await.is_ok();
    if !is_segment(name) || ahead == 0 {
        return if from_spool { Ok(true) } else { wal::fetch(repo, name, dest).await };
    }
    forget_older(spool, name);

    // The window is the `ahead` segments after this one: those of it not
    // spooled yet (never further: each call would fetch `ahead` more, and
    // the spool would run on to the end of the archive).
    let mut wanted = Vec::new();
    let mut next = next_segment(name, segment_size);
    for _ in 0..ahead {
        let Some(n) = next else { break };
        if !spool.join(&n).exists() {
            wanted.push(n.clone());
        }
        next = next_segment(&n, segment_size);
    }
    // From the spool with most of the window still there: nothing to wait for.
    if from_spool && wanted.len() <= ahead / 2 {
        return Ok(true);
    }
    if !wanted.is_empty() {
        std::fs::create_dir_all(spool).map_err(PgError::io("creating", spool))?;
    }
    let mut jobs = tokio::task::JoinSet::new();
    for n in wanted {
        let (repo, target) = (repo.clone(), spool.join(&n));
        jobs.spawn(async move {
            // Best effort: a segment missing or failing here is fetched (and
            // its error reported) when PostgreSQL asks for it.
            if let Ok(Some(found)) = wal::read(&repo, &n).await
                && !found.partial
            {
                let _ = wal::write_whole(&target, &found.content).await;
            }
        });
    }
    let ours = if from_spool { Ok(true) } else { wal::fetch(repo, name, dest).await };
    while jobs.join_next().await.is_some() {}
    if let Ok(false) = ours {
        // The end of the archive: recovery is about to end, and whatever is
        // spooled will not be asked for.
        let _ = std::fs::remove_dir_all(spool);
    }
    ours
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

    #[tokio::test]
    async fn next_segments_are_spooled_and_handed_over_then_dropped_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Repository::init(store, &MasterKey::generate().unwrap()).await.unwrap();
        let size = 16 << 20;
        let names: Vec<String> = (1..=4).map(|i| format!("0000000100000000000000{i:02X}")).collect();
        for (i, n) in names[..3].iter().enumerate() {
            wal::push_content(&repo, n, vec![i as u8; 4096]).await.unwrap();
        }
        // The fourth is only streamed so far: never spooled.
        let key = wal::wal_key(&format!("{}{}", names[3], wal::STREAMING_SUFFIX)).unwrap();
        let (sealed, _) = wal::seal(&repo, &key, vec![3u8; 4096]).await.unwrap();
        repo.store().put(&key, sealed).await.unwrap();

        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(&pg_wal).unwrap();
        let dest = pg_wal.join("RECOVERYXLOG");
        let spool = spool_for(&repo, &dest);
        assert!(fetch_ahead(&repo, &names[0], &dest, &spool, 4, size).await.unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), vec![0u8; 4096]);
        assert!(spool.join(&names[1]).exists() && spool.join(&names[2]).exists());
        assert!(!spool.join(&names[3]).exists(), "a partial segment was spooled");

        // Handed over from the spool, content intact.
        assert!(fetch_ahead(&repo, &names[2], &dest, &spool, 4, size).await.unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), vec![2u8; 4096]);
        assert!(!spool.join(&names[1]).exists(), "a segment recovery moved past stays spooled");
        assert!(fetch_ahead(&repo, &names[3], &dest, &spool, 4, size).await.unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), vec![3u8; 4096]);

        let after = next_segment(&names[3], size).unwrap();
        assert!(!fetch_ahead(&repo, &after, &dest, &spool, 4, size).await.unwrap());
        assert!(!spool.exists(), "the spool outlived the end of the archive");
    }

    #[tokio::test]
    async fn the_window_moves_with_recovery_and_never_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Repository::init(store, &MasterKey::generate().unwrap()).await.unwrap();
        let names: Vec<String> = (1..=16).map(|i| format!("0000000100000000000000{i:02X}")).collect();
        for n in &names {
            wal::push_content(&repo, n, vec![7u8; 4096]).await.unwrap();
        }
        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(&pg_wal).unwrap();
        let dest = pg_wal.join("RECOVERYXLOG");
        let spool = spool_for(&repo, &dest);
        for n in &names[..8] {
            assert!(fetch_ahead(&repo, n, &dest, &spool, 4, 16 << 20).await.unwrap());
            let spooled = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
            assert!(spooled <= 4, "{spooled} segments spooled after {n}, for a window of 4");
        }
    }
}
