//! The coordinator: policy, schedules, retention, drills and failover (the
//! control-plane issue builds it here, piece by piece).

pub mod authz;
pub mod election;
pub mod lag;
pub mod scheduler;
pub mod state;
