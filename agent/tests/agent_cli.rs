//! The `lifeboat-agent` binary as PostgreSQL calls it: clear failures for
//! what it cannot do. (The end-to-end runs against real clusters are in
//! `cli/tests/postgres.rs`; this test also makes cargo build the binary
//! they use.)

use std::process::Command;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat-agent"));
    c.env_remove("LIFEBOAT_REPO").env_remove("LIFEBOAT_KEY_FILE");
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
