//! The leader applies the policy's retention to the repository now and
//! then: forgetting, WAL expiry and the two-phase prune. Followers do not
//! (two at once would still be safe: every step is idempotent and the
//! prune re-checks references before deleting).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::repo::engine::settings::{RepoArgs, RepoSettings};
use lifeboat_common::repo::ops::retention::apply;

use crate::core::{NodeRole, Shared};

/// Applies retention every `every` while this coordinator leads; the last
/// outcome is kept in `shared` for `status`.
pub async fn keep_applying(shared: Arc<Shared>, settings: RepoSettings, every: Duration, grace: Duration) {
    let spec = match RepoArgs::default().spec_with(settings, Path::new("[repository]")) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "retention is off: the repository settings are unusable");
            return;
        }
    };
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut repo = None;
    loop {
        tokio::time::sleep(every).await;
        if !matches!(*shared.role.borrow(), NodeRole::Leader { .. }) || shared.degraded().is_some() {
            continue;
        }
        if repo.is_none() {
            match spec.open().await {
                Ok((r, _stores)) => repo = Some(r),
                Err(e) => {
                    shared.set_retention(format!("failed: cannot open the repository: {e}"));
                    continue;
                }
            }
        }
        let Some(repo) = &repo else { continue };
        let days: HashMap<String, u32> =
            shared.policy().schedules.iter().filter_map(|s| s.retention_days.map(|d| (s.id(), d))).collect();
        let now = chrono::Utc::now();
        let outcome = match apply(repo, &days, now, grace, false).await {
            Ok(r) => {
                let p = r.prune.unwrap_or_default();
                format!(
                    "{}: forgot {} snapshots, deleted {} WAL objects, pruned {} packs ({} bytes), {} packs marked",
                    now.format("%Y-%m-%d %H:%M:%S"),
                    r.forgotten.len(),
                    r.wal_deleted,
                    p.deleted_packs,
                    p.deleted_bytes,
                    p.marked_packs + p.waiting_packs
                )
            }
            Err(e) => format!("{}: failed: {e}", now.format("%Y-%m-%d %H:%M:%S")),
        };
        tracing::info!(outcome, "retention applied");
        shared.set_retention(outcome);
    }
}
