//! An OTLP/gRPC trace receiver for tests and benchmarks, served from the
//! official `opentelemetry-proto` definitions: it keeps every span it is
//! sent, with the service that sent it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// A span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its trace id, in hex.
    pub trace_id: String,
    /// Its id, in hex.
    pub span_id: String,
    /// Its parent's id, in hex (empty for a root).
    pub parent_span_id: String,
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    exports: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                });
            }
        }
        self.exports.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens (`http://ADDR` is the endpoint to give exporters).
    pub addr: SocketAddr,
    collector: Collector,
}

impl Receiver {
    /// Starts a receiver on a free loopback port, on `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime) -> Receiver {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a port for the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .ok();
        });
        Receiver { addr, collector }
    }

    /// The endpoint to give exporters.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many export calls it answered.
    pub fn exports(&self) -> u64 {
        self.collector.exports.load(std::sync::atomic::Ordering::Relaxed)
    }
}
