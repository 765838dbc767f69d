//! The coordinator's configuration file (TOML), and the policy file it names.

use lifeboat_common::invalid::Invalid;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_common::policy::alerting::{Alerting, alerting_from_yaml};
use lifeboat_common::policy::drills::{DrillPolicy, drills_from_yaml};
use lifeboat_common::policy::failover::{FailoverGroup, failover_from_yaml};
use lifeboat_common::policy::monitoring::{MonitoredJob, monitoring_from_yaml};
use lifeboat_common::policy::prices::{Prices, prices_from_yaml};
use lifeboat_common::policy::storage_lifecycle_from_yaml;
use lifeboat_common::policy::{PolicyError, Schedule, Trigger, backup_schedules_from_yaml, human_duration};
use lifeboat_common::store::lifecycle::Lifecycle;
use lifeboat_common::tls::TlsFiles;
use serde::Deserialize;

use crate::authz::{Role, RoleMap};

/// What is wrong with a configuration or policy file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("reading {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// It is not valid; the reason names the line where the parser can.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
}

/// etcd, when the state is shared by several coordinators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// Client URLs of the members.
    pub endpoints: Vec<String>,
    /// Every key of this deployment is under it.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Lease TTL: how long a silent leader stays leader.
    #[serde(default = "default_ttl", deserialize_with = "human_duration")]
    pub ttl: Duration,
}

fn default_prefix() -> String {
    "/lifeboat".into()
}

fn default_ttl() -> Duration {
    Duration::from_secs(3)
}

/// `lifeboat-coordinator run --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's name (its certificate's).
    pub name: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where agents and clients reach it (default: `https://<listen>`).
    pub url: Option<String>,
    /// The region it serves.
    #[serde(default)]
    pub region: String,
    /// Its own files: the embedded state and the audit log.
    pub state_dir: PathBuf,
    /// The policy (the seed's YAML blocks).
    pub policy: PathBuf,
    /// Mutual TLS.
    pub tls: TlsFiles,
    /// Shared state and leader election; absent: embedded state, always leader.
    pub etcd: Option<EtcdSettings>,
    /// Operators' logins and their roles.
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    /// How often agents send heartbeats.
    #[serde(default = "default_heartbeat", deserialize_with = "human_duration")]
    pub heartbeat: Duration,
    /// An agent silent this long is lost.
    #[serde(default = "default_lost_after", deserialize_with = "human_duration")]
    pub lost_after: Duration,
    /// How far WAL may fall behind before it is an alert (the seed's `max_lag_minutes`).
    #[serde(default = "default_wal_lag", deserialize_with = "human_duration")]
    pub wal_max_lag: Duration,
    /// Attempts of a failing job before it is failed for good.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before a failed job is tried again (doubled each attempt).
    #[serde(default = "default_retry", deserialize_with = "human_duration")]
    pub retry_after: Duration,
    /// How long finished jobs are remembered.
    #[serde(default = "default_history", deserialize_with = "human_duration")]
    pub job_history: Duration,
    /// The repository retention is applied to (absent: retention is off).
    pub repository: Option<lifeboat_common::repo::engine::settings::RepoSettings>,
    /// How often the leader measures what each store holds (for `/metrics`
    /// and the copy-lag alert; it lists every store).
    #[serde(default = "default_storage_every", deserialize_with = "human_duration")]
    pub storage_every: Duration,
    /// How often the leader applies retention.
    #[serde(default = "default_retention_every", deserialize_with = "human_duration")]
    pub retention_every: Duration,
    /// How long pruned data stays marked before it is deleted (longer than
    /// the longest backup).
    #[serde(default = "default_prune_grace", deserialize_with = "human_duration")]
    pub prune_grace: Duration,
    /// Take a `prune_grace` shorter than an hour (tests only: a backup that
    /// died without its marker may lose data).
    #[serde(default)]
    pub unsafe_prune_grace: bool,
    /// Where `/metrics` is served, over plain HTTP (absent: not served).
    pub metrics_listen: Option<SocketAddr>,
    /// Where traces go over OTLP/gRPC (absent: `OTEL_EXPORTER_OTLP_ENDPOINT`, else off).
    pub otlp_endpoint: Option<String>,
}

fn default_storage_every() -> Duration {
    Duration::from_secs(600)
}
fn default_retention_every() -> Duration {
    Duration::from_secs(3600)
}
fn default_prune_grace() -> Duration {
    Duration::from_secs(86_400)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}
fn default_lost_after() -> Duration {
    Duration::from_secs(30)
}
fn default_wal_lag() -> Duration {
    Duration::from_secs(600)
}
fn default_attempts() -> u32 {
    3
}
fn default_retry() -> Duration {
    Duration::from_secs(30)
}
fn default_history() -> Duration {
    Duration::from_secs(7 * 86_400)
}

impl CoordinatorConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_owned(), cause })?;
        let invalid = |reason: String| ConfigError::Invalid { path: path.to_owned(), reason };
        let mut config: CoordinatorConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        // Relative paths are taken from the file's directory, not the working one.
        let base = path.parent().unwrap_or(Path::new("")).to_owned();
        for p in
            [&mut config.state_dir, &mut config.policy, &mut config.tls.ca, &mut config.tls.cert, &mut config.tls.key]
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.role_map().map_err(|e| invalid(e.0))?;
        if config.heartbeat.is_zero() || config.lost_after <= config.heartbeat {
            return Err(invalid("lost_after must be longer than heartbeat".into()));
        }
        if config.prune_grace < lifeboat_common::repo::ops::prune::SAFE_GRACE && !config.unsafe_prune_grace {
            return Err(invalid(
                "prune_grace is shorter than 1h: a backup that died without its marker could lose data (unsafe_prune_grace = true to allow it)"
                    .into(),
            ));
        }
        if let Some(etcd) = &config.etcd
            && (etcd.endpoints.is_empty() || etcd.ttl < Duration::from_secs(1))
        {
            return Err(invalid("etcd needs endpoints and a ttl of at least 1s".into()));
        }
        Ok(config)
    }

    /// The URL agents and clients use.
    pub fn url(&self) -> String {
        self.url.clone().unwrap_or_else(|| format!("https://{}", self.listen))
    }

    /// The roles, checked.
    pub fn role_map(&self) -> Result<RoleMap, Invalid> {
        let pairs = self
            .roles
            .iter()
            .map(|(login, role)| {
                role.parse::<Role>().map(|r| (login.clone(), r)).map_err(|e| Invalid(format!("roles.{login}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RoleMap::new(pairs))
    }
}

/// The group of the schedules drills run by (`drills.NAME`).
pub const DRILL_GROUP: &str = "drills";

/// A drill's place in its agent's queue: after critical backups, before
/// the rest (it takes the agent's time but proves the backups).
pub const DRILL_PRIORITY: u8 = 2;

/// The policy in force.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its file.
    pub path: PathBuf,
    /// Its schedules.
    pub schedules: Vec<Schedule>,
    /// What is watched (the `monitoring` block).
    pub monitoring: Vec<MonitoredJob>,
    /// Where incidents go (the `alerting` block).
    pub alerting: Alerting,
    /// The `storage_lifecycle` block, if the policy has one (tiers by age).
    pub lifecycle: Option<Lifecycle>,
    /// What storage costs (the `storage_prices` block over the list prices).
    pub prices: Prices,
    /// The failover groups (the `failover` block).
    pub failover: Vec<FailoverGroup>,
    /// The recovery objectives and the drills' calendar.
    pub drills: DrillPolicy,
    /// Each scheduled drill as a schedule `drills.NAME` (its agent runs it).
    pub drill_schedules: Vec<Schedule>,
    /// The document as written: a drill's agent reads it with the same code
    /// as `lifeboat drill run --policy`.
    pub text: String,
}

impl Policy {
    /// Reads the policy file; a malformed one is refused with the line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.to_owned(), cause })?;
        let invalid = |e: PolicyError| ConfigError::Invalid { path: path.to_owned(), reason: e.to_string() };
        let schedules = backup_schedules_from_yaml(&text).map_err(invalid)?;
        let monitoring = monitoring_from_yaml(&text, &schedules).map_err(invalid)?;
        let alerting = alerting_from_yaml(&text, &monitoring).map_err(invalid)?;
        let lifecycle = match storage_lifecycle_from_yaml(&text) {
            Ok(l) => Some(l),
            Err(PolicyError::MissingBlock(_)) => None,
            Err(e) => return Err(invalid(e)),
        };
        let prices = prices_from_yaml(&text).map_err(invalid)?;
        let failover = failover_from_yaml(&text).map_err(invalid)?;
        let drills = drills_from_yaml(&text).map_err(invalid)?;
        if schedules.iter().any(|s| s.group == DRILL_GROUP) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                reason: format!("backup_schedules.{DRILL_GROUP}: the group's name is the drills' own; use another"),
            });
        }
        let drill_schedules = drills
            .drills
            .iter()
            .filter_map(|d| {
                Some(Schedule {
                    group: DRILL_GROUP.to_owned(),
                    name: d.name.clone(),
                    trigger: Trigger::Cron(d.schedule.clone()?),
                    retention_days: None,
                    priority: DRILL_PRIORITY,
                })
            })
            .collect();
        Ok(Policy {
            path: path.to_owned(),
            schedules,
            monitoring,
            alerting,
            lifecycle,
            prices,
            failover,
            drills,
            drill_schedules,
            text,
        })
    }

    /// The schedule of id `group.name`.
    pub fn schedule(&self, id: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.id() == id)
    }
}
