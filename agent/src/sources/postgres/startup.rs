//! Starting a restored cluster and waiting until recovery has reached its
//! target, to report the point actually reached (which may be short of the
//! target, or past it to the end of a transaction).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::PgError;
use super::connect::ConnectArgs;
use crate::sources::owner::{log_tail, run_as_owner_of};

/// How to start the server.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Directory of `pg_ctl` (default: the backup's major version's, as
    /// Debian installs it, else `PATH`).
    pub pg_bin: Option<PathBuf>,
    /// Role to connect as once the server accepts connections.
    pub user: String,
    /// How long recovery may take.
    pub timeout: Duration,
}

/// Where recovery ended.
#[derive(Debug, Clone)]
pub struct RecoveryReached {
    /// The last WAL position replayed.
    pub lsn: String,
    /// Commit time of the last transaction replayed, if any was.
    pub last_commit: Option<String>,
    /// The timeline the server now runs on.
    pub timeline: u32,
    /// The server's log file.
    pub log: PathBuf,
}

/// PostgreSQL's program `name`: in `pg_bin`, else major version `major`'s
/// as Debian installs it, else on `PATH`.
pub fn pg_program(pg_bin: Option<&Path>, major: &str, name: &str) -> PathBuf {
    if let Some(dir) = pg_bin {
        return dir.join(name);
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/{name}"));
    if debian.exists() { debian } else { PathBuf::from(name) }
}

/// Runs `cmd` (a PostgreSQL program on `pgdata`) as the directory's owner
/// and returns its output, or why it could not be run.
pub async fn output_as_owner(mut cmd: Command, program: &Path, pgdata: &Path) -> Result<std::process::Output, PgError> {
    run_as_owner_of(&mut cmd, pgdata).map_err(PgError::io("reading", pgdata))?;
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|_| PgError::Usage(format!("running {} panicked", program.display())))?
        .map_err(PgError::io("running", program))
}

/// Starts PostgreSQL on `pgdata` (as the directory's owner) and waits
/// until recovery has ended and the server promoted.
pub async fn start_and_wait(pgdata: &Path, version: u32, opts: &StartOptions) -> Result<RecoveryReached, PgError> {
    let log = pgdata.join("lifeboat-start.log");
    let started = Instant::now();
    let program = pg_program(opts.pg_bin.as_deref(), &(version / 10000).to_string(), "pg_ctl");
    let mut cmd = Command::new(&program);
    cmd.arg("-D").arg(pgdata).arg("-l").arg(&log).args(["-w", "-t"]).arg(opts.timeout.as_secs().to_string());
    cmd.arg("start");
    let out = output_as_owner(cmd, &program, pgdata).await?;
    if !out.status.success() {
        return Err(PgError::Usage(format!(
            "the server did not start on {} ({}):\n{}",
            pgdata.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail(&log, 15)
        )));
    }

    let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid")).map_err(PgError::io("reading", pgdata))?;
    let lines: Vec<&str> = pid_file.lines().collect();
    let port = lines.get(3).and_then(|p| p.trim().parse().ok());
    let socket_dir = lines.get(4).map(|s| s.trim()).filter(|s| !s.is_empty());
    let listen = lines.get(5).and_then(|s| s.split(',').next()).map(str::trim).filter(|s| !s.is_empty());
    let host = match (socket_dir, listen) {
        (Some(dir), _) => dir.to_owned(),
        (None, Some("*") | None) => "127.0.0.1".to_owned(),
        (None, Some(addr)) => addr.to_owned(),
    };
    let connect = ConnectArgs {
        host: Some(host),
        port,
        user: Some(opts.user.clone()),
        dbname: Some("postgres".into()),
        ..ConnectArgs::default()
    };

    loop {
        let remaining = opts.timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err(PgError::Usage(format!(
                "recovery of {} did not end within {:?}:\n{}",
                pgdata.display(),
                opts.timeout,
                log_tail(&log, 15)
            )));
        }
        if !pgdata.join("postmaster.pid").exists() {
            return Err(PgError::Usage(format!(
                "the server on {} stopped during recovery:\n{}",
                pgdata.display(),
                log_tail(&log, 15)
            )));
        }
        if let Ok(client) = connect.connect().await
            && let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await
            && row.try_get::<_, bool>(0).is_ok_and(|r| !r)
        {
            let row = client
                .query_one(
                    "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()::text, \
                     substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
                    &[],
                )
                .await
                .map_err(PgError::db(format!("reading where recovery of {} ended", pgdata.display())))?;
            let timeline: Option<String> = row.try_get(2).ok();
            return Ok(RecoveryReached {
                lsn: row.try_get::<_, Option<String>>(0).ok().flatten().unwrap_or_default(),
                last_commit: row.try_get(1).ok().flatten(),
                timeline: timeline.and_then(|t| u32::from_str_radix(&t, 16).ok()).unwrap_or_default(),
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
