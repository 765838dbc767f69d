//! One term as leader: the agents attached here, the jobs, the ticks.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_proto::v1;
use lifeboat_proto::v1::agent_message::Body;
use lifeboat_proto::v1::coordinator_message::Body as Out;
use tokio::sync::mpsc;
use tonic::Status;

use super::views;
use super::{AgentTx, Event, NodeRole, Query, Shared};
use crate::agents::AgentRecord;
use crate::alerts::conditions::{self, Facts};
use crate::alerts::incidents::{AckRefused, Incident, IncidentBook, Notify, Outcome, Send};
use crate::config::DRILL_PRIORITY;
use crate::drills::{self, DrillBook};
use crate::election::ElectionError;
use crate::failover::{GroupBook, PromoteRefused, Promotion};
use crate::history::{BackupFigures, Failure};
use crate::jobs::{BackupMade, JobBook, JobKind, JobRecord, JobState, RestoreTarget};
use crate::metrics::View;
use crate::scheduler::{Scheduler, Target};
use crate::state::{Op, State, StateError, encode};
use lifeboat_common::policy::alerting::Channel;
use lifeboat_common::policy::failover::{FENCE_MARGIN, FailoverGroup, Member};
use lifeboat_common::telemetry::traces;

/// Messages buffered for one agent's stream; an agent that lets this many
/// pile up is dropped (it reconnects, and its jobs are reconciled then).
pub const ASSIGN_QUEUE: usize = 64;

/// How often agents' heartbeat state is written to the state store (it is
/// kept in memory between: followers' and a new leader's view lags by this).
/// An agent attaching, leaving, being lost or backed up is written at the
/// next tick.
const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Agent records per transaction (etcd allows 128 operations by default).
const RECORDS_PER_TXN: usize = 100;

/// How often finished jobs past the history are forgotten.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// How long after a scrape the view for `/metrics` is rebuilt each tick.
const SCRAPES_KEEP_VIEW: Duration = Duration::from_secs(120);

/// How often alert conditions are judged and escalations made.
const ALERT_EVERY: Duration = Duration::from_secs(2);

/// How often open incidents are posted again to Alertmanager, which
/// resolves an alert not posted within its `resolve_timeout` (5 min).
const ALERTMANAGER_REFRESH: Duration = Duration::from_secs(60);

struct Session {
    id: u64,
    tx: AgentTx,
}

/// Whether to go on leading after an error.
enum Flow {
    Go,
    StepDown,
}

struct Term<'a> {
    shared: &'a Shared,
    state: State<'a>,
    term: i64,
    prefix: &'a str,
    started: DateTime<Utc>,
    jobs: JobBook,
    scheduler: Scheduler,
    agents: HashMap<String, AgentRecord>,
    sessions: HashMap<String, Session>,
    /// The latest progress of running jobs (not stored: it is transient).
    progress: HashMap<String, v1::Progress>,
    /// The policy the scheduler last worked from.
    policy: std::sync::Arc<crate::config::Policy>,
    /// Agents whose record changed since it was last written.
    dirty: BTreeSet<String>,
    /// Whether a change among them is one to write at the next tick.
    urgent: bool,
    last_flush: tokio::time::Instant,
    last_expire: tokio::time::Instant,
    /// Incidents, loaded with the term.
    incidents: IncidentBook,
    /// Incidents changed and notices to send once they are stored.
    alerting: Outcome,
    last_alerts: tokio::time::Instant,
    last_refresh: tokio::time::Instant,
    /// Failover groups: primaries, epochs, promotions.
    groups: GroupBook,
    /// Restore drills' reports: the newest run of each.
    drills: DrillBook,
    /// When each member was last confirmed as primary, by this leader.
    confirmed: HashMap<String, DateTime<Utc>>,
    /// What was last said of each group that cannot fail over, so it is logged once.
    blocked: HashMap<String, String>,
    /// Whether the term is known to be lost: a leader that may have lost
    /// it confirms no primary's lease.
    is_lost: &'a (dyn Fn() -> bool + Sync),
    /// What agents' silence counts from: the start of the term, or the end
    /// of a stall of this coordinator (frozen, starved), during which it
    /// heard nothing and so knows nothing of their silence.
    counting_from: DateTime<Utc>,
    last_tick: tokio::time::Instant,
    /// No lease is renewed before this (after a stall).
    quiet_until: tokio::time::Instant,
}

/// How long a switchover waits for the old primary's clean stop before it
/// goes on as a failover.
const SWITCHOVER_PATIENCE: Duration = Duration::from_secs(60);

/// A gap between ticks longer than this is a stall of the coordinator itself.
const STALL: Duration = Duration::from_secs(3);

/// Leads until the term ends (`is_lost`, or a fenced write refused) or the
/// inbox closes.
pub(super) async fn lead(
    shared: &Shared,
    state: State<'_>,
    term: i64,
    prefix: &str,
    inbox: &mut mpsc::Receiver<Event>,
    is_lost: &(dyn Fn() -> bool + Sync),
) {
    let mut t = loop {
        match Term::load(shared, state, term, prefix, is_lost).await {
            Ok(t) => break t,
            Err(e) if is_not_leader(&e) || is_lost() => return,
            Err(e) => {
                shared.set_degraded(Some(format!("cannot read the state to start leading: {e}")));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!(term, agents = t.agents.len(), jobs = t.jobs.iter().count(), "leading");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let outcome = tokio::select! {
            event = inbox.recv() => match event {
                Some(event) => t.handle(event).await,
                None => return,
            },
            _ = tick.tick() => {
                if is_lost() {
                    return;
                }
                t.tick().await
            }
        };
        if let Err(e) = outcome
            && let Flow::StepDown = t.failed(e)
        {
            return;
        }
    }
}

fn is_not_leader(e: &StateError) -> bool {
    matches!(e, StateError::Election(ElectionError::NotLeader { .. }))
}

impl<'a> Term<'a> {
    async fn load(
        shared: &'a Shared,
        state: State<'a>,
        term: i64,
        prefix: &'a str,
        is_lost: &'a (dyn Fn() -> bool + Sync),
    ) -> Result<Self, StateError> {
        let jobs = JobBook::load(state, prefix).await?;
        let mut groups = GroupBook::load(state, prefix).await?;
        groups.load_positions(state, prefix).await?;
        groups.ensure(state, prefix, &shared.policy().failover).await?;
        let agents = views::load_agents(state, prefix).await?;
        let incidents = IncidentBook::load(state, prefix).await?;
        let drills = DrillBook::load(state, prefix).await?;
        // Notices a previous leader owed go first.
        let alerting = Outcome { write: Vec::new(), send: incidents.owed() };
        let now = tokio::time::Instant::now();
        Ok(Term {
            shared,
            state,
            term,
            prefix,
            started: Utc::now(),
            jobs,
            scheduler: Scheduler::new(prefix),
            policy: shared.policy(),
            agents,
            sessions: HashMap::new(),
            progress: HashMap::new(),
            dirty: BTreeSet::new(),
            urgent: false,
            last_flush: now,
            last_expire: now,
            incidents,
            alerting,
            last_alerts: now,
            last_refresh: now,
            groups,
            drills,
            confirmed: HashMap::new(),
            blocked: HashMap::new(),
            is_lost,
            counting_from: Utc::now(),
            last_tick: now,
            quiet_until: now,
        })
    }

    fn failed(&self, e: StateError) -> Flow {
        if is_not_leader(&e) {
            tracing::warn!(term = self.term, "a fenced write was refused: another coordinator leads");
            return Flow::StepDown;
        }
        self.shared.set_degraded(Some(format!("cannot write the state: {e}")));
        Flow::Go
    }

    async fn handle(&mut self, event: Event) -> Result<(), StateError> {
        match event {
            Event::Attach { hello, session, tx } => self.attach(hello, session, tx).await,
            Event::FromAgent { host, session, body } => {
                if self.sessions.get(&host).is_none_or(|s| s.id != session) {
                    return Ok(()); // A stream replaced by a newer one.
                }
                self.on_message(&host, body).await
            }
            Event::Detached { host, session } => {
                if self.sessions.get(&host).is_some_and(|s| s.id == session) {
                    self.sessions.remove(&host);
                    if let Some(agent) = self.agents.get_mut(&host) {
                        agent.attached_to = None;
                        agent.last_seen = Utc::now();
                    }
                    tracing::info!(host, "agent detached");
                    self.changed_agent(&host);
                }
                Ok(())
            }
            Event::Query(query) => self.query(query).await,
            Event::Delivered(d) => {
                let attempts = d.attempts;
                if let Some(incident) =
                    self.incidents.delivered(&d.incident, &d.channel, d.notify, d.result, attempts, Utc::now())
                {
                    self.alerting.write.push(incident);
                    self.flush_alerts().await?;
                }
                Ok(())
            }
        }
    }

    /// What `/metrics` shows of this term now.
    fn metrics_view(&self) -> View {
        let config = &self.shared.config;
        let mut view = View::leader(
            self.term,
            self.agents.values(),
            |h| self.sessions.contains_key(h),
            (config.wal_max_lag, config.lost_after),
            Utc::now(),
        );
        view.alerts_firing = self.incidents.firing().into_iter().map(|(a, n)| (a.to_owned(), n)).collect();
        view.drills = self.drills.latest().cloned().collect();
        view
    }

    /// Judges the alert conditions now, opens and resolves incidents,
    /// escalates those due, and sends what that owes.
    async fn alerts(&mut self, now: DateTime<Utc>) -> Result<(), StateError> {
        self.last_alerts = tokio::time::Instant::now();
        let policy = self.shared.policy();
        let copy_lag = self.shared.storage().map(|s| s.copy_lag()).unwrap_or_default();
        let facts = Facts { policy: &policy, wal_max_lag: self.shared.config.wal_max_lag, copy_lag: &copy_lag, now };
        let mut found = conditions::evaluate(self.agents.values(), &facts);
        found.extend(drills::conditions(self.drills.latest(), &policy));
        let opened = self.incidents.reconcile(found, &policy.monitoring, &policy.alerting, now);
        let escalated = self.incidents.escalate(&policy.alerting, now);
        for outcome in [opened, escalated] {
            self.alerting.write.extend(outcome.write);
            self.alerting.send.extend(outcome.send);
        }
        if self.last_refresh.elapsed() >= ALERTMANAGER_REFRESH {
            self.last_refresh = tokio::time::Instant::now();
            for incident in self.incidents.iter().filter(|i| i.is_open()) {
                for name in incident.channels.iter().take(incident.reached) {
                    let channel = policy.alerting.channels.get(name);
                    if let Some(c @ Channel::Alertmanager { .. }) = channel {
                        let send = Send { incident: incident.clone(), channel: name.clone(), notify: Notify::Trigger };
                        self.shared.notifier.spawn(send, Some(c.clone()), false);
                    }
                }
            }
        }
        self.flush_alerts().await
    }

    /// Stores changed incidents, then sends the notices they owe: a notice
    /// is on record as owed before it goes out. Kept for the next tick when
    /// the store refuses.
    async fn flush_alerts(&mut self) -> Result<(), StateError> {
        if !self.alerting.write.is_empty() {
            // The newest state of each incident is enough.
            let mut newest: HashMap<String, Incident> = HashMap::new();
            for i in self.alerting.write.drain(..) {
                newest.insert(i.id.clone(), i);
            }
            let batch: Vec<Incident> = newest.into_values().collect();
            if let Err(e) = self.incidents.write(self.state, &batch).await {
                self.alerting.write = batch;
                return Err(e);
            }
        }
        let policy = self.shared.policy();
        for send in self.alerting.send.drain(..) {
            let channel = policy.alerting.channels.get(&send.channel).cloned();
            self.shared.notifier.spawn(send, channel, true);
        }
        Ok(())
    }

    async fn attach(&mut self, hello: v1::Hello, session: u64, tx: AgentTx) -> Result<(), StateError> {
        let now = Utc::now();
        let host = hello.host.clone();
        let mut record = AgentRecord::from_hello(&hello, self.agents.get(&host), now);
        record.attached_to = Some(self.shared.config.name.clone());
        self.agents.insert(host.clone(), record);
        let welcome = v1::Welcome {
            coordinator: self.shared.config.name.clone(),
            term: u64::try_from(self.term).unwrap_or_default(),
            heartbeat_seconds: u32::try_from(self.shared.config.heartbeat.as_secs()).unwrap_or(5),
        };
        if tx.try_send(Ok(v1::CoordinatorMessage { body: Some(Out::Welcome(welcome)) })).is_err() {
            return Ok(());
        }
        self.sessions.insert(host.clone(), Session { id: session, tx });
        tracing::info!(host, sources = hello.sources.len(), running = hello.running_jobs.len(), "agent attached");
        self.changed_agent(&host);
        // Jobs this host ran that it no longer has: it restarted, or never
        // got the assignment. That attempt failed.
        let still: BTreeSet<&str> = hello.running_jobs.iter().map(String::as_str).collect();
        let lost: Vec<String> = self
            .jobs
            .of_host(&host)
            .filter(|j| j.state == JobState::Running && !still.contains(j.id.as_str()))
            .map(|j| j.id.clone())
            .collect();
        for id in lost {
            self.attempt_failed(&id, "interrupted: the agent restarted or lost its connection before it finished")
                .await?;
        }
        self.dispatch(&host).await
    }

    async fn on_message(&mut self, host: &str, body: Body) -> Result<(), StateError> {
        let now = Utc::now();
        let back = self.agents.get_mut(host).is_some_and(|agent| {
            agent.last_seen = now;
            std::mem::take(&mut agent.lost)
        });
        if back {
            tracing::info!(host, "agent back");
            self.changed_agent(host);
        }
        match body {
            Body::Hello(_) => Ok(()),
            Body::Heartbeat(beat) => {
                if let Some(agent) = self.agents.get_mut(host) {
                    agent.heard(&beat, now);
                    // Written with the next periodic flush.
                    self.dirty.insert(host.to_owned());
                }
                self.failover_heard(host, beat.seq, now).await
            }
            Body::Progress(p) => {
                if let Some(progress) = p.progress {
                    self.progress.insert(p.job_id, progress);
                }
                Ok(())
            }
            Body::Result(result) => {
                self.finished(host, result).await?;
                self.dispatch(host).await
            }
            Body::Changed(changed) => {
                self.changed(host, &changed.source_id, now).await?;
                self.dispatch(host).await
            }
        }
    }

    async fn finished(&mut self, host: &str, result: v1::JobResult) -> Result<(), StateError> {
        let Some(job) = self.jobs.get(&result.job_id) else {
            tracing::warn!(host, job = result.job_id, "result for a job not known here");
            return Ok(());
        };
        // A drill's report is kept even when its job ended already (its
        // agent restarted mid-drill: the report says it was cut short).
        if job.kind == JobKind::Drill
            && job.host == host
            && job.drill_report.is_none()
            && !result.drill_report_json.is_empty()
        {
            self.drill_reported(&result.job_id, &result.drill_report_json).await?;
        }
        let Some(job) = self.jobs.get(&result.job_id) else { return Ok(()) };
        if job.host != host || job.state != JobState::Running {
            // Agents send recent results again on every reconnect: a final
            // job hearing its result twice is expected.
            if job.state.is_final() {
                tracing::debug!(host, job = result.job_id, "result heard again");
            } else {
                tracing::warn!(host, job = result.job_id, state = ?job.state, "result for a job not running there: ignored");
            }
            return Ok(());
        }
        self.progress.remove(&result.job_id);
        if !result.ok {
            let reason = if result.error.is_empty() { "failed".to_owned() } else { result.error };
            return self.attempt_failed(&result.job_id, &reason).await;
        }
        let finished = DateTime::from_timestamp_millis(result.finished_unix_ms).unwrap_or_else(Utc::now);
        let made = result.snapshot.map(|s| BackupMade {
            snapshot_id: s.snapshot_id,
            files: s.files,
            bytes_read: s.bytes_read,
            bytes_new_stored: s.bytes_new_stored,
            bytes_total: s.bytes_read.saturating_add(s.bytes_unchanged),
            duration_ms: (s.duration_seconds.max(0.0) * 1000.0) as u64,
        });
        let job = self
            .jobs
            .update(self.state, &result.job_id, |j| {
                j.state = JobState::Succeeded;
                j.finished = Some(finished);
                j.error = None;
                j.made = made;
            })
            .await?;
        if let Some(job) = job {
            tracing::info!(host, job = job.id, attempt = job.attempt, "job succeeded");
            if let (JobKind::Backup, Some(made)) = (job.kind, &job.made)
                && let Some(source) = self.agents.get_mut(host).and_then(|a| a.sources.get_mut(&job.source_id))
            {
                source.last_backup = Some(finished);
                source.last_snapshot_id.clone_from(&made.snapshot_id);
            }
            self.concluded(&job, finished);
        }
        Ok(())
    }

    /// A job reached its final state: counted, and a backup's outcome
    /// joins its source's history.
    fn concluded(&mut self, job: &JobRecord, at: DateTime<Utc>) {
        let result = match job.state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Queued | JobState::Running => return,
        };
        self.shared.counts.job(job.kind, result);
        if job.kind != JobKind::Backup {
            return;
        }
        let Some(source) = self.agents.get_mut(&job.host).and_then(|a| a.sources.get_mut(&job.source_id)) else {
            return;
        };
        match (job.state, &job.made) {
            (JobState::Succeeded, Some(made)) => source.history.succeeded(
                job.schedule_id.as_deref(),
                BackupFigures {
                    finished: at,
                    duration_seconds: made.duration_ms as f64 / 1000.0,
                    size_bytes: made.bytes_total,
                    stored_bytes: made.bytes_new_stored,
                    files: made.files,
                },
            ),
            (JobState::Failed, _) => source.history.failed(Failure {
                at,
                schedule: job.schedule_id.clone(),
                job: job.id.clone(),
                error: job.error.clone().unwrap_or_default(),
            }),
            _ => return,
        }
        let host = job.host.clone();
        self.changed_agent(&host);
    }

    /// A drill job's report: kept in the state, counted, and linked from the job.
    async fn drill_reported(&mut self, job_id: &str, json: &str) -> Result<(), StateError> {
        let Some(report) = self.drills.record(self.state, json).await? else { return Ok(()) };
        self.shared.counts.drill(&report.drill, report.outcome());
        tracing::info!(job = job_id, report = report.id, "{}", report.headline());
        let id = report.id.clone();
        self.jobs.update(self.state, job_id, |j| j.drill_report = Some(id)).await?;
        Ok(())
    }

    /// An attempt failed: queued again after a back-off, or failed for good.
    /// A drill is never run again by itself: one cut short is a failed
    /// drill, and the calendar's next slot (or an operator) runs it anew.
    async fn attempt_failed(&mut self, id: &str, reason: &str) -> Result<(), StateError> {
        let config = &self.shared.config;
        let (max, retry_after) = (config.max_attempts, config.retry_after);
        let now = Utc::now();
        let job = self
            .jobs
            .update(self.state, id, |j| {
                j.error = Some(reason.to_owned());
                if j.cancel_requested {
                    j.state = JobState::Cancelled;
                    j.finished = Some(now);
                } else if j.attempt < max && j.kind != JobKind::Drill {
                    j.state = JobState::Queued;
                    let wait = retry_after.saturating_mul(1 << j.attempt.saturating_sub(1).min(16));
                    j.not_before = Some(now + chrono::Duration::from_std(wait).unwrap_or_default());
                } else {
                    j.state = JobState::Failed;
                    j.finished = Some(now);
                }
            })
            .await?;
        if let Some(job) = job {
            tracing::warn!(job = job.id, attempt = job.attempt, state = ?job.state, reason, "job attempt failed");
            if job.state == JobState::Queued {
                self.shared.counts.job(job.kind, "retried");
            }
            self.concluded(&job, now);
        }
        Ok(())
    }

    /// A watched source changed: one more run of its on-change schedule,
    /// unless one is already waiting.
    async fn changed(&mut self, host: &str, source_id: &str, now: DateTime<Utc>) -> Result<(), StateError> {
        let policy = self.shared.policy();
        let Some(source) = self.agents.get(host).and_then(|a| a.sources.get(source_id)) else { return Ok(()) };
        let Some(schedule) = source
            .source
            .schedules
            .iter()
            .filter_map(|id| policy.schedule(id))
            .find(|s| matches!(s.trigger, lifeboat_common::policy::Trigger::OnChange))
        else {
            tracing::warn!(host, source_id, "change reported for a source with no on-change schedule");
            return Ok(());
        };
        let schedule_id = schedule.id();
        let waiting = self.jobs.of_host(host).any(|j| {
            j.source_id == source_id && j.state == JobState::Queued && j.schedule_id.as_deref() == Some(&schedule_id)
        });
        if waiting {
            return Ok(());
        }
        let mut job = JobRecord::new(
            format!("{schedule_id}@{host}/{source_id}@{}", now.to_rfc3339()),
            host,
            source_id,
            JobKind::Backup,
            schedule.priority,
            now,
        );
        job.schedule_id = Some(schedule_id);
        job.slot = Some(now);
        self.jobs.create(self.state, job).await?;
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), StateError> {
        let now = Utc::now();
        let gap = self.last_tick.elapsed();
        self.last_tick = tokio::time::Instant::now();
        if gap > STALL {
            tracing::warn!(
                stalled_s = gap.as_secs_f64(),
                "this coordinator stalled: agents' silence is counted afresh"
            );
            self.counting_from = now;
        }
        self.schedule(now).await?;
        self.notice_lost(now).await?;
        let hosts: Vec<String> = self.sessions.keys().cloned().collect();
        for host in hosts {
            self.dispatch(&host).await?;
        }
        // Its failure does not hold up the rest of the tick; it is reported at the end.
        let failover = self.failover_tick(now).await;
        if self.urgent || self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush_agents().await?;
        }
        // While Prometheus scrapes, its view is built here, between
        // events, so a scrape never waits behind thousands of heartbeats.
        if self.shared.scraped_within(SCRAPES_KEEP_VIEW) {
            self.shared.publish_view(Some(self.metrics_view()));
        }
        if self.last_alerts.elapsed() >= ALERT_EVERY || !self.alerting.is_empty() {
            self.alerts(now).await?;
        }
        if self.last_expire.elapsed() >= EXPIRE_EVERY {
            let horizon = chrono::Duration::from_std(self.shared.config.job_history).unwrap_or_default();
            self.jobs.expire(self.state, now - horizon).await?;
            let gone: Vec<Op> = self.incidents.expire(now - horizon).into_iter().map(Op::Delete).collect();
            for batch in gone.chunks(RECORDS_PER_TXN) {
                self.state.commit_if(&[], batch).await?;
            }
            self.last_expire = tokio::time::Instant::now();
        }
        failover?;
        self.shared.set_degraded(None);
        Ok(())
    }

    async fn schedule(&mut self, now: DateTime<Utc>) -> Result<(), StateError> {
        let policy = self.shared.policy();
        if !std::sync::Arc::ptr_eq(&policy, &self.policy) {
            self.scheduler.policy_changed();
            self.policy = policy.clone();
        }
        let mut targets = Vec::new();
        for agent in self.agents.values() {
            for source in agent.sources.values() {
                for id in &source.source.schedules {
                    match policy.schedule(id) {
                        Some(schedule) => targets.push(Target {
                            schedule,
                            host: &agent.host,
                            source_id: &source.source.id,
                            kind: JobKind::Backup,
                        }),
                        None => {
                            tracing::debug!(
                                host = agent.host,
                                source = source.source.id,
                                schedule = id,
                                "no such schedule"
                            )
                        }
                    }
                }
            }
        }
        // A drill runs on its agent, known or not yet: its job waits for it.
        for (schedule, drill) in policy.drill_schedules.iter().filter_map(|s| Some((s, policy.drills.drill(&s.name)?)))
        {
            targets.push(Target { schedule, host: &drill.agent, source_id: &drill.name, kind: JobKind::Drill });
        }
        let made = self.scheduler.tick(self.state, &targets, now).await?;
        for made in made {
            // An older run of the same schedule still waiting (its agent
            // away) is superseded: one run catches up, not one per slot.
            let older: Vec<String> = self
                .jobs
                .of_host(&made.job.host)
                .filter(|j| {
                    j.state == JobState::Queued
                        && j.source_id == made.job.source_id
                        && j.schedule_id == made.job.schedule_id
                })
                .map(|j| j.id.clone())
                .collect();
            self.jobs.adopt(made.job, made.revision);
            for id in older {
                let job = self
                    .jobs
                    .update(self.state, &id, |j| {
                        j.state = JobState::Cancelled;
                        j.finished = Some(now);
                        j.error = Some("superseded by a later slot".into());
                    })
                    .await?;
                if let Some(job) = job {
                    self.concluded(&job, now);
                }
            }
        }
        Ok(())
    }

    /// Agents silent past the deadline are lost; what they were running failed.
    async fn notice_lost(&mut self, now: DateTime<Utc>) -> Result<(), StateError> {
        let lost_after = chrono::Duration::from_std(self.shared.config.lost_after).unwrap_or_default();
        let newly: Vec<String> = self
            .agents
            .values()
            // Agents get a whole deadline from the start of the term to find the new leader.
            .filter(|a| !a.lost && a.last_seen.max(self.started) + lost_after < now)
            .map(|a| a.host.clone())
            .collect();
        for host in newly {
            tracing::warn!(host, "agent lost: silent past the deadline");
            // A stream still open but silent (the agent hung) is dropped too.
            self.sessions.remove(&host);
            if let Some(agent) = self.agents.get_mut(&host) {
                agent.lost = true;
                agent.attached_to = None;
            }
            self.changed_agent(&host);
            let running: Vec<String> =
                self.jobs.of_host(&host).filter(|j| j.state == JobState::Running).map(|j| j.id.clone()).collect();
            for id in running {
                self.attempt_failed(&id, "the agent was lost while running it").await?;
            }
        }
        Ok(())
    }

    /// Assigns the host's waiting jobs, most urgent first, up to its limit.
    async fn dispatch(&mut self, host: &str) -> Result<(), StateError> {
        let Some(session) = self.sessions.get(host) else { return Ok(()) };
        let max = self.agents.get(host).map_or(1, |a| a.max_jobs.max(1)) as usize;
        let now = Utc::now();
        let running = self.jobs.of_host(host).filter(|j| j.state == JobState::Running).count();
        if running >= max {
            return Ok(());
        }
        let mut waiting: Vec<&JobRecord> = self.jobs.of_host(host).filter(|j| j.assignable(now)).collect();
        waiting.sort_by(|a, b| (a.priority, a.created, &a.id).cmp(&(b.priority, b.created, &b.id)));
        let ids: Vec<String> = waiting.iter().take(max - running).map(|j| j.id.clone()).collect();
        let tx = session.tx.clone();
        let term = self.term;
        for id in ids {
            let job = self
                .jobs
                .update(self.state, &id, |j| {
                    j.state = JobState::Running;
                    j.attempt += 1;
                    j.term = term;
                    j.started = Some(now);
                    j.not_before = None;
                })
                .await?;
            let Some(job) = job else { continue };
            let span = tracing::info_span!("dispatch", job = %job.id, host, attempt = job.attempt, term);
            traces::continue_trace(&span, &job.traceparent);
            span.in_scope(|| {
                tracing::info!(host, job = job.id, attempt = job.attempt, priority = job.priority, "job assigned")
            });
            let mut assignment =
                v1::JobAssignment { traceparent: traces::traceparent(&span), ..views::assignment(&job) };
            if job.kind == JobKind::Drill {
                assignment.drill = Some(drills::spec(&self.shared.policy(), &job.source_id, self.agents.values()));
            }
            let message = v1::CoordinatorMessage { body: Some(Out::Assign(assignment)) };
            if tx.try_send(Ok(message)).is_err() {
                // The stream is gone or stuck: the agent's next hello reconciles it.
                tracing::warn!(host, job = job.id, "could not send the assignment; dropping the stream");
                self.sessions.remove(host);
                break;
            }
        }
        Ok(())
    }

    /// Marks an agent's record to be written at the next tick.
    fn changed_agent(&mut self, host: &str) {
        self.dirty.insert(host.to_owned());
        self.urgent = true;
    }

    /// Writes the changed agent records, many per transaction: a thousand
    /// agents attaching at once after a failover cost a few writes, not a
    /// thousand.
    async fn flush_agents(&mut self) -> Result<(), StateError> {
        let hosts: Vec<String> = std::mem::take(&mut self.dirty).into_iter().collect();
        for batch in hosts.chunks(RECORDS_PER_TXN) {
            let puts: Vec<Op> = batch
                .iter()
                .filter_map(|h| self.agents.get(h))
                .map(|a| Ok(Op::Put(AgentRecord::key(self.prefix, &a.host), encode("an agent record", a)?)))
                .collect::<Result<_, StateError>>()?;
            if let Err(e) = self.state.commit_if(&[], &puts).await {
                // Kept for the next try.
                self.dirty.extend(batch.iter().cloned());
                return Err(e);
            }
        }
        self.urgent = false;
        self.last_flush = tokio::time::Instant::now();
        Ok(())
    }

    async fn query(&mut self, query: Query) -> Result<(), StateError> {
        let role = NodeRole::Leader { term: self.term };
        match query {
            Query::Status(reply) => {
                let connected = |h: &str| self.sessions.contains_key(h);
                let status = views::status(self.shared, &role, self.agents.values(), connected, Utc::now());
                reply.send(Ok(status)).ok();
            }
            Query::Agents(reply) => {
                let agents = self.agents.values().map(|a| a.to_proto(self.sessions.contains_key(&a.host))).collect();
                reply.send(Ok(v1::ListAgentsReply { agents })).ok();
            }
            Query::Jobs(request, reply) => {
                let jobs = views::list_jobs(self.jobs.iter(), &request, &self.progress);
                reply.send(Ok(v1::ListJobsReply { jobs })).ok();
            }
            Query::RunBackup(request, by, reply) => {
                let job = self.run_by_hand(&request.host, &request.source_id, JobKind::Backup, None, by).await;
                reply.send(job).ok();
            }
            Query::Restore(request, by, reply) => {
                let spec = request.spec.unwrap_or_default();
                let target = RestoreTarget {
                    snapshot: spec.snapshot,
                    target_dir: spec.target_dir,
                    path: spec.path,
                    latest: spec.latest,
                    to_time: spec.to_time,
                    to_lsn: spec.to_lsn,
                    delta: spec.delta,
                };
                let job = self.run_by_hand(&request.host, &request.source_id, JobKind::Restore, Some(target), by).await;
                reply.send(job).ok();
            }
            Query::RunDrill(request, by, reply) => {
                let job = self.run_drill_by_hand(&request.name, by).await;
                reply.send(job).ok();
            }
            Query::Drills(request, reply) => {
                reply.send(drills::list(self.state, self.prefix, &request).await).ok();
            }
            Query::Drill(request, reply) => {
                reply.send(drills::show(self.state, self.prefix, &request).await).ok();
            }
            Query::Cancel(request, by, reply) => {
                let job = self.cancel(&request.job_id, &request.reason, &by).await;
                reply.send(job).ok();
            }
            Query::Metrics(reply) => {
                reply.send(Ok(self.metrics_view())).ok();
            }
            Query::Incidents(all, reply) => {
                let incidents = views::list_incidents(&self.incidents, all);
                reply.send(Ok(v1::ListIncidentsReply { incidents })).ok();
            }
            Query::Failover(reply) => {
                let now = Utc::now();
                let policy = self.shared.policy();
                let connected = |h: &str| self.sessions.contains_key(h);
                let judged = self.judge(&policy.failover, now);
                let groups =
                    judged.iter().map(|(g, j)| self.groups.to_proto(g, Some(j), &self.agents, connected)).collect();
                reply.send(Ok(v1::FailoverStatusReply { groups })).ok();
            }
            Query::Promote(request, by, reply) => {
                let promoted = self.promote_by_hand(&request, &by, false).await;
                reply.send(promoted).ok();
            }
            Query::Switchover(request, by, reply) => {
                let request = v1::PromoteRequest { force: false, ..request };
                let switched = self.promote_by_hand(&request, &by, true).await;
                reply.send(switched).ok();
            }
            Query::PauseFailover(request, by, reply) => {
                let paused = match self.groups.set_paused(self.state, self.prefix, &request.group, request.pause).await
                {
                    Ok(true) => {
                        let what = if request.pause { "paused" } else { "resumed" };
                        tracing::info!(group = request.group, by, "automatic failover {what}");
                        Ok(self.group_reply(&request.group))
                    }
                    Ok(false) => Err(Status::not_found(format!("no failover group {:?}", request.group))),
                    Err(e) => Err(self.refused(e)),
                };
                reply.send(paused).ok();
            }
            Query::Ack(id, by, reply) => {
                let acked = match self.incidents.acknowledge(&id, &by, Utc::now()) {
                    Err(why @ AckRefused::NoIncident(_)) => Err(Status::not_found(why.to_string())),
                    Err(why) => Err(Status::failed_precondition(why.to_string())),
                    Ok(incident) => {
                        tracing::info!(incident = id, by, "incident acknowledged; escalation stops");
                        self.alerting.write.push(incident.clone());
                        match self.flush_alerts().await {
                            Ok(()) => Ok(v1::IncidentReply { incident: Some(views::incident(&incident)) }),
                            Err(e) => Err(self.refused(e)),
                        }
                    }
                };
                reply.send(acked).ok();
            }
        }
        Ok(())
    }

    /// A drill an operator asked for, queued at once on its agent.
    async fn run_drill_by_hand(&mut self, name: &str, by: String) -> Result<v1::JobReply, Status> {
        let policy = self.shared.policy();
        let Some(drill) = policy.drills.drill(name) else {
            let names: Vec<&str> = policy.drills.drills.iter().map(|d| d.name.as_str()).collect();
            return Err(Status::not_found(format!(
                "the policy has no drill {name:?} (it has: {})",
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            )));
        };
        let mut nonce = [0u8; 6];
        lifeboat_common::crypto::random_fill(&mut nonce).map_err(|e| Status::internal(e.to_string()))?;
        let id = format!("drill-{}@{}/{name}", hex::encode(nonce), drill.agent);
        let mut job = JobRecord::new(id, &drill.agent, name, JobKind::Drill, DRILL_PRIORITY, Utc::now());
        job.requested_by = Some(by);
        match self.jobs.create(self.state, job.clone()).await {
            Ok(true) => {}
            Ok(false) => return Err(Status::already_exists("a job of that id exists")),
            Err(e) => return Err(self.refused(e)),
        }
        let host = drill.agent.clone();
        if let Err(e) = self.dispatch(&host).await {
            return Err(self.refused(e));
        }
        let job = self.jobs.get(&job.id).cloned().unwrap_or(job);
        Ok(v1::JobReply { job: Some(views::job(&job, self.progress.get(&job.id))) })
    }

    /// A backup or restore an operator asked for, queued at once.
    async fn run_by_hand(
        &mut self,
        host: &str,
        source_id: &str,
        kind: JobKind,
        restore: Option<RestoreTarget>,
        by: String,
    ) -> Result<v1::JobReply, Status> {
        let Some(source) = self.agents.get(host).and_then(|a| a.sources.get(source_id)) else {
            return Err(Status::not_found(format!("no source {source_id:?} on host {host:?}")));
        };
        if kind == JobKind::Restore && restore.as_ref().is_none_or(|r| r.target_dir.is_empty()) {
            return Err(Status::invalid_argument("a restore needs a target directory"));
        }
        let policy = self.shared.policy();
        // By hand comes before the schedules of the source: an operator is waiting.
        let priority = source
            .source
            .schedules
            .iter()
            .filter_map(|id| policy.schedule(id))
            .map(|s| s.priority)
            .min()
            .unwrap_or(3)
            .min(2);
        let now = Utc::now();
        let mut nonce = [0u8; 6];
        lifeboat_common::crypto::random_fill(&mut nonce).map_err(|e| Status::internal(e.to_string()))?;
        let kind_name = if kind == JobKind::Backup { "backup" } else { "restore" };
        let id = format!("{kind_name}-{}@{host}/{source_id}", hex::encode(nonce));
        let mut job = JobRecord::new(id, host, source_id, kind, priority, now);
        job.restore = restore;
        job.requested_by = Some(by);
        let made = self.jobs.create(self.state, job.clone()).await;
        match made {
            Ok(true) => {}
            Ok(false) => return Err(Status::already_exists("a job of that id exists")),
            Err(e) => return Err(self.refused(e)),
        }
        if let Err(e) = self.dispatch(host).await {
            return Err(self.refused(e));
        }
        let job = self.jobs.get(&job.id).cloned().unwrap_or(job);
        Ok(v1::JobReply { job: Some(views::job(&job, self.progress.get(&job.id))) })
    }

    async fn cancel(&mut self, id: &str, reason: &str, by: &str) -> Result<v1::CancelJobReply, Status> {
        let Some(job) = self.jobs.get(id).cloned() else {
            return Err(Status::not_found(format!("no job {id:?}")));
        };
        if job.state.is_final() {
            return Err(Status::failed_precondition(format!("job {id} is {:?} already", job.state)));
        }
        let why = format!("cancelled by {by}: {reason}");
        let now = Utc::now();
        let updated = self
            .jobs
            .update(self.state, id, |j| match j.state {
                JobState::Queued => {
                    j.state = JobState::Cancelled;
                    j.finished = Some(now);
                    j.error = Some(why.clone());
                }
                _ => j.cancel_requested = true,
            })
            .await
            .map_err(|e| self.refused(e))?;
        let Some(updated) = updated else { return Err(Status::aborted("the job changed meanwhile; try again")) };
        self.concluded(&updated, now);
        if updated.state == JobState::Running
            && let Some(session) = self.sessions.get(&updated.host)
        {
            let cancel = v1::JobCancel { job_id: id.to_owned(), reason: why };
            session.tx.try_send(Ok(v1::CoordinatorMessage { body: Some(Out::Cancel(cancel)) })).ok();
        }
        Ok(v1::CancelJobReply { job: Some(views::job(&updated, self.progress.get(id))) })
    }

    /// A heartbeat of `host`: its members' reports taken in, and the
    /// answer that carries their orders (and, for a primary, renews its
    /// lease from the moment the heartbeat was sent).
    async fn failover_heard(&mut self, host: &str, seq: u64, now: DateTime<Utc>) -> Result<(), StateError> {
        let policy = self.shared.policy();
        if !GroupBook::has_members(&policy.failover, host) {
            return Ok(());
        }
        // The answer first: a failed write below must not cost a primary its lease.
        self.send_roles(host, seq, now);
        if let Some(agent) = self.agents.get(host) {
            let done = self.groups.heard(self.state, self.prefix, &policy.failover, agent, now).await?;
            for event in done {
                let failover = event.to_proto();
                tracing::warn!(
                    from = event.from,
                    to = event.to,
                    epoch = event.epoch,
                    rto_seconds = failover.rto_seconds,
                    rpo_bytes = failover.rpo_bytes,
                    rpo_seconds = failover.rpo_seconds,
                    "the new primary accepts writes"
                );
                let target = format!("{} -> {} (epoch {})", event.from, event.to, event.epoch);
                let result = format!(
                    "accepting writes at {}: RTO {:.1}s, RPO {} bytes / {:.1}s",
                    event.promoted_lsn, failover.rto_seconds, failover.rpo_bytes, failover.rpo_seconds
                );
                self.shared.auditor.record("Failover/Accepted", &target, &result);
            }
        }
        Ok(())
    }

    /// Sends `host` its members' orders; `seq` is the heartbeat answered
    /// (0: none, which renews no lease).
    fn send_roles(&mut self, host: &str, seq: u64, now: DateTime<Utc>) {
        // A leader that may have lost its term confirms no lease: a new
        // leader may already count the primary's silence. After a stall of
        // its own it cannot know yet (its etcd lease may have run out while
        // it was frozen), so it renews nothing for an etcd TTL.
        if (self.is_lost)() {
            return;
        }
        let seq =
            if tokio::time::Instant::now() < self.quiet_until || self.last_tick.elapsed() > STALL { 0 } else { seq };
        let Some(session) = self.sessions.get(host) else { return };
        let policy = self.shared.policy();
        let orders = self.groups.orders_for(&policy.failover, host, &self.agents, now);
        if orders.is_empty() {
            return;
        }
        if seq > 0 {
            for order in orders.iter().filter(|o| o.role == v1::MemberRole::Primary as i32) {
                self.confirmed.insert(format!("{host}/{}", order.source_id), now);
            }
        }
        let roles = v1::Roles { heartbeat_seq: seq, orders };
        if session.tx.try_send(Ok(v1::CoordinatorMessage { body: Some(Out::Roles(roles)) })).is_err() {
            tracing::warn!(host, "could not send the failover orders; dropping the stream");
            self.sessions.remove(host);
        }
    }

    /// Judges every failover group and promotes where a primary is lost
    /// and a standby is eligible.
    async fn failover_tick(&mut self, now: DateTime<Utc>) -> Result<(), StateError> {
        let policy = self.shared.policy();
        if policy.failover.is_empty() {
            return Ok(());
        }
        self.groups.ensure(self.state, self.prefix, &policy.failover).await?;
        let judged = self.judge(&policy.failover, now);
        let mut due = Vec::new();
        for (group, judgement) in judged {
            let Some(silent) = judgement.primary_silent_since else {
                self.blocked.remove(&group.name);
                continue;
            };
            if judgement.promote_now
                && let Some(to) = judgement.candidate
            {
                due.push((group.clone(), to, silent));
            } else if !judgement.blocked.is_empty()
                && (now - silent).to_std().unwrap_or_default() >= group.failover_after
                && self.blocked.get(&group.name) != Some(&judgement.blocked)
            {
                tracing::error!(
                    group = group.name,
                    reason = judgement.blocked,
                    "the primary is lost and nothing is promoted"
                );
                self.blocked.insert(group.name.clone(), judgement.blocked.clone());
            }
        }
        for (group, to, silent) in due {
            let cause = format!("automatic: the primary's agent was silent for {}s", (now - silent).num_seconds());
            self.promote(&group, &to, cause, silent, now, false).await?;
        }
        Ok(())
    }

    /// Makes `to` the primary of `group` under a new epoch, audits it, runs
    /// the group's fencing command against the old primary, and tells the
    /// members at once.
    async fn promote(
        &mut self,
        group: &FailoverGroup,
        to: &Member,
        cause: String,
        lost: DateTime<Utc>,
        now: DateTime<Utc>,
        switchover: bool,
    ) -> Result<Option<crate::failover::Promoted>, StateError> {
        let Some(old) = self.groups.record(&group.name).map(|r| r.primary.clone()) else { return Ok(None) };
        // The old primary's lease runs out fence_after after this leader
        // last renewed it (a previous leader's renewals are older than this term).
        // Any member this leader confirmed as primary may hold a lease (a
        // held successor of an earlier promotion too).
        let renewed = group
            .members
            .iter()
            .filter_map(|m| self.confirmed.get(&m.to_string()).copied())
            .fold(self.started, DateTime::max);
        let mut hold = group.fence_after + FENCE_MARGIN;
        if switchover {
            // Time for the old primary to stop cleanly and say where.
            hold += SWITCHOVER_PATIENCE;
        }
        let mut hold_until = renewed + chrono::Duration::from_std(hold).unwrap_or_default();
        if let Some(earlier) = self.groups.in_progress(&group.name, now) {
            hold_until = hold_until.max(earlier.hold_until);
        }
        let promotion = Promotion { to: to.clone(), cause: cause.clone(), lost, hold_until, now, switchover };
        let promoted = self.groups.promote(self.state, self.prefix, group, promotion).await?;
        let Some(promoted) = promoted else { return Ok(None) };
        let target = format!("{}: {} -> {} (epoch {})", group.name, old, to, promoted.event.epoch);
        tracing::warn!(group = group.name, from = old, to = %to, epoch = promoted.event.epoch, cause, "promoting");
        self.shared.auditor.record("Failover/Promote", &target, &cause);
        if let Some(command) = &group.fence_command
            && let Ok(old) = old.parse::<Member>()
        {
            crate::failover::fence::spawn(self.shared.auditor.clone(), &group.name, &old, command);
        }
        let hosts: std::collections::BTreeSet<String> = group.members.iter().map(|m| m.host.clone()).collect();
        for host in hosts {
            self.send_roles(&host, 0, now);
        }
        Ok(Some(promoted))
    }

    /// An operator's promotion of `request.to`.
    async fn promote_by_hand(
        &mut self,
        request: &v1::PromoteRequest,
        by: &str,
        switchover: bool,
    ) -> Result<v1::FailoverGroupReply, Status> {
        let policy = self.shared.policy();
        let refused = |r: PromoteRefused| match r {
            PromoteRefused::NoGroup(_) | PromoteRefused::NotMember { .. } => Status::not_found(r.to_string()),
            _ => Status::failed_precondition(r.to_string()),
        };
        let Some(group) = policy.failover.iter().find(|g| g.name == request.group) else {
            return Err(refused(PromoteRefused::NoGroup(request.group.clone())));
        };
        let to = group.members.iter().find(|m| m.to_string() == request.to).cloned().ok_or_else(|| {
            refused(PromoteRefused::NotMember { group: group.name.clone(), member: request.to.clone() })
        })?;
        if self.groups.record(&group.name).is_some_and(|r| r.primary == request.to) {
            return Err(refused(PromoteRefused::AlreadyPrimary(request.to.clone())));
        }
        let now = Utc::now();
        if let Some(f) = self.groups.in_progress(&group.name, now) {
            return Err(refused(PromoteRefused::InProgress { to: f.to.clone(), until: f.hold_until }));
        }
        let judgement = self.judge(std::slice::from_ref(group), now).into_iter().next().map(|(_, j)| j);
        let member = judgement.as_ref().and_then(|j| j.members.iter().find(|m| m.member == to));
        if let Some(m) = member.filter(|m| !m.eligible && !request.force) {
            let (member, why) = (request.to.clone(), m.why_not.clone());
            return Err(refused(if switchover {
                PromoteRefused::NotReady { member, why }
            } else {
                PromoteRefused::NotEligible { member, why }
            }));
        }
        let silent = judgement.as_ref().and_then(|j| j.primary_silent_since);
        if switchover && silent.is_some() {
            return Err(refused(PromoteRefused::PrimarySilent));
        }
        let lost = silent.unwrap_or(now);
        let cause = match (switchover, request.force) {
            (true, _) => format!("switchover by {by}"),
            (false, true) => format!("manual by {by} (forced)"),
            (false, false) => format!("manual by {by}"),
        };
        match self.promote(group, &to, cause, lost, now, switchover).await {
            Ok(_) => Ok(self.group_reply(&group.name)),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// `groups` judged at `now` against the agents attached here, silence
    /// counted from the start of this term or the end of its last stall.
    fn judge<'g>(
        &self,
        groups: &'g [FailoverGroup],
        now: DateTime<Utc>,
    ) -> Vec<(&'g FailoverGroup, crate::failover::judge::Judgement)> {
        let connected = |h: &str| self.sessions.contains_key(h);
        self.groups.judge_all(groups, &self.agents, connected, self.counting_from, now)
    }

    /// A group as `Promote` and `PauseFailover` answer.
    fn group_reply(&self, name: &str) -> v1::FailoverGroupReply {
        let policy = self.shared.policy();
        let connected = |h: &str| self.sessions.contains_key(h);
        let group = policy.failover.iter().find(|g| g.name == name).map(|g| {
            let judged = self.judge(std::slice::from_ref(g), Utc::now());
            self.groups.to_proto(g, judged.first().map(|(_, j)| j), &self.agents, connected)
        });
        v1::FailoverGroupReply { group }
    }

    /// An operator's write that the state refused, as the caller sees it.
    fn refused(&self, e: StateError) -> Status {
        if is_not_leader(&e) {
            Status::unavailable("this coordinator just stopped leading; try the new leader")
        } else {
            self.shared.set_degraded(Some(format!("cannot write the state: {e}")));
            Status::unavailable(format!("cannot write the state: {e}"))
        }
    }
}
