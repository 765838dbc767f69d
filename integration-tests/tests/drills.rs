//! Restore drills through the control plane, as real processes: a
//! coordinator runs a drill on its calendar and one by hand while the same
//! source's scheduled backups go on; the report is kept in the state and
//! in the repository, counted in `/metrics`, and a failed drill raises an
//! alert; an agent SIGKILLed mid-drill removes the drill's server and
//! scratch when it starts again, and the job is failed.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use lifeboat_integration_tests::control::{
    Deployment, KeptOnFailure, configure, files_source, free_port, scrape, serial, wait_for,
};
use lifeboat_integration_tests::tree_gen::{TreeSpec, generate_tree};
use serde_json::Value;

fn jobs(d: &Deployment, url: &str) -> Vec<Value> {
    d.admin_json(url, "vera", &["jobs", "--limit", "1000"])
        .and_then(|v| v.get("jobs").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

fn job_id(job: &Value) -> &str {
    job["assignment"]["jobId"].as_str().unwrap_or_default()
}

fn reports(d: &Deployment, url: &str) -> Vec<Value> {
    d.admin_json(url, "vera", &["drills"]).and_then(|v| v.as_array().cloned()).unwrap_or_default()
}

fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Processes whose working directory lies in `dir`.
fn running_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()))
        .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .count()
}

#[test]
fn drills_run_by_calendar_and_by_hand_beside_backups_and_one_killed_mid_drill_is_cleaned_up() {
    let _serial = serial();
    let tmp = KeptOnFailure::new();
    let d = Deployment::new(tmp.path(), &["c1"], &["app1"]);
    let data = tmp.path().join("docs");
    generate_tree(&data, &TreeSpec::small()).unwrap();
    let scratch = tmp.path().join("scratch");
    let policy = d.policy(
        "policy.yaml",
        &format!(
            r#"backup_schedules:
  files:
    docs: {{ interval: "3s" }}
recovery_objectives:
  file_storage: {{ rto: 10m, rpo: 1h, sources: [app1/docs] }}
drills:
  monthly:
    schedule: "* * * * *"
    kind: recovery
    sources: [app1/docs]
    agent: app1
    scratch: {scratch}
  slow:
    kind: recovery
    sources: [app1/docs]
    agent: app1
    scratch: {scratch}
    checks:
      smoke:
        - {{ command: [sleep, "120"], timeout: 5m }}
"#,
            scratch = scratch.display()
        ),
    );
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let config = d.coordinator_config("c1", port, &policy, None);
    let metrics = format!("127.0.0.1:{}", free_port());
    configure(&config, &format!("metrics_listen = \"{metrics}\""));
    let _coordinator = d.start_coordinator(&config);
    let agent_config = d.agent_config("app1", std::slice::from_ref(&url), &files_source(&data, "\"files.docs\""));
    let mut agent = d.start_agent(&agent_config);
    d.wait_attached(&url);
    wait_for(Duration::from_secs(60), "a first backup", || (!d.snapshots().as_array()?.is_empty()).then_some(()));

    // By hand, waited on: the report comes back whole.
    let out = d.admin(&url, "alice", &["drills", "run", "monthly", "--wait", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], true);
    assert_eq!(report["objectives_met"], true);
    assert_eq!(report["agent"], "app1");
    assert_eq!(report["sources"][0]["verdict"]["objective"], "file_storage");
    assert!(report["rto_seconds"].as_f64().unwrap() > 0.0);
    let by_hand = report["id"].as_str().unwrap().to_owned();
    assert!(d.repo.join("drills").join(&by_hand).exists(), "no drills/{by_hand} in the repository");
    assert!(left_in(&scratch).is_empty(), "{:?}", left_in(&scratch));
    // A viewer may read reports, not start drills.
    let refused = d.admin(&url, "vera", &["drills", "run", "monthly"]);
    assert!(!refused.status.success());
    // By a prefix: all but the last of the random digits that tell apart
    // two runs started in the same second (the calendar's may have been).
    let md = d.admin(&url, "vera", &["drills", "show", &by_hand[..by_hand.len() - 1], "--markdown"]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("| app1/docs | file_storage |") && md.contains("| content ids |"), "{md}");

    // The calendar runs it by itself (every minute here), while the
    // source's backups every 3 s go on.
    let before = d.snapshots().as_array().unwrap().len();
    let scheduled = wait_for(Duration::from_secs(100), "a drill run by the calendar", || {
        jobs(&d, &url)
            .into_iter()
            .find(|j| job_id(j).starts_with("drills.monthly@app1/monthly@") && j["state"] == "JOB_STATE_SUCCEEDED")
    });
    let report_id = scheduled["result"]["drillReportId"].as_str().unwrap().to_owned();
    assert!(reports(&d, &url).iter().any(|r| r["id"] == report_id.as_str() && r["passed"] == true));
    assert!(d.snapshots().as_array().unwrap().len() > before, "backups stopped while drills ran");
    let text = scrape(&metrics).expect("the coordinator's /metrics");
    assert!(text.contains("lifeboat_drill_last_passed{drill=\"monthly\"} 1"), "{text}");
    assert!(text.contains("lifeboat_drills_total{drill=\"monthly\",result=\"passed\"}"), "{text}");

    // Killed mid-drill: the smoke command is still running when the agent dies.
    let out = d.admin(&url, "alice", &["drills", "run", "slow", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let slow_job = job_id(&job).to_owned();
    wait_for(Duration::from_secs(60), "the slow drill's smoke command", || (running_in(&scratch) > 0).then_some(()));
    agent.kill();
    assert!(running_in(&scratch) > 0, "the kill should leave the smoke command behind");
    assert!(!left_in(&scratch).is_empty());
    let _agent = d.start_agent(&agent_config);
    wait_for(Duration::from_secs(30), "the scratch to be cleaned", || {
        (running_in(&scratch) == 0 && left_in(&scratch).is_empty()).then_some(())
    });
    let failed = wait_for(Duration::from_secs(30), "the slow drill's job to fail", || {
        jobs(&d, &url).into_iter().find(|j| job_id(j) == slow_job && j["state"] == "JOB_STATE_FAILED")
    });
    let error = failed["result"]["error"].as_str().unwrap();
    assert!(error.contains("interrupted") || error.contains("cut short"), "{failed}");
    let cut = wait_for(Duration::from_secs(30), "the cut-short report", || {
        reports(&d, &url).into_iter().find(|r| r["drill"] == "slow")
    });
    assert_eq!(cut["passed"], false);
    assert!(cut["error"].as_str().unwrap().contains("cut short"), "{cut}");
    assert!(d.repo.join("drills").join(cut["id"].as_str().unwrap()).exists());
    // A failed drill pages someone.
    wait_for(Duration::from_secs(30), "the drill_failed incident", || {
        let incidents = d.admin_json(&url, "vera", &["alerts"])?;
        incidents["incidents"]
            .as_array()?
            .iter()
            .find(|i| i["target"] == "drill:slow" && i["alert"] == "drill_failed")
            .cloned()
    });
}
