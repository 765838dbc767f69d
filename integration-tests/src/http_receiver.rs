//! A local HTTP receiver for tests: it answers every POST with 202 (as
//! PagerDuty's Events API does) and keeps what it was sent, by path, so a
//! test can check the payloads of webhooks, Slack and PagerDuty.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path, without its leading `/`.
    pub path: String,
    /// Its `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Its body, parsed as JSON (`Null` when it was not JSON).
    pub body: serde_json::Value,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// A running receiver.
pub struct HttpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Log,
}

async fn keep(State(log): State<Log>, Path(path): Path<String>, headers: HeaderMap, body: String) -> StatusCode {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    log.lock().unwrap_or_else(|p| p.into_inner()).push(Received { path, authorization, body });
    StatusCode::ACCEPTED
}

impl HttpReceiver {
    /// Starts one on a free loopback port, on `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime) -> HttpReceiver {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("a port for the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let log = Log::default();
        let app = axum::Router::new().route("/{*path}", axum::routing::post(keep)).with_state(log.clone());
        runtime.spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        HttpReceiver { addr, log }
    }

    /// `http://ADDR/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// What was posted to `path`, in order.
    pub fn at(&self, path: &str) -> Vec<Received> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|r| r.path == path).cloned().collect()
    }
}
