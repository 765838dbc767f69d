//! The kinds of source an agent backs up, each in a directory of its own
//! behind one trait, [`Source`]: what it is (`describe`), a backup, a
//! restore, the work it keeps doing while the daemon runs (WAL streaming,
//! watching for changes) and the state it reports in heartbeats.
//!
//! A kind owns its section of the agent's configuration: the `[[source]]`
//! tables are a tagged enum on `kind`, each variant the kind's own struct,
//! so a field of another kind (or a misspelt one) is an error naming the
//! line. The daemon and the CLI go through the trait only; the registry
//! below is the one place that lists the kinds.
//!
//! Adding a kind is one new directory `sources/<kind>/` (its config
//! section implementing [`SourceSection`], its source implementing
//! [`Source`]) plus one line in the `registry!` call at the end of this
//! file (and the kind's value in `proto`'s `SourceKind`, for the wire). A
//! kind that drills can recover implements [`Source::drill_plan`] and
//! [`Source::drill_recover`] (see [`rehearsal`]).

pub mod files;
pub mod owner;
pub mod postgres;
pub mod redis;
pub mod rehearsal;
pub mod tenure;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_common::policy::optional_human_duration;
use lifeboat_common::repo::engine::open::RepoSpec;
use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::ops::retention::source_tag;
use lifeboat_common::repo::{RepoError, Repository, SnapshotId};
use lifeboat_proto::v1;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::progress::Progress;
use rehearsal::{ClonePlan, DrillPlan, PlanRequest, Recovered, Scratch};

/// What every `[[source]]` table has, whatever its kind.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// Unique on this host.
    pub id: String,
    /// The policy's schedules (`group.name`) that apply to it.
    #[serde(default)]
    pub schedules: Vec<String>,
    /// Its recovery point objective.
    #[serde(default, deserialize_with = "optional_human_duration")]
    pub rpo: Option<Duration>,
}

impl Common {
    /// The tag its snapshots carry.
    pub fn tag(&self) -> String {
        source_tag(&self.id)
    }

    /// The source on the wire, of `kind` with `paths`.
    pub fn to_proto(&self, kind: v1::SourceKind, paths: Vec<String>) -> v1::Source {
        v1::Source {
            id: self.id.clone(),
            kind: kind.into(),
            paths,
            schedules: self.schedules.clone(),
            version: String::new(),
            rpo_seconds: self.rpo.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        }
    }
}

/// A kind's section of the agent's configuration.
pub trait SourceSection {
    /// The fields every kind has.
    fn common(&self) -> &Common;
    /// What is wrong with it, if anything (beyond what parsing checks).
    fn check(&self) -> Result<(), String>;
    /// Makes its relative paths relative to `base` (the file's directory).
    fn resolve(&mut self, base: &Path);
    /// The source it configures.
    fn build(&self) -> Arc<dyn Source>;
}

/// Where a backup goes and what it is called.
pub struct BackupContext {
    /// The repository.
    pub repo: Repository,
    /// The host name to record.
    pub hostname: String,
    /// Tags to record (the source's own is added by the daemon).
    pub tags: Vec<String>,
    /// Counters to advance.
    pub progress: Arc<Progress>,
}

/// What a backup made.
#[derive(Debug)]
pub struct BackupDone {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// Its manifest.
    pub snapshot: Snapshot,
    /// One line saying what was saved.
    pub headline: String,
    /// Lines to show after it (notes, checks made).
    pub remarks: Vec<String>,
    /// What went wrong on the way without stopping the backup.
    pub warnings: Vec<String>,
    /// The warnings mean entries are missing: the snapshot cannot stand
    /// for the source as it was (a scheduled job fails on it).
    pub incomplete: bool,
}

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RecoveryPoint {
    /// The newest there is.
    #[default]
    Latest,
    /// A point in time (UTC).
    Time(DateTime<Utc>),
    /// A WAL position, `X/Y`.
    Lsn(String),
}

/// A recovery target time that cannot be read, saying how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadTime(String);

/// A recovery target time as PostgreSQL prints and reads timestamps with a
/// zone: `2026-12-01 17:15:36.808411+00` (what `psql` shows), the same with
/// `T`, offsets as `+00`, `+0530`, `+05:30` or `Z`, seconds with or without
/// a fraction. A time without a zone is refused: which one was meant
/// cannot be guessed, and guessing wrong recovers to the wrong hour.
pub fn parse_recovery_time(text: &str) -> Result<DateTime<Utc>, BadTime> {
    let mut s = text.trim().to_owned();
    if s.len() > 10 && s.is_char_boundary(10) && s.is_char_boundary(11) && matches!(&s[10..11], "T" | "t") {
        s.replace_range(10..11, " ");
    }
    for utc in ["Z", "z", " UTC", " utc"] {
        if let Some(stripped) = s.strip_suffix(utc) {
            s = format!("{stripped}+00");
            break;
        }
    }
    if let Ok(t) = DateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Ok(t.with_timezone(&Utc));
    }
    if chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f").is_ok() {
        return Err(BadTime(format!("{text:?} has no time zone: add one (for example {text}+00, or {text}Z for UTC)")));
    }
    Err(BadTime(format!(
        "{text:?} is not a time: write it as PostgreSQL prints timestamps, e.g. 2026-12-01 17:15:36+00 or 2026-12-01T17:15:36Z"
    )))
}

/// What to restore, and where.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// Where to restore to.
    pub target: PathBuf,
    /// A snapshot id or prefix; none: the newest that fits.
    pub snapshot: Option<String>,
    /// Only this absolute path of the snapshot (where the kind has paths).
    pub path: Option<String>,
    /// Where recovery stops (where the kind recovers).
    pub point: RecoveryPoint,
    /// Keep what is in place and right; write only what differs.
    pub delta: bool,
}

/// What a restore reads from and reports to.
pub struct RestoreContext {
    /// The repository.
    pub repo: Repository,
    /// How it was opened (the restored server fetches WAL from it, and a
    /// restore never deletes the repository's own files).
    pub spec: RepoSpec,
    /// This host's name: with no snapshot named, the newest this host made.
    pub hostname: String,
    /// Counters to advance.
    pub progress: Arc<Progress>,
}

/// What a restore did.
#[derive(Debug)]
pub struct RestoreDone {
    /// The snapshot restored.
    pub snapshot: SnapshotId,
    /// One line saying what was restored.
    pub headline: String,
    /// Entries restored with a problem worth knowing.
    pub warnings: Vec<String>,
    /// Entries that could not be restored.
    pub failed: Vec<String>,
}

/// The state a source reports beside its backups.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    /// What its ongoing work last failed with, while it is failing.
    pub error: Option<String>,
    /// WAL streaming, for a source that streams.
    pub wal: Option<v1::WalLag>,
    /// WAL segments this process stored whole, for a source that streams.
    pub wal_segments_stored: u64,
    /// Its server, for a member of a failover group.
    pub member: Option<v1::MemberState>,
}

/// The leader's order for a failover member, and the lease it carries.
#[derive(Debug, Clone)]
pub struct Order {
    /// The role, epoch and what acting on them needs.
    pub order: v1::RoleOrder,
    /// When the heartbeat this order answers was sent: a primary may write
    /// until `fence_after` past it (none: the order renews no lease).
    pub confirmed_at: Option<std::time::Instant>,
}

/// What a source's ongoing work may tell the daemon.
pub trait Events: Send + Sync {
    /// The source changed (for an on-change schedule).
    fn changed(&self, source_id: &str);
}

/// What a source's ongoing work runs with.
#[derive(Clone)]
pub struct Ongoing {
    /// The repository.
    pub repo: Repository,
    /// How it was opened (a standby built from it fetches WAL with it).
    pub spec: RepoSpec,
    /// This agent's host name (a failover member is `HOST/SOURCE`).
    pub host: String,
    /// Where to report.
    pub events: Arc<dyn Events>,
    /// Set when the daemon stops: each task stores what it holds and ends.
    pub shutdown: watch::Receiver<bool>,
}

/// A failure of a source's backup or restore.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The kind's own failure.
    #[error(transparent)]
    Kind(Box<dyn std::error::Error + Send + Sync>),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Request(String),
}

impl SourceError {
    /// A kind's own error.
    pub fn kind(e: impl std::error::Error + Send + Sync + 'static) -> SourceError {
        SourceError::Kind(Box::new(e))
    }
}

/// One thing an agent backs up.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// Its id, unique on this host.
    fn id(&self) -> &str;

    /// What it is, on the wire (the hello).
    fn describe(&self) -> v1::Source;

    /// Backs it up.
    async fn backup(&self, ctx: BackupContext) -> Result<BackupDone, SourceError>;

    /// Restores it.
    async fn restore(&self, ctx: RestoreContext, request: RestoreRequest) -> Result<RestoreDone, SourceError>;

    /// Starts what it keeps doing while the daemon runs, whether or not a
    /// coordinator is reachable; each task ends when `ongoing.shutdown` is set.
    fn start(&self, ongoing: Ongoing) -> Vec<JoinHandle<()>> {
        let _ = ongoing;
        Vec::new()
    }

    /// Its state for the next heartbeat.
    fn health(&self) -> SourceHealth {
        SourceHealth::default()
    }

    /// Takes the leader's order for it as a failover member; an error says
    /// why this kind cannot be one.
    fn order(&self, order: Order) -> Result<(), String> {
        let _ = order;
        Err(format!("source {} is of a kind that cannot be a failover member", self.id()))
    }

    /// The ports its production servers listen on (a drill never takes one).
    fn ports(&self) -> Vec<u16> {
        Vec::new()
    }

    /// Plans a drill's recovery of it: the snapshot to restore, and the
    /// kind's checklist of what recovery reads beyond it.
    async fn drill_plan(&self, request: PlanRequest<'_>) -> Result<DrillPlan, SourceError> {
        let _ = request;
        Err(SourceError::Request(format!("source {} is of a kind no drill can recover", self.id())))
    }

    /// Restores `plan` into `scratch.dir` and brings it up for checks.
    async fn drill_recover(
        &self,
        ctx: RestoreContext,
        plan: &DrillPlan,
        scratch: Scratch,
    ) -> Result<Box<dyn Recovered>, SourceError> {
        let _ = (ctx, plan, scratch);
        Err(SourceError::Request(format!("source {} is of a kind no drill can recover", self.id())))
    }

    /// Plans a failover drill of it, a standby on this host: where it
    /// stands, and the kind's checklist before it is cloned.
    async fn drill_standby(&self) -> Result<ClonePlan, SourceError> {
        Err(SourceError::Request(format!("source {} is of a kind no failover drill can clone", self.id())))
    }

    /// Clones it into `scratch.dir`, catches the clone up from the
    /// repository and promotes it, cut off from production.
    async fn drill_clone(
        &self,
        ctx: RestoreContext,
        plan: &ClonePlan,
        scratch: Scratch,
    ) -> Result<Box<dyn Recovered>, SourceError> {
        let _ = (ctx, plan, scratch);
        Err(SourceError::Request(format!("source {} is of a kind no failover drill can clone", self.id())))
    }
}

/// The newest of `snapshots` that `hostname` made of the source tagged `tag`.
pub fn newest_of<'a>(
    snapshots: impl Iterator<Item = &'a (SnapshotId, Snapshot)>,
    hostname: &str,
    tag: &str,
) -> Option<&'a (SnapshotId, Snapshot)> {
    snapshots.filter(|(_, s)| s.hostname == hostname && s.tags.iter().any(|t| t == tag)).max_by_key(|(_, s)| s.time)
}

/// The snapshot a restore starts from: the one named, or the newest this
/// host made of the source.
pub async fn pick_snapshot(
    repo: &Repository,
    named: Option<&str>,
    hostname: &str,
    common: &Common,
) -> Result<(SnapshotId, Snapshot), SourceError> {
    if let Some(named) = named {
        return Ok(repo.find_snapshot(named).await?);
    }
    let snapshots = repo.snapshots().await?;
    newest_of(snapshots.iter(), hostname, &common.tag())
        .cloned()
        .ok_or_else(|| SourceError::Request(format!("source {} has no snapshot yet", common.id)))
}

/// Lists the kinds: the config enum and the dispatch to each kind's section.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident => $section:ty, $source:ty,)*) => {
        /// One `[[source]]` table: `kind` says which kind's fields it has.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "kind", rename_all = "lowercase")]
        pub enum SourceConfig {
            $($(#[$doc])* $variant($section),)*
        }

        impl SourceConfig {
            /// Its kind's section.
            pub fn section(&self) -> &dyn SourceSection {
                match self {
                    $(SourceConfig::$variant(s) => s,)*
                }
            }

            /// Its kind's section, to change.
            pub fn section_mut(&mut self) -> &mut dyn SourceSection {
                match self {
                    $(SourceConfig::$variant(s) => s,)*
                }
            }
        }

        /// A source of the kind a snapshot's manifest names (`files`,
        /// `postgres`, `redis`), with default settings: a drill restores
        /// backups other hosts made, of sources this agent has no
        /// configuration for.
        pub fn of_kind(kind: &str) -> Option<Arc<dyn Source>> {
            $(if kind.eq_ignore_ascii_case(stringify!($variant)) {
                return Some(Arc::new(<$source>::default()));
            })*
            None
        }
    };
}

registry! {
    /// File trees.
    Files => files::FilesConfig, files::FilesSource,
    /// A PostgreSQL cluster.
    Postgres => postgres::PostgresConfig, postgres::PostgresSource,
    /// A Redis server, or a set under Sentinel.
    Redis => redis::RedisConfig, redis::RedisSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_times_as_postgres_prints_them() {
        let at = |s: &str| parse_recovery_time(s).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        assert_eq!(at("2026-12-01 17:15:36.808411+00"), "2026-12-01T17:15:36.808411Z");
        assert_eq!(at("2026-12-01T17:15:36.808411+00:00"), "2026-12-01T17:15:36.808411Z");
        assert_eq!(at("2026-12-01 17:15:36Z"), "2026-12-01T17:15:36.000000Z");
        assert_eq!(at("2026-12-01 17:15:36 UTC"), "2026-12-01T17:15:36.000000Z");
        assert_eq!(at("2026-12-01 19:15:36+02"), "2026-12-01T17:15:36.000000Z");
        assert_eq!(at("2026-12-01 22:45:36.5+0530"), "2026-12-01T17:15:36.500000Z");
        assert_eq!(at(" 2026-12-01t17:15:36-01:00 "), "2026-12-01T18:15:36.000000Z");
        let err = parse_recovery_time("2026-12-01 17:15:36").unwrap_err().to_string();
        assert!(err.contains("no time zone") && err.contains("+00"), "{err}");
        for bad in ["", "yesterday", "2026-13-01 00:00:00+00", "2026-12-01", "17:15:36+00"] {
            assert!(parse_recovery_time(bad).is_err(), "{bad:?} accepted");
        }
    }
}
