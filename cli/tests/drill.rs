//! Restore drills run offline (`lifeboat drill run`) on real PostgreSQL
//! clusters and file trees: a passing drill with measured RTO and RPO and
//! its scratch gone; an objective below what the machine can do; a missing
//! WAL segment and a flipped byte in a pack caught by the checklist before
//! anything is restored; a scratch directory inside the data directory
//! refused; a full-system drill in priority order; a failover drill that
//! clones a standby, catches the clone up from the repository and promotes
//! it while the standby goes on, and refuses a primary; the same of a Redis
//! replica.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};

use lifeboat_integration_tests::postgres::{Cluster, as_postgres, pg_bin, postgres_dir, workspace_bin};
use serde_json::Value;
use support::Env;
use support::pg::{archive_conf, archive_current_wal, env_for_postgres};

/// Runs drill `name` of `policy`; returns the exit code and the JSON report.
fn drill(env: &Env, policy: &Path, name: &str) -> (i32, Value) {
    let out = env.cmd().args(["drill", "run", "--json", "--policy", policy.to_str().unwrap(), name]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no report ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), report)
}

/// The check named `name` of the report (the first).
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

fn phases(report: &Value) -> Vec<String> {
    report["phases"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect()
}

/// What is left in a scratch directory.
fn left_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

fn policy(env: &Env, scratch: &Path, extra: &str) -> PathBuf {
    let psql = pg_bin("psql").display().to_string();
    let text = format!(
        r#"recovery_objectives:
  database: {{ rto: 15m, rpo: 5m, sources: [db1/orders] }}
  instant:  {{ rto: 1ms, rpo: 1h }}
  file_storage: {{ rto: 1h, rpo: 4h, sources: [app1/media] }}
  full_system: {{ rto: 2h, rpo: 1h }}
drills:
  database:
    schedule: "0 4 * * 1#1"
    kind: recovery
    sources: [db1/orders]
    agent: db1
    scratch: {scratch}
    checks:
      sql:
        - {{ query: "SELECT count(*) FROM users", expect: "12" }}
        - {{ query: "SELECT count(*) > 0 FROM users WHERE name = 'after'", expect: "true" }}
      smoke:
        - command: [sh, -c, "{psql} -XAtq -d postgres -c 'SELECT count(*) FROM users' | grep -qx 12 && echo \"$DATABASE_URL\""]
          timeout: 60s
  too-fast:
    kind: recovery
    sources: [db1/orders]
    agent: db1
    scratch: {scratch}
    objective: instant
{extra}"#,
        scratch = scratch.display(),
    );
    let path = env.path("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An agent configuration for `host` on the test's repository, with `sources` (TOML).
fn agent_config(env: &Env, host: &str, sources: &str) -> PathBuf {
    let path = env.path(&format!("{host}.toml"));
    std::fs::write(
        &path,
        format!(
            "host = \"{host}\"\ncoordinators = [\"https://127.0.0.1:1\"]\n[tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [repository]\nrepo = \"{}\"\nkey_file = \"{}\"\n{sources}",
            env.repo.display(),
            env.key.display(),
        ),
    )
    .unwrap();
    path
}

/// A PostgreSQL source `orders` on `pg`, as an agent's configuration has it.
fn pg_source(pg: &Cluster) -> String {
    format!(
        "[[source]]\nid = \"orders\"\nkind = \"postgres\"\npgdata = \"{}\"\npg_host = \"127.0.0.1\"\npg_port = {}\npg_user = \"postgres\"\n",
        pg.pgdata.display(),
        pg.port
    )
}

/// Runs drill `name` of `policy` with the agent configuration `agent`.
fn drill_as(env: &Env, policy: &Path, agent: &Path, name: &str) -> (i32, Value) {
    let out = env
        .cmd()
        .args([
            "drill",
            "run",
            "--json",
            "--policy",
            policy.to_str().unwrap(),
            "--agent-config",
            agent.to_str().unwrap(),
        ])
        .arg(name)
        .output()
        .unwrap();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), report)
}

#[test]
fn a_database_drill_recovers_measures_and_cleans_up_and_the_checklist_stops_bad_backups() {
    let env = env_for_postgres();
    let mut pg = Cluster::init(env.dir.path(), "primary", &archive_conf(&env));
    pg.start();
    pg.sql("CREATE TABLE users (id serial PRIMARY KEY, name text)");
    pg.sql("INSERT INTO users(name) SELECT 'before' FROM generate_series(1, 10)");
    let mut args: Vec<String> =
        ["backup", "postgres", "--hostname", "db1", "--tag", "source:orders", "--pgdata"].map(str::to_owned).to_vec();
    args.push(pg.pgdata.display().to_string());
    args.extend(pg.conn_args());
    let out = env.cmd().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Committed after the base backup: only WAL replay brings these back.
    pg.sql("INSERT INTO users(name) VALUES ('after'), ('after')");
    pg.sql("CREATE TABLE churn (n int)");
    for n in 0..3 {
        pg.sql(&format!("INSERT INTO churn VALUES ({n})"));
        archive_current_wal(&pg);
    }
    let scratch = env.path("scratch");
    let policy = policy(
        &env,
        &scratch,
        &format!(
            "  inside-pgdata:\n    kind: recovery\n    sources: [db1/orders]\n    agent: db1\n    scratch: {}\n  \
             everything:\n    kind: full_system\n    sources: [db1/etc, db1/orders]\n    agent: db1\n    scratch: {}\n\
             backup_schedules:\n  database:\n    full: {{ cron: \"0 2 * * 0\", priority: 1 }}\n  \
             files:\n    configs: {{ on_change: true, priority: 4 }}\n",
            pg.pgdata.join("drills").display(),
            scratch.display()
        ),
    );

    // The production server keeps running beside the drill's.
    let (code, report) = drill(&env, &policy, "database");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["passed"], true);
    assert_eq!(report["objectives_met"], true);
    let rto = report["rto_seconds"].as_f64().unwrap();
    let rpo = report["rpo_seconds"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < 900.0, "{rto}");
    assert!((0.0..300.0).contains(&rpo), "the last replayed commit is seconds old: {rpo}");
    for p in ["fetch", "checklist", "restore", "replay", "checks", "cleanup"] {
        assert!(phases(&report).contains(&p.to_owned()), "no phase {p}: {report:#}");
    }
    for c in [
        "objects present and authentic",
        "WAL present",
        "WAL authentic",
        "newest recovery point",
        "scratch has room",
        "connection",
        "pg_amcheck",
        "sql: SELECT count(*) FROM users",
        "smoke",
    ] {
        assert_eq!(check(&report, c)["result"], "passed", "{c}: {report:#}");
    }
    assert!(check(&report, "smoke")["message"].as_str().unwrap().contains("postgresql://postgres@127.0.0.1:"));
    let source = &report["sources"][0];
    assert_eq!(source["source"], "db1/orders");
    assert_eq!(source["verdict"]["objective"], "database");
    assert!(source["summary"].as_str().unwrap().contains("recovery reached"), "{source:#}");
    assert!(left_in(&scratch).is_empty(), "scratch left behind: {:?}", left_in(&scratch));
    let id = report["id"].as_str().unwrap();
    assert!(env.repo.join("drills").join(id).exists(), "no report drills/{id} in the repository");
    // Production was not touched.
    assert_eq!(pg.sql("SELECT count(*) FROM users"), "12");

    // An objective below what the machine can do: the checks pass, the objective is missed.
    let (code, report) = drill(&env, &policy, "too-fast");
    assert_eq!(code, 2, "{report:#}");
    assert_eq!((report["passed"].clone(), report["objectives_met"].clone()), (Value::from(true), Value::from(false)));
    let verdict = &report["sources"][0]["verdict"];
    assert_eq!((verdict["rto_met"].clone(), verdict["rpo_met"].clone()), (Value::from(false), Value::from(true)));

    // A scratch directory inside the data directory is refused, and nothing is made there.
    let (code, report) = drill(&env, &policy, "inside-pgdata");
    assert_eq!(code, 1);
    let refused = check(&report, "scratch apart from production");
    assert_eq!(refused["result"], "failed");
    assert!(refused["message"].as_str().unwrap().contains("lies inside"), "{refused:#}");
    assert!(!pg.pgdata.join("drills").exists());
    assert!(!phases(&report).contains(&"restore".to_owned()));

    // A WAL segment missing between the backup and the newest: the
    // checklist names it and nothing is restored.
    let timeline = env.repo.join("wal/00000001");
    let mut segments: Vec<PathBuf> =
        left_in(&timeline).into_iter().filter(|p| p.file_name().unwrap().to_str().unwrap().len() == 24).collect();
    segments.sort();
    let gone = segments[segments.len() - 2].clone();
    let kept = env.path("kept-segment");
    std::fs::rename(&gone, &kept).unwrap();
    let (code, report) = drill(&env, &policy, "database");
    assert_eq!(code, 1);
    let wal = check(&report, "WAL present");
    assert_eq!(wal["result"], "failed");
    let name = gone.file_name().unwrap().to_str().unwrap();
    assert!(wal["message"].as_str().unwrap().contains(&format!("wal/00000001/{name} is missing")), "{wal:#}");
    assert!(!phases(&report).contains(&"restore".to_owned()), "{report:#}");
    assert!(left_in(&scratch).is_empty());
    std::fs::rename(&kept, &gone).unwrap();

    // One flipped byte in a pack the restore needs.
    let pack = first_file(&env.repo.join("data"));
    let original = std::fs::read(&pack).unwrap();
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&pack, &flipped).unwrap();
    let (code, report) = drill(&env, &policy, "database");
    assert_eq!(code, 1);
    let objects = check(&report, "objects present and authentic");
    assert_eq!(objects["result"], "failed");
    let key = pack.strip_prefix(&env.repo).unwrap().display().to_string();
    assert!(objects["message"].as_str().unwrap().contains(&key), "{key}: {objects:#}");
    assert!(!phases(&report).contains(&"restore".to_owned()));
    std::fs::write(&pack, &original).unwrap();

    // Full system on the database's own host (its agent configuration
    // gives the sources' priorities): priority 1 first, the whole against
    // full_system.
    let etc = env.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("app.conf"), "listen = 8080\n").unwrap();
    env.ok(&["backup", "files", "--host", "db1", "--tag", "source:etc", etc.to_str().unwrap()]);
    let agent = agent_config(
        &env,
        "db1",
        &format!(
            "{}schedules = [\"database.full\"]\n\
             [[source]]\nid = \"etc\"\nkind = \"files\"\npaths = [\"{}\"]\nschedules = [\"files.configs\"]\n",
            pg_source(&pg),
            etc.display()
        ),
    );
    let (code, report) = drill_as(&env, &policy, &agent, "everything");
    assert_eq!(code, 0, "{report:#}");
    let order: Vec<&str> =
        report["sources"].as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(order, ["db1/orders", "db1/etc"], "priority 1 first");
    let restored: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "restore")
        .map(|p| p["source"].as_str().unwrap())
        .collect();
    assert_eq!(restored, ["db1/orders", "db1/etc"]);
    assert_eq!(report["verdict"]["objective"], "full_system");
    assert_eq!(report["sources"][0]["verdict"]["objective"], "database");
    assert!(report["sources"][1]["verdict"].is_null(), "no objective binds priority 4");
    assert!(check(&report, "scratch apart from production")["message"].as_str().unwrap().contains("overlaps none"));
    assert!(left_in(&scratch).is_empty());
    pg.stop();
}

/// The first regular file below `dir`.
fn first_file(dir: &Path) -> PathBuf {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<PathBuf> = left_in(&d);
        entries.sort();
        for e in entries {
            if e.is_dir() {
                stack.push(e);
            } else {
                return e;
            }
        }
    }
    panic!("no file below {}", dir.display());
}

#[test]
fn a_files_drill_samples_and_a_full_system_drill_measures_the_whole() {
    let env = Env::new();
    let media = env.path("media");
    support::make_tree(&media);
    env.ok(&["backup", "files", "--host", "app1", "--tag", "source:media", media.to_str().unwrap()]);
    let scratch = env.path("scratch");
    let policy = policy(
        &env,
        &scratch,
        "  media-sample:\n    kind: recovery\n    sources: [app1/media]\n    agent: app1\n    scratch: SCRATCH\n    checks: { sample_files: 3 }\n  \
         whole:\n    kind: full_system\n    sources: [app1/media]\n    agent: app1\n    scratch: SCRATCH\n  \
         verify:\n    kind: verification\n    sources: [app1/media]\n    agent: app1\n    scratch: SCRATCH\n    checks: { sample_files: 4 }\n\
         backup_schedules:\n  files:\n    media: { interval: 1h, retention_days: 30 }\n",
    );
    let text = std::fs::read_to_string(&policy).unwrap().replace("SCRATCH", scratch.to_str().unwrap());
    std::fs::write(&policy, text).unwrap();

    let (code, report) = drill(&env, &policy, "media-sample");
    assert_eq!(code, 0, "{report:#}");
    let ids = check(&report, "content ids");
    assert_eq!(ids["result"], "passed");
    assert!(ids["message"].as_str().unwrap().starts_with("3 files"), "{ids:#}");
    let seed = report["seed"].as_u64().unwrap();
    assert!(report["sources"][0]["summary"].as_str().unwrap().contains(&format!("seed {seed}")));
    assert_eq!(report["sources"][0]["verdict"]["objective"], "file_storage");
    assert!(left_in(&scratch).is_empty());

    let (code, report) = drill(&env, &policy, "whole");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["kind"], "full_system");
    assert_eq!(report["verdict"]["objective"], "full_system");
    assert_eq!(report["verdict"]["rto_met"], true);
    assert!(check(&report, "content ids")["message"].as_str().unwrap().contains("files"));
    assert!(left_in(&scratch).is_empty());

    // Verification: random files of random snapshots compared, objects
    // shown to be ciphertext, retention within policy.
    std::fs::write(media.join("added.txt"), "a second snapshot differs").unwrap();
    env.ok(&["backup", "files", "--host", "app1", "--tag", "source:media", media.to_str().unwrap()]);
    let (code, report) = drill(&env, &policy, "verify");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["kind"], "verification");
    let restores: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("random restore of snapshot"))
        .collect();
    assert_eq!(restores.len(), 2, "both snapshots sampled: {report:#}");
    assert!(restores.iter().all(|c| c["result"] == "passed" && c["message"].as_str().unwrap().starts_with("4 of")));
    for c in ["stored objects are ciphertext", "unreadable under a wrong key", "retention ran within policy"] {
        assert_eq!(check(&report, c)["result"], "passed", "{c}: {report:#}");
    }
    assert!(left_in(&scratch).is_empty());

    // A source with no backup fails the drill, saying so.
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("[app1/media]\n    agent: app1\n    scratch", "[app1/nothing]\n    agent: app1\n    scratch");
    std::fs::write(&policy, text).unwrap();
    let (code, report) = drill(&env, &policy, "whole");
    assert_eq!(code, 1);
    assert!(check(&report, "snapshot found")["message"].as_str().unwrap().contains("app1/nothing"), "{report:#}");
}

#[test]
fn a_redis_drill_starts_the_snapshot_and_checks_its_key_counts_and_a_failover_drill_clones_the_replica() {
    use lifeboat_integration_tests::redis::{RedisServer, fill_every_type, redis_program};
    let env = Env::new();
    let source = RedisServer::start(&env.path("source"), &["--repl-diskless-sync-delay", "0"]);
    fill_every_type(&mut source.conn(), 5_000);
    env.ok(&["backup", "redis", "--hostname", "cache1", "--tag", "source:sessions", "--url", &source.url()]);
    let scratch = env.path("scratch");
    let cli = redis_program("redis-cli").display().to_string();
    let policy = policy(
        &env,
        &scratch,
        &format!(
            "  sessions:\n    kind: recovery\n    sources: [cache1/sessions]\n    agent: cache1\n    scratch: {}\n    \
             checks:\n      smoke:\n        - {{ command: [sh, -c, \"{cli} -u $REDIS_URL dbsize | grep -qx 4500\"], timeout: 30s }}\n",
            scratch.display()
        ),
    );
    let (code, report) = drill(&env, &policy, "sessions");
    assert_eq!(code, 0, "{report:#}");
    let counts = check(&report, "key counts");
    assert_eq!(counts["result"], "passed");
    assert!(counts["message"].as_str().unwrap().starts_with("5000 keys"), "{counts:#}");
    assert_eq!(check(&report, "smoke")["result"], "passed", "{report:#}");
    assert!(phases(&report).contains(&"replay".to_owned()), "the load is timed as replay: {report:#}");
    assert!(left_in(&scratch).is_empty(), "{:?}", left_in(&scratch));
    // The production server was not touched.
    assert_eq!(source.cmd(&["DBSIZE"]), redis::Value::Int(4500));

    // A failover drill of its replica in the DR region: cloned over the
    // replication protocol and started as a master of its own.
    let port = source.port.to_string();
    let replica = RedisServer::start(&env.path("replica"), &["--replicaof", "127.0.0.1", &port]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let synced = || {
        let info: String = redis::cmd("INFO").arg("replication").query(&mut replica.conn()).unwrap();
        info.contains("master_link_status:up")
    };
    while !synced() {
        assert!(std::time::Instant::now() < deadline, "the replica did not sync:\n{}", replica.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let source_toml = |url: String| format!("[[source]]\nid = \"sessions\"\nkind = \"redis\"\nurl = \"{url}\"\n");
    let dr = agent_config(&env, "cache2", &source_toml(replica.url()));
    let text = std::fs::read_to_string(&policy).unwrap()
        + &format!(
            "  sessions-failover:\n    kind: failover\n    sources: [cache2/sessions]\n    agent: cache2\n    scratch: {0}\n  \
             master-failover:\n    kind: failover\n    sources: [cache1/sessions]\n    agent: cache1\n    scratch: {0}\n",
            scratch.display()
        );
    std::fs::write(&policy, text).unwrap();
    let (code, report) = drill_as(&env, &policy, &dr, "sessions-failover");
    assert_eq!(code, 0, "{report:#}");
    for p in ["clone", "load", "checks"] {
        assert!(phases(&report).contains(&p.to_owned()), "no phase {p}: {report:#}");
    }
    assert_eq!(check(&report, "standby answers")["result"], "passed", "{report:#}");
    let staged: f64 = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "clone" || p["name"] == "load")
        .map(|p| p["seconds"].as_f64().unwrap())
        .sum();
    let whole = report["phases"].as_array().unwrap().iter().map(|p| p["seconds"].as_f64().unwrap()).sum::<f64>();
    assert!(report["rto_seconds"].as_f64().unwrap() <= whole - staged + 0.25, "staging counted: {report:#}");
    assert_eq!(check(&report, "key counts")["result"], "passed", "as many as the replica had: {report:#}");
    let summary = report["sources"][0]["summary"].as_str().unwrap();
    assert!(summary.contains("cloned") && summary.contains("master of its own"), "{summary}");
    assert!(left_in(&scratch).is_empty(), "{:?}", left_in(&scratch));
    // The replica goes on as one.
    let role = replica.cmd(&["ROLE"]);
    assert!(format!("{role:?}").contains("slave"), "{role:?}");
    // The master is never cloned and promoted.
    let db = agent_config(&env, "cache1", &source_toml(source.url()));
    let (code, report) = drill_as(&env, &policy, &db, "master-failover");
    assert_eq!(code, 1, "{report:#}");
    assert!(check(&report, "standby answers")["message"].as_str().unwrap().contains("is a master"), "{report:#}");
}

#[test]
fn a_failover_drill_clones_the_standby_catches_up_from_the_repository_and_promotes_in_isolation() {
    let env = env_for_postgres();
    let mut primary = Cluster::init(env.dir.path(), "primary", &archive_conf(&env));
    primary.start();
    primary.sql("CREATE TABLE users (id serial PRIMARY KEY, name text)");
    primary.sql("INSERT INTO users(name) SELECT 'before' FROM generate_series(1, 10)");
    let primary_space = postgres_dir(env.dir.path(), "space-primary");
    primary.sql(&format!("CREATE TABLESPACE space1 LOCATION '{}'", primary_space.display()));
    primary.sql("CREATE TABLE events (n int) TABLESPACE space1");
    primary.sql("INSERT INTO events SELECT generate_series(1, 500)");

    // The DR standby follows the primary through the repository only, as
    // Lifeboat's failover standbys do (no streaming: its replay can be
    // held back while the repository moves on).
    let pgdata = postgres_dir(env.dir.path(), "standby").join("data");
    let run_dir = postgres_dir(env.dir.path(), "standby-run");
    let standby_space = postgres_dir(env.dir.path(), "space-standby");
    let out = as_postgres(&pg_bin("pg_basebackup"))
        .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres", "-X", "stream", "-c", "fast"])
        .arg(format!("--tablespace-mapping={}={}", primary_space.display(), standby_space.display()))
        .arg("-D")
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let fetch = format!(
        "{} wal-fetch --repo={} --key-file={} %f %p",
        workspace_bin("lifeboat-agent").display(),
        env.repo.display(),
        env.key.display()
    );
    let mut auto = std::fs::OpenOptions::new().append(true).open(pgdata.join("postgresql.auto.conf")).unwrap();
    std::io::Write::write_all(
        &mut auto,
        format!(
            "port = {port}\nunix_socket_directories = '{}'\narchive_mode = off\nrestore_command = '{fetch}'\nwal_retrieve_retry_interval = '1s'\n",
            run_dir.display()
        )
        .as_bytes(),
    )
    .unwrap();
    std::fs::write(pgdata.join("standby.signal"), "").unwrap();
    lifeboat_integration_tests::postgres::give_to_postgres(&pgdata.join("standby.signal"));
    let mut standby = Cluster::existing(&pgdata, &run_dir, port);
    standby.start();
    primary.sql("INSERT INTO users(name) VALUES ('middle')");
    archive_current_wal(&primary);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while standby.sql("SELECT count(*) FROM users") != "11" {
        assert!(std::time::Instant::now() < deadline, "the standby did not follow:\n{}", standby.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Held back: what comes next is only in the repository.
    standby.sql("SELECT pg_wal_replay_pause()");
    primary.sql("INSERT INTO users(name) VALUES ('after'), ('after')");
    archive_current_wal(&primary);

    let scratch = env.path("scratch");
    let policy = policy(
        &env,
        &scratch,
        &format!(
            "  dr-failover:\n    schedule: \"0 4 * * 1#2\"\n    kind: failover\n    sources: [dr1/orders]\n    agent: dr1\n    \
             scratch: {0}\n    objective: database\n    checks:\n      sql:\n        \
             - {{ query: \"SELECT count(*) FROM users WHERE name = 'after'\", expect: \"2\" }}\n        \
             - {{ query: \"SELECT NOT pg_is_in_recovery()\", expect: \"t\" }}\n        \
             - {{ query: \"SELECT count(*) FROM events\", expect: \"500\" }}\n  \
             primary-failover:\n    kind: failover\n    sources: [db1/orders]\n    agent: db1\n    scratch: {0}\n",
            scratch.display()
        ),
    );
    let dr1 = agent_config(&env, "dr1", &pg_source(&standby));
    let (code, report) = drill_as(&env, &policy, &dr1, "dr-failover");
    assert_eq!(code, 0, "{report:#}");
    assert_eq!((report["passed"].clone(), report["objectives_met"].clone()), (Value::from(true), Value::from(true)));
    assert_eq!(report["kind"], "failover");
    for p in ["fetch", "checklist", "clone", "promote", "checks", "cleanup"] {
        assert!(phases(&report).contains(&p.to_owned()), "no phase {p}: {report:#}");
    }
    assert!(!phases(&report).contains(&"restore".to_owned()), "nothing is restored from snapshots: {report:#}");
    for c in [
        "standby answers",
        "standby can be cloned",
        "newest recovery point",
        "scratch apart",
        "scratch has room",
        "connection",
        "pg_amcheck",
        "sql: SELECT count(*) FROM events",
    ] {
        assert_eq!(check(&report, c)["result"], "passed", "{c}: {report:#}");
    }
    assert_eq!(check(&report, "sql: SELECT count(*) FROM users WHERE")["result"], "passed", "caught up: {report:#}");
    let source = &report["sources"][0];
    assert_eq!(source["source"], "dr1/orders");
    assert_eq!(source["verdict"]["objective"], "database");
    let summary = source["summary"].as_str().unwrap();
    assert!(summary.contains("cloned") && summary.contains("promoted onto timeline 2"), "{summary}");
    let rpo = report["rpo_seconds"].as_f64().unwrap();
    assert!((0.0..300.0).contains(&rpo), "the clone replayed the newest commit: {rpo}");
    // The clone is the drill's staging, not counted: a real failover
    // promotes the standby where it runs.
    let counted: f64 = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] != "clone" && p["name"] != "cleanup")
        .map(|p| p["seconds"].as_f64().unwrap())
        .sum();
    let rto = report["rto_seconds"].as_f64().unwrap();
    assert!(rto > 0.0 && rto <= counted + 0.25, "RTO {rto} s, phases but the clone {counted} s: {report:#}");
    // The standby's tablespace was mapped into the scratch, never written where it is.
    assert_eq!(left_in(&standby_space).len(), 1, "{:?}", left_in(&standby_space));
    assert!(left_in(&scratch).is_empty(), "scratch left behind: {:?}", left_in(&scratch));
    // The standby goes on as it was: in recovery, held back, on timeline 1.
    assert_eq!(standby.sql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(standby.sql("SELECT count(*) FROM users WHERE name = 'after'"), "0");
    assert!(!env.repo.join("wal/00000002").exists(), "the clone's timeline reached the repository");
    standby.sql("SELECT pg_wal_replay_resume()");
    primary.sql("INSERT INTO users(name) VALUES ('later')");
    archive_current_wal(&primary);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while standby.sql("SELECT count(*) FROM users") != "14" {
        assert!(std::time::Instant::now() < deadline, "the standby stopped following:\n{}", standby.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // A primary is never cloned and promoted.
    let db1 = agent_config(&env, "db1", &pg_source(&primary));
    let (code, report) = drill_as(&env, &policy, &db1, "primary-failover");
    assert_eq!(code, 1, "{report:#}");
    let refused = check(&report, "standby answers");
    assert_eq!(refused["result"], "failed");
    assert!(refused["message"].as_str().unwrap().contains("it is a primary"), "{refused:#}");
    assert!(!phases(&report).contains(&"clone".to_owned()), "{report:#}");
    // Nor a source this host does not have.
    let (code, report) = drill_as(&env, &policy, &db1, "dr-failover");
    assert_eq!(code, 1);
    assert!(check(&report, "standby found")["message"].as_str().unwrap().contains("not a source of this host"));
    assert!(left_in(&scratch).is_empty());
    assert_eq!(primary.sql("SELECT count(*) FROM users"), "14");
}
