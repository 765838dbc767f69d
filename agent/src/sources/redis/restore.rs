//! Restoring a Redis snapshot: `dump.rdb` written into the server's
//! directory atomically (staged beside it, checked whole, renamed into
//! place) with the directory's owner and mode, a stale AOF moved aside
//! (at start Redis prefers an AOF to the RDB), and optionally a server
//! started on it, waited on until the dataset is loaded, and checked
//! against the key counts recorded at capture.

use std::os::unix::fs::PermissionsExt;
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
use crate::sources::owner::{give_to_owner_of, log_tail, run_as_owner_of};

/// What a restore did.
#[derive(Debug)]
pub struct RedisRestored {
    /// The RDB written.
    pub rdb: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// What was moved out of the way (each saying where to), and what
    /// could not be checked.
    pub warnings: Vec<String>,
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
    let mut warnings = Vec::new();
    match servers_in(&dir) {
        Servers { running: Some(pid), .. } => {
            return Err(RedisError::Usage(format!(
                "redis-server (pid {pid}) runs on {}: stop it first (it would overwrite dump.rdb when it next saves or shuts down)",
                dir.display()
            )));
        }
        Servers { unknown, .. } if !unknown.is_empty() => warnings.push(format!(
            "could not tell whether redis-server {} runs on {} (its directory cannot be read by this user): make sure none does",
            unknown.iter().map(|p| format!("pid {p}")).collect::<Vec<_>>().join(", "),
            dir.display()
        )),
        _ => {}
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
    give_to_owner_of(&dir, &staged).map_err(RedisError::io("giving the directory's owner", &staged))?;
    let mode = dir_meta.permissions().mode() & 0o666;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .map_err(RedisError::io("setting the mode of", &staged))?;
    std::fs::File::open(&staged).and_then(|f| f.sync_all()).map_err(RedisError::io("syncing", &staged))?;

    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let rdb = dir.join(RDB_FILE);
    let mut moved = Vec::new();
    // A failure half-way says what it already moved.
    let placed = (|| {
        for name in AOF_NAMES {
            let aof = dir.join(name);
            if aof.symlink_metadata().is_ok() {
                let aside = dir.join(format!("{name}.before-restore-{stamp}"));
                std::fs::rename(&aof, &aside).map_err(RedisError::io("moving aside", &aof))?;
                moved.push((aof, aside));
            }
        }
        std::fs::rename(&staged, &rdb).map_err(RedisError::io("renaming into place", &rdb))?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(RedisError::io("syncing", &dir))
    })();
    let moved: Vec<String> =
        moved.iter().map(|(from, to)| format!("{} moved to {}", from.display(), to.display())).collect();
    if let Err(e) = placed {
        return Err(match moved.is_empty() {
            true => e,
            false => RedisError::Usage(format!("{e} (already done: {})", moved.join(", "))),
        });
    }
    drop(staging);
    warnings.extend(
        moved
            .into_iter()
            .map(|m| format!("{m} (a server started with appendonly yes would load it instead of the restored RDB)")),
    );
    Ok(RedisRestored { rdb, bytes: report.bytes, warnings })
}

/// The `redis-server` processes that may work in a directory.
#[derive(Debug, Default)]
pub struct Servers {
    /// One whose working directory (its `dir`) is the directory.
    pub running: Option<u32>,
    /// Those whose working directory this user cannot read.
    pub unknown: Vec<u32>,
}

/// Looks for a `redis-server` working in `dir`.
pub fn servers_in(dir: &Path) -> Servers {
    let mut found = Servers::default();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let is_redis = std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "redis-server");
        if !is_redis {
            continue;
        }
        match std::fs::read_link(p.path().join("cwd")) {
            Ok(cwd) if cwd == dir => {
                found.running = Some(pid);
                return found;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => found.unknown.push(pid),
            // Gone since it was listed.
            Err(_) => {}
        }
    }
    found
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

/// A server started on a restored RDB, its dataset loaded.
pub struct Running {
    /// Its process id.
    pub pid: u32,
    /// Where it listens.
    pub addr: HostPort,
    /// A connection to it.
    pub server: Server,
    /// How long loading took.
    pub load_seconds: f64,
    /// Its log file.
    pub log: PathBuf,
}

/// Starts `redis-server` on `dir` (as the directory's owner), waits until
/// the dataset is loaded, and checks its key counts against `capture`.
pub async fn start_and_check(dir: &Path, capture: &RedisCapture, opts: &StartOptions) -> Result<Started, RedisError> {
    let Running { pid, addr, mut server, load_seconds, log } = start(dir, opts).await?;
    let now = server.keyspace().await?;
    let remarks = compare_keyspace(&capture.keyspace, &now)
        .map_err(|e| RedisError::Mismatch(format!("{e} (the server, pid {pid}, is left running at {addr})")))?;
    Ok(Started { pid, addr, keys: now.iter().map(|d| d.keys).sum(), load_seconds, remarks, log })
}

/// Starts `redis-server` on `dir` (as the directory's owner) and waits
/// until the dataset is loaded.
pub async fn start(dir: &Path, opts: &StartOptions) -> Result<Running, RedisError> {
    let dir = std::fs::canonicalize(dir).map_err(RedisError::io("resolving", dir))?;
    let addr = HostPort { host: opts.bind.clone(), port: opts.port };
    // Whatever answers there is not the server about to be started.
    if std::net::TcpStream::connect_timeout(&to_socket(&addr)?, Duration::from_secs(1)).is_ok() {
        return Err(RedisError::Usage(format!("{addr} is in use: start the restored server on a free port (--port)")));
    }
    let (log, pidfile) = (dir.join("redis-server.log"), dir.join("redis-server.pid"));
    let _ = std::fs::remove_file(&pidfile);
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
    run_as_owner_of(&mut cmd, &dir).map_err(RedisError::io("reading", &dir))?;
    let program = opts.redis_server.clone();
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await
        .map_err(|_| RedisError::Usage("running redis-server panicked".into()))?
        .map_err(RedisError::io("running", &program))?;
    let failed = |what: String| {
        RedisError::Usage(format!("the server started on {}: {what}; its log:\n{}", dir.display(), log_tail(&log, 10)))
    };
    if !status.success() {
        return Err(failed(format!("{} exited with {status}", opts.redis_server.display())));
    }
    // Daemonised: the pid file names the server once it runs.
    let started = Instant::now();
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
            break pid;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(failed("it wrote no pid file within 30s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let server = loop {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(failed(format!("it (pid {pid}) exited")));
        }
        if started.elapsed() > opts.timeout {
            return Err(failed(format!(
                "it (pid {pid}, left running) did not finish loading within {}s",
                opts.timeout.as_secs()
            )));
        }
        if let Ok(mut server) = Server::open(&addr, &Access::default()).await
            && let Ok(info) = server.info("server").await
            && info.get::<u32>("process_id") == Some(pid)
            && server.info("persistence").await.is_ok_and(|i| i.get::<u8>("loading") == Some(0))
        {
            break server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(Running { pid, addr, server, load_seconds: started.elapsed().as_secs_f64(), log })
}

/// The address to probe for `addr`.
fn to_socket(addr: &HostPort) -> Result<std::net::SocketAddr, RedisError> {
    use std::net::ToSocketAddrs;
    (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| RedisError::Config(format!("{addr}: not an address this host can listen on")))
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
