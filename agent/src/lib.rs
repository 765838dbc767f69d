//! Lifeboat's agent: capture and restore for each kind of source. The agent
//! daemon and the `lifeboat` CLI both call this library.

pub mod daemon;
pub mod entry;
pub mod files;
pub mod postgres;
pub mod progress;
pub mod repo_args;
pub mod retention;
