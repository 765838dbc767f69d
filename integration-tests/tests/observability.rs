//! Observability as real processes: a coordinator and an agent serving
//! `/metrics` while they back up a real file tree, and a backup that fails
//! showing in both.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lifeboat_integration_tests::control::{Deployment, KeptOnFailure, configure, free_port, sample, scrape, wait_for};

/// One test at a time: each runs several processes on two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn files_source(dir: &std::path::Path) -> String {
    format!(
        "[[source]]\nid = \"docs\"\nkind = \"files\"\npaths = [\"{}\"]\nschedules = [\"files.media\"]\nrpo = \"1h\"\n",
        dir.display()
    )
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn the_leader_and_the_agent_serve_metrics_of_backups_jobs_and_agents() {
    let _serial = serial();
    let tmp = KeptOnFailure::new();
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let data = tmp.path().join("docs");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "alpha\n".repeat(10_000)).unwrap();
    let policy = d.policy(
        "policy.yaml",
        "backup_schedules:\n  files:\n    media:\n      interval: \"24h\"\n      retention_days: 30\n",
    );
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let (c_metrics, a_metrics) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let c_config = d.coordinator_config("c1", port, &policy, None);
    configure(&c_config, &format!("metrics_listen = \"{c_metrics}\""));
    let _coordinator = d.start_coordinator(&c_config);
    let a_config = d.agent_config("node1", std::slice::from_ref(&url), &files_source(&data));
    configure(&a_config, &format!("metrics_listen = \"{a_metrics}\""));
    let _agent = d.start_agent(&a_config);

    // Attached: the leader counts it, the agent says so.
    let text = wait_for(Duration::from_secs(30), "the agent attached, in the leader's metrics", || {
        let text = scrape(&c_metrics)?;
        (sample(&text, "lifeboat_agents", &["state=\"connected\""]) == Some(1.0)).then_some(text)
    });
    assert_eq!(sample(&text, "lifeboat_leader", &[]), Some(1.0), "{text}");
    assert!(sample(&text, "lifeboat_term", &[]).unwrap() > 0.0, "{text}");
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics text: {text}");
    let agent_text = scrape(&a_metrics).expect("the agent's /metrics");
    assert_eq!(sample(&agent_text, "lifeboat_agent_attached", &[]), Some(1.0), "{agent_text}");

    // A backup by hand: its figures, against the RPO.
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = scrape(&c_metrics).unwrap();
    let source = ["host=\"node1\"", "source=\"docs\"", "kind=\"files\""];
    let manual = [source.as_slice(), &["schedule=\"manual\""]].concat();
    let finished = sample(&text, "lifeboat_backup_last_success_timestamp_seconds", &manual).expect(&text);
    assert!((now_seconds() - finished).abs() < 120.0, "{finished}");
    assert_eq!(sample(&text, "lifeboat_backup_last_size_bytes", &manual), Some(60_000.0), "{text}");
    assert!(sample(&text, "lifeboat_backup_last_stored_bytes", &manual).unwrap() > 0.0, "{text}");
    assert!(sample(&text, "lifeboat_backup_last_duration_seconds", &manual).unwrap() >= 0.0, "{text}");
    assert_eq!(sample(&text, "lifeboat_rpo_seconds", &source), Some(3600.0), "{text}");
    assert!(sample(&text, "lifeboat_recovery_point_age_seconds", &source).unwrap() < 120.0, "{text}");
    assert!(sample(&text, "lifeboat_jobs_total", &["kind=\"backup\"", "result=\"succeeded\""]).unwrap() >= 1.0);

    // The source's path removed: the backup fails after its attempts, and
    // both daemons count it; the success ratio is what the counts say.
    std::fs::remove_dir_all(&data).unwrap();
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(!out.status.success(), "a backup of a removed path succeeded");
    let text = scrape(&c_metrics).unwrap();
    let count = |result: &str| {
        sample(&text, "lifeboat_jobs_total", &["kind=\"backup\"", &format!("result=\"{result}\"")]).unwrap_or(0.0)
    };
    assert_eq!(count("failed"), 1.0, "{text}");
    assert_eq!(count("retried"), 2.0, "{text}");
    let ratio = sample(&text, "lifeboat_backup_success_ratio", &source).expect(&text);
    assert!((ratio - count("succeeded") / (count("succeeded") + 1.0)).abs() < 1e-9, "{ratio}: {text}");
    let agent_text = scrape(&a_metrics).unwrap();
    assert_eq!(
        sample(&agent_text, "lifeboat_agent_jobs_total", &["kind=\"backup\"", "result=\"failed\""]),
        Some(3.0),
        "{agent_text}"
    );
}

#[test]
fn one_backup_job_is_one_trace_from_the_coordinator_through_the_agent() {
    let _serial = serial();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = lifeboat_integration_tests::otlp::Receiver::start(&runtime);
    let tmp = KeptOnFailure::new();
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let data = tmp.path().join("docs");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "alpha\n".repeat(10_000)).unwrap();
    let policy = d.policy(
        "policy.yaml",
        "backup_schedules:\n  files:\n    media:\n      interval: \"24h\"\n      retention_days: 30\n",
    );
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let endpoint = format!("otlp_endpoint = \"{}\"", receiver.endpoint());
    let c_config = d.coordinator_config("c1", port, &policy, None);
    configure(&c_config, &endpoint);
    let _coordinator = d.start_coordinator(&c_config);
    let a_config = d.agent_config("node1", std::slice::from_ref(&url), &files_source(&data));
    configure(&a_config, &endpoint);
    let _agent = d.start_agent(&a_config);
    wait_for(Duration::from_secs(30), "the agent to attach", || {
        let agents = d.admin_json(&url, "vera", &["agents"])?;
        (agents["agents"][0]["connected"] == true).then_some(())
    });

    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = String::from_utf8_lossy(&out.stderr).to_string();

    // The batch exporters send within seconds.
    let (trace, spans) = wait_for(Duration::from_secs(60), "the job's spans from both processes", || {
        let spans = receiver.spans();
        let dispatch =
            spans.iter().find(|s| s.service == "lifeboat-coordinator" && s.name == "dispatch")?.trace_id.clone();
        let in_trace: Vec<_> = spans.into_iter().filter(|s| s.trace_id == dispatch).collect();
        let phases = ["schedule job", "dispatch", "job", "walk, read, chunk and upload", "index and snapshot"];
        phases.iter().all(|p| in_trace.iter().any(|s| s.name == *p)).then_some((dispatch, in_trace))
    });
    let by_name = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    let (root, dispatch, job_span) = (by_name("schedule job"), by_name("dispatch"), by_name("job"));
    assert_eq!(root.service, "lifeboat-coordinator");
    assert!(root.parent_span_id.is_empty() || root.parent_span_id.chars().all(|c| c == '0'), "{root:?}");
    assert_eq!(dispatch.parent_span_id, root.span_id, "{spans:#?}");
    assert_eq!(job_span.service, "lifeboat-agent");
    assert_eq!(job_span.parent_span_id, dispatch.span_id, "{spans:#?}");
    let pipeline = by_name("walk, read, chunk and upload");
    assert_eq!(pipeline.service, "lifeboat-agent");
    assert!(
        spans.iter().filter(|s| s.service == "lifeboat-agent").count() < 20,
        "a span per file or chunk? {spans:#?} ({trace}, {job})"
    );
}
