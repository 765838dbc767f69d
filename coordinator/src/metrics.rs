//! The coordinator's `/metrics`. On the leader: every source's backups
//! against its RPO, WAL lag, success ratio, jobs, agents, alerts and
//! notifications; on a follower, that it follows. The core hands out a
//! [`View`] (plain figures, cheap to copy) and the registry is built from
//! it outside the core, so a scrape of thousands of sources holds up no
//! scheduling.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_common::telemetry::metrics::{Counters, FloatGauge, Registry, Scrape, gauges, timestamp_seconds};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::Gauge;

use crate::agents::AgentRecord;
use crate::core::{NodeRole, Query, Shared};
use crate::drills::DrillRow;
use crate::history::BackupFigures;
use crate::jobs::JobKind;
use crate::lag::recovery_point_age;
use crate::storage::StorageFigures;
use lifeboat_common::policy::prices::Prices;

/// `lifeboat_jobs_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `backup` or `restore`.
    pub kind: &'static str,
    /// `succeeded`, `failed`, `cancelled`, or `retried` (an attempt failed, another follows).
    pub result: &'static str,
}

/// `lifeboat_notifications_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// The channel's name in the policy.
    pub channel: String,
    /// `sent` or `failed`.
    pub result: &'static str,
}

/// `lifeboat_drills_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillLabels {
    /// The drill's name in the policy.
    pub drill: String,
    /// `passed`, `objectives_missed` or `failed`.
    pub result: &'static str,
}

/// Counters the leader's work increments, kept for the life of the process.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Jobs by kind and outcome.
    pub jobs: Counters<JobLabels>,
    /// Drill runs by drill and outcome.
    pub drills: Counters<DrillLabels>,
    /// Notification attempts by channel and outcome.
    pub notifications: Counters<ChannelLabels>,
}

impl Counts {
    /// Counts a job's outcome.
    pub fn job(&self, kind: JobKind, result: &'static str) {
        self.jobs.get_or_create(&JobLabels { kind: kind.as_str(), result }).inc();
    }

    /// Counts a drill run's outcome.
    pub fn drill(&self, drill: &str, result: &'static str) {
        self.drills.get_or_create(&DrillLabels { drill: drill.to_owned(), result }).inc();
    }

    /// Counts a delivery attempt on a channel.
    pub fn notification(&self, channel: &str, sent: bool) {
        let result = if sent { "sent" } else { "failed" };
        self.notifications.get_or_create(&ChannelLabels { channel: channel.to_owned(), result }).inc();
    }
}

/// One source, as a scrape shows it.
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// Its agent.
    pub host: String,
    /// Its id.
    pub source: String,
    /// Its kind (`files`, `postgres`, ...).
    pub kind: String,
    /// Its recovery point objective, in seconds.
    pub rpo_seconds: f64,
    /// How old its newest recoverable point is.
    pub recovery_point_age_seconds: Option<f64>,
    /// The newest success of each schedule.
    pub last: Vec<(String, BackupFigures)>,
    /// Successes over outcomes, the last 30 days.
    pub success_ratio: Option<f64>,
    /// WAL: seconds since the server had WAL the repository lacks, and those bytes.
    pub wal: Option<(f64, u64)>,
    /// Whether its newest backup failed after its last attempt.
    pub failing: bool,
    /// How far its newest backup's size is from the recent median, as a fraction of it.
    pub size_deviation: Option<f64>,
}

/// Agents by state.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCounts {
    /// Attached to this leader.
    pub connected: u64,
    /// Known, not attached, not yet lost.
    pub disconnected: u64,
    /// Silent past the deadline.
    pub lost: u64,
}

/// What the core reports at a scrape.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Whether this coordinator leads.
    pub leader: bool,
    /// The leader's term, when known.
    pub term: Option<i64>,
    /// Every source (the leader only).
    pub sources: Vec<SourceRow>,
    /// Agents by state (the leader only).
    pub agents: AgentCounts,
    /// Incidents open, by alert.
    pub alerts_firing: Vec<(String, u64)>,
    /// Each drill's newest run (the leader only).
    pub drills: Vec<DrillRow>,
    /// When the leader built it.
    pub built: Option<DateTime<Utc>>,
}

impl View {
    /// What the role alone says: whether it leads, and the term if known.
    pub fn of_role(role: &NodeRole) -> View {
        match role {
            NodeRole::Leader { term } => View { leader: true, term: Some(*term), ..View::default() },
            NodeRole::Follower { leader: Some(l) } => View { term: Some(l.term), ..View::default() },
            _ => View::default(),
        }
    }

    /// The leader's view of its agents at `now`.
    pub fn leader<'a>(
        term: i64,
        agents: impl Iterator<Item = &'a AgentRecord>,
        connected: impl Fn(&str) -> bool,
        limits: (Duration, Duration),
        now: DateTime<Utc>,
    ) -> View {
        let (wal_max_lag, lost_after) = limits;
        let mut view = View { leader: true, term: Some(term), built: Some(now), ..View::default() };
        for agent in agents {
            if agent.lost {
                view.agents.lost += 1;
            } else if connected(&agent.host) {
                view.agents.connected += 1;
            } else {
                view.agents.disconnected += 1;
            }
            for s in agent.sources.values() {
                let report = s.report(agent.last_seen, now);
                view.sources.push(SourceRow {
                    host: agent.host.clone(),
                    source: s.source.id.clone(),
                    kind: s.source.kind().name().to_owned(),
                    rpo_seconds: s.limits(wal_max_lag, lost_after).rpo.as_secs_f64(),
                    recovery_point_age_seconds: recovery_point_age(&report, now).map(|d| d.as_secs_f64()),
                    last: s.history.last.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    success_ratio: s.history.success_ratio(now).map(|(r, _)| r),
                    wal: s.wal.as_ref().map(|w| (w.lag.lag_seconds, w.lag.lag_bytes)),
                    failing: s.history.last_failure.is_some(),
                    size_deviation: s.history.size_deviation(),
                });
            }
        }
        view
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    host: String,
    source: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    host: String,
    source: String,
    kind: String,
    schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    alert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    store: String,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: String,
}

/// The repository's bytes per store and tier, their cost, and copy lag.
fn storage(r: &mut Registry, figures: &StorageFigures, prices: &Prices) {
    let bytes = gauges::<TierLabels>(
        r,
        "lifeboat_repository_stored_bytes",
        "Bytes the repository holds in the store, by tier (estimated from age and the storage lifecycle)",
    );
    let cost = gauges::<TierLabels>(
        r,
        "lifeboat_repository_monthly_cost_dollars",
        "Estimated monthly storage cost in USD, from the policy's storage_prices (default: published list prices)",
    );
    let lag = gauges::<StoreLabels>(
        r,
        "lifeboat_repository_copy_lag_bytes",
        "Bytes the primary store holds that this secondary store lacks",
    );
    for store in &figures.stores {
        for (tier, n) in &store.tiers {
            let labels = TierLabels { store: store.store.clone(), tier: tier.name() };
            bytes.get_or_create(&labels).set(*n as f64);
            cost.get_or_create(&labels).set(prices.monthly(store.kind, *tier, *n));
        }
        if let Some(l) = store.copy_lag_bytes {
            lag.get_or_create(&StoreLabels { store: store.store.clone() }).set(l as f64);
        }
    }
    let measured = FloatGauge::default();
    measured.set(timestamp_seconds(figures.measured));
    r.register(
        "lifeboat_repository_measured_timestamp_seconds",
        "When the stores were last listed for these figures",
        measured,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DrillNameLabels {
    drill: String,
}

/// Each drill's newest run: whether it passed and met its objectives, its
/// measured RTO and RPO, and when it ended.
fn drills(r: &mut Registry, rows: &[DrillRow]) {
    let passed =
        gauges::<DrillNameLabels>(r, "lifeboat_drill_last_passed", "1 when the drill's newest run passed its checks");
    let met = gauges::<DrillNameLabels>(
        r,
        "lifeboat_drill_last_objectives_met",
        "1 when the drill's newest run met its recovery objectives",
    );
    let rto = gauges::<DrillNameLabels>(
        r,
        "lifeboat_drill_last_rto_seconds",
        "The RTO the drill's newest passing run measured",
    );
    let rpo =
        gauges::<DrillNameLabels>(r, "lifeboat_drill_last_rpo_seconds", "The RPO the drill's newest run measured");
    let when =
        gauges::<DrillNameLabels>(r, "lifeboat_drill_last_run_timestamp_seconds", "When the drill's newest run ended");
    for row in rows {
        let labels = DrillNameLabels { drill: row.drill.clone() };
        passed.get_or_create(&labels).set(f64::from(u8::from(row.passed)));
        met.get_or_create(&labels).set(f64::from(u8::from(row.objectives_met)));
        if let Some(s) = row.rto_seconds {
            rto.get_or_create(&labels).set(s);
        }
        if let Some(s) = row.rpo_seconds {
            rpo.get_or_create(&labels).set(s);
        }
        when.get_or_create(&labels).set(timestamp_seconds(row.finished));
    }
}

/// The registry a scrape encodes.
pub fn registry(view: &View, counts: &Counts) -> Registry {
    let mut r = Registry::default();
    let leader = Gauge::<i64>::default();
    leader.set(i64::from(view.leader));
    r.register("lifeboat_leader", "1 on the leading coordinator, 0 on followers", leader);
    if let Some(term) = view.term {
        let g = Gauge::<i64>::default();
        g.set(term);
        r.register("lifeboat_term", "The leader's term (etcd revision of its key)", g);
    }
    r.register(
        "lifeboat_jobs",
        "Jobs by kind and outcome, counted by this coordinator while it led",
        counts.jobs.clone(),
    );
    r.register("lifeboat_notifications", "Alert notifications by channel and outcome", counts.notifications.clone());
    r.register(
        "lifeboat_drills",
        "Restore drill runs by drill and outcome (passed, objectives_missed, failed), counted while this coordinator led",
        counts.drills.clone(),
    );
    if !view.leader {
        return r;
    }
    drills(&mut r, &view.drills);
    if let Some(built) = view.built {
        let age = FloatGauge::default();
        age.set((Utc::now() - built).num_milliseconds().max(0) as f64 / 1000.0);
        r.register(
            "lifeboat_metrics_view_age_seconds",
            "How old the leader's figures in this scrape are (it rebuilds them every second while scraped)",
            age,
        );
    }
    let agents = gauges::<StateLabels>(&mut r, "lifeboat_agents", "Agents by state");
    for (state, n) in
        [("connected", view.agents.connected), ("disconnected", view.agents.disconnected), ("lost", view.agents.lost)]
    {
        agents.get_or_create(&StateLabels { state }).set(n as f64);
    }
    let firing = gauges::<AlertLabels>(&mut r, "lifeboat_alerts_firing", "Open incidents, by alert");
    for (alert, n) in &view.alerts_firing {
        firing.get_or_create(&AlertLabels { alert: alert.clone() }).set(*n as f64);
    }
    let last_success = gauges::<ScheduleLabels>(
        &mut r,
        "lifeboat_backup_last_success_timestamp_seconds",
        "When the newest successful backup of the schedule finished",
    );
    let duration =
        gauges::<ScheduleLabels>(&mut r, "lifeboat_backup_last_duration_seconds", "How long that backup took");
    let size = gauges::<ScheduleLabels>(&mut r, "lifeboat_backup_last_size_bytes", "Bytes that backup covers");
    let stored = gauges::<ScheduleLabels>(
        &mut r,
        "lifeboat_backup_last_stored_bytes",
        "Bytes that backup newly stored, after deduplication and compression",
    );
    let age = gauges::<SourceLabels>(
        &mut r,
        "lifeboat_recovery_point_age_seconds",
        "Age of the source's newest recoverable point (backup, or stored WAL)",
    );
    let rpo = gauges::<SourceLabels>(&mut r, "lifeboat_rpo_seconds", "The source's recovery point objective");
    let ratio = gauges::<SourceLabels>(
        &mut r,
        "lifeboat_backup_success_ratio",
        "Successful backups over all that ended, the last 30 days",
    );
    let wal_lag = gauges::<SourceLabels>(
        &mut r,
        "lifeboat_wal_archive_lag_seconds",
        "Seconds since the server had WAL the repository still lacks",
    );
    let wal_bytes = gauges::<SourceLabels>(
        &mut r,
        "lifeboat_wal_stream_lag_bytes",
        "Bytes of WAL the server has that the repository lacks",
    );
    let failing = gauges::<SourceLabels>(
        &mut r,
        "lifeboat_backup_failing",
        "1 while the source's newest backup failed after its last attempt",
    );
    let deviation = gauges::<SourceLabels>(
        &mut r,
        "lifeboat_backup_size_deviation_ratio",
        "The newest backup's size against the median of the ones before, as a fraction (0.2: 20 % larger)",
    );
    for row in &view.sources {
        let labels = SourceLabels { host: row.host.clone(), source: row.source.clone(), kind: row.kind.clone() };
        rpo.get_or_create(&labels).set(row.rpo_seconds);
        failing.get_or_create(&labels).set(if row.failing { 1.0 } else { 0.0 });
        if let Some(x) = row.size_deviation {
            deviation.get_or_create(&labels).set(x);
        }
        if let Some(a) = row.recovery_point_age_seconds {
            age.get_or_create(&labels).set(a);
        }
        if let Some(x) = row.success_ratio {
            ratio.get_or_create(&labels).set(x);
        }
        if let Some((seconds, bytes)) = row.wal {
            wal_lag.get_or_create(&labels).set(seconds);
            wal_bytes.get_or_create(&labels).set(bytes as f64);
        }
        for (schedule, f) in &row.last {
            let l = ScheduleLabels {
                host: labels.host.clone(),
                source: labels.source.clone(),
                kind: labels.kind.clone(),
                schedule: schedule.clone(),
            };
            last_success.get_or_create(&l).set(timestamp_seconds(f.finished));
            duration.get_or_create(&l).set(f.duration_seconds);
            size.get_or_create(&l).set(f.size_bytes as f64);
            stored.get_or_create(&l).set(f.stored_bytes as f64);
        }
    }
    r
}

/// How old a view kept by the leader may be and still be served: a core
/// held up (an attach storm after a failover) must not hold up scrapes;
/// `lifeboat_metrics_view_age_seconds` says how old it is.
const VIEW_FRESH: Duration = Duration::from_secs(60);

/// How long a scrape waits for the core before it answers with less.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The coordinator's scrape: asks the core, builds the registry.
#[derive(Debug)]
pub struct CoordinatorScrape {
    /// What the handlers share with the core.
    pub shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl Scrape for CoordinatorScrape {
    async fn registry(&self) -> Registry {
        self.shared.scraped();
        // The view the leader keeps fresh while scrapes come; the first
        // scrape (or one after a quiet spell) asks the core.
        let view = match self.shared.fresh_view(VIEW_FRESH) {
            Some(view) => view,
            None => match tokio::time::timeout(ASK_TIMEOUT, self.shared.ask(Query::Metrics)).await {
                Ok(Ok(view)) => Arc::new(view),
                _ => {
                    tracing::warn!("the core did not answer the scrape in time; reporting the role only");
                    Arc::new(View::of_role(&self.shared.role.borrow()))
                }
            },
        };
        let mut r = registry(&view, &self.shared.counts);
        if view.leader
            && let Some(figures) = self.shared.storage()
        {
            storage(&mut r, &figures, &self.shared.policy().prices);
        }
        r
    }
}
