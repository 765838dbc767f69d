//! Alerts: the conditions the leader finds in what it knows
//! ([`conditions`]), and the incidents it opens, escalates and resolves
//! for them ([`incidents`]): one per condition and target, kept in the
//! control-plane state so a new leader neither drops nor repeats one.

pub mod conditions;
pub mod incidents;
pub mod local;

use serde::{Deserialize, Serialize};

/// What an incident is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// A backup failed after its last attempt.
    BackupFailed,
    /// The newest recovery point is older than the RPO.
    RpoBreached,
    /// WAL is further behind than allowed.
    WalLag,
    /// Fewer than the policy's share of backups succeeded over 30 days.
    SuccessRate,
    /// A backup's size strays from its source's recent median.
    SizeDeviation,
    /// A backup does not meet its `success_metric`.
    SuccessMetric,
    /// An agent has been silent past the deadline.
    AgentLost,
    /// A secondary store's copy lags past the bound.
    CopyLag,
    /// No coordinator leads.
    NoLeader,
    /// A restore drill's newest run failed.
    DrillFailed,
    /// A restore drill's newest run passed its checks and missed an objective.
    DrillObjectiveMissed,
}

impl Alert {
    /// Its name, as labels and messages show it.
    pub fn name(self) -> &'static str {
        match self {
            Alert::BackupFailed => "backup_failed",
            Alert::RpoBreached => "rpo_breached",
            Alert::WalLag => "wal_lag",
            Alert::SuccessRate => "success_rate",
            Alert::SizeDeviation => "size_deviation",
            Alert::SuccessMetric => "success_metric",
            Alert::AgentLost => "agent_lost",
            Alert::CopyLag => "copy_lag",
            Alert::NoLeader => "no_leader",
            Alert::DrillFailed => "drill_failed",
            Alert::DrillObjectiveMissed => "drill_objective_missed",
        }
    }

    /// How urgent it is (the seed: a backup failure is high).
    pub fn severity(self) -> Severity {
        match self {
            Alert::RpoBreached | Alert::NoLeader => Severity::Critical,
            Alert::BackupFailed | Alert::WalLag | Alert::AgentLost | Alert::DrillFailed => Severity::Error,
            Alert::SuccessRate
            | Alert::SizeDeviation
            | Alert::SuccessMetric
            | Alert::CopyLag
            | Alert::DrillObjectiveMissed => Severity::Warning,
        }
    }
}

impl std::fmt::Display for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// PagerDuty's severities, which the other channels show as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Data is at risk now.
    Critical,
    /// Something failed.
    Error,
    /// Something drifts.
    Warning,
}

impl Severity {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}
