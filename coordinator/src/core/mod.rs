//! The coordinator's core: one task that owns the control-plane state.
//! gRPC handlers send it events (an agent attached, a message from an
//! agent, an operator's query) and it answers them in order, so no two
//! handlers ever race on a job. As leader it also ticks every second:
//! scheduling, dispatching, noticing lost agents. As follower it answers
//! reads from etcd and points writers at the leader.

mod term;
mod views;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lifeboat_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use crate::config::{CoordinatorConfig, Policy};
use crate::election::{ElectionConfig, Elector, LeaderInfo};
use crate::state::{EmbeddedState, State, StateError};

pub use term::ASSIGN_QUEUE;

/// Where this coordinator stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    /// Not yet known.
    Starting,
    /// It leads, in this term.
    Leader {
        /// The term.
        term: i64,
    },
    /// Another leads (or no one does yet).
    Follower {
        /// The leader, if there is one.
        leader: Option<LeaderInfo>,
    },
}

/// The answer to an operator's call.
pub type Reply<T> = oneshot::Sender<Result<T, Status>>;

/// Messages to the agent on one stream.
pub type AgentTx = mpsc::Sender<Result<v1::CoordinatorMessage, Status>>;

/// An operator's call, for the core to answer.
#[derive(Debug)]
pub enum Query {
    /// `Status`.
    Status(Reply<v1::StatusReply>),
    /// `ListAgents`.
    Agents(Reply<v1::ListAgentsReply>),
    /// `ListJobs`.
    Jobs(v1::ListJobsRequest, Reply<v1::ListJobsReply>),
    /// `RunBackup`, asked for by `by`.
    RunBackup(v1::RunBackupRequest, String, Reply<v1::JobReply>),
    /// `Restore`, asked for by `by`.
    Restore(v1::RestoreRequest, String, Reply<v1::JobReply>),
    /// `CancelJob`, asked for by `by`.
    Cancel(v1::CancelJobRequest, String, Reply<v1::CancelJobReply>),
    /// `RunDrill`, asked for by `by`.
    RunDrill(v1::RunDrillRequest, String, Reply<v1::JobReply>),
    /// `ListDrills`.
    Drills(v1::ListDrillsRequest, Reply<v1::ListDrillsReply>),
    /// `ShowDrill`.
    Drill(v1::ShowDrillRequest, Reply<v1::DrillReply>),
    /// A scrape of `/metrics`.
    Metrics(Reply<crate::metrics::View>),
    /// `ListIncidents` (resolved ones too when true).
    Incidents(bool, Reply<v1::ListIncidentsReply>),
    /// `AckIncident` of this id, by `by`.
    Ack(String, String, Reply<v1::IncidentReply>),
    /// `FailoverStatus`.
    Failover(Reply<v1::FailoverStatusReply>),
    /// `Promote`, asked for by `by`.
    Promote(v1::PromoteRequest, String, Reply<v1::FailoverGroupReply>),
    /// `Switchover`, asked for by `by`.
    Switchover(v1::PromoteRequest, String, Reply<v1::FailoverGroupReply>),
    /// `PauseFailover`, asked for by `by`.
    PauseFailover(v1::PauseFailoverRequest, String, Reply<v1::FailoverGroupReply>),
}

/// What the core is told.
#[derive(Debug)]
pub enum Event {
    /// An agent said hello on a new stream.
    Attach {
        /// Its hello (the host already checked against its certificate).
        hello: v1::Hello,
        /// The stream's number, to tell it from a later one of the same host.
        session: u64,
        /// Where its messages go.
        tx: AgentTx,
    },
    /// A message on an attached stream.
    FromAgent {
        /// The agent.
        host: String,
        /// The stream.
        session: u64,
        /// The message.
        body: v1::agent_message::Body,
    },
    /// A stream ended.
    Detached {
        /// The agent.
        host: String,
        /// The stream.
        session: u64,
    },
    /// An operator's call.
    Query(Query),
    /// How a notice of an incident went.
    Delivered(crate::notify::Delivered),
}

/// What the gRPC handlers share with the core.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: CoordinatorConfig,
    /// Where this coordinator stands.
    pub role: watch::Receiver<NodeRole>,
    /// Why it is not scheduling, when it is not.
    pub degraded: Mutex<Option<String>>,
    /// The policy in force.
    pub policy: RwLock<Arc<Policy>>,
    /// The core's inbox.
    pub events: mpsc::Sender<Event>,
    /// The last retention run's outcome.
    pub retention: Mutex<Option<String>>,
    /// Counters for `/metrics`.
    pub counts: crate::metrics::Counts,
    /// Sends incidents' notices.
    pub notifier: crate::notify::Notifier,
    /// What the repository's stores hold, as last measured.
    pub storage: Mutex<Option<Arc<crate::storage::StorageFigures>>>,
    /// The leader's view for `/metrics`, rebuilt each tick while scrapes come.
    pub view: Mutex<Option<(tokio::time::Instant, Arc<crate::metrics::View>)>>,
    /// When `/metrics` was last scraped.
    pub last_scrape: Mutex<Option<tokio::time::Instant>>,
    /// Where what the core decides by itself (a failover) is recorded.
    pub auditor: Auditor,
}

/// Records the coordinator's own decisions (as principal
/// `coordinator:NAME`) in the audit log.
#[derive(Debug, Clone)]
pub struct Auditor {
    log: Arc<lifeboat_common::audit::AuditLog>,
    name: String,
}

impl Auditor {
    /// Appends one decision.
    pub fn record(&self, action: &str, target: &str, result: &str) {
        let record = lifeboat_common::audit::AuditRecord {
            principal: format!("coordinator:{}", self.name),
            role: None,
            action: action.to_owned(),
            target: Some(target.to_owned()),
            result: result.to_owned(),
        };
        if let Err(e) = self.log.append(record) {
            tracing::error!(error = %e, action, target, "cannot append to the audit log");
        }
    }
}

impl Shared {
    /// Why it is not scheduling, when it is not.
    pub fn degraded(&self) -> Option<String> {
        self.degraded.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_degraded(&self, why: Option<String>) {
        let mut slot = self.degraded.lock().unwrap_or_else(|p| p.into_inner());
        if *slot != why {
            match &why {
                Some(w) => tracing::error!(reason = %w, "not scheduling"),
                None => tracing::info!("scheduling again"),
            }
            *slot = why;
        }
    }

    /// Records the last retention run's outcome.
    pub fn set_retention(&self, outcome: String) {
        *self.retention.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    }

    /// Keeps the newest storage figures.
    pub fn set_storage(&self, figures: crate::storage::StorageFigures) {
        *self.storage.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(figures));
    }

    /// The storage figures as last measured.
    pub fn storage(&self) -> Option<Arc<crate::storage::StorageFigures>> {
        self.storage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A scrape came: the leader keeps its view fresh for the next ones.
    pub fn scraped(&self) {
        *self.last_scrape.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// Whether a scrape came within `within`.
    pub fn scraped_within(&self, within: Duration) -> bool {
        self.last_scrape.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t.elapsed() < within)
    }

    /// Keeps the leader's newest view (none: this term ended).
    pub fn publish_view(&self, view: Option<crate::metrics::View>) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view.map(|v| (tokio::time::Instant::now(), Arc::new(v)));
    }

    /// The leader's view, if built within `within` in the term still led.
    pub fn fresh_view(&self, within: Duration) -> Option<Arc<crate::metrics::View>> {
        let term = match *self.role.borrow() {
            NodeRole::Leader { term } => term,
            _ => return None,
        };
        let slot = self.view.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|(at, v)| at.elapsed() < within && v.term == Some(term)).map(|(_, v)| v.clone())
    }

    /// The last retention run's outcome.
    pub fn retention(&self) -> Option<String> {
        self.retention.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks the core, and waits for its answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Query) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Query(make(tx)))
            .await
            .map_err(|_| Status::unavailable("the coordinator is stopping"))?;
        rx.await.map_err(|_| Status::unavailable("the coordinator is stopping"))?
    }
}

/// Where the state lives.
pub enum Backend {
    /// One coordinator, always leader.
    Embedded(EmbeddedState),
    /// Shared through etcd, led by whoever the election picks.
    Etcd(Box<Elector>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Embedded(_) => f.write_str("Backend::Embedded"),
            Backend::Etcd(_) => f.write_str("Backend::Etcd"),
        }
    }
}

/// Opens the state the configuration names.
pub async fn open_backend(config: &CoordinatorConfig) -> Result<Backend, StateError> {
    match &config.etcd {
        None => {
            std::fs::create_dir_all(&config.state_dir).map_err(|e| StateError::Embedded {
                path: config.state_dir.display().to_string(),
                cause: Box::new(redb::Error::Io(e)),
            })?;
            Ok(Backend::Embedded(EmbeddedState::open(&config.state_dir.join("state.redb"))?))
        }
        Some(etcd) => {
            let election = ElectionConfig {
                endpoints: etcd.endpoints.clone(),
                prefix: etcd.prefix.clone(),
                name: config.name.clone(),
                url: config.url(),
                ttl: etcd.ttl,
            };
            Ok(Backend::Etcd(Box::new(Elector::connect(election).await?)))
        }
    }
}

/// The key prefix of this deployment.
fn prefix(config: &CoordinatorConfig) -> String {
    config.etcd.as_ref().map_or_else(|| "/lifeboat".to_owned(), |e| e.prefix.clone())
}

/// Starts the core; returns what the handlers share with it.
pub fn start(
    config: CoordinatorConfig,
    policy: Policy,
    backend: Backend,
    audit: Arc<lifeboat_common::audit::AuditLog>,
) -> Arc<Shared> {
    let (role_tx, role) = watch::channel(NodeRole::Starting);
    let (events, inbox) = mpsc::channel(4096);
    let counts = crate::metrics::Counts::default();
    let context = crate::notify::Context { coordinator: config.name.clone() };
    let notifier = crate::notify::Notifier::new(counts.clone(), events.clone(), context);
    let auditor = Auditor { log: audit, name: config.name.clone() };
    let shared = Arc::new(Shared {
        config,
        role,
        degraded: Mutex::new(None),
        policy: RwLock::new(Arc::new(policy)),
        events,
        retention: Mutex::new(None),
        counts,
        notifier,
        storage: Mutex::new(None),
        view: Mutex::new(None),
        last_scrape: Mutex::new(None),
        auditor,
    });
    tokio::spawn(crate::alerts::local::watch(shared.clone(), prefix(&shared.config)));
    tokio::spawn(run(shared.clone(), backend, role_tx, inbox));
    shared
}

async fn run(shared: Arc<Shared>, backend: Backend, role: watch::Sender<NodeRole>, mut inbox: mpsc::Receiver<Event>) {
    let prefix = prefix(&shared.config);
    match backend {
        Backend::Embedded(db) => {
            // One coordinator: every start is a new term, so assignments
            // made before a restart are told apart.
            let term = chrono::Utc::now().timestamp_millis();
            role.send_replace(NodeRole::Leader { term });
            term::lead(&shared, State::Embedded(&db), term, &prefix, &mut inbox, &|| false).await;
        }
        Backend::Etcd(elector) => loop {
            let leadership = follow(&shared, &elector, &role, &prefix, &mut inbox).await;
            let Some(leadership) = leadership else { return };
            let term = leadership.term();
            role.send_replace(NodeRole::Leader { term });
            shared.set_degraded(None);
            term::lead(&shared, State::Etcd(&leadership), term, &prefix, &mut inbox, &|| leadership.is_lost()).await;
            shared.publish_view(None);
            tracing::warn!(term, "leadership lost; following");
            role.send_replace(NodeRole::Follower { leader: None });
            // Revoke at once, if etcd still hears us: the next leader need not wait out the TTL.
            leadership.resign().await;
        },
    }
}

/// Follows until this coordinator wins the election, answering queries from
/// etcd meanwhile. `None` when the inbox closed (shutting down).
async fn follow(
    shared: &Shared,
    elector: &Elector,
    role: &watch::Sender<NodeRole>,
    prefix: &str,
    inbox: &mut mpsc::Receiver<Event>,
) -> Option<crate::election::Leadership> {
    let reader = elector.client();
    let campaign = elector.campaign();
    tokio::pin!(campaign);
    let mut look = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            leadership = &mut campaign => return Some(leadership),
            event = inbox.recv() => {
                let event = event?;
                let now = role.borrow().clone();
                views::follower_event(shared, State::Follower(&reader), prefix, &now, event).await;
            }
            _ = look.tick() => {
                match elector.leader().await {
                    Ok(leader) => {
                        shared.set_degraded(None);
                        role.send_if_modified(|r| {
                            let new = NodeRole::Follower { leader: leader.clone() };
                            let changed = *r != new;
                            *r = new;
                            changed
                        });
                    }
                    Err(e) => shared.set_degraded(Some(format!("cannot reach etcd to follow the leader: {e}"))),
                }
            }
        }
    }
}
