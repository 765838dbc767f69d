//! The coordinator: policy, schedules, jobs and the control plane. One
//! leads (elected through etcd, or alone on an embedded store); agents
//! attach to it over mutual TLS and run what it assigns.

pub mod agents;
pub mod alerts;
pub mod authz;
pub mod config;
pub mod core;
pub mod drills;
pub mod election;
pub mod failover;
pub mod history;
pub mod jobs;
pub mod lag;
pub mod metrics;
pub mod notify;
pub mod retention;
pub mod scheduler;
pub mod service;
pub mod state;
pub mod storage;
