//! The stream to the leading coordinator: found by trying the configured
//! coordinators in turn and following redirects, kept with heartbeats, and
//! re-made after any failure with exponential back-off and full jitter (so
//! a thousand agents cut off at once do not all come back at once).

use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::v1;
use lifeboat_proto::v1::agent_control_client::AgentControlClient;
use lifeboat_proto::v1::agent_message::Body;
use lifeboat_proto::v1::coordinator_message::Body as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Agent;

/// The first back-off, and the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often running jobs' progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Why a stream ended.
enum Ended {
    /// A follower named the leader.
    Redirect(String),
    /// It ended after working (a welcome was received).
    AfterWelcome(String),
}

/// Exponential back-off with full jitter.
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = BACKOFF_MIN.saturating_mul(1 << self.failures.min(10)).min(BACKOFF_MAX);
        self.failures += 1;
        let mut random = [0u8; 4];
        // Without randomness the back-off is whole: still bounded, only not spread.
        let fraction = match lifeboat_common::crypto::random_fill(&mut random) {
            Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
            Err(_) => 1.0,
        };
        cap.mul_f64(fraction).max(Duration::from_millis(50))
    }
}

/// Stays attached to the leader for as long as the agent runs.
pub(super) async fn keep_attached(agent: Arc<Agent>) {
    let urls = agent.config.coordinators.clone();
    let mut backoff = Backoff { failures: 0 };
    let mut next = 0usize;
    let mut leader: Option<String> = None;
    // A coordinator we could not reach, told to the next one: if it was the
    // leader, that one holds our stream until a new leader is elected
    // (instead of sending us back), and welcomes us the moment it wins.
    let mut unreachable = String::new();
    let (mut redirects, mut unreached) = (0usize, 0usize);
    loop {
        let url = leader.take().unwrap_or_else(|| {
            let url = urls[next % urls.len()].clone();
            next += 1;
            url
        });
        match attach(&agent, &url, &unreachable).await {
            Ok(Ended::Redirect(to)) => {
                redirects += 1;
                tracing::info!(from = url, to, "redirected to the leader");
                if !to.is_empty() && to != url {
                    leader = Some(to);
                }
                // A few redirects in a row are an election settling: wait a little.
                if redirects > 2 {
                    tokio::time::sleep(backoff.next()).await;
                }
                continue;
            }
            Ok(Ended::AfterWelcome(why)) => {
                tracing::warn!(coordinator = url, why, "stream to the coordinator ended; reconnecting");
                backoff = Backoff { failures: 0 };
                unreachable.clear();
                // Straight back to it first: a restart or a blip.
                leader = Some(url);
            }
            Err(e) => {
                tracing::warn!(coordinator = url, error = e, "cannot attach to the coordinator");
                unreachable = url;
                unreached += 1;
                // Each coordinator once without waiting, then back off.
                if unreached < urls.len() {
                    continue;
                }
            }
        }
        (redirects, unreached) = (0, 0);
        tokio::time::sleep(backoff.next()).await;
    }
}

async fn attach(agent: &Arc<Agent>, url: &str, unreachable: &str) -> Result<Ended, String> {
    let channel = lifeboat_common::tls::channel(url, agent.tls.clone()).map_err(|e| e.to_string())?;
    let mut client = AgentControlClient::new(channel);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(256);
    let hello = v1::Hello { unreachable_leader: unreachable.to_owned(), ..agent.hello() };
    tx.send(v1::AgentMessage { body: Some(Body::Hello(hello)) }).await.map_err(|e| e.to_string())?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await.map_err(|s| describe(&s))?.into_inner();
    let first = inbound.message().await.map_err(|s| describe(&s))?;
    let welcome = match first.and_then(|m| m.body) {
        Some(In::Welcome(w)) => w,
        Some(In::Redirect(r)) => return Ok(Ended::Redirect(r.leader_url)),
        Some(other) => return Err(format!("expected a welcome, got {other:?}")),
        None => return Err("the coordinator closed the stream at once".into()),
    };
    tracing::info!(coordinator = welcome.coordinator, term = welcome.term, "attached");
    let _attached = Attached::mark(agent);
    let send = |body: Body| {
        let tx = tx.clone();
        async move { tx.send(v1::AgentMessage { body: Some(body) }).await.is_ok() }
    };
    let every = Duration::from_secs(welcome.heartbeat_seconds.max(1).into());
    let mut period = agent.beat_every(every);
    let mut beat = tokio::time::interval(period);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut term = welcome.term;
    // What finished while detached goes first.
    agent.wake.notify_one();
    loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(Ended::AfterWelcome("closed by the coordinator".into())),
                    Err(s) => return Ok(Ended::AfterWelcome(describe(&s))),
                };
                match message.body {
                    Some(In::Assign(job)) if job.term >= term => {
                        term = job.term;
                        agent.start(job);
                    }
                    Some(In::Assign(job)) => {
                        tracing::warn!(job = job.job_id, job_term = job.term, term, "assignment from an older term ignored");
                    }
                    Some(In::Cancel(c)) => agent.cancel(&c.job_id, &c.reason),
                    Some(In::Roles(roles)) => {
                        agent.roles(roles);
                        if agent.beat_every(every) != period {
                            period = agent.beat_every(every);
                            beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                        }
                    }
                    Some(In::Redirect(r)) => return Ok(Ended::Redirect(r.leader_url)),
                    Some(In::Welcome(_)) | None => {}
                }
            }
            _ = beat.tick() => {
                if !send(Body::Heartbeat(agent.heartbeat())).await {
                    return Ok(Ended::AfterWelcome("the stream closed".into()));
                }
            }
            _ = progress.tick() => {
                for p in agent.progress() {
                    if !send(Body::Progress(p)).await {
                        return Ok(Ended::AfterWelcome("the stream closed".into()));
                    }
                }
            }
            _ = agent.wake.notified() => {
                let outgoing = agent.take_outgoing();
                let mut unsent = Vec::new();
                for body in outgoing {
                    if !unsent.is_empty() || !send(body.clone()).await {
                        unsent.push(body);
                    }
                }
                if !unsent.is_empty() {
                    agent.put_back(unsent);
                    return Ok(Ended::AfterWelcome("the stream closed".into()));
                }
            }
        }
    }
}

/// A gRPC status as one line.
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Marks the agent attached for as long as it lives.
struct Attached<'a>(&'a Agent);

impl<'a> Attached<'a> {
    fn mark(agent: &'a Agent) -> Self {
        agent.attached.store(true, std::sync::atomic::Ordering::Relaxed);
        Attached(agent)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.attached.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}
