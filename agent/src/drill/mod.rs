//! Restore drills: one run of a drill of the policy, on this host, from
//! the simulated disaster to the report.
//!
//! 1. *fetch*: each source's snapshot chosen (the kind's plan); a
//!    failover drill instead asks each standby of this host where it stands;
//! 2. *checklist*, for every source before anything is restored: what the
//!    restore reads present and authentic (trees, packs present at their
//!    size, a sample read whole; WAL unbroken), the newest recovery point
//!    within the RPO, room in the scratch directory;
//! 3. *restore* and *replay*: each source brought back into a directory of
//!    its own, served on a free port (priority 1 first; one priority's
//!    sources at once); a failover drill's *clone* of each standby, caught
//!    up from the repository and *promote*d there instead;
//! 4. *checks*: each kind's (connection, `pg_amcheck`, SQL probes, key
//!    counts, content ids), then the smoke commands with every recovered
//!    server's address in their environment;
//! 5. *clean-up*, always: servers stopped, the directory removed unless
//!    kept. A marker written before anything is made lets a later start
//!    remove what a crash left.
//!
//! RTO runs from the start to the last check passing, less a failover
//! drill's clone (a real failover promotes the standby where it runs); RPO
//! is the age of the newest point recovered, at the start (or at the
//! target time, for a point-in-time drill: the disaster it simulates
//! happened then).

pub mod scratch;
mod smoke;
mod verification;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_common::policy::drills::{Drill, DrillKind, DrillPolicy, FULL_SYSTEM, Objective};
use lifeboat_common::policy::failover::Member;
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::engine::open::RepoSpec;
use lifeboat_common::repo::format::drill::{Check, DrillReport, Phase, SourceRun, Verdict};
use lifeboat_common::repo::ops::drill_reports::save_drill_report;
use lifeboat_common::repo::ops::retention::source_tag;
use lifeboat_common::repo::ops::verify::check_snapshot;

use crate::progress::Progress;
use crate::sources::rehearsal::{ClonePlan, DrillPlan, PlanRequest, Recovered, Scratch, is_staging};
use crate::sources::{RecoveryPoint, RestoreContext, Source, of_kind};
use scratch::{Marker, Protected};

/// What a drill runs with.
#[derive(Clone)]
pub struct DrillContext {
    /// The repository.
    pub repo: Repository,
    /// How it was opened (a restored server fetches WAL with it).
    pub spec: RepoSpec,
    /// This host's name.
    pub host: String,
    /// This host's own sources: production, never touched.
    pub local: Vec<Arc<dyn Source>>,
    /// The objectives.
    pub policy: DrillPolicy,
    /// Each source's priority (the highest of its schedules'), where known.
    pub priorities: BTreeMap<Member, u8>,
    /// Each schedule's retention in days (`group.name`), for verification.
    pub retention_days: HashMap<String, u32>,
    /// The `lifeboat-agent` binary a restored server fetches WAL with.
    pub agent_bin: Option<PathBuf>,
    /// The agent job it runs as, if it does.
    pub job: Option<String>,
    /// Counters to advance.
    pub progress: Arc<Progress>,
}

/// Where a source of no known priority goes in a full-system drill.
const UNKNOWN_PRIORITY: u8 = 3;

/// One source as the drill goes: planned, then recovered.
struct Step {
    member: Member,
    source: Arc<dyn Source>,
    priority: u8,
    plan: Option<Planned>,
    recovered: Option<Box<dyn Recovered>>,
    run: SourceRun,
}

/// How a drill brings one source back.
#[derive(Clone)]
enum Planned {
    /// A snapshot restored from the repository.
    Restore(Box<DrillPlan>),
    /// A standby of this host cloned and promoted (a failover drill).
    Clone(ClonePlan),
}

impl Planned {
    /// The kind's own checklist.
    fn checks(&self) -> &[Check] {
        match self {
            Planned::Restore(p) => &p.checks,
            Planned::Clone(p) => &p.checks,
        }
    }

    /// The newest point it can bring back, and what that point is.
    fn newest_point(&self) -> (Option<DateTime<Utc>>, &'static str) {
        match self {
            Planned::Restore(p) => (Some(p.newest_point), "the newest point the repository holds"),
            Planned::Clone(p) => (p.newest_point, p.newest_is),
        }
    }

    /// Bytes bringing it back writes.
    fn bytes(&self) -> u64 {
        match self {
            Planned::Restore(p) => p.restore_bytes,
            Planned::Clone(p) => p.clone_bytes,
        }
    }
}

/// The drill's running record, filled as it goes.
struct Record {
    started: DateTime<Utc>,
    clock: Instant,
    /// Time spent staging what a real recovery would not have to (a
    /// failover drill's clone): not counted in the RTO.
    staged: Duration,
    /// When the disaster the drill simulates happened.
    reference: DateTime<Utc>,
    seed: u64,
    phases: Vec<Phase>,
    checks: Vec<Check>,
    error: Option<String>,
    /// What a verification drill found of each source.
    verified: Vec<SourceRun>,
}

impl Record {
    fn phase(&mut self, name: &str, source: Option<&Member>, took: Duration) {
        self.phases.push(Phase {
            name: name.to_owned(),
            source: source.map(Member::to_string),
            seconds: took.as_secs_f64(),
        });
    }

    fn failed(&self) -> bool {
        self.error.is_some() || self.checks.iter().any(|c| !c.ok())
    }
}

/// Each schedule's retention in days, from the policy's `backup_schedules`
/// (none when it has no such block).
pub fn retention_days(policy_text: &str) -> HashMap<String, u32> {
    let schedules = lifeboat_common::policy::backup_schedules_from_yaml(policy_text).unwrap_or_default();
    schedules.iter().filter_map(|s| Some((s.id(), s.retention_days?))).collect()
}

/// The id of a run of `name` started at `started`: sorts by start, and
/// `tie` (random) tells apart two runs started in the same second.
pub fn run_id(name: &str, started: DateTime<Utc>, tie: u64) -> String {
    format!("{}-{name}-{:04x}", started.format("%Y%m%dT%H%M%SZ"), tie & 0xffff)
}

/// Runs `drill` and stores its report in the repository (`drills/<id>`).
/// A drill that fails is a report that says so; one whose report could
/// not be stored fails for it (its evidence is not kept).
#[tracing::instrument(skip_all, fields(drill = %drill.name))]
pub async fn run_drill(ctx: &DrillContext, drill: &Drill) -> DrillReport {
    let started = Utc::now();
    let mut seed_bytes = [0u8; 8];
    if let Err(e) = lifeboat_common::crypto::random_fill(&mut seed_bytes) {
        tracing::warn!(error = %e, "no random seed: choices fall back on the clock");
        seed_bytes = started.timestamp_nanos_opt().unwrap_or_default().to_le_bytes();
    }
    let mut record = Record {
        started,
        clock: Instant::now(),
        staged: Duration::ZERO,
        reference: drill.target.time(started).unwrap_or(started),
        seed: u64::from_le_bytes(seed_bytes),
        phases: Vec::new(),
        checks: Vec::new(),
        error: None,
        verified: Vec::new(),
    };
    let id = run_id(&drill.name, started, record.seed);
    let dir = drill.scratch.join(&id);
    let marker = Marker {
        id: id.clone(),
        drill: drill.name.clone(),
        kind: drill.kind.as_str().to_owned(),
        target: drill.target.to_string(),
        started,
        dir: dir.clone(),
        pid: std::process::id(),
        pid_start: scratch::process_start(std::process::id()),
        reported: false,
        keep: drill.keep,
        job: ctx.job.clone(),
    };
    tracing::info!(id, scratch = %dir.display(), "drill starts");

    let mut steps = Vec::new();
    let within =
        tokio::time::timeout(drill.timeout, rehearse(ctx, drill, &dir, &marker, &mut record, &mut steps)).await;
    if within.is_err() {
        record.error =
            Some(format!("the drill did not end within its timeout, {}", humantime::format_duration(drill.timeout)));
    }
    let last_check = record.clock.elapsed().saturating_sub(record.staged);

    // Clean-up, whatever happened.
    let cleaning = Instant::now();
    for step in &steps {
        if let Some(r) = &step.recovered
            && let Err(e) = r.stop().await
        {
            tracing::warn!(source = %step.member, error = e, "stopping the drill's server");
        }
    }
    if marker_written(&marker)
        && let Err(e) = tokio::task::spawn_blocking({
            let marker = marker.clone();
            move || scratch::clean(&marker)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    {
        record.checks.push(Check::failed("clean-up", e));
        // What is left is removed at the next start; this run reports itself.
        if let Err(e) = (Marker { reported: true, ..marker.clone() }).write() {
            tracing::warn!(drill = marker.id, error = %e, "marking the drill reported");
        }
    }
    record.phase("cleanup", None, cleaning.elapsed());

    let mut report = finish(ctx, drill, id, dir, record, steps, last_check);
    if let Err(e) = save_drill_report(&ctx.repo, &report).await {
        report.checks.push(Check::failed("report stored", format!("drills/{}: {e}", report.id)));
        report.passed = false;
        report.objectives_met = false;
        report.rto_seconds = None;
    }
    tracing::info!("{}", report.headline());
    report
}

/// Removes what drills cut short (their process killed or stopped, or the
/// job cancelled) left behind, among those `which` picks: their servers
/// stopped, their directories removed; each run that had not reported is
/// reported failed in the repository. Returns those reports, and the job
/// each ran as.
pub async fn clean_up_cut_short(
    repo: &Repository,
    host: &str,
    which: impl Fn(&Marker) -> bool + Send + 'static,
) -> Vec<(DrillReport, Option<String>)> {
    let leftovers = tokio::task::spawn_blocking(move || scratch::clean_leftovers(which)).await.unwrap_or_default();
    let mut reports = Vec::new();
    for left in leftovers.into_iter().filter(|l| !l.marker.reported) {
        let m = &left.marker;
        let cleaned = match &left.error {
            None => "its servers were stopped and its scratch directory removed".to_owned(),
            Some(e) => format!("what it left could not all be removed: {e}"),
        };
        let report = DrillReport {
            id: m.id.clone(),
            drill: m.drill.clone(),
            kind: m.kind.clone(),
            agent: host.to_owned(),
            target: m.target.clone(),
            started: m.started,
            finished: Utc::now(),
            passed: false,
            objectives_met: false,
            rto_seconds: None,
            rpo_seconds: None,
            verdict: None,
            phases: Vec::new(),
            checks: vec![Check::of("clean-up", left.error.is_none(), cleaned)],
            sources: Vec::new(),
            scratch: m.dir.display().to_string(),
            kept: false,
            error: Some("cut short: the process running the drill stopped before it ended".into()),
            seed: 0,
        };
        if let Err(e) = save_drill_report(repo, &report).await {
            // Already there: the run reported before it was cut short.
            tracing::warn!(drill = report.id, error = %e, "storing the report of a drill cut short");
            continue;
        }
        reports.push((report, m.job.clone()));
    }
    reports
}

/// Whether the marker was written (the drill got as far as its directory).
fn marker_written(marker: &Marker) -> bool {
    scratch::markers_dir().join(format!("{}.json", marker.id)).exists()
}

/// Everything up to the last check; returns early (with `record.error` or
/// a failed check) where the drill cannot go on.
async fn rehearse(
    ctx: &DrillContext,
    drill: &Drill,
    dir: &std::path::Path,
    marker: &Marker,
    record: &mut Record,
    steps: &mut Vec<Step>,
) {
    if drill.kind == DrillKind::Verification {
        if let Some(refused) = scratch::overlap(&drill.scratch, &production(ctx)) {
            record.checks.push(Check::failed("scratch apart from production", refused));
            return;
        }
        if let Err(e) = marker.write().and_then(|()| make_dir(dir)) {
            record.error = Some(format!("making the scratch directory {}: {e}", dir.display()));
            return;
        }
        record.verified = verification::verify(ctx, drill, dir, record).await;
        return;
    }
    // Fetch: which snapshot of each source, or where its standby stands.
    let fetching = Instant::now();
    let point = match drill.target.time(record.started) {
        Some(t) => RecoveryPoint::Time(t),
        None => RecoveryPoint::Latest,
    };
    if drill.kind == DrillKind::Failover {
        plan_clones(ctx, drill, record, steps).await;
    } else if !plan_restores(ctx, drill, &point, record, steps).await {
        return;
    }
    record.phase("fetch", None, fetching.elapsed());
    checklist(ctx, drill, record, steps).await;
    if record.failed() {
        return;
    }
    recover(ctx, drill, dir, marker, &point, record, steps).await;
}

/// A failover drill's plan: each standby it names, this host's own, asked
/// where it stands.
async fn plan_clones(ctx: &DrillContext, drill: &Drill, record: &mut Record, steps: &mut Vec<Step>) {
    for member in &drill.sources {
        let Some(source) = local_source(ctx, member) else {
            record.checks.push(
                Check::failed(
                    "standby found",
                    format!(
                        "{member} is not a source of this host, {}: a failover drill clones a standby on its own agent",
                        ctx.host
                    ),
                )
                .about(&member.to_string()),
            );
            continue;
        };
        let priority = ctx.priorities.get(member).copied().unwrap_or(UNKNOWN_PRIORITY);
        let mut run = SourceRun::new(member.to_string(), source.describe().kind().name().to_owned());
        let plan = match source.drill_standby().await {
            Ok(plan) => {
                run.summary = plan.standing.clone();
                Some(Planned::Clone(plan))
            }
            Err(e) => {
                record.checks.push(Check::failed("standby found", e.to_string()).about(&member.to_string()));
                None
            }
        };
        steps.push(Step { member: member.clone(), source, priority, plan, recovered: None, run });
    }
}

/// `member` as one of this host's own sources, if it is one.
fn local_source(ctx: &DrillContext, member: &Member) -> Option<Arc<dyn Source>> {
    (member.host == ctx.host).then(|| ctx.local.iter().find(|s| s.id() == member.source).cloned()).flatten()
}

/// A restoring drill's plan: the snapshot of each source that fits the
/// target, and the kind's checklist of it. False when the repository
/// could not be read.
async fn plan_restores(
    ctx: &DrillContext,
    drill: &Drill,
    point: &RecoveryPoint,
    record: &mut Record,
    steps: &mut Vec<Step>,
) -> bool {
    let snapshots = match ctx.repo.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            record.error = Some(format!("listing the repository's snapshots: {e}"));
            return false;
        }
    };
    for member in &drill.sources {
        let tag = source_tag(&member.source);
        let kind = snapshots
            .iter()
            .rev()
            .find(|(_, s)| s.hostname == member.host && s.tags.contains(&tag))
            .map(|(_, s)| s.source.clone());
        let source = match (local_source(ctx, member), kind.as_deref().and_then(of_kind)) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                record.checks.push(
                    Check::failed("snapshot found", format!("{member} has no snapshot in the repository"))
                        .about(&member.to_string()),
                );
                continue;
            }
        };
        let priority = ctx.priorities.get(member).copied().unwrap_or(UNKNOWN_PRIORITY);
        let run = SourceRun::new(member.to_string(), kind.unwrap_or_default());
        steps.push(Step { member: member.clone(), source, priority, plan: None, recovered: None, run });
    }
    if drill.kind == DrillKind::FullSystem {
        steps.sort_by_key(|s| s.priority);
    }
    for step in steps.iter_mut() {
        let request = PlanRequest {
            repo: &ctx.repo,
            snapshots: &snapshots,
            host: &step.member.host,
            source: &step.member.source,
            point: point.clone(),
            sample: drill.checks.sample_packs,
            seed: record.seed,
        };
        match step.source.drill_plan(request).await {
            Ok(plan) => {
                step.run.snapshot = Some(plan.snapshot.to_string());
                step.run.snapshot_time = Some(plan.manifest.time);
                step.plan = Some(Planned::Restore(Box::new(plan)));
            }
            Err(e) => {
                record.checks.push(Check::failed("snapshot found", e.to_string()).about(&step.member.to_string()))
            }
        }
    }
    true
}

/// The pre-recovery checklist, for every source before any is brought back.
async fn checklist(ctx: &DrillContext, drill: &Drill, record: &mut Record, steps: &[Step]) {
    let checking = Instant::now();
    let mut protected = production(ctx);
    // Where the backups were taken, on whichever host: refusing a path
    // that is production only elsewhere costs nothing.
    for step in steps.iter() {
        let (what, paths) = match &step.plan {
            Some(Planned::Restore(plan)) => {
                (format!("source {}'s path as its snapshot records it", step.member), recorded_paths(&plan.manifest))
            }
            Some(Planned::Clone(plan)) => (format!("standby {}'s path", step.member), plan.paths.clone()),
            None => continue,
        };
        protected.extend(paths.into_iter().map(|path| Protected { what: what.clone(), path }));
    }
    if let Some(refused) = scratch::overlap(&drill.scratch, &protected) {
        record.checks.push(Check::failed("scratch apart from production", refused));
        record.phase("checklist", None, checking.elapsed());
        return;
    }
    record.checks.push(Check::passed(
        "scratch apart from production",
        format!("{} overlaps none of {} production paths", drill.scratch.display(), protected.len()),
    ));
    let mut needed = 0u64;
    for step in steps.iter() {
        let Some(planned) = &step.plan else { continue };
        let about = step.member.to_string();
        needed += planned.bytes();
        if let Planned::Restore(plan) = planned {
            record.checks.push(snapshot_check(ctx, drill, record.seed, plan).await.about(&about));
        }
        record.checks.extend(planned.checks().iter().cloned().map(|c| c.about(&about)));
        let objective = objective_of(ctx, drill, step);
        record.checks.push(rpo_check(planned, record.reference, objective).about(&about));
    }
    let room = std::fs::create_dir_all(&drill.scratch)
        .map_err(|e| e.to_string())
        .and_then(|()| rustix::fs::statvfs(&drill.scratch).map_err(|e| e.to_string()))
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize));
    record.checks.push(match room {
        Ok(free) => Check::of(
            "scratch has room",
            free >= needed + needed / 10,
            format!("{} free in {}, recovery writes {}", bytes(free), drill.scratch.display(), bytes(needed)),
        ),
        Err(e) => Check::failed("scratch has room", format!("{}: {e}", drill.scratch.display())),
    });
    record.phase("checklist", None, checking.elapsed());
}

/// Whether the objects restoring `plan`'s snapshot reads are present and
/// authentic (trees read, packs present, a sample read whole).
async fn snapshot_check(ctx: &DrillContext, drill: &Drill, seed: u64, plan: &DrillPlan) -> Check {
    let name = "objects present and authentic";
    match check_snapshot(&ctx.repo, &plan.manifest, drill.checks.sample_packs, seed).await {
        Ok(found) if found.problems.is_empty() => Check::passed(
            name,
            format!(
                "snapshot {}: {} trees read, {} packs present, {} read whole ({} bytes)",
                plan.snapshot.short(),
                found.trees,
                found.packs,
                found.packs_read,
                found.bytes_read
            ),
        ),
        Ok(found) => {
            let more = match found.problems.len() {
                n if n > 5 => format!(" (and {} more)", n - 5),
                _ => String::new(),
            };
            let first: Vec<&str> = found.problems.iter().take(5).map(String::as_str).collect();
            Check::failed(name, format!("snapshot {}: {}{more}", plan.snapshot.short(), first.join("; ")))
        }
        Err(e) => Check::failed(name, e.to_string()),
    }
}

/// Whether the newest point `planned` can bring back is within its RPO,
/// counted from `reference`. Past it is a warning: recovery goes on, and
/// the verdict says the objective was missed.
fn rpo_check(planned: &Planned, reference: DateTime<Utc>, objective: Option<&Objective>) -> Check {
    let name = "newest recovery point within RPO";
    let (point, what) = planned.newest_point();
    let Some(point) = point else {
        return Check::warning(name, format!("{what} is not known (none since it started): its age cannot be told"));
    };
    let age = (reference - point).to_std().unwrap_or_default();
    match objective {
        Some(o) if age > o.rpo => Check::warning(
            name,
            format!(
                "{what} is {} old, past the RPO of {} (objective {}): the objective will be missed",
                human(age),
                human(o.rpo),
                o.name
            ),
        ),
        Some(o) => {
            Check::passed(name, format!("{what} is {} old (objective {}: RPO {})", human(age), o.name, human(o.rpo)))
        }
        None => Check::passed(name, format!("{what} is {} old; no objective binds it", human(age))),
    }
}

/// Recovery, priority by priority, each level's checks as soon as it is
/// up, then the smoke commands.
async fn recover(
    ctx: &DrillContext,
    drill: &Drill,
    dir: &std::path::Path,
    marker: &Marker,
    point: &RecoveryPoint,
    record: &mut Record,
    steps: &mut [Step],
) {
    if let Err(e) = marker.write() {
        record.error = Some(format!("writing the drill's marker in {}: {e}", scratch::markers_dir().display()));
        return;
    }
    if let Err(e) = make_dir(dir) {
        record.error = Some(format!("making the scratch directory {}: {e}", dir.display()));
        return;
    }
    // Production's ports, then each one handed out: never taken twice.
    let mut taken: Vec<u16> = ctx.local.iter().flat_map(|s| s.ports()).collect();
    let mut env = vec![("LIFEBOAT_DRILL_SCRATCH".to_owned(), dir.display().to_string())];
    let mut i = 0;
    while i < steps.len() {
        let level = steps[i].priority;
        let end = steps[i..].iter().position(|s| s.priority != level).map_or(steps.len(), |n| i + n);
        let mut recoveries = Vec::new();
        for step in &steps[i..end] {
            let Some(plan) = step.plan.clone() else { continue };
            let port = match scratch::free_port(&taken) {
                Ok(p) => p,
                Err(e) => {
                    record.error = Some(e.to_string());
                    return;
                }
            };
            taken.push(port);
            let source_dir = dir.join(&step.member.source);
            let scratch = Scratch {
                dir: source_dir.clone(),
                port,
                point: point.clone(),
                checks: drill.checks.clone(),
                seed: record.seed,
                agent_bin: ctx.agent_bin.clone(),
                timeout: drill.timeout,
                keep: drill.keep,
            };
            let restore = RestoreContext {
                repo: ctx.repo.clone(),
                spec: ctx.spec.clone(),
                hostname: step.member.host.clone(),
                progress: ctx.progress.clone(),
            };
            let source = step.source.clone();
            recoveries.push(async move {
                make_dir(&source_dir).map_err(|e| format!("making {}: {e}", source_dir.display()))?;
                match &plan {
                    Planned::Restore(plan) => source.drill_recover(restore, plan, scratch).await,
                    Planned::Clone(plan) => source.drill_clone(restore, plan, scratch).await,
                }
                .map_err(|e| e.to_string())
            });
        }
        let done = futures::future::join_all(recoveries).await;
        // A level's sources are staged side by side: its staging took the longest of theirs.
        let mut level_staged = Duration::ZERO;
        for (step, result) in steps[i..end].iter_mut().filter(|s| s.plan.is_some()).zip(done) {
            let about = step.member.to_string();
            match result {
                Ok(recovered) => {
                    let phases = recovered.phases();
                    let staged = phases.iter().filter(|(name, _)| is_staging(name)).map(|(_, took)| *took).sum();
                    level_staged = level_staged.max(staged);
                    for (name, took) in phases {
                        record.phase(name, Some(&step.member), took);
                    }
                    step.run.summary = recovered.summary();
                    step.run.recovered_point = recovered.recovered_point();
                    step.recovered = Some(recovered);
                }
                Err(e) => record.checks.push(Check::failed("recovery", e).about(&about)),
            }
        }
        record.staged += level_staged;
        if record.failed() {
            return;
        }
        // Each source's own checks as soon as its level is up: its RTO
        // does not wait for the levels after it.
        for step in steps[i..end].iter_mut() {
            let Some(recovered) = &step.recovered else { continue };
            let about = step.member.to_string();
            let checking = Instant::now();
            let checks = recovered.check().await;
            step.run.passed = checks.iter().all(Check::ok);
            if step.run.passed {
                step.run.rto_seconds = Some(record.clock.elapsed().saturating_sub(record.staged).as_secs_f64());
            }
            record.checks.extend(checks.into_iter().map(|c| c.about(&about)));
            record.phase("checks", Some(&step.member), checking.elapsed());
            env.extend(recovered.env());
        }
        i = end;
    }
    if record.failed() {
        return;
    }

    // Then the smoke commands, with every recovered server's address.
    let checking = Instant::now();
    for smoke in &drill.checks.smoke {
        let started = Instant::now();
        record.checks.push(smoke::run(smoke, dir, &env).await.timed(started));
    }
    if !drill.checks.smoke.is_empty() {
        record.phase("checks", None, checking.elapsed());
    }
}

/// The paths of this host that are production: its sources' paths, the
/// repository's local directories and the key file.
fn production(ctx: &DrillContext) -> Vec<Protected> {
    let mut out = Vec::new();
    for source in &ctx.local {
        for path in source.describe().paths {
            if path.starts_with('/') {
                out.push(Protected { what: format!("source {}'s path", source.id()), path: path.into() });
            }
        }
    }
    for path in ctx.spec.local_paths() {
        out.push(Protected { what: "the repository's own files".into(), path });
    }
    out
}

/// The paths a snapshot was taken of (its roots, a base backup's data
/// directory and tablespaces).
fn recorded_paths(snapshot: &lifeboat_common::repo::format::snapshot::Snapshot) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = snapshot.paths.iter().map(PathBuf::from).collect();
    if let Some(pg) = &snapshot.postgres {
        out.push(PathBuf::from(&pg.pgdata));
        out.extend(pg.tablespaces.iter().map(|t| PathBuf::from(&t.location)));
    }
    out.retain(|p| p.is_absolute());
    out
}

/// The objective a source is measured against in this drill.
fn objective_of<'a>(ctx: &'a DrillContext, drill: &Drill, step: &Step) -> Option<&'a Objective> {
    match (&drill.objective, drill.kind) {
        (Some(name), DrillKind::Recovery | DrillKind::Failover) => ctx.policy.objective(name),
        _ => ctx.policy.objective_for(&step.member, ctx.priorities.get(&step.member).copied()),
    }
}

fn make_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // Servers run as their data's owner: they must be able to reach it.
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

fn verdict(o: &Objective, rto: Option<f64>, rpo: Option<f64>) -> Verdict {
    Verdict {
        objective: o.name.clone(),
        rto_target_seconds: o.rto.as_secs_f64(),
        rpo_target_seconds: o.rpo.as_secs_f64(),
        rto_met: rto.is_some_and(|r| r <= o.rto.as_secs_f64()),
        rpo_met: rpo.is_some_and(|r| r <= o.rpo.as_secs_f64()),
    }
}

/// The report, from what the drill recorded.
fn finish(
    ctx: &DrillContext,
    drill: &Drill,
    id: String,
    dir: PathBuf,
    mut record: Record,
    steps: Vec<Step>,
    last_check: Duration,
) -> DrillReport {
    let (passed, sources) = if drill.kind == DrillKind::Verification {
        let verified = std::mem::take(&mut record.verified);
        (!record.failed() && !verified.is_empty() && verified.iter().all(|s| s.passed), verified)
    } else {
        let passed = !record.failed() && !steps.is_empty() && steps.iter().all(|s| s.run.passed);
        let sources = steps
            .iter()
            .map(|step| {
                let mut run = step.run.clone();
                run.rpo_seconds =
                    run.recovered_point.map(|p| (record.reference - p).to_std().unwrap_or_default().as_secs_f64());
                if !passed {
                    run.rto_seconds = None;
                }
                run.verdict = objective_of(ctx, drill, step).map(|o| verdict(o, run.rto_seconds, run.rpo_seconds));
                run
            })
            .collect();
        (passed, sources)
    };
    let rto_seconds = passed.then_some(last_check.as_secs_f64());
    let rpo_seconds = sources.iter().filter_map(|s: &SourceRun| s.rpo_seconds).reduce(f64::max);
    let whole = match drill.kind {
        DrillKind::FullSystem => ctx
            .policy
            .objective(drill.objective.as_deref().unwrap_or(FULL_SYSTEM))
            .map(|o| verdict(o, rto_seconds, rpo_seconds)),
        DrillKind::Recovery | DrillKind::Verification | DrillKind::Failover => None,
    };
    let met = |v: &Verdict| v.rto_met && v.rpo_met;
    let objectives_met =
        passed && sources.iter().filter_map(|s| s.verdict.as_ref()).all(met) && whole.as_ref().is_none_or(met);
    DrillReport {
        id,
        drill: drill.name.clone(),
        kind: drill.kind.as_str().to_owned(),
        agent: ctx.host.clone(),
        target: drill.target.to_string(),
        started: record.started,
        finished: Utc::now(),
        passed,
        objectives_met,
        rto_seconds,
        rpo_seconds,
        verdict: whole,
        phases: record.phases,
        checks: record.checks,
        sources,
        scratch: dir.display().to_string(),
        kept: drill.keep && dir.exists(),
        error: record.error,
        seed: record.seed,
    }
}
