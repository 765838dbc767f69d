//! One module per command.

pub mod alerts;
pub mod audit;
pub mod backup;
pub mod backups;
pub mod certs;
pub mod control;
pub mod drill;
pub mod drills;
pub mod failover;
pub mod key;
pub mod prune;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod snapshots;
pub mod verify;
