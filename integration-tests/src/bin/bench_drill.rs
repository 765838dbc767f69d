//! Restore drill benchmark: a database recovery drill of Lifeboat (checklist,
//! restore, WAL replay, checks, clean-up, all timed) beside pgBackRest's
//! restore of the same database and a start of PostgreSQL to the same
//! recovery target, in the same run. The cluster archives every WAL segment
//! to both repositories; after the base backups (one each) a workload writes
//! WAL_GIB of WAL, then a marker row ends it: both recoveries must reach it.
//!
//! Usage: bench_drill [WORK_DIR] [SIZE_GIB] [WAL_GIB]

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lifeboat_integration_tests::bench::{
    drop_caches, fresh_work_dir, history_database, lifeboat_binaries, measure, pgbackrest, pgbackrest_conf,
    pgbackrest_setup, sync_and_settle,
};
use lifeboat_integration_tests::postgres::{Cluster, as_postgres, give_to_postgres, pg_bin};
use serde_json::Value;

/// Switches to a new WAL segment and waits until the archiver has stored
/// it (in both repositories: one command pushes to each).
fn wait_archived(pg: &Cluster, within: Duration) -> Result<()> {
    let segment = pg.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + within;
    while pg.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").as_str() < segment.as_str() {
        if Instant::now() > deadline {
            bail!("WAL not archived within {within:?}:\n{}", pg.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/lifeboat-bench-drill".into()));
    let gib: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4.0);
    let wal_gib: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let (lifeboat, agent) = lifeboat_binaries()?;
    fresh_work_dir(&work)?;

    let (repo, key) = (work.join("lifeboat-repo"), work.join("lifeboat.key"));
    let lb = |args: &[&str]| {
        let mut c = Command::new(&lifeboat);
        c.args(args)
            .env("LIFEBOAT_REPO", &repo)
            .env("LIFEBOAT_KEY_FILE", &key)
            .env("LIFEBOAT_STATE_DIR", work.join("lifeboat-state"));
        c
    };
    measure(&mut lb(&["key", "generate", "--out", key.to_str().unwrap_or_default()]))?;
    measure(&mut lb(&["repo", "init"]))?;
    give_to_postgres(&repo);
    give_to_postgres(&key);

    let pgbr_conf = pgbackrest_conf(&work);
    // Every segment goes to both repositories.
    let conf = format!(
        "archive_mode = on\narchive_command = '{} wal-push --repo={} --key-file={} %p && /usr/bin/pgbackrest --config={} --stanza=bench archive-push %p'\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\nshared_buffers = 256MB\n",
        agent.display(),
        repo.display(),
        key.display(),
        pgbr_conf.display()
    );
    let mut pg = Cluster::init(&work, "pg", &conf);
    pgbackrest_setup(&work, &pg, "")?;
    let pgbr = |args: &[&str]| pgbackrest(&pgbr_conf, args);
    pg.start();
    measure(&mut pgbr(&["stanza-create"])).context("pgbackrest stanza-create")?;

    let t = Instant::now();
    let rows = history_database(&pg, gib, 100_000);
    let db_bytes: u64 = pg.sql("SELECT pg_database_size('postgres')").parse()?;
    println!("database {:.2} GiB made in {:.1}s", db_bytes as f64 / (1u64 << 30) as f64, t.elapsed().as_secs_f64());

    // The load's WAL archived first, so neither backup waits for the other's share.
    wait_archived(&pg, Duration::from_secs(1800))?;
    let port = pg.port.to_string();
    let mut backup = lb(&["backup", "postgres", "--hostname", "bench", "--tag", "source:pg", "--pgdata"]);
    backup.arg(&pg.pgdata).args(["--host", "127.0.0.1", "--port", &port, "--user", "postgres"]);
    sync_and_settle();
    let lb_backup = measure(&mut backup).context("lifeboat base backup")?;
    sync_and_settle();
    let br_backup = measure(&mut pgbr(&["backup", "--type=full"])).context("pgbackrest backup")?;
    println!("base backups: lifeboat {:.1}s, pgbackrest {:.1}s", lb_backup.secs, br_backup.secs);

    // The WAL after the base backups: the hot set rewritten and history
    // appended, batch after batch, until WAL_GIB of WAL is written.
    let t = Instant::now();
    let start_lsn = pg.sql("SELECT pg_current_wal_lsn()");
    let want = (wal_gib * (1u64 << 30) as f64) as u64;
    let mut next = rows;
    loop {
        let written: u64 =
            pg.sql(&format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start_lsn}')::bigint")).parse()?;
        if written >= want {
            break;
        }
        pg.sql("UPDATE hot SET v = v + 1, note = md5(random()::text) || repeat('n', 68) WHERE id % 4 = (v % 4)");
        pg.sql(&format!(
            "INSERT INTO history SELECT g, clock_timestamp(), md5(g::text) || repeat('h', 150) FROM generate_series({}, {}) g",
            next + 1,
            next + 200_000
        ));
        next += 200_000;
    }
    pg.sql("CREATE TABLE marker (at timestamptz DEFAULT clock_timestamp())");
    pg.sql("INSERT INTO marker DEFAULT VALUES");
    let marker = pg.sql("SELECT at FROM marker");
    wait_archived(&pg, Duration::from_secs(1800))?;
    println!(
        "{:.2} GiB of WAL written after the base backups and archived to both in {:.1}s; marker committed at {marker}",
        wal_gib,
        t.elapsed().as_secs_f64()
    );
    pg.stop();

    // Lifeboat: the whole drill, from the simulated disaster to the report.
    let scratch = work.join("drill-scratch");
    let policy = work.join("policy.yaml");
    fs::write(
        &policy,
        format!(
            "recovery_objectives:\n  database: {{ rto: 15m, rpo: 5m, sources: [bench/pg] }}\n\
             drills:\n  database-recovery:\n    kind: recovery\n    sources: [bench/pg]\n    agent: bench\n    scratch: {}\n    \
             checks:\n      amcheck: true\n      sql:\n        - {{ query: \"SELECT EXISTS (SELECT 1 FROM history)\", expect: \"t\" }}\n        \
             - {{ query: \"SELECT count(*) FROM marker\", expect: \"1\" }}\n",
            scratch.display()
        ),
    )?;
    sync_and_settle();
    drop_caches();
    let t = Instant::now();
    let out = lb(&["drill", "run", "--json", "--policy", policy.to_str().unwrap_or_default(), "database-recovery"])
        .output()?;
    let drill_wall = t.elapsed().as_secs_f64();
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the drill's report: {}", String::from_utf8_lossy(&out.stderr)))?;
    if report["passed"] != true {
        bail!("the drill failed: {report:#}");
    }
    let phase = |name: &str| -> f64 {
        report["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == name)
            .filter_map(|p| p["seconds"].as_f64())
            .sum()
    };
    let rto = report["rto_seconds"].as_f64().unwrap_or_default();
    let amcheck = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == "pg_amcheck")
        .filter_map(|c| c["seconds"].as_f64())
        .sum::<f64>();
    let overhead = phase("checklist") + phase("checks") + phase("cleanup");

    // pgBackRest: restore, then PostgreSQL started to the end of the archive.
    let target = work.join("pgbackrest-restore");
    fs::create_dir_all(&target)?;
    give_to_postgres(&target);
    sync_and_settle();
    drop_caches();
    let t = Instant::now();
    measure(pgbr(&["restore", "--type=default"]).arg(format!("--pg1-path={}", target.display())))
        .context("pgbackrest restore")?;
    let br_restore = t.elapsed().as_secs_f64();
    let br_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let run = work.join("pgbackrest-run");
    fs::create_dir_all(&run)?;
    give_to_postgres(&run);
    let mut auto = fs::OpenOptions::new().append(true).open(target.join("postgresql.auto.conf"))?;
    std::io::Write::write_all(
        &mut auto,
        format!("\nport = {br_port}\nunix_socket_directories = '{}'\narchive_mode = off\n", run.display()).as_bytes(),
    )?;
    let started = as_postgres(&pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&target)
        .arg("-l")
        .arg(run.join("server.log"))
        .args(["-w", "-t", "3600", "start"])
        .status()?;
    if !started.success() {
        bail!("the pgBackRest-restored server did not start: {}", fs::read_to_string(run.join("server.log"))?);
    }
    let restored = Cluster::running(&target, &run, br_port);
    while restored.sql("SELECT pg_is_in_recovery()") == "t" {
        std::thread::sleep(Duration::from_millis(100));
    }
    let br_total = t.elapsed().as_secs_f64();
    let reached = restored.sql("SELECT count(*) FROM marker");
    if reached != "1" {
        bail!("pgBackRest's recovery did not reach the marker");
    }
    drop(restored);

    println!();
    println!("lifeboat drill (report {}):", report["id"].as_str().unwrap_or_default());
    for p in ["fetch", "checklist", "restore", "replay", "checks", "cleanup"] {
        println!("  {p:<10} {:>8.1}s", phase(p));
    }
    println!("  of the checks, pg_amcheck {amcheck:.1}s");
    println!("  RTO (start to last check passing) {rto:.1}s; whole run with clean-up {drill_wall:.1}s");
    println!(
        "  RPO {:.1}s (the last replayed commit's age at the drill's start)",
        report["rpo_seconds"].as_f64().unwrap_or_default()
    );
    println!(
        "pgbackrest: restore {br_restore:.1}s, recovery {:.1}s, restore and recover {br_total:.1}s",
        br_total - br_restore
    );
    println!(
        "RTO / pgbackrest restore-and-recover: {:.2} (target at most 0.5); lifeboat restore+replay alone: {:.2}",
        rto / br_total,
        (phase("restore") + phase("replay")) / br_total
    );
    println!(
        "drill overhead (checklist + checks + clean-up) {overhead:.1}s = {:.1}% of the RTO (target under 10%); without pg_amcheck {:.1}%",
        overhead / rto * 100.0,
        (overhead - amcheck) / rto * 100.0
    );
    Ok(())
}
