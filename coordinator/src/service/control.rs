//! `AgentControl`: each agent's one stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use lifeboat_proto::v1;
use lifeboat_proto::v1::agent_control_server::AgentControl;
use lifeboat_proto::v1::agent_message::Body;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Gate;
use crate::authz::Call;
use crate::core::{ASSIGN_QUEUE, Event, NodeRole, Shared};

/// How long an agent has to say hello after the stream opens.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// How long a follower holds an agent that could not reach the leader
/// while that leader stays the same: longer than an election takes.
const PARK_AT_MOST: Duration = Duration::from_secs(10);

/// The `AgentControl` service.
#[derive(Debug)]
pub struct ControlService {
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    sessions: AtomicU64,
}

impl ControlService {
    /// The service, in front of the core.
    pub fn new(shared: Arc<Shared>, gate: Arc<Gate>) -> Self {
        ControlService { shared, gate, sessions: AtomicU64::new(1) }
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for ControlService {
    type AttachStream = Outbound;

    async fn attach(&self, request: Request<Streaming<v1::AgentMessage>>) -> Result<Response<Outbound>, Status> {
        let who = Gate::identity(&request)?;
        self.gate.admit(&who, &Call::Attach { host: None }, None)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_WITHIN, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let Some(v1::AgentMessage { body: Some(Body::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message must be a hello"));
        };
        // The certificate names the host; a hello for another is refused.
        self.gate.admit(&who, &Call::Attach { host: Some(hello.host.clone()) }, Some(&hello.host))?;
        let (tx, rx) = mpsc::channel(ASSIGN_QUEUE);
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve_agent(self.shared.clone(), hello, session, tx, inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What a follower does with an agent's stream.
enum Placement {
    /// This coordinator leads: the core takes the agent.
    Lead,
    /// Send the agent to the leader.
    Redirect(String, String),
    /// Hold the stream: no leader is known, or the agent could not reach
    /// the one known (it died, or is cut off). When this coordinator wins
    /// the election the agent is taken at once, with no reconnection; when
    /// another leader is known it is sent there.
    Park,
}

fn placement(role: &NodeRole, hello: &v1::Hello) -> Placement {
    match role {
        NodeRole::Leader { .. } => Placement::Lead,
        NodeRole::Follower { leader: Some(l) } if l.url != hello.unreachable_leader => {
            Placement::Redirect(l.url.clone(), format!("{} leads", l.name))
        }
        _ => Placement::Park,
    }
}

/// Places the agent, waiting while parked, then (leading) hands its stream
/// to the core until it ends.
async fn serve_agent(
    shared: Arc<Shared>,
    hello: v1::Hello,
    session: u64,
    tx: mpsc::Sender<Result<v1::CoordinatorMessage, Status>>,
    mut inbound: Streaming<v1::AgentMessage>,
) {
    let mut role = shared.role.clone();
    // The agent may have missed the leader for a passing reason (it was
    // still starting): after a while it is sent there anyway.
    let patience = tokio::time::sleep(PARK_AT_MOST);
    tokio::pin!(patience);
    let mut patient = true;
    loop {
        let mut placed = placement(&role.borrow_and_update(), &hello);
        if let (Placement::Park, false, NodeRole::Follower { leader: Some(l) }) = (&placed, patient, &*role.borrow()) {
            placed = Placement::Redirect(l.url.clone(), format!("{} leads", l.name));
        }
        match placed {
            Placement::Lead => break,
            Placement::Redirect(leader_url, reason) => {
                let redirect = v1::Redirect { leader_url, reason };
                tx.send(Ok(v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::Redirect(redirect)) }))
                    .await
                    .ok();
                return;
            }
            Placement::Park => {
                tokio::select! {
                    changed = role.changed() => if changed.is_err() { return },
                    // The agent went away while it waited.
                    _ = tx.closed() => return,
                    _ = &mut patience, if patient => patient = false,
                }
            }
        }
    }
    let host = hello.host.clone();
    let events = shared.events.clone();
    if events.send(Event::Attach { hello, session, tx }).await.is_err() {
        return;
    }
    loop {
        match inbound.message().await {
            Ok(Some(v1::AgentMessage { body: Some(body) })) => {
                let event = Event::FromAgent { host: host.clone(), session, body };
                if events.send(event).await.is_err() {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(host, error = %e, "agent stream broke");
                break;
            }
        }
    }
    events.send(Event::Detached { host, session }).await.ok();
}
