//! Answers to operators' reads, built the same way by the leader (from
//! memory) and by followers (from the state store), and a follower's
//! answer to everything else: where the leader is.

use crate::alerts::incidents::{Incident, IncidentBook};
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lifeboat_proto::v1;
use lifeboat_proto::v1::coordinator_message::Body as Out;
use tonic::Status;

use super::{Event, NodeRole, Query, Shared};
use crate::agents::AgentRecord;
use crate::jobs::{JobBook, JobKind, JobRecord, JobState};
use crate::lag::{Finding, assess, recovery_point_age};
use crate::state::{State, StateError};

/// The metadata key a follower's refusal carries the leader's URL in.
pub const LEADER_URL_KEY: &str = "lifeboat-leader-url";

/// Every agent stored under `prefix`.
pub(super) async fn load_agents(state: State<'_>, prefix: &str) -> Result<HashMap<String, AgentRecord>, StateError> {
    let mut agents = HashMap::new();
    for (key, stored) in state.list(&format!("{prefix}/agents/")).await? {
        match serde_json::from_slice::<AgentRecord>(&stored.value) {
            Ok(agent) => {
                agents.insert(agent.host.clone(), agent);
            }
            Err(e) => tracing::warn!(key, error = %e, "unreadable agent record left alone"),
        }
    }
    Ok(agents)
}

fn unix_ms(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(0, |t| t.timestamp_millis())
}

/// `Status`: who leads, and each source against its RPO.
pub(super) fn status<'a>(
    shared: &Shared,
    role: &NodeRole,
    agents: impl Iterator<Item = &'a AgentRecord>,
    connected: impl Fn(&str) -> bool,
    now: DateTime<Utc>,
) -> v1::StatusReply {
    let config = &shared.config;
    let policy = shared.policy();
    let (leader, leader_url, term) = match role {
        NodeRole::Leader { term } => (config.name.clone(), config.url(), *term),
        NodeRole::Follower { leader: Some(l) } => (l.name.clone(), l.url.clone(), l.term),
        _ => (String::new(), String::new(), 0),
    };
    let mut sources = Vec::new();
    let mut agents: Vec<&AgentRecord> = agents.collect();
    agents.sort_by(|a, b| a.host.cmp(&b.host));
    for agent in agents {
        // Silence while attached counts from now: the stream is up.
        let heard = if connected(&agent.host) { now } else { agent.last_seen };
        for source in agent.sources.values() {
            let limits = source.limits(config.wal_max_lag, config.lost_after);
            let report = source.report(heard, now);
            let findings = assess(&report, &limits, now);
            let lag = recovery_point_age(&report, now).map_or(-1.0, |age| age.as_secs_f64());
            let next_runs = source
                .source
                .schedules
                .iter()
                .filter_map(|id| policy.schedule(id))
                .filter_map(|s| {
                    s.trigger.next_after(now).map(|at| v1::NextRun { schedule_id: s.id(), at_unix: at.timestamp() })
                })
                .collect();
            sources.push(v1::SourceStatus {
                host: agent.host.clone(),
                source_id: source.source.id.clone(),
                kind: source.source.kind,
                last_backup_unix: source.last_backup.map_or(0, |t| t.timestamp()),
                last_snapshot_id: source.last_snapshot_id.clone(),
                rpo_seconds: u32::try_from(limits.rpo.as_secs()).unwrap_or(u32::MAX),
                lag_seconds: lag,
                rpo_breached: findings
                    .iter()
                    .any(|f| matches!(f, Finding::RpoBreached { .. } | Finding::NeverBackedUp)),
                wal: source.wal_proto(),
                next_runs,
            });
        }
    }
    v1::StatusReply {
        coordinator: config.name.clone(),
        leader,
        leader_url,
        term: u64::try_from(term).unwrap_or_default(),
        degraded: shared.degraded().unwrap_or_default(),
        sources,
        retention: shared.retention().unwrap_or_else(|| "not run yet".into()),
    }
}

fn kind(kind: JobKind) -> v1::JobKind {
    match kind {
        JobKind::Backup => v1::JobKind::Backup,
        JobKind::Restore => v1::JobKind::Restore,
        JobKind::Drill => v1::JobKind::Drill,
    }
}

fn state(state: JobState) -> v1::JobState {
    match state {
        JobState::Queued => v1::JobState::Queued,
        JobState::Running => v1::JobState::Running,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

/// A job as an agent is given it.
pub(super) fn assignment(job: &JobRecord) -> v1::JobAssignment {
    v1::JobAssignment {
        job_id: job.id.clone(),
        source_id: job.source_id.clone(),
        kind: kind(job.kind).into(),
        schedule_id: job.schedule_id.clone().unwrap_or_default(),
        slot_unix: job.slot.map_or(0, |s| s.timestamp()),
        priority: job.priority.into(),
        attempt: job.attempt,
        term: u64::try_from(job.term).unwrap_or_default(),
        traceparent: String::new(),
        restore: job.restore.as_ref().map(|r| v1::RestoreSpec {
            snapshot: r.snapshot.clone(),
            target_dir: r.target_dir.clone(),
            path: r.path.clone(),
            latest: r.latest,
            to_time: r.to_time.clone(),
            to_lsn: r.to_lsn.clone(),
            delta: r.delta,
        }),
        drill: None,
    }
}

/// A job as operators see it.
pub(super) fn job(job: &JobRecord, progress: Option<&v1::Progress>) -> v1::Job {
    let result = job.state.is_final().then(|| v1::JobResult {
        job_id: job.id.clone(),
        ok: job.state == JobState::Succeeded,
        error: job.error.clone().unwrap_or_default(),
        snapshot: job.made.as_ref().map(|m| v1::SnapshotSummary {
            snapshot_id: m.snapshot_id.clone(),
            files: m.files,
            bytes_read: m.bytes_read,
            bytes_new_stored: m.bytes_new_stored,
            ..Default::default()
        }),
        finished_unix_ms: unix_ms(job.finished),
        drill_report_json: String::new(),
        drill_report_id: job.drill_report.clone().unwrap_or_default(),
    });
    v1::Job {
        assignment: Some(assignment(job)),
        host: job.host.clone(),
        state: state(job.state).into(),
        progress: progress.cloned(),
        result,
        created_unix_ms: job.created.timestamp_millis(),
    }
}

/// `ListJobs`: newest first.
pub(super) fn list_jobs<'a>(
    jobs: impl Iterator<Item = &'a JobRecord>,
    request: &v1::ListJobsRequest,
    progress: &HashMap<String, v1::Progress>,
) -> Vec<v1::Job> {
    let mut picked: Vec<&JobRecord> = jobs
        .filter(|j| request.host.is_empty() || j.host == request.host)
        .filter(|j| !request.active || !j.state.is_final())
        .collect();
    picked.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
    let limit = if request.limit == 0 { 100 } else { request.limit as usize };
    picked.into_iter().take(limit).map(|j| job(j, progress.get(&j.id))).collect()
}

/// The refusal of a write on a follower, naming the leader.
pub fn not_leader(role: &NodeRole) -> Status {
    match role {
        NodeRole::Follower { leader: Some(leader) } => {
            let mut status = Status::failed_precondition(format!(
                "not the leader: {} leads (term {}) at {}",
                leader.name, leader.term, leader.url
            ));
            if let Ok(url) = leader.url.parse() {
                status.metadata_mut().insert(LEADER_URL_KEY, url);
            }
            status
        }
        _ => Status::unavailable("no coordinator leads right now (election under way, or etcd unreachable)"),
    }
}

/// A follower's answer to an event.
pub(super) async fn follower_event(shared: &Shared, state: State<'_>, prefix: &str, role: &NodeRole, event: Event) {
    match event {
        Event::Attach { tx, .. } => {
            // The handler redirects before this; a race with losing the lead lands here.
            let leader_url = match role {
                NodeRole::Follower { leader: Some(l) } => l.url.clone(),
                _ => String::new(),
            };
            let redirect = v1::Redirect { leader_url, reason: "this coordinator does not lead".into() };
            tx.try_send(Ok(v1::CoordinatorMessage { body: Some(Out::Redirect(redirect)) })).ok();
        }
        Event::FromAgent { .. } | Event::Detached { .. } | Event::Delivered(_) => {}
        Event::Query(query) => answer_as_follower(shared, state, prefix, role, query).await,
    }
}

async fn answer_as_follower(shared: &Shared, state: State<'_>, prefix: &str, role: &NodeRole, query: Query) {
    let unreadable = |e: StateError| Status::unavailable(format!("cannot read the state: {e}"));
    match query {
        Query::Status(reply) => {
            // Without the state (etcd without quorum), status still says who
            // answers and why nothing is known.
            let status = match load_agents(state, prefix).await {
                Ok(a) => {
                    status(shared, role, a.values(), |h| a.get(h).is_some_and(|r| r.attached_to.is_some()), Utc::now())
                }
                Err(e) => {
                    let mut s = status(shared, role, std::iter::empty(), |_| false, Utc::now());
                    if s.degraded.is_empty() {
                        s.degraded = format!("cannot read the state: {e}");
                    }
                    s
                }
            };
            reply.send(Ok(status)).ok();
        }
        Query::Agents(reply) => {
            let agents = load_agents(state, prefix).await.map_err(unreadable).map(|a| v1::ListAgentsReply {
                agents: a.values().map(|r| r.to_proto(r.attached_to.is_some())).collect(),
            });
            reply.send(agents).ok();
        }
        Query::Jobs(request, reply) => {
            let jobs = JobBook::load(state, prefix)
                .await
                .map_err(unreadable)
                .map(|book| v1::ListJobsReply { jobs: list_jobs(book.iter(), &request, &HashMap::new()) });
            reply.send(jobs).ok();
        }
        Query::RunBackup(_, _, reply) | Query::Restore(_, _, reply) | Query::RunDrill(_, _, reply) => {
            reply.send(Err(not_leader(role))).ok();
        }
        Query::Cancel(_, _, reply) => {
            reply.send(Err(not_leader(role))).ok();
        }
        Query::Drills(request, reply) => {
            reply.send(crate::drills::list(state, prefix, &request).await).ok();
        }
        Query::Drill(request, reply) => {
            reply.send(crate::drills::show(state, prefix, &request).await).ok();
        }
        Query::Metrics(reply) => {
            reply.send(Ok(crate::metrics::View::of_role(role))).ok();
        }
        Query::Incidents(all, reply) => {
            let listed = IncidentBook::load(state, prefix)
                .await
                .map_err(unreadable)
                .map(|book| v1::ListIncidentsReply { incidents: list_incidents(&book, all) });
            reply.send(listed).ok();
        }
        Query::Ack(_, _, reply) => {
            reply.send(Err(not_leader(role))).ok();
        }
        Query::Failover(reply) => {
            let read = async {
                let book = crate::failover::GroupBook::load(state, prefix).await?;
                let agents = load_agents(state, prefix).await?;
                Ok::<_, StateError>((book, agents))
            };
            let listed = read.await.map_err(unreadable).map(|(book, agents)| {
                let connected = |h: &str| agents.get(h).is_some_and(|r| r.attached_to.is_some());
                let policy = shared.policy();
                let groups = policy.failover.iter().map(|g| book.to_proto(g, None, &agents, connected)).collect();
                v1::FailoverStatusReply { groups }
            });
            reply.send(listed).ok();
        }
        Query::Promote(_, _, reply) | Query::Switchover(_, _, reply) | Query::PauseFailover(_, _, reply) => {
            reply.send(Err(not_leader(role))).ok();
        }
    }
}

/// Incidents on the wire: open ones (all when `all`), oldest first.
pub(super) fn list_incidents(book: &IncidentBook, all: bool) -> Vec<v1::Incident> {
    book.iter().filter(|i| all || i.is_open()).map(incident).collect()
}

/// An incident on the wire.
pub(super) fn incident(i: &Incident) -> v1::Incident {
    let ms = |t: Option<DateTime<Utc>>| t.map_or(0, |t| t.timestamp_millis());
    v1::Incident {
        id: i.id.clone(),
        alert: i.alert.name().to_owned(),
        target: i.target.clone(),
        severity: i.severity.name().to_owned(),
        summary: i.summary.clone(),
        details: i.details.clone().into_iter().collect(),
        opened_unix_ms: i.opened.timestamp_millis(),
        resolved_unix_ms: ms(i.resolved),
        acknowledged_by: i.acknowledged.as_ref().map(|a| a.by.clone()).unwrap_or_default(),
        acknowledged_unix_ms: ms(i.acknowledged.as_ref().map(|a| a.at)),
        channels: i.channels.clone(),
        reached: u32::try_from(i.reached).unwrap_or(u32::MAX),
        escalate_unix_ms: ms(i.escalate_at),
        notices: i
            .notices
            .iter()
            .map(|n| v1::Notice {
                channel: n.channel.clone(),
                notify: n.notify.name().to_owned(),
                sent_unix_ms: ms(n.sent),
                attempts: n.attempts,
                error: n.error.clone().unwrap_or_default(),
                gave_up: n.gave_up,
            })
            .collect(),
    }
}
