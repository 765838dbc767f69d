//! Operator policy, written in YAML with the structure of the seed's blocks
//! so the requirements document's own examples parse as they stand.

mod storage_lifecycle;

pub use storage_lifecycle::{PolicyError, storage_lifecycle_from_yaml};
