//! A Redis source under the control plane, as real processes: a
//! coordinator scheduling captures of a Sentinel-managed set on an agent,
//! a failover between two scheduled captures, and a restore run through
//! the agent and started.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lifeboat_integration_tests::control::{Deployment, KeptOnFailure, free_port, serial, wait_for};
use lifeboat_integration_tests::redis::{RedisServer, SentinelSet, assert_same_keys, fill_every_type};
use serde_json::Value;

/// The Redis snapshots in the repository, oldest first.
fn redis_snapshots(d: &Deployment) -> Vec<Value> {
    let all = d.snapshots().as_array().cloned().unwrap_or_default();
    all.into_iter().filter(|s| s["source"] == "redis").collect()
}

/// The server the newest Redis snapshot came from, once there is one
/// newer than the first `after`.
fn newest_server(d: &Deployment, after: usize) -> Option<String> {
    let snaps = redis_snapshots(d);
    (snaps.len() > after).then(|| snaps.last().unwrap()["redis"]["server"].as_str().unwrap().to_owned())
}

#[test]
fn scheduled_captures_follow_a_sentinel_failover_and_a_restore_runs_through_the_agent() {
    let _serial = serial();
    let tmp = KeptOnFailure::new();
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let set = SentinelSet::start(&tmp.path().join("redis"), "sessions");
    fill_every_type(&mut set.master.conn(), 20_000);
    let policy = d.policy(
        "policy.yaml",
        "backup_schedules:\n  database:\n    redis:\n      interval: \"3s\"\n      retention_days: 7\n",
    );
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _coordinator = d.start_coordinator(&d.coordinator_config("c1", port, &policy, None));
    let source = format!(
        "[[source]]\nid = \"sessions\"\nkind = \"redis\"\nurl = \"{}\"\nprefer = \"replica\"\n\
         schedules = [\"database.redis\"]\nrpo = \"1h\"\n",
        set.url()
    );
    let _agent = d.start_agent(&d.agent_config("node1", std::slice::from_ref(&url), &source));
    d.wait_attached(&url);

    // Scheduled captures come from the replica, and status shows them
    // against the RPO.
    let (master, replica) = (format!("127.0.0.1:{}", set.master.port), format!("127.0.0.1:{}", set.replica.port));
    let first = wait_for(Duration::from_secs(60), "a scheduled capture", || newest_server(&d, 0));
    assert_eq!(first, replica);
    let status = wait_for(Duration::from_secs(30), "the capture in status", || {
        let status = d.admin_json(&url, "vera", &["status"])?;
        let source = status["sources"].as_array()?.iter().find(|s| s["sourceId"] == "sessions")?.clone();
        source.get("lastSnapshotId").is_some().then_some(source)
    });
    assert_eq!(status["kind"], "SOURCE_KIND_REDIS", "{status}");
    assert!(status.get("rpoBreached").is_none(), "{status}");

    // A failover between two captures: the next follows the new topology
    // (the old master, now the replica).
    set.fail_over();
    let before = redis_snapshots(&d).len();
    wait_for(Duration::from_secs(60), "a capture of the new replica", || {
        newest_server(&d, before).filter(|s| *s == master)
    });

    // A restore through the agent, then a server started on it holds what
    // the set holds.
    let target = tmp.path().join("restored");
    let target_arg = target.to_str().unwrap();
    let out = d.admin(&url, "alice", &["restore", "agent", "node1/sessions", "--target-dir", target_arg, "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(target.join("dump.rdb").exists());
    let restored = RedisServer::start(&target, &["--dbfilename", "dump.rdb"]);
    assert_eq!(assert_same_keys(&set.replica, &restored, &[0, 1, 7]), 20_000);
}
