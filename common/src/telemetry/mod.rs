//! What every Lifeboat process sets up around its work: the entry point
//! with its runtime, logging, the `/metrics` endpoint daemons serve, and
//! OpenTelemetry traces when an endpoint is named.

pub mod entry;
pub mod logging;
pub mod metrics;
pub mod traces;
