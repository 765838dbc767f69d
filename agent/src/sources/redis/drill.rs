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
use std::os::unix::fs::OpenOptionsExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::RedisError;
use super::capture::RDB_FILE;
use super::endpoint::{Connection, HostPort, Prefer};
use super::rdb::RdbCheck;
use super::replication::RdbLink;
use super::restore::{Running, StartOptions, compare_keyspace, restore_redis, start};
use super::sentinel::locate;
use super::server::{Role, Server};
use crate::sources::rehearsal::{CLONE_PHASE, ClonePlan, DrillPlan, LOAD_PHASE, Recovered, Scratch};
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
    let phases = vec![("restore", restore), ("replay", Duration::from_secs_f64(running.load_seconds))];
    Ok(Box::new(RedisRecovered::new(
        running,
        capture.keyspace,
        "at capture",
        phases,
        summary,
        Some(plan.manifest.time),
    )))
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

/// The replica the source names (a server, or under Sentinel a healthy
/// replica), connected, and how long ago it last heard from its master.
async fn replica(connection: &Connection) -> Result<(Server, Role, Option<u64>), RedisError> {
    let (url, access) = connection.access()?;
    let (mut server, role) = locate(&url, &access, Prefer::Replica).await?;
    let info = server.info("replication").await?;
    Ok((server, role, info.get::<u64>("master_last_io_seconds_ago")))
}

/// `at` less `seconds`.
fn before(at: DateTime<Utc>, seconds: u64) -> DateTime<Utc> {
    at - chrono::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX / 1000))
}

/// What a clone must hold of each database, from two readings of a
/// replica that went on applying its master's writes between them (before
/// the fork and after): no more keys than the larger, and no fewer than
/// the smaller less those with a TTL.
fn envelope(a: &[RedisKeyspace], b: &[RedisKeyspace]) -> Vec<RedisKeyspace> {
    let dbs: std::collections::BTreeSet<u32> = a.iter().chain(b).map(|d| d.db).collect();
    let of = |ks: &[RedisKeyspace], db| ks.iter().find(|d| d.db == db).map_or((0, 0), |d| (d.keys, d.expires));
    dbs.into_iter()
        .map(|db| {
            let ((ka, ea), (kb, eb)) = (of(a, db), of(b, db));
            RedisKeyspace { db, keys: ka.max(kb), expires: ea.max(eb) + ka.abs_diff(kb) }
        })
        .collect()
}

/// Where the replica the source names stands, and whether it is one.
pub async fn standby(connection: &Connection) -> Result<ClonePlan, RedisError> {
    let (mut server, role, last_io) = replica(connection).await?;
    let addr = server.addr.clone();
    let memory = server.info("memory").await?;
    let bytes = memory.get::<u64>("used_memory_dataset").or_else(|| memory.get("used_memory")).unwrap_or_default();
    let (answers, standing, newest_point) = match &role {
        Role::Replica { master, connected: true } => {
            let ago = last_io.unwrap_or_default();
            let standing = format!("replica {addr} of {master}: link up, last heard from its master {ago}s ago");
            (Check::passed("standby answers", standing.clone()), standing, Some(before(Utc::now(), ago)))
        }
        Role::Replica { master, connected: false } => {
            // It would refuse the sync (NOMASTERLINK), as a failover would find it.
            let standing = format!("replica {addr} of {master}: its link to its master is down");
            let why = format!("{standing}: it serves no copy, and holds only what it had when the link broke");
            (Check::failed("standby answers", why), standing, None)
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
    Ok(ClonePlan {
        standing,
        newest_point,
        newest_is: "the last the replica heard from its master",
        checks: vec![answers],
        clone_bytes: bytes,
        paths: Vec::new(),
    })
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
    // The replica goes on applying its master's writes: its counts before
    // and after the fork bound what the RDB holds.
    let earlier = server.keyspace().await?;
    let (link, _) = RdbLink::open(&addr, &access).await?;
    let keyspace = envelope(&earlier, &server.keyspace().await?);
    let mut payload = link.payload().await?;
    let path = dir.join(RDB_FILE);
    // Production data: its owner's to read, no one else's.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(RedisError::io("creating", &path))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut check = RdbCheck::default();
    while let Some(piece) = payload.next().await? {
        check.update(&piece);
        file.write_all(&piece).await.map_err(RedisError::io("writing", &path))?;
    }
    // A replica keeps feeding a sub-replica's buffer while it is connected.
    drop(payload);
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
    // What the replica held when it forked, as of the last it heard from its master.
    let point = last_io.map(|ago| before(clone_started, ago)).or(plan.newest_point);
    let phases = vec![(CLONE_PHASE, cloned), (LOAD_PHASE, Duration::from_secs_f64(running.load_seconds))];
    Ok(Box::new(RedisRecovered::new(running, keyspace, "as the replica forked", phases, summary, point)))
}

/// A drill's running copy of a Redis server.
struct RedisRecovered {
    pid: u32,
    addr: HostPort,
    server: Mutex<Server>,
    /// The key counts it must have (the capture's, or the replica's as it forked).
    keyspace: Vec<RedisKeyspace>,
    /// When those were counted, for messages.
    counted: &'static str,
    phases: Vec<(&'static str, Duration)>,
    summary: String,
    point: Option<DateTime<Utc>>,
}

impl RedisRecovered {
    /// `running`, which must hold `keyspace` (`counted` then), brought up in `phases`.
    fn new(
        running: Running,
        keyspace: Vec<RedisKeyspace>,
        counted: &'static str,
        phases: Vec<(&'static str, Duration)>,
        summary: String,
        point: Option<DateTime<Utc>>,
    ) -> Self {
        RedisRecovered {
            pid: running.pid,
            addr: running.addr,
            server: Mutex::new(running.server),
            keyspace,
            counted,
            phases,
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
                Check::passed("key counts", format!("{keys} keys, as many in each database as {}", self.counted))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(db: u32, keys: u64, expires: u64) -> RedisKeyspace {
        RedisKeyspace { db, keys, expires }
    }

    #[test]
    fn a_clone_may_hold_what_the_replica_held_at_either_reading() {
        let bound = envelope(&[ks(0, 100, 5), ks(2, 4, 0)], &[ks(0, 110, 6)]);
        assert_eq!(bound, vec![ks(0, 110, 16), ks(2, 4, 4)]);
        for keys in [94, 100, 105, 110] {
            assert!(compare_keyspace(&bound, &[ks(0, keys, 0), ks(2, 4, 0)]).is_ok(), "{keys}");
        }
        for keys in [93, 111] {
            assert!(compare_keyspace(&bound, &[ks(0, keys, 0), ks(2, 4, 0)]).is_err(), "{keys}");
        }
    }
}
