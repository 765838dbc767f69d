//! gRPC client channels over this module's TLS: tonic's transport, with
//! the handshake done by rustls as [`client_config`](super::client_config)
//! sets it up (TLS 1.3 only, the pinned CA, the client certificate).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::TlsError;

/// A lazily connecting channel to `url` (`https://host:port`): the first
/// call connects, and a broken connection is re-made on the next call.
pub fn channel(url: &str, config: rustls::ClientConfig) -> Result<Channel, TlsError> {
    let uri: Uri = url.parse().map_err(|e| TlsError::Config(format!("{url}: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(TlsError::Config(format!("{url}: the coordinator is reached over https")));
    }
    let authority = uri.authority().ok_or_else(|| TlsError::Config(format!("{url}: no host")))?.clone();
    // The handshake is ours; tonic sees a plain connection.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| TlsError::Config(format!("{url}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A peer that stopped answering (paused, partitioned) is noticed in
        // seconds, so an agent moves on to the new leader.
        .http2_keep_alive_interval(Duration::from_secs(3))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let connect = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}
