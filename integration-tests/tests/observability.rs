//! Observability as real processes: a coordinator and an agent serving
//! `/metrics` while they back up a real file tree, and a backup that fails
//! showing in both.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lifeboat_integration_tests::control::{
    Deployment, KeptOnFailure, Proc, configure, free_port, sample, scrape, serial, wait_for,
};

/// Source `docs` over `dir`, on schedule `files.media`.
fn docs(dir: &std::path::Path) -> String {
    lifeboat_integration_tests::control::files_source(dir, "\"files.media\"")
}

/// A daily schedule for `files.media`.
const DAILY: &str = "backup_schedules:\n  files:\n    media:\n      interval: \"24h\"\n      retention_days: 30\n";

/// `docs` under `dir`, holding one file of 60,000 bytes.
fn docs_data(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("docs");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), "alpha\n".repeat(10_000)).unwrap();
    data
}

/// Coordinator `c1` (embedded state) and agent `node1` backing up `data`
/// under `policy`, each configuration given `coordinator_lines` and
/// `agent_lines` (top-level TOML); returns once the agent is attached.
fn start_pair(
    d: &Deployment,
    policy: &std::path::Path,
    data: &std::path::Path,
    coordinator_lines: &str,
    agent_lines: &str,
) -> (String, [Proc; 2]) {
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let c_config = d.coordinator_config("c1", port, policy, None);
    configure(&c_config, coordinator_lines);
    let coordinator = d.start_coordinator(&c_config);
    let a_config = d.agent_config("node1", std::slice::from_ref(&url), &docs(data));
    configure(&a_config, agent_lines);
    let agent = d.start_agent(&a_config);
    d.wait_attached(&url);
    (url, [coordinator, agent])
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn the_leader_and_the_agent_serve_metrics_of_backups_jobs_and_agents() {
    let _serial = serial();
    let tmp = KeptOnFailure::new();
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let data = docs_data(tmp.path());
    let policy = d.policy("policy.yaml", DAILY);
    let (c_metrics, a_metrics) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let (url, _procs) = start_pair(
        &d,
        &policy,
        &data,
        &format!("metrics_listen = \"{c_metrics}\""),
        &format!("metrics_listen = \"{a_metrics}\""),
    );

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
    let source = ["host=\"node1\"", "source=\"docs\"", "kind=\"files\""];
    let manual = [source.as_slice(), &["schedule=\"manual\""]].concat();
    // The leader's view is rebuilt each second while scrapes come.
    let (text, finished) = wait_for(Duration::from_secs(10), "the backup in the leader's metrics", || {
        let text = scrape(&c_metrics)?;
        let finished = sample(&text, "lifeboat_backup_last_success_timestamp_seconds", &manual)?;
        Some((text, finished))
    });
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
    let text = wait_for(Duration::from_secs(10), "the failure in the leader's metrics", || {
        let text = scrape(&c_metrics)?;
        (sample(&text, "lifeboat_backup_failing", &source)? == 1.0).then_some(text)
    });
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
    let data = docs_data(tmp.path());
    let policy = d.policy("policy.yaml", DAILY);
    let endpoint = format!("otlp_endpoint = \"{}\"", receiver.endpoint());
    let (url, _procs) = start_pair(&d, &policy, &data, &endpoint, &endpoint);

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

/// A policy where "File Sync Status" watches `files.media` and escalates
/// every `escalate_after` from PagerDuty to Slack to a webhook, all three
/// pointing at `receiver` (the routing key and Slack's URL in files).
fn receiver_policy(
    d: &Deployment,
    receiver: &lifeboat_integration_tests::http_receiver::HttpReceiver,
    escalate_after: &str,
) -> std::path::PathBuf {
    let key = d.dir.join("pagerduty.key");
    std::fs::write(&key, "R0UTINGKEY0123456789\n").unwrap();
    let slack = d.dir.join("slack.url");
    std::fs::write(&slack, receiver.url("slack")).unwrap();
    d.policy(
        "policy.yaml",
        &format!(
            "backup_schedules:\n  files:\n    media:\n      interval: \"24h\"\n\
             monitoring:\n  backup_jobs:\n    - name: \"File Sync Status\"\n      alert_on_failure: true\n      \
             alert_channels: [\"pagerduty\", \"slack\", \"hook\"]\n\
             alerting:\n  escalate_after: {escalate_after}\n  min_success_ratio: 0\n  channels:\n    \
             pagerduty: {{ type: pagerduty, routing_key: {{ file: \"{key}\" }}, url: \"{pd}\" }}\n    \
             slack: {{ type: slack, url: {{ file: \"{slack}\" }} }}\n    \
             hook: {{ type: webhook, url: \"{hook}\" }}\n",
            key = key.display(),
            pd = receiver.url("pagerduty"),
            slack = slack.display(),
            hook = receiver.url("hook"),
        ),
    )
}

/// A coordinator and an agent with `docs` watched by "File Sync Status",
/// whose channels (PagerDuty, Slack, a webhook) all point at `receiver`.
fn alerting_deployment(
    tmp: &std::path::Path,
    receiver: &lifeboat_integration_tests::http_receiver::HttpReceiver,
) -> (Deployment, String, std::path::PathBuf, [Proc; 2]) {
    let d = Deployment::new(tmp, &["c1"], &["node1"]);
    let data = docs_data(tmp);
    let policy = receiver_policy(&d, receiver, "4s");
    let (url, procs) = start_pair(&d, &policy, &data, "", "");
    (d, url, data, procs)
}

fn incidents(d: &Deployment, url: &str) -> Vec<serde_json::Value> {
    d.admin_json(url, "vera", &["alerts", "--all"])
        .and_then(|v| v.get("incidents").and_then(|i| i.as_array()).cloned())
        .unwrap_or_default()
}

#[test]
fn a_failed_backup_is_one_incident_that_escalates_and_resolves_on_every_channel_it_reached() {
    let _serial = serial();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = lifeboat_integration_tests::http_receiver::HttpReceiver::start(&runtime);
    let tmp = KeptOnFailure::new();
    let (d, url, data, _procs) = alerting_deployment(tmp.path(), &receiver);
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The source's path removed: the backup fails after its attempts.
    std::fs::rename(&data, tmp.path().join("docs.away")).unwrap();
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(!out.status.success());

    // PagerDuty first, at once: Events API v2, every documented field.
    let trigger = wait_for(Duration::from_secs(30), "the PagerDuty trigger", || receiver.at("pagerduty").pop());
    let pd = &trigger.body;
    assert_eq!(pd["routing_key"], "R0UTINGKEY0123456789", "{pd}");
    assert_eq!(pd["event_action"], "trigger");
    let dedup = pd["dedup_key"].as_str().unwrap().to_owned();
    assert!(dedup.starts_with("lifeboat:backup_failed-"), "{dedup}");
    assert_eq!(pd["payload"]["severity"], "error");
    assert_eq!(pd["payload"]["source"], "node1/docs");
    assert_eq!(pd["payload"]["class"], "backup_failed");
    assert!(pd["payload"]["summary"].as_str().unwrap().contains("failed after its last attempt"), "{pd}");
    assert!(pd["payload"]["timestamp"].as_str().unwrap().contains('T'), "{pd}");
    assert!(pd["payload"]["custom_details"]["job"].as_str().unwrap().contains("node1/docs"), "{pd}");
    assert!(receiver.at("slack").is_empty(), "Slack was told before the escalation delay");

    // Neither acknowledged nor resolved: Slack after the delay, then the webhook.
    let slack = wait_for(Duration::from_secs(30), "the escalation to Slack", || receiver.at("slack").pop());
    let blocks = slack.body["blocks"].as_array().expect("Block Kit blocks");
    assert_eq!(blocks[0]["type"], "header");
    assert!(blocks[0]["text"]["text"].as_str().unwrap().contains("backup failed on node1/docs"), "{}", slack.body);
    assert!(slack.body["text"].as_str().unwrap().contains("[ERROR]"), "no text fallback: {}", slack.body);
    let hook = wait_for(Duration::from_secs(30), "the escalation to the webhook", || receiver.at("hook").pop());
    assert_eq!(hook.body["event"], "trigger");
    let listed = incidents(&d, &url);
    assert_eq!(listed.len(), 1, "one incident for one condition: {listed:?}");
    assert_eq!(listed[0]["reached"], 3);

    // A success resolves it, said on every channel it reached, once each.
    std::fs::rename(tmp.path().join("docs.away"), &data).unwrap();
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(Duration::from_secs(30), "the resolves", || {
        (receiver.at("pagerduty").len() == 2 && receiver.at("slack").len() == 2 && receiver.at("hook").len() == 2)
            .then_some(())
    });
    let resolve = &receiver.at("pagerduty")[1].body;
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], dedup.as_str());
    assert!(receiver.at("slack")[1].body["text"].as_str().unwrap().starts_with("[RESOLVED]"));
    assert_eq!(receiver.at("hook")[1].body["event"], "resolve");

    // A second failure, acknowledged at once: it goes no further.
    std::fs::rename(&data, tmp.path().join("docs.away")).unwrap();
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(!out.status.success());
    wait_for(Duration::from_secs(30), "the second trigger", || (receiver.at("pagerduty").len() == 3).then_some(()));
    let open: Vec<serde_json::Value> =
        incidents(&d, &url).into_iter().filter(|i| i.get("resolvedUnixMs").is_none()).collect();
    assert_eq!(open.len(), 1, "{open:?}");
    let id = open[0]["id"].as_str().unwrap().to_owned();
    let denied = d.admin(&url, "vera", &["alerts", "ack", &id]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("AckIncident needs operator"));
    let out = d.admin(&url, "alice", &["alerts", "ack", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(receiver.at("slack").len(), 2, "an acknowledged incident escalated");
    let audit = std::fs::read_to_string(tmp.path().join("coordinator-c1/audit.log")).unwrap();
    assert!(audit.contains("AckIncident") && audit.contains(&id), "the ack is not audited");
}

#[test]
fn email_alertmanager_and_prometheus_see_a_failed_backup_and_a_dead_channel_delays_nothing() {
    use lifeboat_integration_tests::control::http_get;
    use lifeboat_integration_tests::monitoring;
    let _serial = serial();
    let tmp = KeptOnFailure::new();
    let d = Deployment::new(tmp.path(), &["c1"], &["node1"]);
    let services = tmp.path().join("services");
    let alertmanager = monitoring::alertmanager(&services);
    // The SMTP server requires STARTTLS, with a certificate of the deployment's CA.
    let (smtp, maildir) =
        monitoring::smtp_server(&services, &d.certs.join("coordinator-c1.pem"), &d.certs.join("coordinator-c1.key"));
    let data = docs_data(tmp.path());
    // A webhook nobody listens on comes first: the others must not wait for it.
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let policy = d.policy(
        "policy.yaml",
        &format!(
            "backup_schedules:\n  files:\n    media:\n      interval: \"24h\"\n\
             monitoring:\n  backup_jobs:\n    - name: \"File Sync Status\"\n      alert_on_failure: true\n      \
             alert_channels: [\"dead\", \"email\", \"alertmanager\"]\n\
             alerting:\n  escalate_after: 2s\n  min_success_ratio: 0\n  channels:\n    \
             dead: {{ type: webhook, url: \"{dead}\" }}\n    \
             email: {{ type: email, smtp: \"{smtp}\", from: \"lifeboat@example.com\", to: [\"oncall@example.com\"], ca_file: \"{ca}\" }}\n    \
             alertmanager: {{ type: alertmanager, url: \"http://{am}\" }}\n",
            smtp = smtp.addr,
            ca = d.certs.join("ca.pem").display(),
            am = alertmanager.addr,
        ),
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let (url, _procs) = start_pair(&d, &policy, &data, &format!("metrics_listen = \"{metrics}\""), "");
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let prometheus = monitoring::prometheus(&services, std::slice::from_ref(&metrics), &rules);
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::rename(&data, tmp.path().join("docs.away")).unwrap();
    let failed_at = std::time::Instant::now();
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(!out.status.success());

    // Email over STARTTLS, then Alertmanager, each on time though the first channel is dead.
    let mail = wait_for(Duration::from_secs(30), "the email", || monitoring::mails(&maildir).pop());
    assert!(mail.contains("Subject: Lifeboat [ERROR] backup failed on node1/docs"), "{mail}");
    assert!(mail.contains("lifeboat alerts ack backup_failed-"), "{mail}");
    let active = wait_for(Duration::from_secs(30), "the alert in Alertmanager", || {
        let alerts: serde_json::Value = serde_json::from_str(&http_get(&alertmanager.addr, "/api/v2/alerts")?).ok()?;
        alerts.as_array()?.iter().find(|a| a["labels"]["alertname"] == "LifeboatBackupFailed").cloned()
    });
    assert_eq!(active["labels"]["target"], "node1/docs", "{active}");
    assert_eq!(active["labels"]["severity"], "error", "{active}");
    assert!(active["annotations"]["summary"].as_str().unwrap().contains("failed"), "{active}");
    assert!(
        failed_at.elapsed() < Duration::from_secs(25),
        "the dead channel's retries held up the others ({:?})",
        failed_at.elapsed()
    );

    // The shipped rule fires in Prometheus, from the scraped metrics.
    wait_for(Duration::from_secs(60), "LifeboatBackupFailed firing in Prometheus", || {
        let alerts: serde_json::Value = serde_json::from_str(&http_get(&prometheus.addr, "/api/v1/alerts")?).ok()?;
        alerts["data"]["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["labels"]["alertname"] == "LifeboatBackupFailed" && a["state"] == "firing")
            .then_some(())
    });

    // The dead channel's failures are counted; the others' sends too.
    let text = wait_for(Duration::from_secs(60), "the dead channel's failures counted", || {
        let text = scrape(&metrics)?;
        (sample(&text, "lifeboat_notifications_total", &["channel=\"dead\"", "result=\"failed\""])? >= 2.0)
            .then_some(text)
    });
    assert!(sample(&text, "lifeboat_notifications_total", &["channel=\"email\"", "result=\"sent\""]).unwrap() >= 1.0);
    assert_eq!(sample(&text, "lifeboat_alerts_firing", &["alert=\"backup_failed\""]), Some(1.0), "{text}");

    // Resolved: a second email says so, and Alertmanager's alert ends.
    std::fs::rename(tmp.path().join("docs.away"), &data).unwrap();
    let out = d.admin(&url, "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resolved = wait_for(Duration::from_secs(30), "the resolving email", || {
        monitoring::mails(&maildir).into_iter().find(|m| m.contains("[RESOLVED]"))
    });
    assert!(resolved.contains("resolved:"), "{resolved}");
    wait_for(Duration::from_secs(30), "the alert to end in Alertmanager", || {
        let alerts: serde_json::Value = serde_json::from_str(&http_get(&alertmanager.addr, "/api/v2/alerts")?).ok()?;
        (!alerts
            .as_array()?
            .iter()
            .any(|a| a["labels"]["alertname"] == "LifeboatBackupFailed" && a["status"]["state"] == "active"))
        .then_some(())
    });
    drop(smtp);
}

#[test]
fn the_shipped_prometheus_rules_pass_promtool() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool is missing: run deploy/services.sh install (it installs Prometheus)");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("SUCCESS"), "{said}");
}

#[test]
fn a_leader_killed_between_trigger_and_escalation_neither_loses_nor_repeats_the_incident() {
    use lifeboat_integration_tests::control::EtcdSettings;
    let _serial = serial();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = lifeboat_integration_tests::http_receiver::HttpReceiver::start(&runtime);
    let tmp = KeptOnFailure::new();
    let etcd_dir = tmp.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let etcd = lifeboat_integration_tests::etcd::EtcdCluster::start(&etcd_dir, 3);
    let names = ["c1", "c2", "c3"];
    let d = Deployment::new(tmp.path(), &names, &["node1"]);
    let data = docs_data(tmp.path());
    let policy = receiver_policy(&d, &receiver, "10s");
    let settings = EtcdSettings { endpoints: etcd.endpoints(), prefix: "/lifeboat/alerts".into(), ttl_secs: 2 };
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let urls: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let mut coordinators: Vec<_> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| d.start_coordinator(&d.coordinator_config(name, *port, &policy, Some(&settings))))
        .collect();
    let _agent = d.start_agent(&d.agent_config("node1", &urls, &docs(&data)));
    let leader = |d: &Deployment, i: usize| -> Option<usize> {
        let status = d.admin_json(&urls[i], "vera", &["status"])?;
        names.iter().position(|n| status["leader"] == *n)
    };
    let first = wait_for(Duration::from_secs(30), "a leader", || leader(&d, 0));
    d.wait_attached(&urls[first]);
    let out = d.admin(&urls[first], "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&data, tmp.path().join("docs.away")).unwrap();
    let out = d.admin(&urls[first], "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(!out.status.success());

    // The trigger reached PagerDuty and is on record as sent: kill the leader.
    wait_for(Duration::from_secs(30), "the trigger on record as sent", || {
        let listed = d.admin_json(&urls[first], "vera", &["alerts"])?;
        let notices = listed["incidents"][0]["notices"].as_array()?.clone();
        notices.iter().any(|n| n["channel"] == "pagerduty" && n.get("sentUnixMs").is_some()).then_some(())
    });
    assert_eq!(receiver.at("pagerduty").len(), 1);
    assert!(receiver.at("slack").is_empty(), "escalated before the delay");
    coordinators[first].kill();
    let other = (first + 1) % 3;
    let second = wait_for(Duration::from_secs(20), "a new leader", || leader(&d, other).filter(|l| *l != first));

    // The new leader escalates on the incident's own clock, once per channel.
    wait_for(Duration::from_secs(40), "the escalations under the new leader", || {
        (!receiver.at("slack").is_empty() && !receiver.at("hook").is_empty()).then_some(())
    });
    std::fs::rename(tmp.path().join("docs.away"), &data).unwrap();
    let out = d.admin(&urls[second], "alice", &["backup", "run", "node1/docs", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(Duration::from_secs(30), "the resolves", || {
        receiver.at("hook").iter().any(|r| r.body["event"] == "resolve").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let actions = |path: &str| -> Vec<String> {
        receiver
            .at(path)
            .iter()
            .map(|r| {
                r.body["event_action"].as_str().or_else(|| r.body["event"].as_str()).map(str::to_owned).unwrap_or_else(
                    || {
                        if r.body["text"].as_str().unwrap_or_default().starts_with("[RESOLVED]") {
                            "resolve"
                        } else {
                            "trigger"
                        }
                        .to_owned()
                    },
                )
            })
            .collect()
    };
    for channel in ["pagerduty", "slack", "hook"] {
        assert_eq!(actions(channel), ["trigger", "resolve"], "{channel} was told {:?}", actions(channel));
    }
    let keys: Vec<String> =
        receiver.at("pagerduty").iter().map(|r| r.body["dedup_key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys[0], keys[1], "the resolve names another incident");
    let listed = d.admin_json(&urls[second], "vera", &["alerts", "--all"]).unwrap();
    assert_eq!(listed["incidents"].as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn json_log_lines_for_log_shippers_and_an_unknown_format_refused() {
    let tmp = KeptOnFailure::new();
    let d = Deployment::new(tmp.path(), &["c1"], &[]);
    let policy = d.policy("policy.yaml", "backup_schedules:\n  files:\n    media:\n      interval: \"24h\"\n");
    let config = d.coordinator_config("c1", free_port(), &policy, None);
    let run = |format: &str| {
        let mut child =
            std::process::Command::new(lifeboat_integration_tests::postgres::workspace_bin("lifeboat-coordinator"))
                .args(["run", "--config"])
                .arg(&config)
                .env("LIFEBOAT_LOG_FORMAT", format)
                .env("RUST_LOG", "info")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        child.kill().ok();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let logged = run("json");
    let lines: Vec<serde_json::Value> =
        logged.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"))).collect();
    let starting = lines.iter().find(|l| l["fields"]["message"] == "coordinator starting").expect(&logged);
    assert_eq!(starting["level"], "INFO");
    assert_eq!(starting["fields"]["name"], "c1", "{starting}");
    assert!(starting["timestamp"].is_string(), "{starting}");

    let refused = run("yaml");
    assert!(refused.contains("LIFEBOAT_LOG_FORMAT=\"yaml\": expected text or json"), "{refused}");
}
