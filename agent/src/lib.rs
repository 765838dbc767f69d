//! Lifeboat's agent: capture and restore for each kind of source (one
//! directory each under `sources/`, behind one trait), and the daemon the
//! coordinator drives. The `lifeboat` CLI calls the same sources.

pub mod daemon;
pub mod progress;
pub mod sources;
