//! Shared helpers of Lifeboat's end-to-end tests and benchmarks.

pub mod bench;
pub mod control;
pub mod etcd;
pub mod postgres;
pub mod services;
pub mod tree_gen;
