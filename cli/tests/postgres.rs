//! PostgreSQL 15 end to end, on real clusters made by `initdb` and run as
//! the postgres user: WAL archived by `lifeboat-agent wal-push`, a base
//! backup taken under a write workload, restored and recovered.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_agent::sources::postgres::restore::parse_lsn;
use lifeboat_integration_tests::postgres::{
    Cluster, as_postgres, give_to_postgres, pg_bin, postgres_dir, workspace_bin,
};
use support::Env;
use support::pg::{archive_conf, archive_current_wal, env_for_postgres};

#[test]
fn base_backup_under_load_restores_and_recovers_to_the_latest_commit() {
    let env = env_for_postgres();
    let mut pg = Cluster::init(env.dir.path(), "primary", &archive_conf(&env));
    pg.start();
    let port = pg.port.to_string();
    let pgbench = |args: &[&str]| {
        Command::new(pg_bin("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap()
    };
    let out = pgbench(&["-i", "-s", "4", "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.sql("CREATE TABLE marks (label text PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");

    // The base backup runs while pgbench writes.
    let load = {
        let port = port.clone();
        std::thread::spawn(move || {
            Command::new(pg_bin("pgbench"))
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-T", "6", "-c", "2", "postgres"])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut args =
        vec!["backup".to_owned(), "postgres".to_owned(), "--pgdata".to_owned(), pg.pgdata.display().to_string()];
    args.extend(pg.conn_args());
    let out = env.cmd().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("base backup") && err.contains("timeline 1"), "{err}");
    let load = load.join().unwrap();
    assert!(load.status.success(), "pgbench: {}", String::from_utf8_lossy(&load.stderr));

    // Committed after the backup ended: only archived WAL can bring it back.
    pg.sql("INSERT INTO marks(label) VALUES ('after the backup')");
    let accounts = pg.sql("SELECT sum(abalance) FROM pgbench_accounts");
    let history = pg.sql("SELECT count(*) FROM pgbench_history");
    archive_current_wal(&pg);
    pg.stop();

    // Recovery ends, then the server promotes and accepts writes.
    let restored = restore_and_start(&env, &pg, "restored", &["--latest"]);
    assert_eq!(restored.sql("SELECT count(*) FROM marks WHERE label = 'after the backup'"), "1");
    assert_eq!(restored.sql("SELECT sum(abalance) FROM pgbench_accounts"), accounts);
    assert_eq!(restored.sql("SELECT count(*) FROM pgbench_history"), history);
    let amcheck = Command::new(pg_bin("pg_amcheck"))
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "--all", "--heapallindexed", "--install-missing"])
        .output()
        .unwrap();
    assert!(
        amcheck.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&amcheck.stdout),
        String::from_utf8_lossy(&amcheck.stderr)
    );
}

/// A primary with WAL archiving and one base backup, and the environment.
fn primary_with_backup() -> (Env, Cluster) {
    let env = env_for_postgres();
    let mut pg = Cluster::init(env.dir.path(), "primary", &archive_conf(&env));
    pg.start();
    pg.sql("CREATE TABLE events (n int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    base_backup(&env, &pg);
    (env, pg)
}

/// Restores into a new directory with `target` arguments, starts it, waits
/// until it has promoted, and returns it (the primary must be stopped).
fn restore_and_start(env: &Env, pg: &Cluster, name: &str, target: &[&str]) -> Cluster {
    let dir = env.path(name);
    let mut args = vec!["restore", "postgres", "--target-dir", dir.to_str().unwrap()];
    args.extend(target);
    let out = env.cmd().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut restored = Cluster::existing(&dir, &pg.run_dir, pg.port);
    restored.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while restored.sql("SELECT pg_is_in_recovery()") == "t" {
        assert!(Instant::now() < deadline, "recovery did not finish:\n{}", restored.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    restored
}

#[test]
fn point_in_time_restore_to_a_time_and_to_an_lsn() {
    let (env, mut pg) = primary_with_backup();
    // Ten transactions, 200 ms apart; remember the time and LSN after the fourth.
    let (mut cut_time, mut cut_lsn) = (String::new(), String::new());
    for n in 1..=10 {
        pg.sql(&format!("INSERT INTO events(n) VALUES ({n})"));
        if n == 4 {
            std::thread::sleep(Duration::from_millis(100));
            cut_time =
                pg.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
            cut_lsn = pg.sql("SELECT pg_current_wal_lsn()");
            std::thread::sleep(Duration::from_millis(100));
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    archive_current_wal(&pg);
    pg.stop();

    let mut at_time = restore_and_start(&env, &pg, "by-time", &["--to-time", &cut_time]);
    assert_eq!(at_time.sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM events"), "1,2,3,4", "{}", at_time.log());
    at_time.stop();

    let at_lsn = restore_and_start(&env, &pg, "by-lsn", &["--to-lsn", &cut_lsn]);
    assert_eq!(at_lsn.sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM events"), "1,2,3,4");
}

#[test]
fn wal_push_is_idempotent_refuses_changed_content_and_fetch_of_the_unknown_is_quiet() {
    let (env, mut pg) = primary_with_backup();
    let segment = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    archive_current_wal(&pg);
    pg.stop();
    let agent = workspace_bin("lifeboat-agent");
    let repo_args = [format!("--repo={}", env.repo.display()), format!("--key-file={}", env.key.display())];
    let push =
        |path: &std::path::Path| Command::new(&agent).arg("wal-push").args(&repo_args).arg(path).output().unwrap();
    let fetch = |name: &str, dest: &std::path::Path| {
        Command::new(&agent).arg("wal-fetch").args(&repo_args).arg(name).arg(dest).output().unwrap()
    };

    // The archived segment, fetched back whole, under its own name.
    let copies = env.path("copies");
    std::fs::create_dir_all(&copies).unwrap();
    let wal = copies.join(&segment);
    assert!(fetch(&segment, &wal).status.success());
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), 16 << 20);
    // PostgreSQL retrying a push that had succeeded: fine.
    let out = push(&wal);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Same name, other content: refused, loudly, and the stored one is kept.
    let original = std::fs::read(&wal).unwrap();
    let mut bytes = original.clone();
    bytes[100] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();
    let out = push(&wal);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&segment) && err.contains("different content"), "{err}");
    let fetched = env.path("fetched");
    assert!(fetch(&segment, &fetched).status.success());
    assert_eq!(std::fs::read(&fetched).unwrap(), original);

    // Asking for a segment nobody archived: exit 1, nothing on stderr, nothing written.
    let absent = env.path("absent");
    let out = Command::new(&agent)
        .arg("wal-fetch")
        .args(&repo_args)
        .args(["0000000100000099000000AA"])
        .arg(&absent)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!absent.exists());
}

#[test]
fn a_gap_in_the_archive_is_found_before_restoring_and_a_damaged_segment_stops_recovery() {
    let (env, mut pg) = primary_with_backup();
    let mut segments = Vec::new();
    for n in 1..=3 {
        pg.sql(&format!("INSERT INTO events(n) VALUES ({n})"));
        segments.push(pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
        archive_current_wal(&pg);
    }
    pg.stop();
    let object = |segment: &str| env.repo.join("wal").join(&segment[..8]).join(segment);

    // The middle segment lost: refused before anything is written.
    let lost = object(&segments[1]);
    let kept = std::fs::read(&lost).unwrap();
    std::fs::remove_file(&lost).unwrap();
    let dir = env.path("gap");
    let err = env.fails(&["restore", "postgres", "--latest", "--target-dir", dir.to_str().unwrap()]);
    assert!(err.contains(&segments[1]) && err.contains("missing"), "{err}");
    assert!(std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()), "files were restored anyway");

    // Back, but damaged: recovery stops at it, naming it, instead of promoting early.
    let mut damaged = kept;
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x01;
    std::fs::write(&lost, damaged).unwrap();
    let dir = env.path("damaged");
    env.ok(&["restore", "postgres", "--latest", "--target-dir", dir.to_str().unwrap()]);
    let mut restored = Cluster::existing(&dir, &pg.run_dir, pg.port);
    let up = restored.start_waiting(Duration::from_secs(30));
    let log = restored.log();
    assert!(!up || restored.sql("SELECT pg_is_in_recovery()") == "t", "recovery went past a damaged segment:\n{log}");
    assert!(log.contains(&segments[1]), "the damaged segment is not named:\n{log}");
}

#[test]
fn a_burst_of_wal_is_archived_ahead_and_recovered_whole() {
    let (env, mut pg) = primary_with_backup();
    pg.sql("CREATE TABLE burst AS SELECT g, repeat(md5(g::text), 4) AS pad FROM generate_series(1, 300000) g");
    pg.sql("INSERT INTO events(n) VALUES (42)");
    let segments_before = pg.sql("SELECT count(*) FROM pg_ls_waldir()");
    archive_current_wal(&pg);
    let failed = pg.sql("SELECT failed_count FROM pg_stat_archiver");
    assert_eq!(failed, "0", "archiving failed:\n{}", pg.log());
    pg.stop();
    assert!(segments_before.parse::<u32>().unwrap() > 5, "the burst made too little WAL to test anything");

    // The listing sees the backup and how far the archived WAL reaches.
    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["backups", "postgres", "--json"])).unwrap();
    let backup = &listed[0];
    assert_eq!(backup["timeline"], 1);
    assert!(backup["unusable"].is_null() && backup["wal_gap_at"].is_null(), "{listed}");
    let reach = backup["recoverable_to_lsn"].as_str().unwrap();
    let lsn = |s: &str| parse_lsn(s).unwrap();
    assert!(lsn(reach) > lsn(backup["stop_lsn"].as_str().unwrap()) + (3 << 24), "{listed}");
    // ... and until about when: no earlier than the backup, no later than now.
    let time = |v: &serde_json::Value| v.as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let until = time(&backup["recoverable_to_time"]);
    assert!(until >= time(&backup["stop_time"]) && until <= chrono::Utc::now(), "{listed}");
    assert!(env.ok(&["backups", "postgres"]).contains(&backup["id"].as_str().unwrap()[..8]));

    let restored = restore_and_start(&env, &pg, "after-burst", &["--latest"]);
    assert_eq!(restored.sql("SELECT count(*) FROM burst"), "300000");
    assert_eq!(restored.sql("SELECT count(*) FROM events WHERE n = 42"), "1");
}

#[test]
fn a_promoted_branch_gets_a_new_timeline_that_archives_and_recovers() {
    let (env, mut pg) = primary_with_backup();
    pg.sql("INSERT INTO events(n) VALUES (1), (2)");
    let cut = pg.sql("SELECT pg_current_wal_lsn()");
    pg.sql("INSERT INTO events(n) VALUES (3)");
    archive_current_wal(&pg);
    pg.stop();

    // Recover to the cut and promote: a new timeline branches off there,
    // archiving into the same repository.
    let mut branch = restore_and_start(&env, &pg, "branch", &["--to-lsn", &cut]);
    assert!(branch.sql("SELECT pg_walfile_name(pg_current_wal_lsn())").starts_with("00000002"), "{}", branch.log());
    branch.sql("INSERT INTO events(n) VALUES (10)");
    archive_current_wal(&branch);
    let history = env.repo.join("wal/00000002/00000002.history");
    assert!(history.exists(), "the timeline history was not archived");
    branch.stop();

    // From the same base backup, --latest follows the newest timeline.
    let followed = restore_and_start(&env, &pg, "followed", &["--latest"]);
    assert_eq!(followed.sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM events"), "1,2,10");
    assert!(followed.sql("SELECT pg_walfile_name(pg_current_wal_lsn())").starts_with("00000003"));
}

/// `lifeboat-agent wal-stream` for a cluster, with its status file.
struct Streamer {
    child: std::process::Child,
    status: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Streamer {
    fn start(env: &Env, pg: &Cluster, name: &str, extra: &[&str]) -> Self {
        let status = env.path(&format!("{name}.status.json"));
        let log = env.path(&format!("{name}.log"));
        let _ = std::fs::remove_file(&status);
        let child = Command::new(workspace_bin("lifeboat-agent"))
            .arg("wal-stream")
            .args(["--repo", env.repo.to_str().unwrap(), "--key-file", env.key.to_str().unwrap()])
            .args(pg.conn_args())
            .args(["--slot", "lifeboat", "--interval", "1", "--status-file", status.to_str().unwrap()])
            .args(extra)
            .env("LIFEBOAT_STATE_DIR", env.path("state"))
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(env.path(&format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let streamer = Streamer { child, status, log };
        streamer.wait_for(Duration::from_secs(30), |s| s["connected"] == true);
        streamer
    }

    /// Waits until the status satisfies `ok`; returns how long that took.
    fn wait_for(&self, within: Duration, ok: impl Fn(&serde_json::Value) -> bool) -> Duration {
        let started = Instant::now();
        loop {
            let status = std::fs::read(&self.status).ok().and_then(|b| serde_json::from_slice(&b).ok());
            if status.as_ref().is_some_and(&ok) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "wal-stream status {status:?} not reached in {within:?}:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the repository holds WAL up to `lsn`.
    fn wait_stored(&self, lsn: &str, within: Duration) -> Duration {
        let want = parse_lsn(lsn).unwrap();
        self.wait_for(within, |s| s["stored_lsn"].as_str().and_then(parse_lsn).is_some_and(|l| l >= want))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGTERM, as a service manager would; returns its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid, which it has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster with no archive_command: only the streamer takes its WAL.
fn streamed_primary(conf: &str) -> (Env, Cluster) {
    let env = env_for_postgres();
    let mut pg = Cluster::init(env.dir.path(), "primary", conf);
    pg.start();
    (env, pg)
}

fn base_backup(env: &Env, pg: &Cluster) {
    let mut args =
        vec!["backup".to_owned(), "postgres".to_owned(), "--pgdata".to_owned(), pg.pgdata.display().to_string()];
    args.extend(pg.conn_args());
    let out = env.cmd().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn streaming_stores_a_commit_within_seconds_and_the_slot_covers_the_agent_being_killed() {
    let (env, mut pg) = streamed_primary("");
    let mut streamer = Streamer::start(&env, &pg, "stream", &[]);
    base_backup(&env, &pg);
    pg.sql("CREATE TABLE events (n int PRIMARY KEY, pad text)");
    pg.sql("INSERT INTO events SELECT g, 'before' FROM generate_series(1, 1000) g");

    // The agent dies; the slot keeps the WAL written meanwhile (several
    // segments of it) on the primary until the agent is back.
    streamer.kill();
    pg.sql("INSERT INTO events SELECT g, repeat('x', 200) FROM generate_series(1001, 150000) g");
    let held = pg.sql("SELECT pg_walfile_name(restart_lsn) FROM pg_replication_slots WHERE slot_name = 'lifeboat'");
    let now = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert!(held < now, "the slot holds WAL from {held}, the server is at {now}");
    let mut streamer = Streamer::start(&env, &pg, "stream-again", &[]);

    // A commit reaches the repository within seconds, with no segment
    // switch and no archive_command.
    pg.sql("INSERT INTO events VALUES (0, 'the last commit')");
    let lsn = pg.sql("SELECT pg_current_wal_lsn()");
    let took = streamer.wait_stored(&lsn, Duration::from_secs(15));
    eprintln!("commit at {lsn} stored after {took:?}");
    pg.kill();
    streamer.kill();
    let segments = std::fs::read_dir(env.repo.join("wal/00000001")).unwrap().count();
    assert!(segments >= 3, "{segments} WAL objects");

    let restored = restore_and_start(&env, &pg, "restored", &["--latest"]);
    assert_eq!(restored.sql("SELECT count(*) FROM events"), "150001");
    assert_eq!(restored.sql("SELECT pad FROM events WHERE n = 0"), "the last commit");
}

#[test]
fn synchronous_streaming_loses_no_commit_when_the_primary_and_the_agent_die_together() {
    let (env, mut pg) = streamed_primary("synchronous_standby_names = 'lifeboat_sync'\nsynchronous_commit = on\n");
    let mut streamer = Streamer::start(&env, &pg, "sync", &["--synchronous", "--application-name", "lifeboat_sync"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'lifeboat_sync' AND sync_state = 'sync'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the agent never became a synchronous standby");
        std::thread::sleep(Duration::from_millis(100));
    }
    base_backup(&env, &pg);
    pg.sql("CREATE TABLE events (n int PRIMARY KEY)");
    for n in 1..=20 {
        pg.sql(&format!("INSERT INTO events VALUES ({n})"));
    }
    // Acknowledged commits are in the repository: SIGKILL both at once.
    pg.kill();
    streamer.kill();

    let restored = restore_and_start(&env, &pg, "restored", &["--latest"]);
    assert_eq!(restored.sql("SELECT count(*), max(n) FROM events"), "20|20");
}

/// `1.5 MiB` and the like, as bytes.
fn human_bytes(text: &str) -> f64 {
    let (n, unit) = text.trim().split_once(' ').unwrap_or((text.trim(), "B"));
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?}"),
    };
    n.parse::<f64>().unwrap() * scale
}

#[test]
fn restore_starts_the_server_and_a_delta_restore_rewrites_only_what_differs() {
    let (env, mut pg) = primary_with_backup();
    pg.sql("CREATE TABLE big AS SELECT g AS n, md5(g::text) AS pad FROM generate_series(1, 300000) g");
    // Frozen and left alone by autovacuum, so the restored server does not
    // rewrite its pages by itself (hint bits, visibility map).
    pg.sql("ALTER TABLE big SET (autovacuum_enabled = off)");
    pg.sql("VACUUM FREEZE big");
    base_backup(&env, &pg);
    pg.sql("INSERT INTO events(n) VALUES (1)");
    let expected = pg.sql("SELECT count(*), md5(string_agg(pad, ',' ORDER BY n)) FROM big");
    let rel = pg.sql("SELECT pg_relation_filepath('big')");
    archive_current_wal(&pg);
    pg.stop();

    let dir = env.path("restored");
    // Each recovery promotes to a new timeline; the first one's history is
    // archived, so the second follows it and promotes past it.
    let restore = |extra: &[&str], timeline: &str| {
        let mut args = vec!["restore", "postgres", "--target-dir", dir.to_str().unwrap(), "--latest", "--start"];
        args.extend(extra);
        let out = env.cmd().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert!(err.contains("recovery reached") && err.contains(&format!("timeline {timeline},")), "{err}");
        (Cluster::running(&dir, &pg.run_dir, pg.port), err)
    };
    let (mut restored, _) = restore(&[], "2");
    assert_eq!(restored.sql("SELECT count(*) FROM events WHERE n = 1"), "1");
    restored.stop();

    // Damage one page of the big table and leave a stray file: a delta
    // restore puts back that page's chunk, removes the stray, and keeps
    // the rest where it is.
    let file = dir.join(&rel);
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 8192], 8192 * 10).unwrap();
    std::fs::write(dir.join("stray"), b"not PostgreSQL's").unwrap();
    let (restored, err) = restore(&["--delta"], "3");
    let written = err.split("files (").nth(1).and_then(|r| r.split(" written").next()).unwrap();
    let reused = err.split("written, ").nth(1).and_then(|r| r.split(" already there").next()).unwrap();
    assert!(human_bytes(written) * 4.0 < human_bytes(reused), "written {written}, reused {reused}: {err}");
    assert!(!dir.join("stray").exists());
    assert_eq!(restored.sql("SELECT count(*), md5(string_agg(pad, ',' ORDER BY n)) FROM big"), expected);
    assert_eq!(restored.sql("SELECT count(*) FROM events WHERE n = 1"), "1");

    // Over a running server, a delta restore refuses to start.
    let out = env
        .cmd()
        .args(["restore", "postgres", "--target-dir", dir.to_str().unwrap(), "--latest", "--delta"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("postmaster.pid"));
}

#[test]
fn a_corrupt_page_is_reported_by_file_and_block_and_the_backup_completes_marked() {
    let env = env_for_postgres();
    let mut pg = Cluster::init(env.dir.path(), "primary", &format!("{}autovacuum = off\n", archive_conf(&env)));
    pg.start();
    pg.sql("CREATE TABLE t AS SELECT g AS n, md5(g::text) AS pad FROM generate_series(1, 20000) g");
    let rel = pg.sql("SELECT pg_relation_filepath('t')");
    pg.sql("CHECKPOINT");
    pg.stop();
    // Bit rot in block 5, on disk only (the server is down, nothing reads it after).
    let f = std::fs::OpenOptions::new().write(true).open(pg.pgdata.join(&rel)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xFF; 16], 5 * 8192 + 4000).unwrap();
    pg.start();

    let mut args =
        vec!["backup".to_owned(), "postgres".to_owned(), "--pgdata".to_owned(), pg.pgdata.display().to_string()];
    args.extend(pg.conn_args());
    let out = env.cmd().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("page checksum mismatch in {rel} block 5 ")), "{err}");
    assert!(err.contains("page checksums verified on"), "{err}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let listed: serde_json::Value = serde_json::from_str(&env.ok(&["backups", "postgres", "--json"])).unwrap();
    let backup = listed.as_array().unwrap().iter().find(|b| b["id"] == id.as_str()).unwrap();
    assert_eq!(backup["corrupt_pages"].as_array().unwrap().len(), 1, "{backup}");
    assert_eq!(backup["corrupt_pages"][0]["file"], rel.as_str());
    assert_eq!(backup["corrupt_pages"][0]["block"], 5);
    assert!(backup["pages_verified"].as_u64().unwrap() > 100, "{backup}");
    let table = env.ok(&["backups", "postgres"]);
    assert!(table.contains("1 CORRUPT PAGES"), "{table}");
}

#[test]
fn tablespaces_are_backed_up_and_restored_where_mapped() {
    let env = env_for_postgres();
    let ts = postgres_dir(env.dir.path(), "ts");
    let mut pg = Cluster::init(env.dir.path(), "primary", &archive_conf(&env));
    pg.start();
    pg.sql(&format!("CREATE TABLESPACE extra LOCATION '{}'", ts.display()));
    pg.sql("CREATE TABLE far (n int) TABLESPACE extra");
    pg.sql("INSERT INTO far SELECT generate_series(1, 10000)");
    base_backup(&env, &pg);
    pg.sql("INSERT INTO far SELECT generate_series(10001, 10100)");
    archive_current_wal(&pg);
    pg.stop();

    // Where the tablespace was is not empty: refused before anything is written.
    let dir = env.path("restored");
    let out =
        env.cmd().args(["restore", "postgres", "--target-dir", dir.to_str().unwrap(), "--latest"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("{} is not empty", ts.display())), "{err}");
    assert!(!dir.exists());

    let moved = postgres_dir(env.dir.path(), "ts-moved");
    let mapping = format!("extra={}", moved.display());
    let restored = restore_and_start(&env, &pg, "restored", &["--latest", "--tablespace-map", &mapping]);
    assert_eq!(restored.sql("SELECT count(*) FROM far"), "10100");
    assert_eq!(
        restored.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'extra'"),
        moved.display().to_string()
    );
    let bad = env
        .cmd()
        .args([
            "restore",
            "postgres",
            "--target-dir",
            env.path("other").to_str().unwrap(),
            "--tablespace-map",
            "nope=/tmp/x",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no tablespace \"nope\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn streaming_from_a_standby_follows_its_promotion_onto_the_new_timeline() {
    let (env, mut primary) = primary_with_backup();
    primary.sql("INSERT INTO events(n) VALUES (1)");

    // A streaming standby of the primary, made by pg_basebackup.
    let standby_dir = postgres_dir(env.dir.path(), "standby");
    let run_dir = postgres_dir(env.dir.path(), "standby-run");
    let pgdata = standby_dir.join("data");
    let out = as_postgres(&pg_bin("pg_basebackup"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ])
        .arg("-D")
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut auto = std::fs::OpenOptions::new().append(true).open(pgdata.join("postgresql.auto.conf")).unwrap();
    std::io::Write::write_all(
        &mut auto,
        format!("port = {port}\nunix_socket_directories = '{}'\n", run_dir.display()).as_bytes(),
    )
    .unwrap();
    let mut standby = Cluster::existing(&pgdata, &run_dir, port);
    standby.start();

    // The agent streams from the standby, through a slot there.
    let mut streamer = Streamer::start(&env, &standby, "stream", &[]);
    primary.sql("INSERT INTO events(n) VALUES (2)");
    let lsn = primary.sql("SELECT pg_current_wal_lsn()");
    streamer.wait_stored(&lsn, Duration::from_secs(30));

    // Promoted, the standby ends timeline 1 and writes on 2; the agent follows.
    assert_eq!(standby.sql("SELECT pg_promote()"), "t");
    primary.kill();
    standby.sql("INSERT INTO events(n) VALUES (3)");
    let lsn = standby.sql("SELECT pg_current_wal_lsn()");
    let want = parse_lsn(&lsn).unwrap();
    streamer.wait_for(Duration::from_secs(30), |s| {
        s["timeline"] == 2 && s["stored_lsn"].as_str().and_then(parse_lsn).is_some_and(|l| l >= want)
    });
    assert!(env.repo.join("wal/00000002/00000002.history").exists(), "the new timeline's history was not stored");
    standby.kill();
    // Its server gone, the agent retries; SIGTERM stops it cleanly.
    assert!(streamer.terminate().success(), "{}", std::fs::read_to_string(&streamer.log).unwrap_or_default());
    let out = std::fs::read_to_string(env.path("stream.out")).unwrap();
    assert!(out.contains("stopped; every byte received is stored"), "{out}");

    let restored = restore_and_start(&env, &primary, "restored", &["--latest"]);
    assert_eq!(restored.sql("SELECT string_agg(n::text, ',' ORDER BY n) FROM events"), "1,2,3");
}

/// A certificate for 127.0.0.1 signed by a CA of its own, in `dir`.
fn issue_certs(dir: &std::path::Path) {
    let request = lifeboat_common::tls::DevCaRequest {
        coordinators: vec!["pg".into()],
        hosts: vec!["127.0.0.1".into()],
        agents: Vec::new(),
        admins: Vec::new(),
        days: 1,
    };
    lifeboat_common::tls::issue_dev_certs(dir, &request).unwrap();
}

#[test]
fn tls_verified_against_the_ca_carries_the_backup_and_the_stream_and_a_wrong_ca_or_name_is_refused() {
    let env = env_for_postgres();
    let (certs, other) = (env.path("certs"), env.path("other-ca"));
    issue_certs(&certs);
    issue_certs(&other);
    // The server's own copy: owned by postgres, the key readable by it alone.
    let server_dir = postgres_dir(env.dir.path(), "server-tls");
    for file in ["coordinator-pg.pem", "coordinator-pg.key"] {
        std::fs::copy(certs.join(file), server_dir.join(file)).unwrap();
    }
    give_to_postgres(&server_dir);
    std::fs::set_permissions(server_dir.join("coordinator-pg.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let conf = format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        server_dir.join("coordinator-pg.pem").display(),
        server_dir.join("coordinator-pg.key").display()
    );
    let mut pg = Cluster::init(env.dir.path(), "primary", &conf);
    // Over TCP the server takes TLS only: a plain connection is refused.
    std::fs::write(
        pg.pgdata.join("pg_hba.conf"),
        "local all all trust\nlocal replication all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg.start();
    let ca = certs.join("ca.pem").display().to_string();
    let tls = ["--sslmode", "verify-full", "--sslrootcert", ca.as_str()];

    let mut streamer = Streamer::start(&env, &pg, "stream", &tls);
    let backup = |extra: &[&str]| {
        let mut args = vec!["backup".to_owned(), "postgres".to_owned(), "--pgdata".to_owned()];
        args.push(pg.pgdata.display().to_string());
        args.extend(pg.conn_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        env.cmd().args(&args).output().unwrap()
    };
    let plain = backup(&[]);
    let said = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success() && said.contains("no encryption"), "{said}");
    let out = backup(&tls);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pg.sql("CREATE TABLE events (n int PRIMARY KEY)");
    pg.sql("INSERT INTO events SELECT generate_series(1, 1000)");
    let lsn = pg.sql("SELECT pg_current_wal_lsn()");
    streamer.wait_stored(&lsn, Duration::from_secs(15));
    let encrypted = pg.sql(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND backend_type = 'walsender'",
    );
    assert_eq!(encrypted, "1", "the stream's connection is not encrypted");
    streamer.kill();

    // A certificate from another CA, or one that does not name the host: refused, in one line.
    let other_ca = other.join("ca.pem").display().to_string();
    let out = backup(&["--sslmode", "verify-full", "--sslrootcert", &other_ca]);
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("another CA: {said}");
    assert!(!out.status.success() && said.contains("invalid peer certificate"), "{said}");
    let mut by_name = vec!["backup".to_owned(), "postgres".to_owned(), "--pgdata".to_owned()];
    by_name.push(pg.pgdata.display().to_string());
    by_name.extend(["--host", "localhost", "--port", &pg.port.to_string(), "--user", "postgres"].map(String::from));
    by_name.extend(tls.map(String::from));
    let out = env.cmd().args(&by_name).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("another name: {said}");
    assert!(!out.status.success() && said.contains("not valid for name \"localhost\""), "{said}");
    // verify-full without a CA is a usage error, before anything is dialled.
    let out = backup(&["--sslmode", "verify-full"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("needs sslrootcert"), "{said}");
    let snapshots = env.ok(&["snapshots", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&snapshots).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}
