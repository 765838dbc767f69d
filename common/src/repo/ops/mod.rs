//! What is done to a repository as a whole, each operation callable from
//! the CLI and the coordinator alike: init, verify, prune, retention,
//! repair, migrate, rehydrate, drill reports, and the comparison and copying of replicas.

pub mod drill_reports;
pub mod init;
pub mod migrate;
pub mod prune;
pub mod rehydrate;
pub mod repair;
pub mod replicas;
pub mod retention;
pub mod verify;
