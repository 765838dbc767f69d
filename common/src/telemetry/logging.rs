//! Log lines on standard error: text for people, or JSON lines for log
//! shippers (`LIFEBOAT_LOG_FORMAT=json`); `RUST_LOG` filters both. Spans
//! also go to OpenTelemetry when traces are on.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::traces::Traces;

/// The variable choosing the log format: `text` (the default) or `json`.
pub const FORMAT_VAR: &str = "LIFEBOAT_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per event for people (colours on a terminal).
    Text,
    /// One JSON object per event, its span's fields included.
    Json,
}

impl Format {
    /// The format `LIFEBOAT_LOG_FORMAT` asks for; an unknown value is an error naming it.
    pub fn from_env() -> Result<Format, String> {
        match std::env::var(FORMAT_VAR) {
            Err(_) => Ok(Format::Text),
            Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("text") => Ok(Format::Text),
            Ok(v) if v.eq_ignore_ascii_case("json") => Ok(Format::Json),
            Ok(v) => Err(format!("{FORMAT_VAR}={v:?}: expected text or json")),
        }
    }
}

/// Installs the process's subscriber: the filter, the log lines, and the
/// trace export layer when `traces` is on.
pub(crate) fn init(default_level: &str, format: Format, traces: Option<&Traces>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let lines = match format {
        Format::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        Format::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let export = traces.map(Traces::layer);
    // A second call (tests running several entry points) keeps the first subscriber.
    tracing_subscriber::registry().with(export).with(lines).with(filter).try_init().ok();
}
