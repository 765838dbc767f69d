//! "On change" schedules (the seed's `configs: { on_change: true }`): the
//! paths a source covers are watched (inotify), and a burst of changes (an
//! editor's save, a deploy touching many files) becomes one trigger once it
//! has been quiet for the settling time. Reads are not changes: a backup
//! reading the files must not trigger the next one.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::FilesError;

/// Watches paths and reports settled bursts of changes.
pub struct ChangeWatcher {
    // Kept alive: dropping it stops the watching.
    _watcher: RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<Result<Vec<PathBuf>, String>>,
    settle: Duration,
}

impl std::fmt::Debug for ChangeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeWatcher").finish_non_exhaustive()
    }
}

impl ChangeWatcher {
    /// Watches `paths` (directories recursively) and reports changes once
    /// they have settled for `settle`.
    pub fn new(paths: &[PathBuf], settle: Duration) -> Result<Self, FilesError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let batch = match res {
                // Opening and reading (a backup, a grep) change nothing.
                Ok(event) if matches!(event.kind, EventKind::Access(_)) => return,
                Ok(event) => Ok(event.paths),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(batch);
        })
        .map_err(|e| FilesError::Usage(format!("cannot watch for changes: {e}")))?;
        for path in paths {
            watcher
                .watch(path, RecursiveMode::Recursive)
                .map_err(|e| FilesError::Usage(format!("cannot watch {} for changes: {e}", path.display())))?;
        }
        Ok(ChangeWatcher { _watcher: watcher, rx, settle })
    }

    /// The next settled burst: the paths that changed, sorted, each once.
    /// `None` once the watcher has stopped.
    pub async fn next(&mut self) -> Option<Result<Vec<PathBuf>, FilesError>> {
        let mut changed = BTreeSet::new();
        let mut batch = self.rx.recv().await?;
        // Gather events until the whole burst has been quiet for the settling time.
        loop {
            match batch {
                Ok(paths) => changed.extend(paths),
                Err(e) => return Some(Err(FilesError::Usage(format!("watching for changes: {e}")))),
            }
            match tokio::time::timeout(self.settle, self.rx.recv()).await {
                Ok(Some(next)) => batch = next,
                Ok(None) | Err(_) => break,
            }
        }
        Some(Ok(changed.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_changes_becomes_one_trigger_and_quiet_stays_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(conf.join("sites")).unwrap();
        let mut watcher = ChangeWatcher::new(std::slice::from_ref(&conf), Duration::from_millis(300)).unwrap();

        for i in 0..20 {
            std::fs::write(conf.join("sites").join(format!("site-{i}.conf")), format!("v{i}")).unwrap();
            std::fs::write(conf.join("main.conf"), format!("include {i}")).unwrap();
        }
        let changed = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap().unwrap();
        assert!(changed.contains(&conf.join("main.conf")), "{changed:?}");
        assert!(changed.iter().filter(|p| p.ends_with("main.conf")).count() == 1);
        // Nothing more until something changes again; reading is not changing.
        for i in 0..20 {
            std::fs::read(conf.join("sites").join(format!("site-{i}.conf"))).unwrap();
        }
        assert!(tokio::time::timeout(Duration::from_millis(900), watcher.next()).await.is_err());
        std::fs::write(conf.join("main.conf"), "again").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(5), watcher.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(changed, vec![conf.join("main.conf")]);
    }
}
