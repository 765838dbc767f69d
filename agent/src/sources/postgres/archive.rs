//! Archiving ahead: PostgreSQL calls `archive_command` once per segment, one
//! at a time, and a process start plus an upload per 16 MiB cannot keep up
//! with a busy primary. So each call also pushes, in parallel, the next
//! segments PostgreSQL has marked ready (`pg_wal/archive_status/*.ready`),
//! and leaves a marker with each one's content hash in a local spool; when
//! PostgreSQL then asks for one of those, the call finds the marker, checks
//! the file still has that content, and returns at once.

use std::path::{Path, PathBuf};

use lifeboat_common::repo::Repository;

use super::PgError;
use super::wal::{Pushed, is_segment, push_hashed, wal_name};

/// Archives `path` and up to `ahead` more ready segments; `spool` holds the
/// markers of segments already pushed ahead.
#[tracing::instrument(skip(repo))]
pub async fn push_ahead(repo: &Repository, path: &Path, spool: &Path, ahead: usize) -> Result<Pushed, PgError> {
    let name = wal_name(path)?;
    let marker = spool.join(&name);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let (expected, identity) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
        // The same file, untouched since it was read for pushing (PostgreSQL
        // never writes a segment it has marked ready): nothing to read again.
        if !identity.is_empty() && file_identity(path).as_deref() == Some(identity) {
            let _ = std::fs::remove_file(&marker);
            return Ok(Pushed::AlreadyThere);
        }
        let expected = expected.to_owned();
        let content = tokio::fs::read(path).await.map_err(PgError::io("reading", path))?;
        let actual = tokio::task::spawn_blocking(move || blake3::hash(&content).to_hex().to_string())
            .await
            .map_err(|_| PgError::Usage("hashing a WAL file panicked".into()))?;
        let _ = std::fs::remove_file(&marker);
        if actual == expected {
            return Ok(Pushed::AlreadyThere);
        }
        // Changed since it was pushed ahead: push it the normal way (which
        // refuses it if the archive holds other content under this name).
    }

    let ready = ready_segments(path, &name, ahead);
    let mut jobs = tokio::task::JoinSet::new();
    for other in ready {
        let (repo, spool) = (repo.clone(), spool.to_owned());
        jobs.spawn(async move {
            // Best effort: a failure here is retried when PostgreSQL asks for it.
            // The identity is taken before the read, so a change during it shows.
            let identity = file_identity(&other).unwrap_or_default();
            if let Ok((_, digest)) = push_hashed(&repo, &other).await
                && let Some(n) = other.file_name()
                && std::fs::create_dir_all(&spool).is_ok()
            {
                let _ = std::fs::write(spool.join(n), format!("{} {identity}", digest.to_hex()));
            }
        });
    }
    let ours = push_hashed(repo, path).await.map(|(p, _)| p);
    while jobs.join_next().await.is_some() {}
    ours
}

/// A file's identity and last change (device, inode, size, change and
/// modification times in ns), which any write alters.
fn file_identity(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    Some(format!(
        "{}:{}:{}:{}:{}",
        m.dev(),
        m.ino(),
        m.size(),
        ns(m.ctime(), m.ctime_nsec()),
        ns(m.mtime(), m.mtime_nsec())
    ))
}

/// The next segments PostgreSQL has marked ready after `name`, oldest first.
fn ready_segments(path: &Path, name: &str, ahead: usize) -> Vec<PathBuf> {
    if ahead == 0 {
        return Vec::new();
    }
    let Some(pg_wal) = path.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ready")).map(str::to_owned))
        .filter(|n| n.as_str() != name && is_segment(n))
        .collect();
    names.sort();
    names.into_iter().take(ahead).map(|n| pg_wal.join(n)).collect()
}

/// The default spool for the cluster whose WAL directory holds `path`.
pub fn default_spool(path: &Path) -> PathBuf {
    let dir = path.parent().and_then(|d| std::fs::canonicalize(d).ok()).unwrap_or_default();
    let id = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    lifeboat_common::dirs::state_dir().join("archive-ahead").join(&id[..16])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lifeboat_common::crypto::MasterKey;
    use lifeboat_common::store::LocalStore;

    use super::*;
    use crate::sources::postgres::wal::{Restored, fetch};

    #[tokio::test]
    async fn ready_segments_are_pushed_ahead_and_later_calls_return_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("repo")));
        let repo = Repository::init(store, &MasterKey::generate().unwrap()).await.unwrap();
        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
        let names: Vec<String> = (1..=3).map(|i| format!("0000000100000000000000{i:02X}")).collect();
        for (i, n) in names.iter().enumerate() {
            std::fs::write(pg_wal.join(n), vec![i as u8; 4096]).unwrap();
            std::fs::write(pg_wal.join("archive_status").join(format!("{n}.ready")), b"").unwrap();
        }
        let spool = dir.path().join("spool");

        assert_eq!(push_ahead(&repo, &pg_wal.join(&names[0]), &spool, 8).await.unwrap(), Pushed::Stored);
        // The other two are in the repository already, each with a marker.
        for n in &names[1..] {
            assert_eq!(fetch(&repo, n, &dir.path().join("out")).await.unwrap(), Restored::Whole);
            assert!(spool.join(n).exists());
        }
        assert_eq!(push_ahead(&repo, &pg_wal.join(&names[1]), &spool, 0).await.unwrap(), Pushed::AlreadyThere);
        assert!(!spool.join(&names[1]).exists(), "a used marker is removed");

        // A file that changed after it was pushed ahead (later than the
        // kernel's coarse clock tick, as any real change is) is not waved through.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(pg_wal.join(&names[2]), vec![9u8; 4096]).unwrap();
        let err = push_ahead(&repo, &pg_wal.join(&names[2]), &spool, 0).await.unwrap_err();
        assert!(matches!(err, PgError::Conflict { .. }), "{err}");
    }
}
