//! The listening socket: TLS 1.3 handshakes with a client certificate from
//! the deployment's CA (rustls, configured in `lifeboat_common::tls`), each
//! refusal audited, then the gRPC services on what passed.

use std::sync::Arc;
use std::time::Duration;

use lifeboat_proto::v1;
use lifeboat_proto::v1::admin_server::AdminServer;
use lifeboat_proto::v1::agent_control_server::AgentControlServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::{AdminService, ControlService, Gate};
use crate::core::Shared;

/// How long a client has to complete its handshake.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// What went wrong serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Accepts TLS connections on `listener` and serves the coordinator's
/// services on them until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    shared: Arc<Shared>,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut tls = tls;
    // gRPC is HTTP/2 only.
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = mpsc::channel::<Result<TlsStream<tokio::net::TcpStream>, std::io::Error>>(256);
    let accept_gate = gate.clone();
    let accepting = tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            socket.set_nodelay(true).ok();
            let (acceptor, tx, gate) = (acceptor.clone(), tx.clone(), accept_gate.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        tx.send(Ok(stream)).await.ok();
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "TLS handshake refused");
                        gate.refused_connection(peer, &e.to_string());
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let refusal_gate = gate.clone();
    let counting = tokio::spawn(async move {
        let mut tick = tokio::time::interval(super::REFUSAL_WINDOW);
        tick.tick().await;
        loop {
            tick.tick().await;
            refusal_gate.close_refusal_window();
        }
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminService>>().await;
    health.set_serving::<AgentControlServer<ControlService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            // The descriptors are compiled in; they always parse.
            tracing::error!(error = %e, "reflection unavailable");
            e
        })
        .ok();
    let router = tonic::transport::Server::builder()
        // Dead peers (a paused agent, a cut cable) are noticed by the
        // transport, not only by missing heartbeats.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(AgentControlServer::new(ControlService::new(shared.clone(), gate.clone())))
        .add_service(AdminServer::new(AdminService::new(shared, gate.clone())))
        .add_optional_service(reflection);
    let served = router.serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown).await;
    accepting.abort();
    counting.abort();
    gate.close_refusal_window();
    Ok(served?)
}
