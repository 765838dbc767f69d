//! Lifeboat's agent: capture and restore for each kind of source (one
//! directory each under `sources/`, behind one trait), and the daemon the
//! coordinator drives, and restore drills. The `lifeboat` CLI calls the
//! same sources and drills.

pub mod daemon;
pub mod drill;
pub mod progress;
pub mod sources;
