//! A drill's recovery of Redis: the newest snapshot the host made of the
//! source (`DrillPlan::newest_snapshot`), its RDB restored into a scratch
//! directory, a server started on it on a free port, and its key counts
//! checked against the capture.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_common::repo::format::drill::Check;
use lifeboat_common::repo::format::snapshot::RedisCapture;
use tokio::sync::Mutex;

use super::endpoint::HostPort;
use super::restore::{Running, StartOptions, compare_keyspace, restore_redis, start};
use super::server::Server;
use crate::sources::rehearsal::{DrillPlan, Recovered, Scratch};
use crate::sources::{RestoreContext, SourceError};

/// Restores the RDB into `scratch.dir/redis` and starts a server on it.
pub async fn recover(
    ctx: RestoreContext,
    plan: &DrillPlan,
    scratch: Scratch,
) -> Result<Box<dyn Recovered>, SourceError> {
    let capture = plan
        .manifest
        .redis
        .clone()
        .ok_or_else(|| SourceError::Request(format!("snapshot {} is not of Redis", plan.snapshot.short())))?;
    let dir = scratch.dir.join("redis");
    let started = std::time::Instant::now();
    let restored = restore_redis(&ctx.repo, &plan.snapshot, &plan.manifest, &dir, ctx.progress)
        .await
        .map_err(SourceError::kind)?;
    let restore = started.elapsed();
    let opts = StartOptions {
        redis_server: "redis-server".into(),
        bind: "127.0.0.1".into(),
        port: scratch.port,
        timeout: scratch.timeout,
    };
    let Running { pid, addr, server, load_seconds, .. } = start(&dir, &opts).await.map_err(SourceError::kind)?;
    Ok(Box::new(RedisRecovered {
        pid,
        addr,
        server: Mutex::new(server),
        capture,
        restore,
        load: Duration::from_secs_f64(load_seconds),
        summary: format!(
            "Redis snapshot {} ({} RDB bytes) restored and loaded by redis-server pid {pid}",
            plan.snapshot.short(),
            restored.bytes
        ),
        point: plan.manifest.time,
    }))
}

/// A drill's running copy of a Redis server.
struct RedisRecovered {
    pid: u32,
    addr: HostPort,
    server: Mutex<Server>,
    capture: RedisCapture,
    restore: Duration,
    load: Duration,
    summary: String,
    point: DateTime<Utc>,
}

#[async_trait::async_trait]
impl Recovered for RedisRecovered {
    fn summary(&self) -> String {
        self.summary.clone()
    }

    fn phases(&self) -> Vec<(&'static str, Duration)> {
        vec![("restore", self.restore), ("replay", self.load)]
    }

    fn recovered_point(&self) -> Option<DateTime<Utc>> {
        Some(self.point)
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("REDIS_HOST".into(), self.addr.host.clone()),
            ("REDIS_PORT".into(), self.addr.port.to_string()),
            ("REDIS_URL".into(), format!("redis://{}", self.addr)),
        ]
    }

    async fn check(&self) -> Vec<Check> {
        let mut server = self.server.lock().await;
        let now = match server.keyspace().await {
            Ok(k) => k,
            Err(e) => return vec![Check::failed("connection", e.to_string())],
        };
        let keys: u64 = now.iter().map(|d| d.keys).sum();
        let mut checks = vec![Check::passed("connection", format!("redis-server at {} answers", self.addr))];
        checks.push(match compare_keyspace(&self.capture.keyspace, &now) {
            Ok(remarks) if remarks.is_empty() => {
                Check::passed("key counts", format!("{keys} keys, as many in each database as at capture"))
            }
            Ok(remarks) => Check::passed("key counts", format!("{keys} keys; {}", remarks.join("; "))),
            Err(e) => Check::failed("key counts", e.to_string()),
        });
        checks
    }

    async fn stop(&self) -> Result<(), String> {
        // A scratch copy: nothing of it is worth a save on the way out.
        let pid = rustix::process::Pid::from_raw(self.pid as i32).ok_or("no pid")?;
        match rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(format!("stopping redis-server pid {}: {e}", self.pid)),
        }
    }
}
