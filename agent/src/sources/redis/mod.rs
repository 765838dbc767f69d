//! Redis: snapshots taken over the replication protocol (the RDB a replica
//! would receive, streamed into the repository), Sentinel-aware, and
//! restores to a directory a server can start on.

pub mod capture;
pub mod cold;
pub mod drill;
pub mod endpoint;
mod error;
pub mod member;
pub mod rdb;
pub mod replication;
pub mod restore;
pub mod sentinel;
pub mod server;
mod source;

pub use error::RedisError;
pub use source::{RedisConfig, RedisSource};
