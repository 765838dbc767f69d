//! PostgreSQL 15 end to end, on real clusters made by `initdb` and run as
//! the postgres user: WAL archived by `lifeboat-agent wal-push`, a base
//! backup taken under a write workload, restored and recovered.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_integration_tests::postgres::{Cluster, give_to_postgres, pg_bin, workspace_bin};
use support::Env;

/// A local repository and key the postgres user (running archive_command) can use.
fn env_for_postgres() -> Env {
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    give_to_postgres(&env.repo);
    give_to_postgres(&env.key);
    env
}

fn archive_conf(env: &Env) -> String {
    let agent = workspace_bin("lifeboat-agent");
    format!(
        "archive_mode = on\narchive_command = '{} wal-push --repo={} --key-file={} %p'\narchive_timeout = 0\n",
        agent.display(),
        env.repo.display(),
        env.key.display()
    )
}

/// Switches to a new WAL segment and waits until the archiver has stored it.
fn archive_current_wal(pg: &Cluster) {
    let segment = pg.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived = pg.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if archived.as_str() >= segment.as_str() {
            return;
        }
        let failed = pg.sql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver");
        assert!(Instant::now() < deadline, "{segment} not archived (last failed: {failed}):\n{}", pg.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

    let restored_dir = env.path("restored");
    let out = env
        .cmd()
        .args(["restore", "postgres", "--latest", "--target-dir", restored_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut restored = Cluster::existing(&restored_dir, &pg.run_dir, pg.port);
    restored.start();
    // Recovery ends, then the server promotes and accepts writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while restored.sql("SELECT pg_is_in_recovery()") == "t" {
        assert!(Instant::now() < deadline, "recovery did not finish:\n{}", restored.log());
        std::thread::sleep(Duration::from_millis(100));
    }
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
