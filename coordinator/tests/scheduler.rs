//! The scheduler against real etcd: a slot becomes one job, however many
//! ticks or leaders see it, and an outage's missed slots become one run.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_common::policy::Schedule;
use lifeboat_common::policy::backup_schedules_from_yaml;
use lifeboat_coordinator::election::{ElectionConfig, ElectionError, Elector};
use lifeboat_coordinator::jobs::JobKind;
use lifeboat_coordinator::scheduler::{Made, Scheduler, Target};
use lifeboat_coordinator::state::{EmbeddedState, State, StateError};
use lifeboat_integration_tests::etcd::EtcdCluster;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Every schedule, applied to source `pg` of host `db-1`.
fn targets(schedules: &[Schedule]) -> Vec<Target<'_>> {
    schedules.iter().map(|schedule| Target { schedule, host: "db-1", source_id: "pg", kind: JobKind::Backup }).collect()
}

fn ids(made: &[Made]) -> Vec<String> {
    let mut ids: Vec<String> = made.iter().map(|m| m.job.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn slots_become_jobs_exactly_once_across_ticks_leaders_and_outages() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1);
    let config = |name: &str| ElectionConfig {
        endpoints: cluster.endpoints(),
        prefix: "/lifeboat/sched".into(),
        name: name.into(),
        url: format!("https://{name}.invalid"),
        ttl: Duration::from_secs(2),
    };
    let policy = "backup_schedules:\n  database:\n    full:\n      cron: \"0 2 * * 0\"\n      priority: 1\n    transaction_logs:\n      interval: 5m\n";
    let schedules = backup_schedules_from_yaml(policy).unwrap();
    let targets = targets(&schedules);
    let mut scheduler = Scheduler::new("/lifeboat/sched");
    let a = Elector::connect(config("a")).await.unwrap();
    let lead_a = a.try_lead().await.unwrap().unwrap();

    // First seen: nothing runs at once.
    assert!(scheduler.tick(State::Etcd(&lead_a), &targets, at("2026-11-21T00:00:00Z")).await.unwrap().is_empty());
    assert!(scheduler.tick(State::Etcd(&lead_a), &targets, at("2026-11-21T00:04:00Z")).await.unwrap().is_empty());
    let made = scheduler.tick(State::Etcd(&lead_a), &targets, at("2026-11-21T00:05:00Z")).await.unwrap();
    assert_eq!(ids(&made), ["database.transaction_logs@db-1/pg@2026-11-21T00:05:00+00:00"]);
    assert!(scheduler.tick(State::Etcd(&lead_a), &targets, at("2026-11-21T00:05:30Z")).await.unwrap().is_empty());

    // Leadership moves: the old term makes nothing, the new one makes the
    // slot's job once, even when two of its ticks race.
    lead_a.resign().await;
    let b = Elector::connect(config("b")).await.unwrap();
    let lead_b = b.try_lead().await.unwrap().unwrap();
    let stale = a.try_lead().await.unwrap();
    assert!(stale.is_none());
    let a_again = Elector::connect(config("a")).await.unwrap();
    assert!(a_again.try_lead().await.unwrap().is_none(), "b leads");
    let now = at("2026-11-21T00:10:00Z");
    let (mut b1, mut b2) = (Scheduler::new("/lifeboat/sched"), Scheduler::new("/lifeboat/sched"));
    let (one, two) =
        tokio::join!(b1.tick(State::Etcd(&lead_b), &targets, now), b2.tick(State::Etcd(&lead_b), &targets, now));
    assert_eq!(one.unwrap().len() + two.unwrap().len(), 1, "a slot made two jobs");

    // Three weeks down: one run per schedule, for the latest slot.
    let made = b1.tick(State::Etcd(&lead_b), &targets, at("2026-12-12T09:31:00Z")).await.unwrap();
    assert_eq!(
        ids(&made),
        [
            "database.full@db-1/pg@2026-12-06T02:00:00+00:00",
            "database.transaction_logs@db-1/pg@2026-12-12T09:30:00+00:00"
        ]
    );
    let full = made.iter().find(|m| m.job.schedule_id.as_deref() == Some("database.full")).unwrap();
    assert_eq!(full.job.priority, 1);

    // A deposed leader's tick fails and writes nothing: b's key goes (as
    // when its lease expires) and c leads, while b still holds its term.
    let mut check = etcd_client::Client::connect(cluster.endpoints(), None).await.unwrap();
    check.delete("/lifeboat/sched/leader", None).await.unwrap();
    let c = Elector::connect(config("c")).await.unwrap();
    let _lead_c = c.try_lead().await.unwrap().unwrap();
    let jobs = |mut c: etcd_client::Client| async move {
        let prefix = Some(etcd_client::GetOptions::new().with_prefix());
        c.get("/lifeboat/sched/jobs/", prefix).await.unwrap().kvs().len()
    };
    let jobs_before = jobs(check.clone()).await;
    let err = b1.tick(State::Etcd(&lead_b), &targets, at("2026-12-12T09:40:00Z")).await.unwrap_err();
    assert!(matches!(err, StateError::Election(ElectionError::NotLeader { .. })), "{err}");
    let jobs_after = jobs(check).await;
    assert_eq!(jobs_before, jobs_after);
    assert_eq!(jobs_after, 4);
}

#[tokio::test]
async fn without_etcd_the_embedded_state_makes_each_slot_one_job_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let schedules =
        backup_schedules_from_yaml("backup_schedules:\n  files:\n    media:\n      cron: \"0 3 * * *\"\n").unwrap();
    let targets = targets(&schedules);
    {
        let db = EmbeddedState::open(&path).unwrap();
        let mut scheduler = Scheduler::new("/lifeboat");
        assert!(scheduler.tick(State::Embedded(&db), &targets, at("2026-11-20T12:00:00Z")).await.unwrap().is_empty());
        let made = scheduler.tick(State::Embedded(&db), &targets, at("2026-11-21T03:00:00Z")).await.unwrap();
        assert_eq!(made.len(), 1);
        // Two ticks racing on one store: the slot is taken once.
        let now = at("2026-11-22T03:00:05Z");
        let mut other = Scheduler::new("/lifeboat");
        let (one, two) = tokio::join!(
            scheduler.tick(State::Embedded(&db), &targets, now),
            other.tick(State::Embedded(&db), &targets, now)
        );
        assert_eq!(one.unwrap().len() + two.unwrap().len(), 1);
    }
    // Restarted (the database is on disk): the slot already run is not run again.
    let db = EmbeddedState::open(&path).unwrap();
    let mut scheduler = Scheduler::new("/lifeboat");
    assert!(scheduler.tick(State::Embedded(&db), &targets, at("2026-11-22T03:10:00Z")).await.unwrap().is_empty());
    let made = scheduler.tick(State::Embedded(&db), &targets, at("2026-11-25T09:00:00Z")).await.unwrap();
    assert_eq!(ids(&made), ["files.media@db-1/pg@2026-11-25T03:00:00+00:00"]);
}
