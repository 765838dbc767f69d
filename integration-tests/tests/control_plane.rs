//! The control plane as real processes: coordinators (embedded state, or
//! three sharing a three-member etcd cluster), agents backing up real file
//! trees into a real repository, the `lifeboat` admin client over mutual
//! TLS; processes are killed with SIGKILL and paused with SIGSTOP.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lifeboat_common::tls::{DevCaRequest, issue_dev_certs};
use lifeboat_integration_tests::control::{Deployment, KeptOnFailure, Proc, files_source, free_port, serial, wait_for};
use lifeboat_integration_tests::postgres::workspace_bin;
use serde_json::Value;

fn jobs(d: &Deployment, url: &str) -> Vec<Value> {
    d.admin_json(url, "vera", &["jobs", "--limit", "1000"])
        .and_then(|v| v.get("jobs").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

fn field<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

fn job_id(job: &Value) -> String {
    field(job, &["assignment", "jobId"]).as_str().unwrap_or_default().to_owned()
}

fn job_state(job: &Value) -> String {
    job.get("state").and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Snapshots by the job tag they carry.
fn snapshots_per_job(d: &Deployment) -> HashMap<String, usize> {
    let listed = d.snapshots();
    let mut per_job = HashMap::new();
    for s in listed.as_array().unwrap() {
        for tag in s["tags"].as_array().unwrap() {
            if let Some(job) = tag.as_str().and_then(|t| t.strip_prefix("job:")) {
                *per_job.entry(job.to_owned()).or_insert(0) += 1;
            }
        }
    }
    per_job
}

/// One coordinator (embedded state) on a free port, and agent `node1` with
/// source `docs` over `data` bound to `schedules`: the URL, the
/// coordinator, the agent's configuration and the agent.
fn one_coordinator_and_agent(
    d: &Deployment,
    policy: &Path,
    data: &Path,
    schedules: &str,
) -> (String, Proc, PathBuf, Proc) {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let coordinator = d.start_coordinator(&d.coordinator_config("c1", port, policy, None));
    let agent_config = d.agent_config("node1", std::slice::from_ref(&url), &files_source(data, schedules));
    let agent = d.start_agent(&agent_config);
    (url, coordinator, agent_config, agent)
}

#[test]
fn one_coordinator_runs_scheduled_and_requested_backups_and_refuses_and_audits_strangers() {
    let _serial = serial();
    let tmp = KeptOnFailure(tempfile::tempdir().unwrap());
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let data = tmp.path().join("docs");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "alpha\n".repeat(10_000)).unwrap();
    let policy = d.policy(
        "policy.yaml",
        "backup_schedules:\n  files:\n    media:\n      interval: \"3s\"\n      retention_days: 30\n",
    );
    let (url, _coordinator, _, _agent) = one_coordinator_and_agent(&d, &policy, &data, "\"files.media\"");

    // The schedule runs by itself; status shows the backup against the RPO.
    let done = wait_for(Duration::from_secs(60), "a scheduled backup", || {
        jobs(&d, &url).into_iter().find(|j| job_state(j) == "JOB_STATE_SUCCEEDED")
    });
    assert!(job_id(&done).starts_with("files.media@node1/docs@"), "{done}");
    // The leader applies retention to the repository now and then.
    let status = wait_for(Duration::from_secs(30), "a retention run", || {
        let status = d.admin_json(&url, "vera", &["status"])?;
        status["retention"].as_str()?.contains("forgot").then_some(status)
    });
    assert_eq!(status["leader"], "c1");
    let source = &status["sources"][0];
    assert_eq!(source["sourceId"], "docs");
    assert!(source.get("rpoBreached").is_none(), "{status}");
    assert!(!source["lastSnapshotId"].as_str().unwrap().is_empty());

    // By hand, as an operator, waiting for it: the snapshot is in the repository.
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snapshot = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(snapshot.len(), 64, "{snapshot}");
    let per_job = snapshots_per_job(&d);
    assert!(per_job.values().all(|n| *n == 1), "a job ran twice: {per_job:?}");

    // A restore on the agent, asked for by the operator.
    let target = tmp.path().join("restored");
    let out = d.admin(
        &url,
        "alice",
        &[
            "restore",
            "agent",
            "node1/docs",
            "--target-dir",
            target.to_str().unwrap(),
            "--snapshot",
            &snapshot,
            "--wait",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = walk_find(&target, "a.txt").expect("a.txt restored");
    assert_eq!(std::fs::read(restored).unwrap(), std::fs::read(data.join("a.txt")).unwrap());

    // The standard health service and server reflection answer (grpcurl works).
    let services = health_and_services(&d, &url);
    for name in ["lifeboat.v1.Admin", "lifeboat.v1.AgentControl", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{name} is not listed by reflection: {services:?}");
    }

    // Refusals: a viewer starting a restore, an agent calling Admin, a
    // certificate from another CA, an expired certificate.
    let out = d.admin(&url, "vera", &["restore", "agent", "node1/docs", "--target-dir", "/tmp/x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("permission denied") && err.contains("Restore needs operator"),
        "{err}"
    );

    let certs = &d.certs;
    // `lifeboat status` with this certificate and key, trusting our CA.
    let status_as = |cert: std::path::PathBuf, key: std::path::PathBuf| {
        Command::new(workspace_bin("lifeboat"))
            .args(["status", "--coordinator", &url, "--tls-ca"])
            .arg(certs.join("ca.pem"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap()
    };
    let as_agent = status_as(certs.join("agent-node1.pem"), certs.join("agent-node1.key"));
    let err = String::from_utf8_lossy(&as_agent.stderr);
    assert!(!as_agent.status.success() && err.contains("may call only AgentControl"), "{err}");

    let stranger = tmp.path().join("stranger");
    issue_dev_certs(
        &stranger,
        &DevCaRequest { coordinators: vec![], hosts: vec![], agents: vec![], admins: vec!["alice".into()], days: 2 },
    )
    .unwrap();
    let foreign = status_as(stranger.join("admin-alice.pem"), stranger.join("admin-alice.key"));
    assert!(!foreign.status.success(), "a certificate from another CA was let in");

    issue_dev_certs(
        certs,
        &DevCaRequest { coordinators: vec![], hosts: vec![], agents: vec![], admins: vec!["stale".into()], days: 0 },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let expired = d.admin(&url, "stale", &["status"]);
    assert!(!expired.status.success(), "an expired certificate was let in");

    // Each refusal is in the audit log, which the admin reads and which verifies.
    let audit = wait_for(Duration::from_secs(10), "the handshake refusals in the audit log", || {
        let log = d.admin_json(&url, "root", &["audit", "log", "--limit", "200"])?;
        let entries = log["entries"].as_array()?.clone();
        let handshakes = entries.iter().filter(|e| e["action"] == "tls-handshake").count();
        (handshakes >= 2).then_some(entries)
    });
    let denied = |action: &str, who: &str| {
        audit.iter().any(|e| {
            e["action"] == action
                && e["principal"].as_str().is_some_and(|p| p.contains(who))
                && e["result"].as_str().is_some_and(|r| r.starts_with("denied"))
        })
    };
    assert!(denied("Admin/Restore", "admin:vera"), "{audit:?}");
    assert!(denied("Admin/Status", "agent:node1"), "{audit:?}");
    let handshakes: Vec<&str> =
        audit.iter().filter(|e| e["action"] == "tls-handshake").filter_map(|e| e["result"].as_str()).collect();
    // The stranger's CA has our CA's name but not its key.
    assert!(handshakes.iter().any(|r| r.contains("BadSignature") || r.contains("UnknownIssuer")), "{handshakes:?}");
    assert!(handshakes.iter().any(|r| r.to_lowercase().contains("expired")), "{handshakes:?}");
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "Admin/RunBackup" && e["result"] == "ok" && e["principal"] == "admin:alice")
    );
    let verified = Command::new(workspace_bin("lifeboat"))
        .args(["audit", "verify"])
        .arg(tmp.path().join("coordinator-c1/audit.log"))
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}

/// Checks the health service says `lifeboat.v1.Admin` is serving, and
/// returns the services server reflection lists (as vera, a viewer).
fn health_and_services(d: &Deployment, url: &str) -> Vec<String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let c = &d.certs;
    let tls =
        lifeboat_common::tls::client_config(&c.join("ca.pem"), &c.join("admin-vera.pem"), &c.join("admin-vera.key"))
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Made inside the runtime: the channel spawns its worker there.
        let channel = lifeboat_common::tls::channel(url, tls).unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let check = tonic_health::pb::HealthCheckRequest { service: "lifeboat.v1.Admin".into() };
        let status = health.check(check).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32);
        let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
        match replies.message().await.unwrap().and_then(|r| r.message_response) {
            Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
            other => panic!("reflection answered {other:?}"),
        }
    })
}

/// Files below `dir`.
fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 }).sum()
    })
}

fn walk_find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = walk_find(&path, name)
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn a_malformed_policy_is_refused_at_start_and_on_reload_and_the_old_one_stays() {
    let _serial = serial();
    let tmp = KeptOnFailure(tempfile::tempdir().unwrap());
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let bad = "backup_schedules:\n  files:\n    media:\n      cron: \"0 3 * *\"\n";
    let policy = d.policy("policy.yaml", bad);
    let port = free_port();
    let config = d.coordinator_config("c1", port, &policy, None);
    let mut refused = d.start_coordinator(&config);
    wait_for(Duration::from_secs(20), "the coordinator to refuse the policy", || (!refused.running()).then_some(()));
    let log = refused.log_text();
    assert!(log.contains("policy") && log.contains("line 4"), "{log}");

    // A failover group whose fence would not come before its failover.
    let unsafe_group = "backup_schedules: {}\nfailover:\n  orders:\n    kind: postgres\n    members: [a/pg, b/pg]\n    primary: a/pg\n    \
                        max_lag: 30s\n    failover_after: 30s\n    fence_after: 29s\n";
    std::fs::write(&policy, unsafe_group).unwrap();
    let checked =
        Command::new(workspace_bin("lifeboat-coordinator")).args(["check", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&checked.stderr);
    assert!(
        !checked.status.success() && err.contains("failover.orders") && err.contains("at least 5s shorter"),
        "{err}"
    );

    let good = "backup_schedules:\n  files:\n    media:\n      cron: \"0 3 * * *\"\n";
    std::fs::write(&policy, good).unwrap();
    let coordinator = d.start_coordinator(&config);
    let url = format!("https://127.0.0.1:{port}");
    let data = tmp.path().join("docs");
    std::fs::create_dir_all(&data).unwrap();
    let agent_config =
        d.agent_config("node1", std::slice::from_ref(&url), &files_source(&data, "\"files.media\", \"files.hourly\""));
    let _agent = d.start_agent(&agent_config);
    let schedules = |d: &Deployment| -> Vec<String> {
        let status = d.admin_json(&url, "vera", &["status"]).unwrap_or_default();
        let runs =
            field(&status, &["sources"]).get(0).and_then(|s| s.get("nextRuns")).and_then(Value::as_array).cloned();
        let mut ids: Vec<String> =
            runs.unwrap_or_default().iter().filter_map(|r| r["scheduleId"].as_str().map(str::to_owned)).collect();
        ids.sort();
        ids
    };
    wait_for(Duration::from_secs(30), "the agent's source in status", || {
        (schedules(&d) == ["files.media"]).then_some(())
    });

    // A broken edit, then SIGHUP: refused, named, and the schedule in force stays.
    std::fs::write(&policy, "backup_schedules:\n  files:\n    media:\n      cron: \"0 3 * * *\"\n     oops: 1\n")
        .unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(coordinator.pid(), libc::SIGHUP) };
    wait_for(Duration::from_secs(10), "the reload to be refused", || {
        coordinator.log_text().contains("policy reload refused").then_some(())
    });
    assert!(coordinator.log_text().contains("line 5"), "{}", coordinator.log_text());
    assert_eq!(schedules(&d), ["files.media"]);

    // A good edit is taken.
    std::fs::write(&policy, format!("{good}    hourly:\n      cron: \"0 * * * *\"\n      priority: 1\n")).unwrap();
    unsafe { libc::kill(coordinator.pid(), libc::SIGHUP) };
    wait_for(Duration::from_secs(10), "the new schedule", || {
        (schedules(&d) == ["files.hourly", "files.media"]).then_some(())
    });
}

/// Writes `n` files of `mb` MiB of incompressible bytes.
fn random_tree(dir: &std::path::Path, n: usize, mb: usize) {
    use rand_core::{RngCore, SeedableRng};
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
    let mut buf = vec![0u8; mb << 20];
    for i in 0..n {
        rng.fill_bytes(&mut buf);
        std::fs::write(dir.join(format!("blob-{i}")), &buf).unwrap();
    }
}

#[test]
fn an_agent_killed_mid_backup_is_lost_its_job_retried_and_the_repository_stays_sound() {
    let _serial = serial();
    let tmp = KeptOnFailure(tempfile::tempdir().unwrap());
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let data = tmp.path().join("big");
    random_tree(&data, 12, 64);
    let policy = d.policy("policy.yaml", "backup_schedules:\n  files:\n    media:\n      cron: \"0 3 * * *\"\n");
    let (url, _coordinator, agent_config, mut agent) = one_coordinator_and_agent(&d, &policy, &data, "");
    d.wait_attached(&url);

    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job_id(&job);
    let find = |d: &Deployment| jobs(d, &url).into_iter().find(|j| job_id(j) == id);
    wait_for(Duration::from_secs(30), "the backup to run", || find(&d).filter(|j| job_state(j) == "JOB_STATE_RUNNING"));
    // Killed once its first packs land: mid-backup, however fast the machine
    // (a fixed pause let a quick backup finish first).
    let packs = |d: &Deployment| walk_count(&d.repo.join("data"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while packs(&d) < 2 {
        assert!(std::time::Instant::now() < deadline, "the backup wrote no packs in a minute");
        std::thread::sleep(Duration::from_millis(10));
    }
    agent.kill();
    let killed = find(&d).unwrap();
    assert_ne!(job_state(&killed), "JOB_STATE_SUCCEEDED", "the backup finished before the kill: nothing was tested");

    // Silent past the deadline: the agent is lost and the attempt failed;
    // the job waits to be retried.
    let retried = wait_for(Duration::from_secs(30), "the lost agent's job to be queued again", || {
        find(&d).filter(|j| job_state(j) == "JOB_STATE_QUEUED")
    });
    assert_eq!(field(&retried, &["assignment", "attempt"]), 1, "{retried}");
    let agents = d.admin_json(&url, "vera", &["agents"]).unwrap();
    assert_eq!(agents["agents"][0]["lost"], true, "{agents}");

    // Back: the retry runs and succeeds.
    let _agent = d.start_agent(&agent_config);
    let done = wait_for(Duration::from_secs(120), "the retry to succeed", || {
        find(&d).filter(|j| job_state(j) == "JOB_STATE_SUCCEEDED" || job_state(j) == "JOB_STATE_FAILED")
    });
    assert_eq!(job_state(&done), "JOB_STATE_SUCCEEDED", "{done}");
    assert_eq!(field(&done, &["assignment", "attempt"]), 2, "{done}");
    assert_eq!(snapshots_per_job(&d).get(&id), Some(&1));

    // What the killed attempt left behind does not harm the repository.
    let verify = Command::new(workspace_bin("lifeboat"))
        .args(["verify", "--repo"])
        .arg(&d.repo)
        .arg("--key-file")
        .arg(&d.key)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// Counts of the log lines that follow a commit: a job made, a job assigned.
fn commits(log: &str) -> usize {
    log.lines().filter(|l| l.contains("job due") || l.contains("job assigned")).count()
}

#[test]
fn three_coordinators_on_etcd_fail_over_in_two_ttls_run_each_slot_once_and_a_paused_leader_commits_nothing() {
    let _serial = serial();
    let tmp = KeptOnFailure(tempfile::tempdir().unwrap());
    let etcd_dir = tmp.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let mut etcd = lifeboat_integration_tests::etcd::EtcdCluster::start(&etcd_dir, 3);
    let names = ["c1", "c2", "c3"];
    let d = Deployment::new(tmp.path(), &names, &["node1", "node2"]);
    let policy = d.policy("policy.yaml", "backup_schedules:\n  files:\n    media:\n      interval: \"2s\"\n");
    let ttl = 2;
    let settings = lifeboat_integration_tests::control::EtcdSettings {
        endpoints: etcd.endpoints(),
        prefix: "/lifeboat/test".into(),
        ttl_secs: ttl,
    };
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    // Agents first: they find no coordinator at all, then followers that
    // name a leader they failed to reach; they must still end up attached.
    let mut agents = Vec::new();
    for host in ["node1", "node2"] {
        let data = tmp.path().join(format!("data-{host}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f"), host).unwrap();
        agents.push(d.start_agent(&d.agent_config(host, &urls, &files_source(&data, "\"files.media\""))));
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut coordinators: Vec<_> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| d.start_coordinator(&d.coordinator_config(name, *port, &policy, Some(&settings))))
        .collect();
    let leader_seen_by = |d: &Deployment, i: usize| -> Option<String> {
        let status = d.admin_json(&urls[i], "vera", &["status"])?;
        status["leader"].as_str().map(str::to_owned)
    };
    let index = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let first = wait_for(Duration::from_secs(30), "a leader", || leader_seen_by(&d, 0));
    let l1 = index(&first);
    let succeeded =
        |d: &Deployment, url: &str| jobs(d, url).iter().filter(|j| job_state(j) == "JOB_STATE_SUCCEEDED").count();
    wait_for(Duration::from_secs(60), "scheduled backups on both agents", || {
        (succeeded(&d, &urls[l1]) >= 4).then_some(())
    });

    // SIGKILL the leader: another leads within two TTLs.
    let killed_at = std::time::Instant::now();
    coordinators[l1].kill();
    let other = (l1 + 1) % 3;
    let second = wait_for(Duration::from_secs(20), "a new leader", || {
        leader_seen_by(&d, other).filter(|l| *l != first && !l.is_empty())
    });
    let failover = killed_at.elapsed();
    eprintln!("new leader {second} {failover:?} after the leader was killed (TTL {ttl}s)");
    assert!(failover <= Duration::from_secs(2 * ttl + 1), "failover took {failover:?}");
    let l2 = index(&second);
    // Both agents attach to it, and its schedule goes on.
    wait_for(Duration::from_secs(30), "both agents on the new leader", || {
        let agents = d.admin_json(&urls[l2], "vera", &["agents"])?;
        let attached = agents["agents"].as_array()?.iter().filter(|a| a["connected"] == true).count();
        (attached == 2).then_some(())
    });
    let before = succeeded(&d, &urls[l2]);
    wait_for(Duration::from_secs(30), "backups under the new leader", || {
        (succeeded(&d, &urls[l2]) >= before + 2).then_some(())
    });

    // SIGSTOP the new leader (a partition): a third takes over; resumed,
    // the paused one commits nothing and follows.
    let l3_index = (0..3).find(|i| *i != l1 && *i != l2).unwrap();
    let commits_before = commits(&coordinators[l2].log_text());
    coordinators[l2].pause();
    let third = wait_for(Duration::from_secs(20), "a leader after the pause", || {
        leader_seen_by(&d, l3_index).filter(|l| *l == names[l3_index])
    });
    let before = succeeded(&d, &urls[l3_index]);
    wait_for(Duration::from_secs(40), "backups under the third leader", || {
        (succeeded(&d, &urls[l3_index]) >= before + 2).then_some(())
    });
    coordinators[l2].resume();
    wait_for(Duration::from_secs(20), "the resumed coordinator to follow", || {
        leader_seen_by(&d, l2).filter(|l| *l == third)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        commits(&coordinators[l2].log_text()),
        commits_before,
        "the deposed leader committed after it was paused"
    );

    // Every job ran once: one snapshot per job, and none failed.
    let all = jobs(&d, &urls[l3_index]);
    assert!(all.iter().all(|j| job_state(j) != "JOB_STATE_FAILED"), "{all:?}");
    let per_job = snapshots_per_job(&d);
    assert!(per_job.values().all(|n| *n == 1), "a job ran twice: {per_job:?}");
    let done: Vec<String> = all.iter().filter(|j| job_state(j) == "JOB_STATE_SUCCEEDED").map(job_id).collect();
    assert!(done.iter().all(|id| per_job.contains_key(id)), "a succeeded job without its snapshot");
    drop(agents);
    etcd.kill(0);
}

fn wal_segments(d: &Deployment) -> usize {
    std::fs::read_dir(d.repo.join("wal/00000001"))
        .map_or(0, |r| r.filter_map(Result::ok).filter(|e| !e.file_name().to_string_lossy().contains('.')).count())
}

#[test]
fn without_etcd_quorum_coordinators_stop_scheduling_and_say_why_while_wal_is_still_archived() {
    let _serial = serial();
    use lifeboat_integration_tests::postgres::Cluster;
    let tmp = KeptOnFailure(tempfile::tempdir().unwrap());
    let etcd_dir = tmp.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let mut etcd = lifeboat_integration_tests::etcd::EtcdCluster::start(&etcd_dir, 3);
    let names = ["c1", "c2", "c3"];
    let d = Deployment::new(tmp.path(), &names, &["db1"]);
    let mut pg = Cluster::init(tmp.path(), "pg", "");
    pg.start();
    let policy = d.policy("policy.yaml", "backup_schedules:\n  files:\n    media:\n      interval: \"2s\"\n");
    let settings = lifeboat_integration_tests::control::EtcdSettings {
        endpoints: etcd.endpoints(),
        prefix: "/lifeboat/quorum".into(),
        ttl_secs: 2,
    };
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let _coordinators: Vec<_> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| d.start_coordinator(&d.coordinator_config(name, *port, &policy, Some(&settings))))
        .collect();
    let data = tmp.path().join("docs");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "x").unwrap();
    let sources = format!(
        "{}[[source]]\nid = \"pg\"\nkind = \"postgres\"\npgdata = \"{}\"\npg_host = \"127.0.0.1\"\npg_port = {}\npg_user = \"postgres\"\nrpo = \"5m\"\n[source.wal_stream]\nslot = \"lifeboat\"\ninterval = \"1s\"\n",
        files_source(&data, "\"files.media\""),
        pg.pgdata.display(),
        pg.port
    );
    let _agent = d.start_agent(&d.agent_config("db1", &urls, &sources));
    let leader = |d: &Deployment| -> Option<usize> {
        let status = d.admin_json(&urls[0], "vera", &["status"])?;
        names.iter().position(|n| status["leader"] == *n)
    };
    let l = wait_for(Duration::from_secs(30), "a leader", || leader(&d));
    let succeeded = |d: &Deployment| jobs(d, &urls[l]).iter().filter(|j| job_state(j) == "JOB_STATE_SUCCEEDED").count();
    wait_for(Duration::from_secs(60), "scheduled backups", || (succeeded(&d) >= 2).then_some(()));
    wait_for(Duration::from_secs(30), "WAL streaming", || {
        let status = d.admin_json(&urls[l], "vera", &["status"])?;
        let pg = status["sources"].as_array()?.iter().find(|s| s["sourceId"] == "pg")?.clone();
        (pg["wal"]["connected"] == true).then_some(())
    });

    // One member down: nothing changes; backups go on.
    etcd.kill(2);
    let before = snapshots_per_job(&d).len();
    wait_for(Duration::from_secs(60), "backups with one etcd member down", || {
        (snapshots_per_job(&d).len() >= before + 2).then_some(())
    });
    // Two of three down: no quorum.
    etcd.kill(1);
    for url in &urls {
        wait_for(Duration::from_secs(30), "every coordinator to say it is degraded", || {
            let status = d.admin_json(url, "vera", &["status"])?;
            let why = status["degraded"].as_str()?.to_owned();
            why.contains("etcd").then_some(())
        });
    }
    // Scheduling has stopped: no new snapshot while quorum is lost.
    std::thread::sleep(Duration::from_secs(3));
    let snapshots_then = snapshots_per_job(&d).len();
    // WAL goes on being archived meanwhile.
    let segments_then = wal_segments(&d);
    for i in 0..3 {
        pg.sql(&format!("CREATE TABLE t{i} AS SELECT generate_series(1, 1000) AS n"));
        pg.sql("SELECT pg_switch_wal()");
    }
    wait_for(Duration::from_secs(30), "WAL archived without a coordinator", || {
        (wal_segments(&d) >= segments_then + 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(snapshots_per_job(&d).len(), snapshots_then, "a backup was scheduled without quorum");

    // Quorum back: a leader, no longer degraded, and schedules run again.
    etcd.restart(1);
    etcd.restart(2);
    etcd.wait_healthy(Duration::from_secs(30));
    let l = wait_for(Duration::from_secs(30), "a leader again", || leader(&d));
    wait_for(Duration::from_secs(30), "scheduling again", || {
        let status = d.admin_json(&urls[l], "vera", &["status"])?;
        status.get("degraded").is_none().then_some(())
    });
    wait_for(Duration::from_secs(60), "backups again", || {
        (snapshots_per_job(&d).len() >= snapshots_then + 2).then_some(())
    });
}

/// Scheduled snapshots in the order they were taken: (time, schedule).
fn scheduled_in_order(d: &Deployment) -> Vec<(String, String)> {
    let listed = d.snapshots();
    let mut runs: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            let schedule = s["tags"].as_array()?.iter().find_map(|t| t.as_str()?.strip_prefix("schedule:"))?.to_owned();
            Some((s["time"].as_str()?.to_owned(), schedule))
        })
        .collect();
    runs.sort();
    runs
}

#[test]
fn when_the_agent_is_busy_priority_one_goes_first() {
    let _serial = serial();
    let tmp = KeptOnFailure(tempfile::tempdir().unwrap());
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let data = tmp.path().join("big");
    random_tree(&data, 8, 64);
    let policy = d.policy(
        "policy.yaml",
        "backup_schedules:\n  files:\n    low:\n      interval: \"2s\"\n      priority: 4\n    high:\n      interval: \"2s\"\n      priority: 1\n",
    );
    let (url, _coordinator, _, _agent) = one_coordinator_and_agent(&d, &policy, &data, "\"files.low\", \"files.high\"");
    d.wait_attached(&url);
    // Busy for seconds with a backup by hand, while both schedules fall due.
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs = wait_for(Duration::from_secs(120), "both schedules to run", || {
        let runs = scheduled_in_order(&d);
        (runs.iter().any(|r| r.1 == "files.low") && runs.iter().any(|r| r.1 == "files.high")).then_some(runs)
    });
    assert_eq!(runs[0].1, "files.high", "priority 4 went before priority 1: {runs:?}");
    // Each schedule waited as one job (later slots superseded the waiting one), not a pile.
    let all = jobs(&d, &url);
    let superseded =
        all.iter().filter(|j| field(j, &["result", "error"]).as_str() == Some("superseded by a later slot")).count();
    eprintln!("{} jobs, {superseded} superseded while the agent was busy", all.len());
}
