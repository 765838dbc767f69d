//! Redis 7.0 end to end, on real servers and sentinels started on free
//! ports: a million keys of every type captured, restored, started and
//! compared key by key; ACL users and wrong passwords; the replication link
//! killed mid-transfer; a damaged pack; Sentinel with a replica preferred
//! and a failover between captures.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use lifeboat_common::tls::{DevCaRequest, issue_dev_certs};
use lifeboat_integration_tests::control::{free_port, wait_for};
use lifeboat_integration_tests::redis::{RedisServer, SentinelSet, assert_same_keys, fill_every_type};
use support::Env;

/// The snapshots in the repository, as JSON.
fn snapshots(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap()
}

/// The lines of a failed command's stderr that say it failed.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("lifeboat: error")).collect()
}

#[test]
fn a_million_keys_of_every_type_come_back_with_their_values_and_ttls() {
    let env = Env::new();
    let source = RedisServer::start(&env.path("source"), &["--repl-diskless-sync-delay", "0"]);
    fill_every_type(&mut source.conn(), 1_000_000);

    let out = env.ok_stderr(&["backup", "redis", "--url", &source.url()]);
    assert!(out.contains("RDB checksum verified") && out.contains("1000000 keys in 3 databases"), "{out}");
    let listed = env.ok(&["snapshots"]);
    assert!(listed.contains(" redis ") && listed.contains(&source.url()), "{listed}");
    let snap = &snapshots(&env)[0];
    let redis = &snap["redis"];
    assert_eq!(redis["role"], "master");
    assert_eq!(redis["rdb_version"], 10);
    assert_eq!(redis["keyspace"][0]["keys"], 900_000);

    // A stale AOF in the target would win at start: it is moved aside.
    let target = env.path("restored");
    std::fs::create_dir_all(target.join("appendonlydir")).unwrap();
    std::fs::write(target.join("appendonlydir/appendonly.aof.1.base.rdb"), b"stale").unwrap();
    let port = free_port();
    let out = env.ok_stderr(&[
        "restore",
        "redis",
        "latest",
        "--target-dir",
        target.to_str().unwrap(),
        "--start",
        "--port",
        &port.to_string(),
    ]);
    let restored = RedisServer::adopt(&target, port);
    assert!(out.contains("moved to") && out.contains("serves 1000000 keys"), "{out}");
    assert!(!target.join("appendonlydir").exists());
    let compared = assert_same_keys(&source, &restored, &[0, 1, 7]);
    assert_eq!(compared, 1_000_000);

    // The started server would overwrite a second restore when it saves.
    let err = env.fails(&["restore", "redis", "--target-dir", target.to_str().unwrap()]);
    assert!(err.contains("runs on") && err.contains("stop it first"), "{err}");
}

#[test]
fn acl_users_wrong_passwords_and_missing_permissions_each_get_one_clear_line() {
    let env = Env::new();
    let server = RedisServer::start(&env.path("server"), &["--repl-diskless-sync-delay", "0"]);
    fill_every_type(&mut server.conn(), 2_000);
    server.cmd(&["ACL", "SETUSER", "backup", "on", ">s3cret", "+psync", "+replconf", "+info", "+role", "+ping"]);
    server.cmd(&["ACL", "SETUSER", "nosync", "on", ">other", "+replconf", "+info", "+role", "+ping"]);
    server.cmd(&["ACL", "SETUSER", "default", "off"]);
    let password = env.path("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let url = server.url();
    let file = password.to_str().unwrap();

    let out = env.ok_stderr(&["backup", "redis", "--url", &url, "--user", "backup", "--password-file", file]);
    assert!(out.contains("2000 keys"), "{out}");
    assert_eq!(snapshots(&env).len(), 1);

    std::fs::write(&password, "wrong\n").unwrap();
    let err = env.fails(&["backup", "redis", "--url", &url, "--user", "backup", "--password-file", file]);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("refused AUTH: WRONGPASS") && lines[0].contains("password file"), "{err}");

    let mut cmd = env.cmd();
    cmd.args(["backup", "redis", "--url", &url, "--user", "nosync", "--password-env", "LB_TEST_REDIS_PW"]);
    let out = cmd.env("LB_TEST_REDIS_PW", "other").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("refused PSYNC: NOPERM") && lines[0].contains("+psync"), "{err}");

    let err = env.fails(&["backup", "redis", "--url", &format!("redis://backup:s3cret@127.0.0.1:{}", server.port)]);
    assert!(err.contains("password does not go in the URL") && !err.contains("s3cret"), "{err}");
    assert_eq!(snapshots(&env).len(), 1, "a refused capture saved something");
}

#[test]
fn a_tls_server_is_captured_through_its_ca_and_refused_without_it() {
    let env = Env::new();
    let issue = |dir: &Path| {
        let request = DevCaRequest {
            coordinators: vec!["redis".into()],
            hosts: vec!["127.0.0.1".into()],
            agents: Vec::new(),
            admins: Vec::new(),
            days: 1,
        };
        issue_dev_certs(dir, &request).unwrap();
    };
    let (certs, other) = (env.path("certs"), env.path("other-ca"));
    issue(&certs);
    issue(&other);
    let tls_port = free_port();
    let file = |name: &str| certs.join(name).display().to_string();
    let args = [
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &file("coordinator-redis.pem"),
        "--tls-key-file",
        &file("coordinator-redis.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        "--tls-auth-clients",
        "no",
        "--repl-diskless-sync-delay",
        "0",
    ];
    let server = RedisServer::start(&env.path("server"), &args);
    fill_every_type(&mut server.conn(), 3_000);
    let url = format!("rediss://127.0.0.1:{tls_port}");

    let out = env.ok_stderr(&["backup", "redis", "--url", &url, "--ca-file", &file("ca.pem")]);
    assert!(out.contains("3000 keys"), "{out}");
    let err = env.fails(&["backup", "redis", "--url", &url]);
    assert!(err.contains("rediss:// needs the CA"), "{err}");
    let other_ca = other.join("ca.pem");
    let err = env.fails(&["backup", "redis", "--url", &url, "--ca-file", other_ca.to_str().unwrap()]);
    let lines = error_lines(&err);
    assert!(lines.len() == 1 && lines[0].contains("TLS handshake"), "{err}");
    assert_eq!(snapshots(&env).len(), 1);
}

/// Starts a capture of `server`, kills its replication link once the
/// transfer is under way, and checks nothing was saved; then a capture at
/// full speed succeeds and the repository verifies.
fn kill_the_link_mid_transfer(diskless: &str) {
    let env = Env::new();
    let args = ["--repl-diskless-sync", diskless, "--repl-diskless-sync-delay", "0", "--rdb-key-save-delay", "300"];
    let server = RedisServer::start(&env.path("server"), &args);
    fill_every_type(&mut server.conn(), 20_000);

    let mut capture = env.cmd();
    capture.args(["backup", "redis", "--url", &server.url()]);
    let child = capture.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // The link is a replica client from PSYNC until the RDB has been sent.
    wait_for(Duration::from_secs(20), "the capture's replication link", || {
        let listed = format!("{:?}", server.cmd(&["CLIENT", "LIST", "TYPE", "replica"]));
        listed.contains("cmd=psync").then_some(())
    });
    std::thread::sleep(Duration::from_millis(800));
    server.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a capture whose link was killed succeeded: {err}");
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("cut short") || lines[0].contains("closed the connection"), "{err}");
    assert!(snapshots(&env).is_empty(), "a cut capture saved a snapshot");

    server.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "0"]);
    let out = env.ok_stderr(&["backup", "redis", "--url", &server.url()]);
    assert!(out.contains("20000 keys"), "{out}");
    env.ok(&["verify", "--read-data"]);

    // A port already taken is refused before a server is started on it.
    let target = env.path("restored");
    let port = server.port.to_string();
    let err = env.fails(&["restore", "redis", "--target-dir", target.to_str().unwrap(), "--start", "--port", &port]);
    assert!(err.contains("is in use"), "{err}");
}

#[test]
fn a_diskless_transfer_killed_mid_way_saves_nothing_and_the_retry_succeeds() {
    kill_the_link_mid_transfer("yes");
}

#[test]
fn a_disk_based_transfer_killed_mid_way_saves_nothing_and_the_retry_succeeds() {
    kill_the_link_mid_transfer("no");
}

/// Every file below `dir`, with its content.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = support::files_below(dir)
        .into_iter()
        .map(|p| (p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn a_flipped_byte_in_a_pack_fails_the_restore_naming_it_and_leaves_the_target_untouched() {
    let env = Env::new();
    let server = RedisServer::start(&env.path("server"), &["--repl-diskless-sync-delay", "0"]);
    fill_every_type(&mut server.conn(), 50_000);
    env.ok(&["backup", "redis", "--url", &server.url()]);

    let target = env.path("target");
    std::fs::create_dir_all(target.join("appendonlydir")).unwrap();
    std::fs::write(target.join("dump.rdb"), b"the server's own RDB").unwrap();
    std::fs::write(target.join("appendonlydir/appendonly.aof.1.incr.aof"), b"its AOF").unwrap();
    let before = contents(&target);

    let packs: Vec<_> = support::files_below(&env.repo.join("data")).into_iter().collect();
    let pack = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(pack, bytes).unwrap();
    let name = pack.file_name().unwrap().to_str().unwrap();

    let err = env.fails(&["restore", "redis", "--target-dir", target.to_str().unwrap()]);
    assert!(err.contains(&name[..16]) && err.contains("untouched"), "the damaged pack {name} is not named: {err}");
    assert_eq!(contents(&target), before, "the target changed");
    assert!(
        std::fs::read_dir(&target).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".lifeboat"))
    );
}

#[test]
fn under_sentinel_the_replica_is_captured_and_a_failover_is_followed() {
    let env = Env::new();
    let set = SentinelSet::start(&env.path("sentinel-set"), "cache");
    fill_every_type(&mut set.master.conn(), 5_000);
    let url = set.url();
    let captured_from = |prefer: &str| {
        env.ok(&["backup", "redis", "--url", &url, "--prefer", prefer]);
        let snap = snapshots(&env).pop().unwrap();
        (snap["redis"]["server"].as_str().unwrap().to_owned(), snap["redis"]["role"].as_str().unwrap().to_owned())
    };
    let (master, replica) = (format!("127.0.0.1:{}", set.master.port), format!("127.0.0.1:{}", set.replica.port));
    assert_eq!(captured_from("replica"), (replica.clone(), "slave".to_owned()));
    assert_eq!(captured_from("master"), (master.clone(), "master".to_owned()));

    set.fail_over();
    assert_eq!(captured_from("master"), (replica, "master".to_owned()));
    assert_eq!(captured_from("replica"), (master, "slave".to_owned()));
}
