//! OpenTelemetry traces over OTLP/gRPC. Off unless an endpoint is named (a
//! daemon's `otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! / `OTEL_EXPORTER_OTLP_ENDPOINT`); off, no exporter exists and spans cost
//! what logging already costs. A job's trace crosses processes as a W3C
//! `traceparent` string.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::Registry;

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The exporter could not be built for this endpoint.
    #[error("OTLP trace exporter to {endpoint}: {cause}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// Why.
        cause: String,
    },
}

/// The endpoint traces go to: the configured one, else the standard variables.
pub fn endpoint(configured: Option<&str>) -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    configured
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The exporter while traces are on.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts exporting to `endpoint` as `service` (`OTEL_SERVICE_NAME`
    /// wins when set). Must run inside a Tokio runtime: the gRPC channel
    /// lives on it.
    pub fn start(service: &str, endpoint: &str) -> Result<Traces, TraceError> {
        let failed = |cause: String| TraceError::Exporter { endpoint: endpoint.to_owned(), cause };
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT);
        if endpoint.starts_with("https://") {
            // The platform's roots, for a collector behind a public certificate.
            let tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
            builder = builder.with_tls_config(tls);
        }
        let exporter = builder.build().map_err(|e| failed(e.to_string()))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service.to_owned());
        }
        let provider =
            SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
        Ok(Traces { provider })
    }

    /// The layer that turns spans into exported ones.
    pub(crate) fn layer(&self) -> OpenTelemetryLayer<Registry, SdkTracer> {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("lifeboat"))
    }

    /// Sends what is still buffered (at most a few seconds) and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            eprintln!("traces: the last spans were not all sent: {e}");
        }
    }
}

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The W3C `traceparent` of `span`: empty when traces are off.
pub fn traceparent(span: &tracing::Span) -> String {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the span `traceparent` names (as sent by
/// another process); an empty or malformed one leaves it a root.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Refused only when traces are off: then there is nothing to join.
    span.set_parent(parent).ok();
}
