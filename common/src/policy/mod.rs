//! Operator policy, written in YAML with the structure of the seed's blocks
//! so the requirements document's own examples parse as they stand.

mod schedules;
mod storage_lifecycle;

pub use schedules::{CronPattern, Schedule, Trigger, backup_schedules_from_yaml};
pub use storage_lifecycle::{PolicyError, storage_lifecycle_from_yaml};
