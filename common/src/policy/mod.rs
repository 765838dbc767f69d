//! Operator policy, written in YAML with the structure of the seed's blocks
//! so the requirements document's own examples parse as they stand.

pub mod alerting;
pub mod drills;
pub mod failover;
pub mod monitoring;
pub mod prices;
mod schedules;
mod storage_lifecycle;

pub use schedules::{CronPattern, Schedule, Trigger, backup_schedules_from_yaml};
pub use storage_lifecycle::{PolicyError, storage_lifecycle_from_yaml};

/// Deserializes a duration written as humans do (`5s`, `10m`, `4h`,
/// `7days`), for configuration files.
pub fn human_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
}

/// [`human_duration`], for an optional field.
pub fn optional_human_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    human_duration(d).map(Some)
}
