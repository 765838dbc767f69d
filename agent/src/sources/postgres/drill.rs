//! A drill's recovery of a PostgreSQL cluster: the base backup that fits
//! the target, the WAL it needs checked present, unbroken and authentic
//! before anything is restored; then the restore into a scratch directory,
//! a server started there on a free port with archiving off, waited on
//! until recovery ends; then a connection, `pg_amcheck` and the policy's
//! SQL probes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_common::policy::drills::DrillChecks;
use lifeboat_common::repo::format::drill::Check;
use lifeboat_common::repo::format::layout::WAL_KIND;
use lifeboat_common::repo::format::object;
use lifeboat_common::repo::format::snapshot::{PostgresBackup, Snapshot};
use lifeboat_common::repo::ops::retention::source_tag;
use lifeboat_common::repo::{Repository, SnapshotId};
use rand::SeedableRng;

use super::connect::ConnectArgs;
use super::restore::conf_literal;
use super::startup::{RecoveryReached, StartOptions, output_as_owner, pg_program, start_and_wait};
use super::wal::{archived_segment_times, check_chain, wal_key};
use super::{PgError, PostgresSource};
use crate::sources::owner::owner_name;
use crate::sources::rehearsal::{DrillPlan, PlanRequest, Recovered, Scratch};
use crate::sources::{RecoveryPoint, RestoreContext, RestoreRequest, Source, SourceError, parse_recovery_time};

/// The base backups `host` made of `source`, newest first, that end
/// before `point`.
fn fitting<'a>(
    snapshots: &'a [(SnapshotId, Snapshot)],
    host: &str,
    source: &str,
    point: &RecoveryPoint,
) -> impl Iterator<Item = (&'a SnapshotId, &'a Snapshot, &'a PostgresBackup)> {
    let tag = source_tag(source);
    snapshots.iter().rev().filter_map(move |(id, s)| {
        let pg = s.postgres.as_ref()?;
        let ours = s.hostname == host && s.tags.contains(&tag);
        let fits = match point {
            RecoveryPoint::Latest | RecoveryPoint::Lsn(_) => true,
            RecoveryPoint::Time(t) => pg.stop_time <= *t,
        };
        (ours && fits).then_some((id, s, pg))
    })
}

/// Plans the recovery: the newest base backup that fits, and the checklist
/// of the WAL from its start to the target.
pub async fn plan(request: PlanRequest<'_>) -> Result<DrillPlan, PgError> {
    let repo = request.repo;
    let Some((id, manifest, pg)) = fitting(request.snapshots, request.host, request.source, &request.point).next()
    else {
        return Err(PgError::Usage(format!(
            "{}/{} has no PostgreSQL base backup in the repository that ends before the target {:?}",
            request.host, request.source, request.point
        )));
    };
    let timeline = pg.timeline.0;
    let stored = archived_segment_times(repo, timeline).await?;
    let names: Vec<String> = stored.keys().cloned().collect();
    let key = |name: &str| wal_key(name).unwrap_or_else(|_| name.to_owned());
    let mut checks = Vec::new();
    let (start, stop) = (pg.start_wal.to_string(), pg.stop_wal.to_string());
    let mut newest_point = pg.stop_time;
    let mut chain = Vec::new();
    match check_chain(&names, &start, &stop, pg.wal_segment_size) {
        Err(_) => {
            let missing = names_between(&start, &stop, pg.wal_segment_size)
                .into_iter()
                .find(|n| !stored.contains_key(n))
                .unwrap_or_else(|| start.clone());
            checks.push(Check::failed(
                "WAL present",
                format!(
                    "{} is missing: base backup {} needs every segment from {start} to {stop} to be consistent",
                    key(&missing),
                    id.short()
                ),
            ));
        }
        Ok((last, gap)) => {
            let last_stored = stored.get(&last).copied().flatten();
            if let Some(t) = last_stored {
                newest_point = newest_point.max(t);
            }
            let blocks = match (&gap, &request.point) {
                (None, _) => false,
                (Some(_), RecoveryPoint::Latest | RecoveryPoint::Lsn(_)) => true,
                // WAL written before the target lies past the gap.
                (Some(_), RecoveryPoint::Time(t)) => last_stored.is_none_or(|stored| stored < *t),
            };
            chain = stored.keys().filter(|n| **n >= start && **n <= last).cloned().collect();
            match gap {
                Some(missing) if blocks => checks.push(Check::failed(
                    "WAL present",
                    format!(
                        "{} is missing while later segments exist: recovery would stop at the end of {last}",
                        key(&missing)
                    ),
                )),
                _ => checks.push(Check::passed(
                    "WAL present",
                    format!("{} segments from {start} to {last}, unbroken, on timeline {timeline}", chain.len()),
                )),
            }
        }
    }
    if !chain.is_empty() {
        checks.push(authenticate(repo, &chain, request.sample, request.seed).await);
    }
    if let RecoveryPoint::Time(t) = request.point {
        newest_point = newest_point.min(t);
    }
    Ok(DrillPlan {
        snapshot: *id,
        manifest: manifest.clone(),
        newest_point,
        checks,
        restore_bytes: manifest.summary.bytes_total,
    })
}

/// Every segment name from `start` to `stop`.
fn names_between(start: &str, stop: &str, segment_size: u64) -> Vec<String> {
    let mut out = vec![start.to_owned()];
    while let Some(last) = out.last()
        && last.as_str() < stop
        && out.len() < 1 << 20
    {
        match super::wal::next_segment(last, segment_size) {
            Some(next) => out.push(next),
            None => break,
        }
    }
    out
}

/// Reads and authenticates the first and last segment of `chain` and
/// `sample` more chosen with `seed`.
async fn authenticate(repo: &Repository, chain: &[String], sample: u32, seed: u64) -> Check {
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let inner = chain.len().saturating_sub(2);
    let mut picked: Vec<&String> = rand::seq::index::sample(&mut rng, inner, (sample as usize).min(inner))
        .into_iter()
        .map(|i| &chain[i + 1])
        .collect();
    picked.push(&chain[0]);
    if chain.len() > 1 {
        picked.push(&chain[chain.len() - 1]);
    }
    let mut bytes_read = 0usize;
    for name in &picked {
        let key = match wal_key(name) {
            Ok(k) => k,
            Err(e) => return Check::failed("WAL authentic", format!("{name}: {e}")),
        };
        let opened = match repo.store().get(&key).await {
            Ok(bytes) => {
                bytes_read += bytes.len();
                object::open(repo.keyring(), WAL_KIND, &key, &bytes).map(|_| ()).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("{key}: {e}")),
        };
        if let Err(e) = opened {
            return Check::failed("WAL authentic", e);
        }
    }
    Check::passed(
        "WAL authentic",
        format!("{} of {} segments read and authenticated ({bytes_read} bytes)", picked.len(), chain.len()),
    )
}

/// The settings a drill's server runs with, after what the backup brought:
/// its own port and socket, reachable from this host only, archiving off,
/// following no primary, waiting for no synchronous standby, starting no
/// logical replication worker (a promoted copy's subscriptions would
/// otherwise connect to production's publishers and consume their slots),
/// its log and pid files its own.
fn scratch_settings(pgdata: &Path, port: u16, hba: &Path) -> String {
    format!(
        "\n# Added by a lifeboat drill: a scratch copy, never production\n\
         port = {port}\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = {}\n\
         hba_file = {}\n\
         archive_mode = off\n\
         primary_conninfo = ''\n\
         primary_slot_name = ''\n\
         synchronous_standby_names = ''\n\
         max_logical_replication_workers = 0\n\
         max_sync_workers_per_subscription = 0\n\
         external_pid_file = ''\n\
         logging_collector = off\n\
         ssl = off\n\
         cluster_name = 'lifeboat-drill'\n",
        conf_literal(&pgdata.display().to_string()),
        conf_literal(&hba.display().to_string())
    )
}

/// Who may connect to a drill's server: anyone who can reach its socket
/// (in the data directory: its owner and root), and over TCP from this
/// host with the production passwords.
const SCRATCH_HBA: &str = "local all all trust\n\
    host all all 127.0.0.1/32 scram-sha-256\n\
    host all all 127.0.0.1/32 md5\n";

/// Restores the plan into `scratch.dir/pgdata` and recovers it.
pub async fn recover(
    ctx: RestoreContext,
    plan: &DrillPlan,
    scratch: Scratch,
) -> Result<Box<dyn Recovered>, SourceError> {
    let pg = plan.manifest.postgres.clone().ok_or_else(|| {
        SourceError::Request(format!("snapshot {} is not a PostgreSQL base backup", plan.snapshot.short()))
    })?;
    let pgdata = scratch.dir.join("pgdata");
    let tablespaces: Vec<(String, PathBuf)> = pg
        .tablespaces
        .iter()
        .map(|t| (t.oid.to_string(), scratch.dir.join("tablespaces").join(t.oid.to_string())))
        .collect();
    let mut source = PostgresSource::default().with_tablespace_map(tablespaces);
    if let Some(bin) = &scratch.agent_bin {
        source = source.with_agent_bin(bin.clone());
    }
    let started = Instant::now();
    let request = RestoreRequest {
        target: pgdata.clone(),
        snapshot: Some(plan.snapshot.to_string()),
        path: None,
        point: scratch.point.clone(),
        delta: false,
    };
    let done = source.restore(ctx, request).await?;
    if !done.failed.is_empty() {
        return Err(SourceError::Request(format!(
            "{} files could not be restored: {}",
            done.failed.len(),
            done.failed.join("; ")
        )));
    }
    let restore = started.elapsed();
    isolate(&scratch.dir, &pgdata, scratch.port, "").map_err(SourceError::kind)?;
    let mut recovered = start(pgdata, pg.version, None, scratch).await.map_err(SourceError::kind)?;
    let reached = &recovered.reached;
    let summary = format!(
        "base backup {} restored ({} files); recovery reached {} on timeline {} (last commit replayed: {})",
        plan.snapshot.short(),
        plan.manifest.summary.files,
        reached.lsn,
        reached.timeline,
        reached.last_commit.as_deref().unwrap_or("none")
    );
    recovered.phases.insert(0, ("restore", restore));
    recovered.summary = summary;
    recovered.point = recovered.point.or(Some(pg.stop_time));
    Ok(Box::new(recovered))
}

/// Cuts a copy in `pgdata` off from production before it starts: its own
/// `pg_hba.conf` (in `dir`) and the scratch settings, then `extra`, after
/// what the copy brought.
pub(super) fn isolate(dir: &Path, pgdata: &Path, port: u16, extra: &str) -> Result<(), PgError> {
    let hba = dir.join("pg_hba.drill.conf");
    std::fs::write(&hba, SCRATCH_HBA).map_err(PgError::io("writing", &hba))?;
    crate::sources::owner::give_to_owner_of(pgdata, &hba).map_err(PgError::io("changing owner of", &hba))?;
    let auto = pgdata.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).map_err(PgError::io("reading", &auto))?;
    conf.push_str(&scratch_settings(pgdata, port, &hba));
    conf.push_str(extra);
    std::fs::write(&auto, conf).map_err(PgError::io("writing", &auto))
}

/// Starts the copy in `pgdata` (PostgreSQL `version`) and waits until it
/// has promoted; the one phase timed is `replay`.
pub(super) async fn start(
    pgdata: PathBuf,
    version: u32,
    pg_bin: Option<PathBuf>,
    scratch: Scratch,
) -> Result<PgRecovered, PgError> {
    // initdb names the first superuser after the user who ran it, who owns
    // the data directory (on another host the uid may name someone else:
    // `checks.user` says whom).
    let user = scratch.checks.user.clone().or_else(|| owner_name(&pgdata)).unwrap_or_else(|| "postgres".to_owned());
    let opts = StartOptions { pg_bin: pg_bin.clone(), user: user.clone(), timeout: scratch.timeout };
    let started = Instant::now();
    let reached = start_and_wait(&pgdata, version, &opts).await?;
    let replay = started.elapsed();
    Ok(PgRecovered {
        pgdata,
        port: scratch.port,
        user,
        major: (version / 10000).to_string(),
        pg_bin,
        checks: scratch.checks,
        keep: scratch.keep,
        phases: vec![("replay", replay)],
        summary: String::new(),
        point: reached.last_commit.as_deref().and_then(|t| parse_recovery_time(t).ok()),
        reached,
    })
}

/// A drill's running copy of a cluster.
pub(super) struct PgRecovered {
    pgdata: PathBuf,
    port: u16,
    user: String,
    major: String,
    pg_bin: Option<PathBuf>,
    checks: DrillChecks,
    keep: bool,
    /// The timed parts of bringing it up.
    pub phases: Vec<(&'static str, Duration)>,
    /// What was brought up, in one line.
    pub summary: String,
    /// The last commit replayed.
    pub point: Option<DateTime<Utc>>,
    /// Where recovery ended.
    pub reached: RecoveryReached,
}

impl PgRecovered {
    fn connect(&self, dbname: &str) -> ConnectArgs {
        ConnectArgs {
            host: Some(self.pgdata.display().to_string()),
            port: Some(self.port),
            user: Some(self.user.clone()),
            dbname: Some(dbname.to_owned()),
            ..ConnectArgs::default()
        }
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let program = pg_program(self.pg_bin.as_deref(), &self.major, "pg_ctl");
        let mut cmd = Command::new(&program);
        cmd.arg("-D").arg(&self.pgdata).args(args);
        let out = output_as_owner(cmd, &program, &self.pgdata).await.map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    async fn amcheck(&self) -> Check {
        let program = pg_program(self.pg_bin.as_deref(), &self.major, "pg_amcheck");
        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg("-h").arg(&self.pgdata).arg("-p").arg(self.port.to_string()).arg("-U").arg(&self.user);
        // One connection per core: the check reads every relation, and the copy is the drill's alone.
        let jobs = std::thread::available_parallelism().map_or(1, usize::from);
        cmd.args(["--all", "--install-missing", "--no-password"]).arg(format!("--jobs={jobs}"));
        match cmd.output().await {
            Ok(out) if out.status.success() => Check::passed("pg_amcheck", "no corruption found in any database"),
            Ok(out) => {
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                let lines: Vec<&str> = text.lines().take(10).collect();
                Check::failed("pg_amcheck", format!("exit {}: {}", out.status, lines.join("; ")))
            }
            Err(e) => Check::failed("pg_amcheck", format!("running {}: {e}", program.display())),
        }
    }

    async fn probe(&self, query: &str, expect: Option<&str>, database: &str) -> Check {
        let name = format!("sql: {query}");
        let client = match self.connect(database).connect().await {
            Ok(c) => c,
            Err(e) => return Check::failed(name, format!("connecting to database {database}: {e}")),
        };
        let rows = match client.simple_query(query).await {
            Ok(rows) => rows,
            Err(e) => return Check::failed(name, PgError::db(format!("in database {database}"))(e).to_string()),
        };
        let first = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        });
        let got = first.flatten();
        match expect {
            None => Check::passed(name, format!("ran, returned {}", got.as_deref().unwrap_or("no value"))),
            Some(want) => {
                let ok = got.as_deref().is_some_and(|g| same_value(g, want));
                Check::of(name, ok, format!("returned {:?}, expected {want:?}", got.as_deref().unwrap_or("no row")))
            }
        }
    }
}

/// Whether a value PostgreSQL returned as text reads as `want` (booleans
/// come back as `t`/`f`).
fn same_value(got: &str, want: &str) -> bool {
    let norm = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" => "t".to_owned(),
        "f" | "false" => "f".to_owned(),
        other => other.to_owned(),
    };
    norm(got) == norm(want)
}

#[async_trait::async_trait]
impl Recovered for PgRecovered {
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
            ("PGHOST".into(), self.pgdata.display().to_string()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), self.user.clone()),
            ("LIFEBOAT_DRILL_PGDATA".into(), self.pgdata.display().to_string()),
            ("DATABASE_URL".into(), format!("postgresql://{}@127.0.0.1:{}/postgres", self.user, self.port)),
        ]
    }

    async fn check(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        let connected = match self.connect("postgres").connect().await {
            Ok(client) => match client.query_one("SELECT current_setting('server_version')", &[]).await {
                Ok(row) => Ok(row.get::<_, String>(0)),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(version) => checks.push(Check::passed(
                "connection",
                format!(
                    "PostgreSQL {version} on port {} accepts connections as {}; recovery ended at {} on timeline {}",
                    self.port, self.user, self.reached.lsn, self.reached.timeline
                ),
            )),
            Err(e) => {
                checks.push(Check::failed("connection", e));
                return checks;
            }
        }
        if self.checks.amcheck {
            let started = Instant::now();
            checks.push(self.amcheck().await.timed(started));
        }
        for probe in &self.checks.sql {
            let db = probe.database.as_deref().unwrap_or("postgres");
            let started = Instant::now();
            checks.push(self.probe(&probe.query, probe.expect.as_deref(), db).await.timed(started));
        }
        checks
    }

    async fn stop(&self) -> Result<(), String> {
        if !self.pgdata.join("postmaster.pid").exists() {
            return Ok(());
        }
        // A copy thrown away needs no shutdown checkpoint.
        if self.keep
            && let Err(e) = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"]).await
        {
            tracing::warn!(pgdata = %self.pgdata.display(), error = %e, "a fast stop of the drill's server failed: stopping immediate");
        }
        if self.pgdata.join("postmaster.pid").exists() {
            self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_names() {
        assert!(same_value("t", "true") && same_value("f", "F") && same_value("42", " 42"));
        assert!(!same_value("t", "f") && !same_value("41", "42"));
        let names = names_between("000000010000000000000003", "000000010000000100000001", 1 << 30);
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[1], "000000010000000100000000");
    }
}
