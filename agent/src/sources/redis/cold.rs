//! A Redis member with no server of its own running: it stands by on the
//! repository, as far behind the primary as the primary's newest snapshot
//! (the snapshot's replication offset is its position), and when it is
//! promoted its agent restores that snapshot and starts `redis-server` on
//! it. For a region that keeps no replica of a cache that can be rebuilt,
//! where a recovery point of the last snapshot is enough.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::ops::retention::source_tag;
use lifeboat_common::repo::{Repository, SnapshotId};
use serde::Deserialize;

use super::RedisError;
use super::endpoint::HostPort;
use super::restore::{StartOptions, Started, restore_redis, start_and_check};
use crate::progress::Progress;
use crate::sources::newest_of;

/// `[source.member.cold]`: where a promoted member's server is rebuilt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdConfig {
    /// The server's directory: the snapshot is restored here and
    /// `redis-server` started on it (as the directory's owner).
    pub dir: PathBuf,
    /// The `redis-server` program.
    #[serde(default = "default_redis_server")]
    pub redis_server: PathBuf,
    /// How long loading the snapshot may take.
    #[serde(default = "default_load_timeout", deserialize_with = "lifeboat_common::policy::human_duration")]
    pub load_timeout: Duration,
}

fn default_redis_server() -> PathBuf {
    "redis-server".into()
}

fn default_load_timeout() -> Duration {
    Duration::from_secs(600)
}

/// The newest snapshot of `primary` (`HOST/SOURCE`) in the repository.
pub async fn newest_snapshot(repo: &Repository, primary: &str) -> Result<Option<(SnapshotId, Snapshot)>, RedisError> {
    let Some((host, source)) = primary.split_once('/') else { return Ok(None) };
    let snapshots = repo.snapshots().await?;
    Ok(newest_of(snapshots.iter(), host, &source_tag(source)).filter(|(_, s)| s.redis.is_some()).cloned())
}

/// Restores `snapshot` into the configured directory and starts a server
/// on it listening on `addr`; returns the server once its keys were
/// checked against the snapshot's.
pub async fn bring_up(
    repo: &Repository,
    (id, snapshot): &(SnapshotId, Snapshot),
    config: &ColdConfig,
    addr: &HostPort,
) -> Result<Started, RedisError> {
    let Some(capture) = &snapshot.redis else {
        return Err(RedisError::Usage(format!("snapshot {} is not of Redis", id.short())));
    };
    // The snapshot was written by another agent after this one opened the repository.
    repo.reload_index().await?;
    restore_redis(repo, id, snapshot, &config.dir, Arc::new(Progress::default())).await?;
    let opts = StartOptions {
        redis_server: config.redis_server.clone(),
        bind: addr.host.clone(),
        port: addr.port,
        timeout: config.load_timeout,
    };
    start_and_check(&config.dir, capture, &opts).await
}
