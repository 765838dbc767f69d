//! `lifeboat-agent run`: the agent as a daemon. It keeps one stream open to
//! the leading coordinator (following redirects, reconnecting with back-off
//! and jitter), runs the jobs it is given, reports progress and results,
//! and, whatever the coordinator's state, keeps streaming WAL and watching
//! the sources that report changes.

pub mod config;
mod jobs;
mod metrics;
mod session;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::engine::open::{OpenError, RepoSpec};
use lifeboat_common::store::OpenedStore;
use lifeboat_proto::v1;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use self::config::AgentConfig;
use crate::progress::Progress;
use crate::sources::{Events, Ongoing, Source};
use lifeboat_common::repo::engine::settings::RepoArgs;

/// How long a finished job's result is re-sent on every reconnect: the
/// coordinator may not have received it before the stream broke.
const RESULT_KEPT: Duration = Duration::from_secs(600);

/// What stops the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration file is unreadable or invalid.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The repository cannot be opened.
    #[error("opening the repository: {0}")]
    Repo(#[from] OpenError),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] lifeboat_common::tls::TlsError),
    /// The metrics endpoint cannot listen.
    #[error(transparent)]
    Metrics(#[from] lifeboat_common::telemetry::metrics::MetricsError),
}

/// A job being run.
struct Running {
    attempt: u32,
    source_id: String,
    /// `backup` or `restore`.
    kind: &'static str,
    started: tokio::time::Instant,
    progress: Arc<Progress>,
    task: JoinHandle<()>,
}

/// A finished job's result, kept until it is surely delivered.
struct Finished {
    result: v1::JobResult,
    at: tokio::time::Instant,
}

/// What the sessions and the jobs share.
#[derive(Default)]
struct Book {
    running: HashMap<String, Running>,
    finished: VecDeque<Finished>,
    /// Results not yet sent on the current stream.
    unsent: VecDeque<v1::JobResult>,
    /// Sources that changed and were not yet reported.
    changed: BTreeSet<String>,
    /// The newest backup of each source: snapshot id and when.
    last_backup: HashMap<String, (String, i64)>,
    /// Assignments taken, by job and attempt, so a repeat is not run twice.
    taken: BTreeSet<(String, u32)>,
    /// The last heartbeat's number, and when recent ones were sent.
    beat_seq: u64,
    beats_sent: VecDeque<(u64, std::time::Instant)>,
    /// The shortest fence_after of a primary member: heartbeats go at
    /// least four times within it, so one lost answer does not fence.
    lease_beat: Option<Duration>,
}

/// Heartbeats remembered for the leases their answers renew.
const BEATS_KEPT: usize = 64;

/// The running agent.
pub struct Agent {
    config: AgentConfig,
    repo: Repository,
    stores: OpenedStore,
    spec: RepoSpec,
    tls: rustls::ClientConfig,
    /// What it backs up, as configured.
    sources: Vec<Arc<dyn Source>>,
    book: Mutex<Book>,
    /// Wakes the session when there is something to send.
    wake: Notify,
    /// Whether a stream to the leader is open.
    attached: AtomicBool,
    /// Jobs' outcomes, for `/metrics`.
    outcomes: metrics::Outcomes,
}

impl Events for Agent {
    fn changed(&self, source_id: &str) {
        self.book().changed.insert(source_id.to_owned());
        self.wake.notify_one();
    }
}

impl Agent {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn source(&self, id: &str) -> Option<&Arc<dyn Source>> {
        self.sources.iter().find(|s| s.id() == id)
    }

    /// The hello for a new stream: who this is, and what it still runs (or
    /// finished without the coordinator surely knowing).
    fn hello(&self) -> v1::Hello {
        let mut book = self.book();
        book.finished.retain(|f| f.at.elapsed() < RESULT_KEPT);
        // Everything finished recently goes again on the new stream.
        let again: Vec<v1::JobResult> = book.finished.iter().map(|f| f.result.clone()).collect();
        book.unsent = again.into();
        let mut running: Vec<String> = book.running.keys().cloned().collect();
        running.extend(book.unsent.iter().map(|r| r.job_id.clone()));
        v1::Hello {
            host: self.config.host.clone(),
            region: self.config.region.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            sources: self.sources.iter().map(|s| s.describe()).collect(),
            running_jobs: running,
            max_jobs: self.config.max_jobs,
            unreachable_leader: String::new(),
        }
    }

    fn heartbeat(&self) -> v1::Heartbeat {
        let mut book = self.book();
        book.beat_seq += 1;
        let seq = book.beat_seq;
        if book.beats_sent.len() == BEATS_KEPT {
            book.beats_sent.pop_front();
        }
        book.beats_sent.push_back((seq, std::time::Instant::now()));
        let sources = self
            .sources
            .iter()
            .map(|s| {
                let (last_snapshot_id, last_backup_unix) = book.last_backup.get(s.id()).cloned().unwrap_or_default();
                let health = s.health();
                v1::SourceState {
                    source_id: s.id().to_owned(),
                    last_snapshot_id,
                    last_backup_unix,
                    error: health.error.unwrap_or_default(),
                    wal: health.wal,
                    member: health.member,
                }
            })
            .collect();
        v1::Heartbeat {
            sent_unix_ms: Utc::now().timestamp_millis(),
            sources,
            running_jobs: book.running.keys().cloned().collect(),
            seq,
        }
    }

    /// Takes the leader's orders for this host's failover members; the
    /// lease a primary's order renews runs from when the answered
    /// heartbeat was sent.
    fn roles(&self, roles: v1::Roles) {
        let confirmed_at = {
            let mut book = self.book();
            let sent = book.beats_sent.iter().find(|(seq, _)| *seq == roles.heartbeat_seq).map(|(_, at)| *at);
            let shortest = roles
                .orders
                .iter()
                .filter(|o| o.role == v1::MemberRole::Primary as i32)
                .map(|o| Duration::from_millis(o.fence_after_ms.into()))
                .min();
            book.lease_beat = shortest.map(|d| (d / 4).max(Duration::from_millis(200)));
            sent
        };
        for order in roles.orders {
            let Some(source) = self.source(&order.source_id) else {
                tracing::error!(
                    group = order.group,
                    source = order.source_id,
                    "ordered a role for a source this agent does not have"
                );
                continue;
            };
            if let Err(e) = source.order(crate::sources::Order { order, confirmed_at }) {
                tracing::error!(error = e, "failover order refused");
            }
        }
        self.wake.notify_one();
    }

    /// How often heartbeats go: the coordinator's interval, or faster while
    /// a primary's lease depends on them.
    fn beat_every(&self, coordinator: Duration) -> Duration {
        self.book().lease_beat.map_or(coordinator, |l| l.min(coordinator))
    }

    /// Progress of every running job.
    fn progress(&self) -> Vec<v1::JobProgress> {
        self.book()
            .running
            .iter()
            .map(|(id, r)| {
                let p = r.progress.snapshot();
                v1::JobProgress {
                    job_id: id.clone(),
                    progress: Some(v1::Progress {
                        operation: String::new(),
                        files_done: p.files_done,
                        files_total: p.files_total,
                        bytes_done: p.bytes_done,
                        bytes_total: p.bytes_total,
                        totals_known: p.totals_known,
                    }),
                }
            })
            .collect()
    }

    /// Takes what is waiting to be sent.
    fn take_outgoing(&self) -> Vec<v1::agent_message::Body> {
        let mut book = self.book();
        let mut out: Vec<v1::agent_message::Body> =
            book.unsent.drain(..).map(v1::agent_message::Body::Result).collect();
        out.extend(
            std::mem::take(&mut book.changed)
                .into_iter()
                .map(|source_id| v1::agent_message::Body::Changed(v1::Changed { source_id })),
        );
        out
    }

    /// Puts back what could not be sent.
    fn put_back(&self, bodies: Vec<v1::agent_message::Body>) {
        let mut book = self.book();
        for body in bodies.into_iter().rev() {
            match body {
                v1::agent_message::Body::Result(r) => book.unsent.push_front(r),
                v1::agent_message::Body::Changed(c) => {
                    book.changed.insert(c.source_id);
                }
                _ => {}
            }
        }
    }

    fn finish(&self, id: &str, result: v1::JobResult) {
        let mut book = self.book();
        book.running.remove(id);
        book.finished.push_back(Finished { result: result.clone(), at: tokio::time::Instant::now() });
        book.unsent.push_back(result);
        drop(book);
        self.wake.notify_one();
    }
}

/// Opens the repository and runs the agent until `shutdown` is set.
pub async fn run(config: AgentConfig, mut shutdown: watch::Receiver<bool>) -> Result<(), DaemonError> {
    let spec =
        RepoArgs::default().spec_with(config.repository.clone(), std::path::Path::new("the [repository] table"))?;
    let metrics_endpoint = match config.metrics_listen {
        Some(addr) => Some(lifeboat_common::telemetry::metrics::bind(addr).await?),
        None => None,
    };
    let (repo, stores) = spec.open().await?;
    let tls = config.tls.client()?;
    let sources = config.sources.iter().map(|s| s.section().build()).collect();
    let agent = Arc::new(Agent {
        config,
        repo,
        stores,
        spec,
        tls,
        sources,
        book: Mutex::new(Book::default()),
        wake: Notify::new(),
        attached: AtomicBool::new(false),
        outcomes: metrics::Outcomes::default(),
    });
    if let Some(endpoint) = metrics_endpoint {
        tokio::spawn(endpoint.serve(Arc::new(metrics::AgentScrape { agent: agent.clone() })));
    }
    agent.learn_last_backups().await;
    // A drill this agent was running when it stopped: its servers and
    // scratch go, and its report says it was cut short (the coordinator
    // marks its job failed when this agent attaches without it).
    for (report, job) in crate::drill::clean_up_cut_short(&agent.repo, &agent.config.host, |_| true).await {
        tracing::warn!(drill = report.id, job = job.as_deref().unwrap_or("-"), "a drill cut short was cleaned up");
        if let Some(job) = job {
            let result = v1::JobResult {
                job_id: job.clone(),
                ok: false,
                error: report.headline(),
                finished_unix_ms: report.finished.timestamp_millis(),
                drill_report_json: serde_json::to_string(&report).unwrap_or_default(),
                ..Default::default()
            };
            agent.finish(&job, result);
        }
    }
    let ongoing = Ongoing {
        repo: agent.repo.clone(),
        spec: agent.spec.clone(),
        host: agent.config.host.clone(),
        events: agent.clone(),
        shutdown: shutdown.clone(),
    };
    let background: Vec<JoinHandle<()>> = agent.sources.iter().flat_map(|s| s.start(ongoing.clone())).collect();
    tracing::info!(host = agent.config.host, sources = agent.sources.len(), "agent running");
    tokio::select! {
        _ = session::keep_attached(agent.clone()) => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    tracing::info!("agent stopping");
    for task in background {
        // Each stores what it holds before it returns.
        task.await.ok();
    }
    let running: Vec<JoinHandle<()>> = agent.book().running.drain().map(|(_, r)| r.task).collect();
    for task in running {
        task.abort();
        task.await.ok();
    }
    // Drills stopped with it leave nothing running; their scratch and
    // markers stay, for the next start to remove and report to the leader.
    tokio::task::spawn_blocking(crate::drill::scratch::stop_own_servers).await.ok();
    Ok(())
}
