//! A failover drill's clone of a standby on this host: where the standby
//! stands (it must be one), then `pg_basebackup` from it into the scratch
//! directory (tablespaces mapped there too), the clone caught up from the
//! repository through `wal-fetch` and promoted on a free port, cut off from
//! production as a recovery drill's server is. The standby itself is only
//! read: it keeps following its primary.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;

use super::PgError;
use super::connect::{ConnectArgs, SslMode};
use super::drill::{isolate, start};
use super::restore::{recovery_settings, wal_fetch_command};
use super::startup::pg_program;
use crate::sources::owner::{give_to_owner_of, run_as_owner_of};
use crate::sources::rehearsal::{CLONE_PHASE, ClonePlan, Recovered, Scratch};
use crate::sources::{RestoreContext, parse_recovery_time};
use lifeboat_common::repo::format::drill::Check;

/// What a clone needs to know of the standby.
struct Standing {
    in_recovery: bool,
    version: u32,
    replayed: String,
    received: String,
    last_commit: Option<String>,
    bytes: u64,
    segment_size: u64,
    /// Whether its role may replicate, and wal senders free (of two needed).
    may_replicate: bool,
    free_senders: i64,
    /// Each tablespace's OID and location.
    tablespaces: Vec<(u32, String)>,
}

async fn look(connect: &ConnectArgs) -> Result<Standing, PgError> {
    let client = connect.connect().await?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int4, \
             coalesce(pg_last_wal_replay_lsn()::text, ''), coalesce(pg_last_wal_receive_lsn()::text, ''), \
             pg_last_xact_replay_timestamp()::text, \
             (SELECT sum(pg_database_size(oid))::int8 FROM pg_database), \
             (SELECT setting::int8 FROM pg_settings WHERE name = 'wal_segment_size'), \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
             current_setting('max_wal_senders')::int8 - (SELECT count(*) FROM pg_stat_replication)",
            &[],
        )
        .await
        .map_err(PgError::db(format!("asking {} where it stands", connect.describe())))?;
    let rows = client
        .query(
            "SELECT oid::int8, pg_tablespace_location(oid) FROM pg_tablespace WHERE pg_tablespace_location(oid) <> ''",
            &[],
        )
        .await
        .map_err(PgError::db(format!("listing the tablespaces of {}", connect.describe())))?;
    Ok(Standing {
        in_recovery: row.get(0),
        version: u32::try_from(row.get::<_, i32>(1)).unwrap_or_default(),
        replayed: row.get(2),
        received: row.get(3),
        last_commit: row.get(4),
        bytes: u64::try_from(row.get::<_, Option<i64>>(5).unwrap_or_default()).unwrap_or_default(),
        segment_size: u64::try_from(row.get::<_, i64>(6)).unwrap_or_default(),
        may_replicate: row.get::<_, Option<bool>>(7).unwrap_or_default(),
        free_senders: row.get(8),
        tablespaces: rows
            .iter()
            .map(|r| (u32::try_from(r.get::<_, i64>(0)).unwrap_or_default(), r.get::<_, String>(1)))
            .collect(),
    })
}

/// Where the standby at `connect` stands, and whether it is one.
pub async fn plan(connect: &ConnectArgs) -> Result<ClonePlan, PgError> {
    let s = look(connect).await?;
    let standing = format!(
        "{}: replayed to {}, received to {}, last commit replayed {}",
        connect.describe(),
        or_none(&s.replayed),
        or_none(&s.received),
        s.last_commit.as_deref().unwrap_or("none since it started")
    );
    let answers = if s.in_recovery {
        Check::passed("standby answers", format!("PostgreSQL {} at {standing}", s.version))
    } else {
        Check::failed(
            "standby answers",
            format!(
                "{} is not in recovery: it is a primary. A failover drill clones a standby (the DR region's), never the primary",
                connect.describe()
            ),
        )
    };
    let user = connect.user_or_default();
    let clonable = match (s.may_replicate, s.free_senders) {
        (false, _) => Check::failed(
            "standby can be cloned",
            format!("role {user} may not replicate: pg_basebackup needs the REPLICATION attribute"),
        ),
        (true, free) if free < 2 => Check::failed(
            "standby can be cloned",
            format!("{free} of max_wal_senders free: pg_basebackup --wal-method=stream needs two"),
        ),
        (true, free) => {
            Check::passed("standby can be cloned", format!("role {user} may replicate; {free} wal senders free"))
        }
    };
    Ok(ClonePlan {
        standing,
        newest_point: s.last_commit.as_deref().and_then(|t| parse_recovery_time(t).ok()),
        newest_is: "the standby's last replayed commit",
        checks: vec![answers, clonable],
        clone_bytes: s.bytes,
        paths: s.tablespaces.iter().map(|(_, location)| PathBuf::from(location)).collect(),
    })
}

fn or_none(lsn: &str) -> &str {
    if lsn.is_empty() { "nothing yet" } else { lsn }
}

/// A directory (in one that exists) the standby's owner can write and
/// nobody else read.
fn owned_dir(dir: &Path, owner_of: &Path) -> Result<(), PgError> {
    std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(PgError::io("making", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(PgError::io("opening", dir))?;
    give_to_owner_of(owner_of, dir).map_err(PgError::io("changing owner of", dir))
}

/// Clones the standby at `connect` (data directory `pgdata`) into
/// `scratch.dir/pgdata`, catches the clone up from the repository and
/// promotes it.
pub async fn clone(
    connect: &ConnectArgs,
    pgdata: &Path,
    pg_bin: Option<&Path>,
    ctx: RestoreContext,
    plan: &ClonePlan,
    scratch: Scratch,
) -> Result<Box<dyn Recovered>, PgError> {
    let s = look(connect).await?;
    if !s.in_recovery {
        return Err(PgError::Usage(format!("{} is no longer a standby: not cloning it", connect.describe())));
    }
    let major = (s.version / 10000).to_string();
    let target = scratch.dir.join("pgdata");
    owned_dir(&target, pgdata)?;
    let program = pg_program(pg_bin, &major, "pg_basebackup");
    let mut cmd = std::process::Command::new(&program);
    cmd.arg("-D").arg(&target);
    cmd.args(["-h", connect.host(), "-p", &connect.port().to_string(), "-U", &connect.user_or_default()]);
    cmd.args(["--wal-method=stream", "--checkpoint=fast", "--no-password"]);
    if !scratch.keep {
        // A copy thrown away after the drill need not reach the disk.
        cmd.arg("--no-sync");
    }
    // Tablespaces in plain format go where the standby has them unless mapped.
    let spaces = scratch.dir.join("tablespaces");
    if !s.tablespaces.is_empty() {
        // Its owner's to pass through, as the scratch directory is.
        std::fs::DirBuilder::new().mode(0o755).create(&spaces).map_err(PgError::io("making", &spaces))?;
    }
    for (oid, location) in &s.tablespaces {
        let mapped = spaces.join(oid.to_string());
        owned_dir(&mapped, pgdata)?;
        cmd.arg(format!(
            "--tablespace-mapping={}={}",
            escape_mapping(location),
            escape_mapping(&mapped.display().to_string())
        ));
    }
    cmd.env("PGAPPNAME", "lifeboat-drill");
    if let (SslMode::VerifyFull, Some(ca)) = (connect.sslmode, &connect.sslrootcert) {
        cmd.env("PGSSLMODE", "verify-full").env("PGSSLROOTCERT", ca);
    }
    // In the scratch directory, so that clean-up finds it, and killed with
    // the drill: it holds two wal senders on the standby while it runs.
    cmd.current_dir(&scratch.dir);
    run_as_owner_of(&mut cmd, pgdata).map_err(PgError::io("reading", pgdata))?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let (cloning, clone_started) = (Instant::now(), Utc::now());
    let out = match tokio::time::timeout(scratch.timeout, cmd.output()).await {
        Ok(out) => out.map_err(PgError::io("running", &program))?,
        Err(_) => {
            return Err(PgError::Usage(format!(
                "pg_basebackup from {} did not end within {}",
                connect.describe(),
                humantime::format_duration(scratch.timeout)
            )));
        }
    };
    if !out.status.success() {
        return Err(PgError::Usage(format!(
            "pg_basebackup from {} failed ({}): {}",
            connect.describe(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let cloned = cloning.elapsed();

    // Archive recovery to the end of what the repository holds, then
    // promotion: never the standby's own streaming or delay.
    let restore_command = wal_fetch_command(scratch.agent_bin.as_deref(), &ctx.spec)?;
    let standby_signal = target.join("standby.signal");
    match std::fs::remove_file(&standby_signal) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(PgError::io("removing", &standby_signal)(e));
        }
        _ => {}
    }
    let signal = target.join("recovery.signal");
    std::fs::write(&signal, "").map_err(PgError::io("writing", &signal))?;
    give_to_owner_of(pgdata, &signal).map_err(PgError::io("changing owner of", &signal))?;
    let extra = format!(
        "{}recovery_min_apply_delay = 0\nrecovery_target_action = 'promote'\n",
        recovery_settings(&restore_command, s.segment_size)
    );
    isolate(&scratch.dir, &target, scratch.port, &extra)?;

    let mut recovered = start(target, s.version, pg_bin.map(PathBuf::from), scratch).await?;
    let reached = &recovered.reached;
    let summary = format!(
        "standby {} cloned in {:.1} s ({} at {}); the clone caught up from the repository to {} and promoted onto timeline {} (last commit replayed: {})",
        connect.describe(),
        cloned.as_secs_f64(),
        indicatif::HumanBytes(plan.clone_bytes),
        or_none(&s.replayed),
        reached.lsn,
        reached.timeline,
        reached.last_commit.as_deref().unwrap_or("none")
    );
    let promote = recovered.phases[0].1;
    recovered.phases = vec![(CLONE_PHASE, cloned), ("promote", promote)];
    recovered.summary = summary;
    // No commit replayed: the clone holds what the standby had replayed
    // (as of its last commit, or as of the clone when it replayed none).
    recovered.point = recovered.point.or(plan.newest_point).or(Some(clone_started));
    Ok(Box::new(recovered))
}

/// A path as `--tablespace-mapping` reads it (`=` escaped).
fn escape_mapping(path: &str) -> String {
    path.replace('=', "\\=")
}
