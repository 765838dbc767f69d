//! PostgreSQL benchmark: Lifeboat beside pgBackRest (zstd, process-max =
//! cores, encrypted like every Lifeboat repository) on the same cluster in
//! the same run. A database with a large
//! append-mostly history table and a small hot table; a full backup; a day
//! of changes (the hot set rewritten, history appended); a second backup
//! (pgBackRest incremental beside Lifeboat's deduplicated one); a restore of
//! the files; and the rate of archiving a burst of WAL segments, one call
//! per segment as PostgreSQL makes them.
//!
//! Usage: bench_postgres [WORK_DIR] [SIZE_GIB]

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use lifeboat_integration_tests::bench::{
    Measured, drop_caches, du, fresh_work_dir, history_database, lifeboat_binaries, measure, pgbackrest,
    pgbackrest_setup, sync_and_settle,
};
use lifeboat_integration_tests::postgres::{Cluster, as_postgres, give_to_postgres};

/// WAL segments in the archiving burst.
const BURST: usize = 48;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/lifeboat-bench-postgres".into()));
    let gib: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1.5);
    let (lifeboat, agent) = lifeboat_binaries()?;
    fresh_work_dir(&work)?;

    // Lifeboat's repository, usable by the postgres user that runs archive_command.
    let (repo, key) = (work.join("lifeboat-repo"), work.join("lifeboat.key"));
    let lb = |args: &[&str]| {
        let mut c = Command::new(&lifeboat);
        c.args(args).env("LIFEBOAT_REPO", &repo).env("LIFEBOAT_KEY_FILE", &key);
        c
    };
    measure(&mut lb(&["key", "generate", "--out", key.to_str().unwrap_or_default()]))?;
    measure(&mut lb(&["repo", "init"]))?;
    give_to_postgres(&repo);
    give_to_postgres(&key);

    let conf = format!(
        "archive_mode = on\narchive_command = '{} wal-push --repo={} --key-file={} %p'\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\nshared_buffers = 256MB\n",
        agent.display(),
        repo.display(),
        key.display()
    );
    let mut pg = Cluster::init(&work, "pg", &conf);
    pg.start();
    let t = Instant::now();
    let rows = history_database(&pg, gib, 20_000);
    // Both tools take files whose times predate the last backup as
    // unchanged; a database written a moment ago is not the case to measure.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let db_bytes: u64 = pg.sql("SELECT pg_database_size('postgres')").parse()?;
    let history_bytes: u64 = pg.sql("SELECT pg_relation_size('history')").parse()?;
    println!(
        "database {:.2} GiB ({rows} history rows, history table {:.2} GiB: its last 1 GiB segment file {:.0}% full) made in {:.1}s",
        db_bytes as f64 / (1u64 << 30) as f64,
        history_bytes as f64 / (1u64 << 30) as f64,
        (history_bytes % (1 << 30)) as f64 / (1u64 << 30) as f64 * 100.0,
        t.elapsed().as_secs_f64()
    );

    // pgBackRest on the same cluster (it archives nothing here: no archive checks).
    let pgbr_repo = work.join("pgbackrest-repo");
    let pgbr_conf = pgbackrest_setup(&work, &pg, "archive-check=n\narchive-header-check=n\n")?;
    let pgbr = |args: &[&str]| pgbackrest(&pgbr_conf, args);
    measure(&mut pgbr(&["stanza-create"])).context("pgbackrest stanza-create")?;

    let port = pg.port.to_string();
    let lb_backup = || {
        let mut c = lb(&["backup", "postgres", "--pgdata", pg.pgdata.to_str().unwrap_or_default()]);
        c.args(["--host", "127.0.0.1", "--port", &port, "--user", "postgres"]);
        c
    };
    let mut rows_out: Vec<(&str, Measured, Measured, u64, u64)> = Vec::new();
    for (step, pgbr_type) in [("full backup", "full"), ("second backup", "incr")] {
        if pgbr_type == "incr" {
            // A day of changes: the hot set rewritten, history appended.
            for _ in 0..3 {
                pg.sql("UPDATE hot SET v = v + 1, note = md5(random()::text) || repeat('n', 68)");
            }
            pg.sql(&format!(
                "INSERT INTO history SELECT g, now(), md5(g::text) || repeat('h', 150) FROM generate_series({}, {}) g",
                rows + 1,
                rows + rows / 20
            ));
            // What autovacuum would have done during the day.
            pg.sql("VACUUM ANALYZE");
            pg.sql("CHECKPOINT");
        }
        let (lb_before, br_before) = (du(&repo), du(&pgbr_repo));
        sync_and_settle();
        let l = measure(&mut lb_backup()).with_context(|| format!("lifeboat {step}"))?;
        sync_and_settle();
        let b = measure(&mut pgbr(&["backup", &format!("--type={pgbr_type}")]))
            .with_context(|| format!("pgbackrest {step}"))?;
        rows_out.push((step, l, b, du(&repo) - lb_before, du(&pgbr_repo) - br_before));
    }

    // Restore of the files (recovery itself is PostgreSQL's work, the same for both).
    let (lb_target, br_target) = (work.join("restore-lifeboat"), work.join("restore-pgbackrest"));
    fs::create_dir_all(&br_target)?;
    give_to_postgres(&br_target);
    sync_and_settle();
    drop_caches();
    let l =
        measure(&mut lb(&["restore", "postgres", "--latest", "--target-dir", lb_target.to_str().unwrap_or_default()]))?;
    sync_and_settle();
    drop_caches();
    let b = measure(pgbr(&["restore"]).arg(format!("--pg1-path={}", br_target.display())))?;
    rows_out.push(("restore", l, b, du(&lb_target), du(&br_target)));

    // A burst of WAL: copies of a real segment under consecutive names on a
    // timeline of their own, archived one call per segment.
    let template = fs::read_dir(pg.pgdata.join("pg_wal"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() == 24))
        .context("a WAL segment to copy")?;
    let content = fs::read(&template)?;
    pg.stop();
    let mut rates = Vec::new();
    for (tool, tli) in [("lifeboat", "0000000A"), ("lifeboat ahead", "0000000B"), ("pgbackrest", "0000000C")] {
        let dir = work.join(format!("burst-{tli}"));
        fs::create_dir_all(dir.join("archive_status"))?;
        let names: Vec<String> = (1..=BURST).map(|i| format!("{tli}00000000{i:08X}")).collect();
        for n in &names {
            fs::write(dir.join(n), &content)?;
            fs::write(dir.join("archive_status").join(format!("{n}.ready")), b"")?;
        }
        give_to_postgres(&dir);
        sync_and_settle();
        let started = Instant::now();
        for n in &names {
            let path = dir.join(n);
            let mut c = match tool {
                "pgbackrest" => {
                    let mut c = pgbr(&["archive-push"]);
                    c.arg(&path);
                    c
                }
                _ => {
                    let mut c = as_postgres(&agent);
                    c.args([
                        "wal-push",
                        &format!("--repo={}", repo.display()),
                        &format!("--key-file={}", key.display()),
                    ]);
                    c.args(["--ahead", if tool == "lifeboat" { "0" } else { "8" }]);
                    c.arg(format!("--spool={}", dir.join("spool").display())).arg(&path);
                    c
                }
            };
            measure(&mut c).with_context(|| format!("{tool} archiving {n}"))?;
            // PostgreSQL marks a segment done once its command succeeds.
            let _ = fs::rename(
                dir.join("archive_status").join(format!("{n}.ready")),
                dir.join("archive_status").join(format!("{n}.done")),
            );
        }
        rates.push((tool, BURST as f64 / started.elapsed().as_secs_f64()));
    }

    println!(
        "\n{:<16} {:>12} {:>12} {:>8} {:>10} {:>10} {:>14} {:>14}",
        "step", "lifeboat s", "pgbackrest s", "speedup", "lb MiB", "pgbr MiB", "lb stored MiB", "pgbr stored MiB"
    );
    for (step, l, b, ls, bs) in &rows_out {
        println!(
            "{step:<16} {:>12.2} {:>12.2} {:>7.2}x {:>10.1} {:>10.1} {:>14.1} {:>14.1}",
            l.secs,
            b.secs,
            b.secs / l.secs,
            l.peak_rss_kib as f64 / 1024.0,
            b.peak_rss_kib as f64 / 1024.0,
            *ls as f64 / (1 << 20) as f64,
            *bs as f64 / (1 << 20) as f64
        );
    }
    let second = &rows_out[1];
    println!("second backup stored: lifeboat/pgbackrest {:.3}", second.3 as f64 / second.4.max(1) as f64);
    let pgbr_rate = rates.iter().find(|r| r.0 == "pgbackrest").map_or(1.0, |r| r.1);
    for (tool, rate) in &rates {
        println!(
            "WAL push, one call per segment: {tool:<15} {rate:>7.1} segments/s ({:.2}x pgbackrest)",
            rate / pgbr_rate
        );
    }
    if std::env::var_os("KEEP").is_none() {
        fs::remove_dir_all(&work).ok();
    }
    Ok(())
}
