//! Shared helpers of Lifeboat's end-to-end tests and benchmarks.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;
pub mod control;
pub mod etcd;
pub mod failover;
pub mod http_receiver;
pub mod monitoring;
pub mod net_regions;
pub mod netns;
pub mod otlp;
pub mod postgres;
pub mod redis;
pub mod services;
pub mod tree_gen;
pub mod writer;
