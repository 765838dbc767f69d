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
        let role = self.shared.role.borrow().clone();
        match role {
            NodeRole::Leader { .. } => {
                let host = hello.host.clone();
                let session = self.sessions.fetch_add(1, Ordering::Relaxed);
                let events = self.shared.events.clone();
                events
                    .send(Event::Attach { hello, session, tx })
                    .await
                    .map_err(|_| Status::unavailable("the coordinator is stopping"))?;
                tokio::spawn(async move {
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
                });
            }
            NodeRole::Follower { leader: Some(leader) } => {
                let redirect = v1::Redirect { leader_url: leader.url, reason: format!("{} leads", leader.name) };
                tx.try_send(Ok(v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::Redirect(redirect)) }))
                    .ok();
            }
            _ => return Err(Status::unavailable("no coordinator leads right now; try again shortly")),
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
