//! The `lifeboat-agent` binary as PostgreSQL calls it: clear failures for
//! what it cannot do. (The end-to-end runs against real clusters are in
//! `cli/tests/postgres.rs`; this test also makes cargo build the binary
//! they use.)

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat-agent"));
    c.env_remove("LIFEBOAT_REPO").env_remove("LIFEBOAT_KEY_FILE").env_remove("LIFEBOAT_CONFIG");
    c
}

#[test]
fn wal_commands_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let repo = dir.path().join("repo");
    let repo_args = [format!("--repo={}", repo.display()), format!("--key-file={}", key.display())];

    // No repository configured: one line saying what to pass.
    let out = agent().args(["wal-push", "/nonexistent/000000010000000000000001"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--repo") || err.contains("LIFEBOAT_REPO"), "{err}");

    // A repository that does not exist, for fetch: recovery must stop (status above 125).
    let out = agent().arg("wal-fetch").args(&repo_args).args(["000000010000000000000001", "/tmp/x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lifeboat-agent: error:"));
}

#[tokio::test]
async fn wal_push_killed_mid_upload_leaves_nothing_half_written_and_the_retry_succeeds() {
    use std::sync::Arc;

    use lifeboat_common::crypto::MasterKey;
    use lifeboat_common::repo::Repository;
    use lifeboat_common::store::LocalStore;

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let master = MasterKey::generate().unwrap();
    master.save_new(&key).unwrap();
    Repository::init(Arc::new(LocalStore::new(dir.path().join("repo"))), &master).await.unwrap();
    let repo_args = [format!("--repo={}", dir.path().join("repo").display()), format!("--key-file={}", key.display())];

    // A segment that takes a moment to compress and seal (little repeats).
    let pg_wal = dir.path().join("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let segment: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let fetched = dir.path().join("fetched");
    let state = dir.path().join("state");

    for (i, delay_ms) in [2, 10, 30, 80, 200].into_iter().enumerate() {
        let name = &format!("0000000100000000000000{:02X}", i + 1);
        std::fs::write(pg_wal.join(name), &segment).unwrap();
        let mut push = agent()
            .env("LIFEBOAT_STATE_DIR", &state)
            .arg("wal-push")
            .args(&repo_args)
            .arg(pg_wal.join(name))
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        push.kill().unwrap();
        push.wait().unwrap();
        // Absent (exit 1) or whole: never a damaged object.
        let out = agent().arg("wal-fetch").args(&repo_args).arg(name).arg(&fetched).output().unwrap();
        match out.status.code() {
            Some(1) => assert!(!fetched.exists()),
            Some(0) => assert!(std::fs::read(&fetched).unwrap() == segment, "a different segment came back"),
            other => panic!("fetch after a kill at {delay_ms} ms: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
        }
        // PostgreSQL retries: that succeeds whether or not the kill landed first.
        let out = agent()
            .env("LIFEBOAT_STATE_DIR", &state)
            .arg("wal-push")
            .args(&repo_args)
            .arg(pg_wal.join(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&fetched).ok();
        let out = agent().arg("wal-fetch").args(&repo_args).arg(name).arg(&fetched).output().unwrap();
        assert!(out.status.success());
        assert!(std::fs::read(&fetched).unwrap() == segment);
        std::fs::remove_file(&fetched).ok();
    }
}

#[tokio::test]
async fn a_config_file_names_the_repository_and_a_malformed_one_is_refused() {
    use std::sync::Arc;

    use lifeboat_common::crypto::MasterKey;
    use lifeboat_common::repo::Repository;
    use lifeboat_common::store::LocalStore;

    let dir = tempfile::tempdir().unwrap();
    let (key, repo) = (dir.path().join("key"), dir.path().join("repo"));
    let master = MasterKey::generate().unwrap();
    master.save_new(&key).unwrap();
    Repository::init(Arc::new(LocalStore::new(repo.clone())), &master).await.unwrap();
    let config = dir.path().join("lifeboat.toml");
    std::fs::write(&config, format!("repo = {:?}\nkey_file = {:?}\n", repo.display().to_string(), key)).unwrap();

    let segment = dir.path().join("000000010000000000000007");
    std::fs::write(&segment, vec![7u8; 8192]).unwrap();
    let out = agent()
        .env("LIFEBOAT_STATE_DIR", dir.path().join("state"))
        .args(["wal-push", "--config"])
        .arg(&config)
        .arg(&segment)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fetched = dir.path().join("fetched");
    let out = agent()
        .env("LIFEBOAT_CONFIG", &config)
        .args(["wal-fetch", "000000010000000000000007"])
        .arg(&fetched)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&fetched).unwrap(), vec![7u8; 8192]);

    std::fs::write(&config, "repo = 5\nkey_flie = \"x\"\n").unwrap();
    let out = agent()
        .args(["wal-fetch", "--config"])
        .arg(&config)
        .arg("000000010000000000000007")
        .arg(&fetched)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(err.contains(&format!("configuration file {}", config.display())), "{err}");
}
