//! A drill's recovery of Redis: the newest snapshot the host made of the
//! source (`DrillPlan::newest_snapshot`), its RDB restored into a scratch
//! directory, a server started on it on a free port, and its key counts
//! checked against the capture. A failover drill instead clones the
//! replica the source names (an RDB over the replication protocol, as a
//! capture asks for one) and starts it as a master of its own.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_common::repo::format::drill::Check;
use lifeboat_common::repo::format::snapshot::RedisKeyspace;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::RedisError;
use super::capture::RDB_FILE;
use super::endpoint::{Connection, HostPort};
use super::rdb::RdbCheck;
use super::replication::RdbLink;
use super::restore::{Running, StartOptions, compare_keyspace, restore_redis, start};
use super::sentinel::locate;
use super::server::{Role, Server};
use crate::sources::rehearsal::{CLONE_PHASE, ClonePlan, DrillPlan, Recovered, Scratch};
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
    let running = start(&dir, &start_options(&scratch)).await.map_err(SourceError::kind)?;
    let summary = format!(
        "Redis snapshot {} ({} RDB bytes) restored and loaded by redis-server pid {}",
        plan.snapshot.short(),
        restored.bytes,
        running.pid
    );
    Ok(Box::new(RedisRecovered::new(running, capture.keyspace, "restore", restore, summary, Some(plan.manifest.time))))
}

/// How a drill's server starts: on 127.0.0.1 at the drill's port.
fn start_options(scratch: &Scratch) -> StartOptions {
    StartOptions {
        redis_server: "redis-server".into(),
        bind: "127.0.0.1".into(),
        port: scratch.port,
        timeout: scratch.timeout,
    }
}

/// The replica the source names (a server, or under Sentinel the one its
/// preference picks), connected, and its replication facts.
async fn replica(connection: &Connection) -> Result<(Server, Role, Option<u64>), RedisError> {
    let (url, access) = connection.access()?;
    let (mut server, role) = locate(&url, &access, connection.prefer).await?;
    let info = server.info("replication").await?;
    Ok((server, role, info.get::<u64>("master_last_io_seconds_ago")))
}

/// Where the replica the source names stands, and whether it is one.
pub async fn standby(connection: &Connection) -> Result<ClonePlan, RedisError> {
    let (mut server, role, last_io) = replica(connection).await?;
    let addr = server.addr.clone();
    let memory = server.info("memory").await?.get::<u64>("used_memory").unwrap_or_default();
    let (answers, standing, newest_point) = match &role {
        Role::Replica { master, connected: true } => {
            let ago = last_io.unwrap_or_default();
            let standing = format!("replica {addr} of {master}: link up, last heard from its master {ago}s ago");
            let point = Utc::now() - chrono::Duration::seconds(i64::try_from(ago).unwrap_or(i64::MAX / 1000));
            (Check::passed("standby answers", standing.clone()), standing, Some(point))
        }
        Role::Replica { master, connected: false } => {
            let standing = format!("replica {addr} of {master}: its link is down");
            let why = format!("{standing}: it holds only what it had when the link broke");
            (Check::warning("standby answers", why), standing, None)
        }
        Role::Master => {
            let why =
                format!("{addr} is a master: a failover drill clones a replica (the DR region's), never the master");
            (Check::failed("standby answers", why), format!("master {addr}"), None)
        }
        Role::Other(other) => {
            (Check::failed("standby answers", format!("{addr} is a {other}")), format!("{other} {addr}"), None)
        }
    };
    Ok(ClonePlan { standing, newest_point, checks: vec![answers], clone_bytes: memory, paths: Vec::new() })
}

/// Clones the replica the source names into `scratch.dir/redis` (its RDB
/// over the replication protocol, checked as it arrives) and starts it as
/// a master of its own on the drill's port.
pub async fn clone(
    connection: &Connection,
    plan: &ClonePlan,
    scratch: Scratch,
) -> Result<Box<dyn Recovered>, RedisError> {
    let (mut server, role, last_io) = replica(connection).await?;
    let addr = server.addr.clone();
    let Role::Replica { master, .. } = role else {
        return Err(RedisError::Topology(format!("{addr} is no longer a replica: not cloning it")));
    };
    let dir = scratch.dir.join("redis");
    std::fs::create_dir_all(&dir).map_err(RedisError::io("creating", &dir))?;
    let (cloning, clone_started) = (Instant::now(), Utc::now());
    let (_, access) = connection.access()?;
    let (link, _) = RdbLink::open(&addr, &access).await?;
    // As at a capture: +FULLRESYNC comes as the replica forks.
    let keyspace = server.keyspace().await?;
    let mut payload = link.payload().await?;
    let path = dir.join(RDB_FILE);
    let mut file = tokio::fs::File::create(&path).await.map_err(RedisError::io("creating", &path))?;
    let mut check = RdbCheck::default();
    while let Some(piece) = payload.next().await? {
        check.update(&piece);
        file.write_all(&piece).await.map_err(RedisError::io("writing", &path))?;
    }
    file.flush().await.map_err(RedisError::io("writing", &path))?;
    let bytes = check.bytes();
    check.finish().map_err(|e| RedisError::Usage(format!("the RDB {addr} sent is damaged: {e}")))?;
    let cloned = cloning.elapsed();
    let running = start(&dir, &start_options(&scratch)).await?;
    let summary = format!(
        "replica {addr} of {master} cloned in {:.1} s ({bytes} RDB bytes) and loaded as a master of its own by redis-server pid {}",
        cloned.as_secs_f64(),
        running.pid
    );
    // What the replica had replayed when it forked, as of the last it heard from its master.
    let point = last_io
        .map(|ago| clone_started - chrono::Duration::seconds(i64::try_from(ago).unwrap_or(i64::MAX / 1000)))
        .or(plan.newest_point);
    Ok(Box::new(RedisRecovered::new(running, keyspace, CLONE_PHASE, cloned, summary, point)))
}

/// A drill's running copy of a Redis server.
struct RedisRecovered {
    pid: u32,
    addr: HostPort,
    server: Mutex<Server>,
    /// The key counts it must have (the capture's, or the replica's as it forked).
    keyspace: Vec<RedisKeyspace>,
    phases: Vec<(&'static str, Duration)>,
    summary: String,
    point: Option<DateTime<Utc>>,
}

impl RedisRecovered {
    /// `running`, brought there by `staged` (restore or clone) taking `took`.
    fn new(
        running: Running,
        keyspace: Vec<RedisKeyspace>,
        staged: &'static str,
        took: Duration,
        summary: String,
        point: Option<DateTime<Utc>>,
    ) -> Self {
        let load = Duration::from_secs_f64(running.load_seconds);
        let then = if staged == CLONE_PHASE { "promote" } else { "replay" };
        RedisRecovered {
            pid: running.pid,
            addr: running.addr,
            server: Mutex::new(running.server),
            keyspace,
            phases: vec![(staged, took), (then, load)],
            summary,
            point,
        }
    }
}

#[async_trait::async_trait]
impl Recovered for RedisRecovered {
    fn summary(&self) -> String {
        self.summary.clone()
    }

    fn phases(&self) -> Vec<(&'static str, Duration)> {
        self.phases.clone()
    }

    fn recovered_point(&self) -> Option<DateTime<Utc>> {
        self.point
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
        checks.push(match compare_keyspace(&self.keyspace, &now) {
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
