//! Restoring a Redis snapshot: `dump.rdb` written into the server's
//! directory atomically (staged beside it, checked whole, renamed into
//! place) with the directory's owner and mode, a stale AOF moved aside
//! (at start Redis prefers an AOF to the RDB), and optionally a server
//! started on it, waited on until the dataset is loaded, and checked
//! against the key counts recorded at capture.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_common::repo::format::snapshot::{RedisCapture, RedisKeyspace, Snapshot};
use lifeboat_common::repo::{Repository, SnapshotId};

use super::RedisError;
use super::capture::RDB_FILE;
use super::endpoint::{Access, HostPort};
use super::server::Server;
use crate::progress::Progress;
use crate::sources::files::{RestoreOptions, restore_files};

/// What a restore did.
#[derive(Debug)]
pub struct RedisRestored {
    /// The RDB written.
    pub rdb: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// What was moved out of the way, each saying where to.
    pub moved_aside: Vec<String>,
}

/// The AOF a server would load instead of the RDB: Redis 7's directory and
/// the single file of earlier versions.
const AOF_NAMES: &[&str] = &["appendonlydir", "appendonly.aof"];

/// Writes the RDB of `snapshot` (snapshot `id`) into `dir`.
#[tracing::instrument(skip_all, fields(snapshot = %id.short(), dir = %dir.display()))]
pub async fn restore_redis(
    repo: &Repository,
    id: &SnapshotId,
    snapshot: &Snapshot,
    dir: &Path,
    progress: Arc<Progress>,
) -> Result<RedisRestored, RedisError> {
    if snapshot.redis.is_none() {
        return Err(RedisError::Usage(format!("snapshot {} is of {}, not of Redis", id.short(), snapshot.source)));
    }
    std::fs::create_dir_all(dir).map_err(RedisError::io("creating", dir))?;
    let dir = std::fs::canonicalize(dir).map_err(RedisError::io("resolving", dir))?;
    if let Some(pid) = server_running_in(&dir) {
        return Err(RedisError::Usage(format!(
            "redis-server (pid {pid}) runs on {}: stop it first (it would overwrite dump.rdb when it next saves or shuts down)",
            dir.display()
        )));
    }
    let dir_meta = std::fs::metadata(&dir).map_err(RedisError::io("reading", &dir))?;
    // Staged in the directory itself, so that the rename into place is
    // atomic; removed whatever happens.
    let staging = tempfile::Builder::new()
        .prefix(".lifeboat-restore-")
        .tempdir_in(&dir)
        .map_err(RedisError::io("making a staging directory in", &dir))?;
    let opts = RestoreOptions { target: staging.path().to_owned(), skip_xattrs: true, ..Default::default() };
    let report = restore_files(repo, snapshot, opts, progress).await?;
    if !report.failed.is_empty() {
        return Err(RedisError::Usage(format!(
            "snapshot {} cannot be restored, {} is untouched: {}",
            id.short(),
            dir.display(),
            report.failed.join("; ")
        )));
    }
    let staged = staging.path().join(RDB_FILE);
    std::os::unix::fs::chown(&staged, Some(dir_meta.uid()), Some(dir_meta.gid()))
        .map_err(RedisError::io("giving the directory's owner", &staged))?;
    let mode = dir_meta.permissions().mode() & 0o666;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .map_err(RedisError::io("setting the mode of", &staged))?;
    std::fs::File::open(&staged).and_then(|f| f.sync_all()).map_err(RedisError::io("syncing", &staged))?;

    let mut moved_aside = Vec::new();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    for name in AOF_NAMES {
        let aof = dir.join(name);
        if aof.symlink_metadata().is_ok() {
            let aside = dir.join(format!("{name}.before-restore-{stamp}"));
            std::fs::rename(&aof, &aside).map_err(RedisError::io("moving aside", &aof))?;
            moved_aside.push(format!(
                "{} moved to {} (a server started with appendonly yes would load it instead of the restored RDB)",
                aof.display(),
                aside.display()
            ));
        }
    }
    let rdb = dir.join(RDB_FILE);
    std::fs::rename(&staged, &rdb).map_err(RedisError::io("renaming into place", &rdb))?;
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(RedisError::io("syncing", &dir))?;
    drop(staging);
    Ok(RedisRestored { rdb, bytes: report.bytes, moved_aside })
}

/// The pid of a `redis-server` whose working directory (its `dir`) is `dir`.
pub fn server_running_in(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_dir("/proc").ok()?;
    procs.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
        (comm.trim() == "redis-server" && std::fs::read_link(p.path().join("cwd")).ok()? == dir).then_some(pid)
    })
}

/// How to start a server on a restored directory.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The `redis-server` program.
    pub redis_server: PathBuf,
    /// The address to listen on.
    pub bind: String,
    /// The port to listen on.
    pub port: u16,
    /// How long loading may take.
    pub timeout: Duration,
}

/// A server started on a restored RDB.
#[derive(Debug)]
pub struct Started {
    /// Its process id.
    pub pid: u32,
    /// Where it listens.
    pub addr: HostPort,
    /// Keys it holds, in all databases.
    pub keys: u64,
    /// How long loading took.
    pub load_seconds: f64,
    /// Differences from the capture that the passing of TTLs explains.
    pub remarks: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// Starts `redis-server` on `dir` (as the directory's owner), waits until
/// the dataset is loaded, and checks its key counts against `capture`.
pub async fn start_and_check(dir: &Path, capture: &RedisCapture, opts: &StartOptions) -> Result<Started, RedisError> {
    let dir = std::fs::canonicalize(dir).map_err(RedisError::io("resolving", dir))?;
    let meta = std::fs::metadata(&dir).map_err(RedisError::io("reading", &dir))?;
    let (log, pidfile) = (dir.join("redis-server.log"), dir.join("redis-server.pid"));
    let mut cmd = Command::new(&opts.redis_server);
    cmd.current_dir(&dir)
        .args(["--bind", &opts.bind, "--port", &opts.port.to_string(), "--dbfilename", RDB_FILE, "--appendonly", "no"])
        .args(["--daemonize", "yes"])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(&log)
        .arg("--pidfile")
        .arg(&pidfile);
    if rustix::process::geteuid().is_root() && meta.uid() != 0 {
        use std::os::unix::process::CommandExt;
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    let status = cmd.status().map_err(RedisError::io("running", &opts.redis_server))?;
    if !status.success() {
        return Err(RedisError::Usage(format!(
            "{} on {} exited with {status}; its log: {}",
            opts.redis_server.display(),
            dir.display(),
            tail(&log)
        )));
    }
    let started = Instant::now();
    let addr = HostPort { host: opts.bind.clone(), port: opts.port };
    let mut server = loop {
        let ready = async {
            let mut server = Server::open(&addr, &Access::default()).await?;
            let loading: Option<u8> = server.info("persistence").await?.get("loading");
            Ok::<_, RedisError>((loading == Some(0)).then_some(server))
        };
        match ready.await {
            Ok(Some(server)) => break server,
            Ok(None) => {}
            Err(e) if started.elapsed() > opts.timeout => {
                return Err(RedisError::Usage(format!(
                    "the server started on {} did not finish loading within {}s ({e}); its log: {}",
                    dir.display(),
                    opts.timeout.as_secs(),
                    tail(&log)
                )));
            }
            Err(_) => {}
        }
        if started.elapsed() > opts.timeout {
            return Err(RedisError::Usage(format!("loading took longer than {}s", opts.timeout.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let load_seconds = started.elapsed().as_secs_f64();
    let now = server.keyspace().await?;
    let remarks = compare_keyspace(&capture.keyspace, &now)?;
    let pid = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
    Ok(Started { pid, addr, keys: now.iter().map(|d| d.keys).sum(), load_seconds, remarks, log })
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("({}: {e})", log.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Checks a started server's keys against the capture's: equal, or fewer
/// by no more than the keys that had a TTL (those may have expired since).
pub fn compare_keyspace(captured: &[RedisKeyspace], now: &[RedisKeyspace]) -> Result<Vec<String>, RedisError> {
    let mut remarks = Vec::new();
    let mut wrong = Vec::new();
    let dbs: std::collections::BTreeSet<u32> = captured.iter().chain(now).map(|d| d.db).collect();
    for db in dbs {
        let then = captured.iter().find(|d| d.db == db).map_or((0, 0), |d| (d.keys, d.expires));
        let keys = now.iter().find(|d| d.db == db).map_or(0, |d| d.keys);
        match keys.cmp(&then.0) {
            std::cmp::Ordering::Equal => {}
            std::cmp::Ordering::Less if then.0 - keys <= then.1 => remarks.push(format!(
                "db{db}: {keys} keys, {} fewer than at capture, no more than had a TTL (expired since)",
                then.0 - keys
            )),
            _ => wrong.push(format!("db{db} holds {keys} keys, the capture recorded {}", then.0)),
        }
    }
    if !wrong.is_empty() {
        return Err(RedisError::Mismatch(format!(
            "the restored server does not hold what was captured: {}",
            wrong.join("; ")
        )));
    }
    Ok(remarks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(db: u32, keys: u64, expires: u64) -> RedisKeyspace {
        RedisKeyspace { db, keys, expires }
    }

    #[test]
    fn key_counts_match_or_are_explained_by_ttls() {
        assert!(compare_keyspace(&[ks(0, 10, 0), ks(3, 2, 0)], &[ks(0, 10, 0), ks(3, 2, 0)]).unwrap().is_empty());
        let remarks = compare_keyspace(&[ks(0, 10, 4)], &[ks(0, 7, 1)]).unwrap();
        assert!(remarks[0].contains("3 fewer"), "{remarks:?}");
        let err = compare_keyspace(&[ks(0, 10, 1)], &[ks(0, 7, 0)]).unwrap_err().to_string();
        assert!(err.contains("db0 holds 7 keys, the capture recorded 10"), "{err}");
        let err = compare_keyspace(&[ks(0, 10, 0)], &[ks(0, 10, 0), ks(1, 1, 0)]).unwrap_err().to_string();
        assert!(err.contains("db1 holds 1 keys"), "{err}");
    }
}
