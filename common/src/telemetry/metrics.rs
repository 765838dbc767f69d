//! The `/metrics` endpoint every daemon serves on `metrics_listen`:
//! OpenMetrics text over plain HTTP, as Prometheus scrapes. A daemon builds
//! a registry at each scrape from what it knows then (its counters are
//! long-lived families registered again each time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A gauge holding a float (seconds, ratios, timestamps).
pub type FloatGauge = Gauge<f64, AtomicU64>;
/// Float gauges, one per label set.
pub type Gauges<L> = Family<L, FloatGauge>;
/// Counters, one per label set.
pub type Counters<L> = Family<L, Counter>;

/// A gauge family registered under `name` in `registry`, to fill.
pub fn gauges<L>(registry: &mut Registry, name: &str, help: &str) -> Gauges<L>
where
    L: prometheus_client::encoding::EncodeLabelSet
        + Clone
        + std::hash::Hash
        + Eq
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let family = Gauges::<L>::default();
    registry.register(name, help, family.clone());
    family
}

/// What a daemon shows at each scrape.
#[async_trait::async_trait]
pub trait Scrape: Send + Sync + 'static {
    /// The metrics as they are now.
    async fn registry(&self) -> Registry;
}

/// Why the endpoint cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address cannot be listened on.
    #[error("metrics_listen {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
}

/// A bound endpoint, not yet serving.
#[derive(Debug)]
pub struct Endpoint {
    listener: tokio::net::TcpListener,
}

/// Binds the endpoint: a daemon does this before it starts, so a taken
/// port stops it with an error naming the address.
pub async fn bind(addr: SocketAddr) -> Result<Endpoint, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|cause| MetricsError::Bind { addr, cause })?;
    Ok(Endpoint { listener })
}

impl Endpoint {
    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `/metrics` until the process ends.
    pub async fn serve(self, scrape: Arc<dyn Scrape>) {
        let addr = self.local_addr();
        let app = axum::Router::new().route("/metrics", axum::routing::get(handle)).with_state(scrape);
        tracing::info!(listen = ?addr, "serving /metrics");
        if let Err(e) = axum::serve(self.listener, app).await {
            tracing::error!(listen = ?addr, error = %e, "the metrics endpoint stopped");
        }
    }
}

async fn handle(State(scrape): State<Arc<dyn Scrape>>) -> Response {
    let registry = scrape.registry().await;
    match encode(&registry) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}")).into_response(),
    }
}

/// The registry in OpenMetrics text.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(64 * 1024);
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// Seconds since the epoch, as a `*_timestamp_seconds` gauge holds it.
pub fn timestamp_seconds(at: chrono::DateTime<chrono::Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}
