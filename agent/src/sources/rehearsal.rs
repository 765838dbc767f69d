//! What a restore drill asks of a source kind: a plan (the snapshot it
//! would restore, and the checklist of what recovery reads beyond it), then
//! the recovery itself into a scratch directory, served on a free port,
//! checked, and stopped. The drill's own sequence (checklist, timing,
//! report, clean-up) is `crate::drill`.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_common::policy::drills::DrillChecks;
use lifeboat_common::repo::format::drill::Check;
use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::{Repository, SnapshotId};

use super::{RecoveryPoint, SourceError, newest_of};
use lifeboat_common::repo::ops::retention::source_tag;

/// What a drill of one source would restore, found before anything is.
#[derive(Debug, Clone)]
pub struct DrillPlan {
    /// The snapshot (base backup) to restore.
    pub snapshot: SnapshotId,
    /// Its manifest.
    pub manifest: Snapshot,
    /// The newest point the repository holds for it (a snapshot's time;
    /// for PostgreSQL, when the newest WAL it can replay was stored).
    pub newest_point: DateTime<Utc>,
    /// What the kind checked of the objects recovery reads beyond the
    /// snapshot (WAL present, unbroken and authentic).
    pub checks: Vec<Check>,
    /// Bytes the restore writes.
    pub restore_bytes: u64,
}

impl DrillPlan {
    /// The plan of a kind whose snapshot is all a recovery reads: the
    /// newest of `kind` (the manifest's `source`) that `request.host` made
    /// of the source, taken at or before a target time.
    pub fn newest_snapshot(request: &PlanRequest<'_>, kind: &str) -> Result<DrillPlan, SourceError> {
        let tag = source_tag(request.source);
        let fits = |s: &Snapshot| {
            s.source == kind
                && match request.point {
                    RecoveryPoint::Time(t) => s.time <= t,
                    _ => true,
                }
        };
        let (id, manifest) = newest_of(request.snapshots.iter().filter(|(_, s)| fits(s)), request.host, &tag)
            .ok_or_else(|| {
                SourceError::Request(format!(
                    "{}/{} has no {kind} snapshot in the repository that fits the target",
                    request.host, request.source
                ))
            })?;
        Ok(DrillPlan {
            snapshot: *id,
            manifest: manifest.clone(),
            newest_point: manifest.time,
            checks: Vec::new(),
            restore_bytes: manifest.summary.bytes_total,
        })
    }
}

/// What a failover drill found of a standby before cloning it.
#[derive(Debug, Clone)]
pub struct ClonePlan {
    /// Where it stands, in one line (replaying at, received up to).
    pub standing: String,
    /// The newest point it holds (none: unknown).
    pub newest_point: Option<DateTime<Utc>>,
    /// What that point is, for messages ("the standby's last replayed commit").
    pub newest_is: &'static str,
    /// What the kind checked of it (it answers, it is a standby).
    pub checks: Vec<Check>,
    /// Bytes the clone writes.
    pub clone_bytes: u64,
    /// Production paths beyond the source's own (its tablespaces).
    pub paths: Vec<PathBuf>,
}

/// The phase of a failover drill's copy of a standby: the drill's own
/// staging, which a real failover (the standby promoted where it runs)
/// does not have, so it is not counted in the RTO.
pub const CLONE_PHASE: &str = "clone";

/// A cloned Redis replica's load into a server of the drill's own: staging
/// too (a real failover promotes the replica where it runs, at once).
pub const LOAD_PHASE: &str = "load";

/// Whether a phase is the drill's own staging, left out of the RTO.
pub fn is_staging(phase: &str) -> bool {
    phase == CLONE_PHASE || phase == LOAD_PHASE
}

/// What a drill asks a kind's planning for.
#[derive(Debug, Clone)]
pub struct PlanRequest<'a> {
    /// The repository.
    pub repo: &'a Repository,
    /// Its snapshots, oldest first, listed once for the whole drill.
    pub snapshots: &'a [(SnapshotId, Snapshot)],
    /// The host whose backups are restored.
    pub host: &'a str,
    /// The source's id on it.
    pub source: &'a str,
    /// Where recovery stops.
    pub point: RecoveryPoint,
    /// Objects read whole beyond the snapshot's packs (WAL segments).
    pub sample: u32,
    /// The seed of random choices.
    pub seed: u64,
}

/// Where and how a drill brings one source back.
#[derive(Debug, Clone)]
pub struct Scratch {
    /// An empty directory of its own.
    pub dir: PathBuf,
    /// A free port, no production server's, for what serves the copy.
    pub port: u16,
    /// Where recovery stops.
    pub point: RecoveryPoint,
    /// What is checked.
    pub checks: DrillChecks,
    /// The seed of random choices (the files sampled).
    pub seed: u64,
    /// The `lifeboat-agent` binary a restored server fetches WAL with.
    pub agent_bin: Option<PathBuf>,
    /// How long bringing it up may take.
    pub timeout: Duration,
    /// The copy is kept after the drill: stop its server cleanly (else
    /// it is thrown away, and stopped at once).
    pub keep: bool,
}

/// A source brought back by a drill, running until stopped.
#[async_trait::async_trait]
pub trait Recovered: Send + Sync {
    /// What was restored and reached, in one line.
    fn summary(&self) -> String;
    /// Timed parts of bringing it up (`restore` and `replay`, or
    /// [`CLONE_PHASE`] and `promote` or [`LOAD_PHASE`]).
    fn phases(&self) -> Vec<(&'static str, Duration)>;
    /// The newest point recovered (the last replayed commit).
    fn recovered_point(&self) -> Option<DateTime<Utc>>;
    /// What smoke commands find in their environment (the server's address).
    fn env(&self) -> Vec<(String, String)>;
    /// The kind's own checks (connection, pg_amcheck, probes, key counts,
    /// content ids).
    async fn check(&self) -> Vec<Check>;
    /// Stops what serves it.
    async fn stop(&self) -> Result<(), String>;
}
