//! The policy's `recovery_objectives:` and `drills:` blocks: the seed's
//! RTO/RPO table bound to sources, and the calendar of restore drills that
//! measure against it.
//!
//! ```yaml
//! recovery_objectives:
//!   database:     { rto: 15m, rpo: 5m, sources: [db1/orders] }
//!   application:  { rto: 30m, rpo: 1h, priority: 2 }
//!   full_system:  { rto: 2h,  rpo: 1h }
//!
//! drills:
//!   database-recovery:
//!     schedule: "0 4 * * 1#1"       # the first Monday, 04:00 UTC
//!     kind: recovery                # or full_system, verification, failover
//!     sources: [db1/orders]         # HOST/SOURCE: whose backups
//!     agent: drill1                 # the host it runs on
//!     scratch: /var/lib/lifeboat/drills
//!     target: 1h ago                # or latest (the default), or a time with its zone
//!     checks:
//!       sql:
//!         - { query: "SELECT count(*) > 0 FROM users", expect: "t" }
//!       smoke:
//!         - { command: [npm, run, "test:e2e:critical"], timeout: 10m }
//! ```
//!
//! An objective binds the sources it names, else those whose schedules'
//! highest priority is its `priority`; a drill measures each source against
//! its objective, and a `full_system` drill the whole against the one named
//! `full_system` (or its own `objective:`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::PolicyError;
use super::failover::Member;
use super::schedules::CronPattern;

/// The objective a `full_system` drill is measured against unless it names one.
pub const FULL_SYSTEM: &str = "full_system";

/// How long a drill may run unless it says.
pub const DRILL_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// How long a smoke command may run unless it says.
pub const SMOKE_TIMEOUT: Duration = Duration::from_secs(600);

/// Packs read whole by the pre-recovery checklist unless a drill says.
pub const SAMPLE_PACKS: u32 = 16;

/// A recovery time and recovery point objective.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objective {
    /// Its name (the key in the block).
    pub name: String,
    /// How long recovery may take.
    pub rto: Duration,
    /// How much recent data may be lost.
    pub rpo: Duration,
    /// The sources it binds.
    pub sources: Vec<Member>,
    /// The priority (1..4) of the sources it binds, besides those named.
    pub priority: Option<u8>,
}

/// What a drill does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillKind {
    /// Restores each source it names, starts it and checks it (the first
    /// Monday's database recovery test, the PITR drill).
    Recovery,
    /// Restores every source it names in priority order and measures the
    /// whole against the full-system objective.
    FullSystem,
    /// Restores random files of random snapshots of each source it names
    /// and compares them, checks stored objects are ciphertext no other key
    /// opens, and that retention runs (the fourth Monday).
    Verification,
    /// Clones each standby it names (its agent's own, in the DR region),
    /// catches the clone up from the repository and promotes it in
    /// isolation, timed and checked (the second Monday's failover test,
    /// without a switchover).
    Failover,
}

impl DrillKind {
    /// As written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            DrillKind::Recovery => "recovery",
            DrillKind::FullSystem => "full_system",
            DrillKind::Verification => "verification",
            DrillKind::Failover => "failover",
        }
    }
}

/// Where a drill's recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrillTarget {
    /// The newest point there is.
    #[default]
    Latest,
    /// This long before the drill starts.
    Ago(Duration),
    /// A point in time.
    At(DateTime<Utc>),
}

impl DrillTarget {
    /// The point in time it names for a drill started at `start` (none: the newest).
    pub fn time(&self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            DrillTarget::Latest => None,
            DrillTarget::Ago(d) => Some(
                chrono::Duration::from_std(*d)
                    .ok()
                    .and_then(|d| start.checked_sub_signed(d))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
            ),
            DrillTarget::At(t) => Some(*t),
        }
    }
}

impl std::fmt::Display for DrillTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrillTarget::Latest => f.write_str("latest"),
            DrillTarget::Ago(d) => write!(f, "{} ago", humantime::format_duration(*d)),
            DrillTarget::At(t) => write!(f, "{}", t.to_rfc3339()),
        }
    }
}

/// A SQL probe: a query whose first column of its first row must read `expect`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlProbe {
    /// The query.
    pub query: String,
    /// What its first value must read (`t`/`true` and `f`/`false` match
    /// either way); absent: it must only run.
    pub expect: Option<String>,
    /// The database (default `postgres`).
    pub database: Option<String>,
}

/// A command run against the recovered copy; it passes by exiting 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmokeCommand {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
    /// Where it runs (default: the drill's scratch directory).
    pub dir: Option<PathBuf>,
}

/// What is checked after recovery, beyond what each kind always checks
/// (a connection, the key counts, the content ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillChecks {
    /// `pg_amcheck` over every database.
    pub amcheck: bool,
    /// SQL probes.
    pub sql: Vec<SqlProbe>,
    /// Smoke-test commands.
    pub smoke: Vec<SmokeCommand>,
    /// Files: restore this many files chosen at random instead of all.
    pub sample_files: Option<u32>,
    /// Packs the pre-recovery checklist reads whole.
    pub sample_packs: u32,
    /// PostgreSQL: the role checks connect as (default: the restored data
    /// directory's owner, whom initdb names the first superuser after).
    pub user: Option<String>,
}

impl Default for DrillChecks {
    fn default() -> Self {
        DrillChecks {
            amcheck: true,
            sql: Vec::new(),
            smoke: Vec::new(),
            sample_files: None,
            sample_packs: SAMPLE_PACKS,
            user: None,
        }
    }
}

/// One drill of the calendar.
#[derive(Debug, Clone)]
pub struct Drill {
    /// Its name (the key in the block).
    pub name: String,
    /// When the coordinators run it (none: only by hand).
    pub schedule: Option<CronPattern>,
    /// What it does.
    pub kind: DrillKind,
    /// Whose backups it restores.
    pub sources: Vec<Member>,
    /// The host whose agent runs it.
    pub agent: String,
    /// Where it restores to (a directory of its own is made inside).
    pub scratch: PathBuf,
    /// Where recovery stops.
    pub target: DrillTarget,
    /// The objective it is measured against instead of each source's own.
    pub objective: Option<String>,
    /// How long it may run.
    pub timeout: Duration,
    /// Leave the restored copy in place (stopped) after it.
    pub keep: bool,
    /// What is checked.
    pub checks: DrillChecks,
}

/// The two blocks, read together (a drill names objectives).
#[derive(Debug, Clone, Default)]
pub struct DrillPolicy {
    /// The objectives, in the order written.
    pub objectives: Vec<Objective>,
    /// The drills, by name.
    pub drills: Vec<Drill>,
}

impl DrillPolicy {
    /// The drill named `name`.
    pub fn drill(&self, name: &str) -> Option<&Drill> {
        self.drills.iter().find(|d| d.name == name)
    }

    /// The objective named `name`.
    pub fn objective(&self, name: &str) -> Option<&Objective> {
        self.objectives.iter().find(|o| o.name == name)
    }

    /// The objective `source` is measured against: the first naming it,
    /// else the first of its priority (the highest of its schedules').
    pub fn objective_for(&self, source: &Member, priority: Option<u8>) -> Option<&Objective> {
        self.objectives.iter().find(|o| o.sources.contains(source)).or_else(|| {
            let p = priority?;
            self.objectives.iter().find(|o| o.sources.is_empty() && o.priority == Some(p))
        })
    }
}

#[derive(Deserialize)]
struct Document {
    /// In the order written: objectives are matched first to last.
    recovery_objectives: Option<indexmap::IndexMap<String, ObjectiveSpec>>,
    drills: Option<BTreeMap<String, DrillSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectiveSpec {
    rto: String,
    rpo: String,
    #[serde(default)]
    sources: Vec<String>,
    priority: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillSpec {
    schedule: Option<CronPattern>,
    kind: DrillKind,
    sources: Vec<String>,
    agent: String,
    scratch: PathBuf,
    target: Option<String>,
    objective: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    checks: ChecksSpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ChecksSpec {
    amcheck: Option<bool>,
    #[serde(default)]
    sql: Vec<SqlProbe>,
    #[serde(default)]
    smoke: Vec<SmokeSpec>,
    sample_files: Option<u32>,
    sample_packs: Option<u32>,
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SmokeSpec {
    command: Vec<String>,
    timeout: Option<String>,
    dir: Option<PathBuf>,
}

/// A drill's `target`: `latest`, `<duration> ago`, or a time with its zone.
pub fn parse_target(text: &str) -> Result<DrillTarget, String> {
    let text = text.trim();
    if text == "latest" {
        return Ok(DrillTarget::Latest);
    }
    if let Some(ago) = text.strip_suffix(" ago") {
        return humantime::parse_duration(ago.trim())
            .map(DrillTarget::Ago)
            .map_err(|e| format!("{text:?}: {e} (e.g. \"1h ago\")"));
    }
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .map(|t| DrillTarget::At(t.with_timezone(&Utc)))
        .map_err(|_| format!("{text:?}: write latest, a duration and ago (\"1h ago\"), or a time with its zone"))
}

/// The `recovery_objectives:` and `drills:` blocks of a policy document
/// (either may be absent).
pub fn drills_from_yaml(text: &str) -> Result<DrillPolicy, PolicyError> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let mut policy = DrillPolicy::default();
    for (name, spec) in doc.recovery_objectives.unwrap_or_default() {
        let bad = |reason: String| PolicyError::Drill { entry: format!("recovery_objectives.{name}"), reason };
        let duration = |field: &str, text: &str| {
            humantime::parse_duration(text).map_err(|e| bad(format!("{field}: {text:?}: {e}")))
        };
        let sources = members(&spec.sources).map_err(&bad)?;
        if let Some(p) = spec.priority
            && !(1..=4).contains(&p)
        {
            return Err(bad(format!("priority {p}: 1 (critical) to 4 (low)")));
        }
        policy.objectives.push(Objective {
            name: name.clone(),
            rto: duration("rto", &spec.rto)?,
            rpo: duration("rpo", &spec.rpo)?,
            sources,
            priority: spec.priority,
        });
    }
    for (name, spec) in doc.drills.unwrap_or_default() {
        let bad = |reason: String| PolicyError::Drill { entry: format!("drills.{name}"), reason };
        if !is_plain_name(&name) {
            return Err(bad(
                "a drill's name is letters, digits, '_', '-' and '.', not first (it names a directory)".into()
            ));
        }
        let sources = members(&spec.sources).map_err(&bad)?;
        if sources.is_empty() {
            return Err(bad("name at least one source (HOST/SOURCE)".into()));
        }
        if spec.agent.is_empty() {
            return Err(bad("agent: name the host whose agent runs it".into()));
        }
        if !spec.scratch.is_absolute() {
            return Err(bad(format!("scratch {}: an absolute path", spec.scratch.display())));
        }
        let target = spec.target.as_deref().map(parse_target).transpose().map_err(|e| bad(format!("target: {e}")))?;
        if spec.kind == DrillKind::Failover {
            // A standby is cloned where it runs, and promoted at the newest point it can reach.
            if let Some(m) = sources.iter().find(|m| m.host != spec.agent) {
                return Err(bad(format!(
                    "sources: {m}: a failover drill clones standbys of its own agent, {}",
                    spec.agent
                )));
            }
            if target.is_some_and(|t| t != DrillTarget::Latest) {
                return Err(bad("target: a failover drill promotes at the newest point: latest only".into()));
            }
        }
        if let Some(o) = &spec.objective
            && policy.objective(o).is_none()
        {
            return Err(bad(format!("objective {o:?} is not in recovery_objectives")));
        }
        let timeout = match &spec.timeout {
            Some(t) => humantime::parse_duration(t).map_err(|e| bad(format!("timeout: {t:?}: {e}")))?,
            None => DRILL_TIMEOUT,
        };
        let mut smoke = Vec::new();
        for (i, s) in spec.checks.smoke.into_iter().enumerate() {
            if s.command.is_empty() {
                return Err(bad(format!("checks.smoke[{i}]: the command is empty")));
            }
            let timeout = match &s.timeout {
                Some(t) => {
                    humantime::parse_duration(t).map_err(|e| bad(format!("checks.smoke[{i}].timeout: {t:?}: {e}")))?
                }
                None => SMOKE_TIMEOUT,
            };
            smoke.push(SmokeCommand { command: s.command, timeout, dir: s.dir });
        }
        if spec.checks.sql.iter().any(|p| p.query.trim().is_empty()) {
            return Err(bad("checks.sql: a probe has an empty query".into()));
        }
        let checks = DrillChecks {
            amcheck: spec.checks.amcheck.unwrap_or(true),
            sql: spec.checks.sql,
            smoke,
            sample_files: spec.checks.sample_files.filter(|n| *n > 0),
            sample_packs: spec.checks.sample_packs.unwrap_or(SAMPLE_PACKS),
            user: spec.checks.user,
        };
        policy.drills.push(Drill {
            name: name.clone(),
            schedule: spec.schedule,
            kind: spec.kind,
            sources,
            agent: spec.agent,
            scratch: spec.scratch,
            target: target.unwrap_or_default(),
            objective: spec.objective,
            timeout,
            keep: spec.keep,
            checks,
        });
    }
    Ok(policy)
}

fn members(texts: &[String]) -> Result<Vec<Member>, String> {
    let members: Vec<Member> =
        texts.iter().map(|m| m.parse::<Member>().map_err(|e| format!("sources: {e}"))).collect::<Result<_, _>>()?;
    match members.iter().find(|m| !is_plain_name(&m.source)) {
        // A drill restores each source into a directory named after it.
        Some(m) => Err(format!("sources: {m}: a source id is letters, digits, '_', '-' and '.', not first")),
        None => Ok(members),
    }
}

/// Letters, digits, `_`, `-` and `.`, not first: safe as a directory name.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_example_calendar_parses_and_runs_on_its_mondays() {
        let policy = drills_from_yaml(include_str!("../../../deploy/examples/policy.yaml")).unwrap();
        let names: Vec<&str> = policy.objectives.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["database", "application_servers", "file_storage", "full_system"]);
        let db = policy.objective("database").unwrap();
        assert_eq!((db.rto, db.rpo), (Duration::from_secs(15 * 60), Duration::from_secs(5 * 60)));

        let first = policy.drill("database-recovery").unwrap();
        assert_eq!(first.kind, DrillKind::Recovery);
        assert_eq!(first.target, DrillTarget::Ago(Duration::from_secs(3600)));
        let cron = first.schedule.as_ref().unwrap();
        // December 2026 begins on a Tuesday: its first Monday is the 7th.
        assert_eq!(cron.next_after(at("2026-12-01T00:00:00Z")), Some(at("2026-12-07T04:00:00Z")));
        assert_eq!(cron.next_after(at("2026-12-07T04:00:00Z")), Some(at("2027-01-04T04:00:00Z")));
        let second = policy.drill("dr-failover").unwrap();
        assert_eq!(second.kind, DrillKind::Failover);
        assert_eq!(
            second.schedule.as_ref().unwrap().next_after(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-14T04:00:00Z"))
        );
        let third = policy.drill("full-system-recovery").unwrap();
        assert_eq!(third.kind, DrillKind::FullSystem);
        assert_eq!(
            third.schedule.as_ref().unwrap().next_after(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-21T04:00:00Z"))
        );

        let fourth = policy.drill("backup-verification").unwrap();
        assert_eq!(fourth.kind, DrillKind::Verification);
        assert_eq!(fourth.checks.sample_files, Some(50));
        assert_eq!(
            fourth.schedule.as_ref().unwrap().next_after(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-28T04:00:00Z"))
        );

        let orders: Member = "db1/orders".parse().unwrap();
        assert_eq!(policy.objective_for(&orders, None).map(|o| o.name.as_str()), Some("database"));
        let app: Member = "app1/sessions".parse().unwrap();
        assert_eq!(policy.objective_for(&app, Some(2)).map(|o| o.name.as_str()), Some("application_servers"));
        assert!(policy.objective_for(&app, Some(4)).is_none());
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("latest"), Ok(DrillTarget::Latest));
        assert_eq!(parse_target("90m ago"), Ok(DrillTarget::Ago(Duration::from_secs(5400))));
        assert_eq!(parse_target("2026-12-01 10:00:00+00"), Ok(DrillTarget::At(at("2026-12-01T10:00:00Z"))));
        assert_eq!(parse_target("2026-12-01T10:00:00+01:00"), Ok(DrillTarget::At(at("2026-12-01T09:00:00Z"))));
        assert_eq!(DrillTarget::Ago(Duration::MAX).time(at("2026-12-07T04:00:00Z")), Some(DateTime::<Utc>::MIN_UTC));
        for bad in ["yesterday", "2026-12-01 10:00:00", "1 fortnight ago"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        let start = at("2026-12-07T04:00:00Z");
        assert_eq!(DrillTarget::Ago(Duration::from_secs(3600)).time(start), Some(at("2026-12-07T03:00:00Z")));
    }

    #[test]
    fn mistakes_name_the_entry() {
        let head = "drills:\n  d:\n    kind: recovery\n    agent: a\n";
        let cases = [
            (format!("{head}    sources: [db1/orders]\n    scratch: rel\n"), "drills.d", "absolute"),
            (format!("{head}    sources: []\n    scratch: /s\n"), "drills.d", "at least one source"),
            (format!("{head}    sources: [orders]\n    scratch: /s\n"), "drills.d", "HOST/SOURCE"),
            (format!("{head}    sources: [a/b]\n    scratch: /s\n    target: soon\n"), "drills.d", "target"),
            (
                format!("{head}    sources: [a/b]\n    scratch: /s\n    objective: nope\n"),
                "drills.d",
                "not in recovery",
            ),
            (
                format!("{head}    sources: [a/b]\n    scratch: /s\n    checks: {{ smoke: [{{ command: [] }}] }}\n"),
                "drills.d",
                "empty",
            ),
            (
                format!("{head}    sources: [a/b]\n    scratch: /s\n    schedule: \"0 4 * *\"\n"),
                "line 3",
                "five fields",
            ),
            (format!("{head}    sources: [a/b]\n    scratch: /s\n    colour: red\n"), "line 7", "colour"),
            ("recovery_objectives:\n  db: { rto: fast, rpo: 5m }\n".to_owned(), "recovery_objectives.db", "rto"),
            ("drills:\n  d: { kind: rehearsal }\n".to_owned(), "line 2", "rehearsal"),
            (format!("{head}    sources: [a/..]\n    scratch: /s\n"), "drills.d", "a source id"),
            (
                "drills:\n  d: { kind: failover, agent: dr1, sources: [db1/orders], scratch: /s }\n".to_owned(),
                "drills.d",
                "standbys of its own agent, dr1",
            ),
            (
                "drills:\n  d: { kind: failover, agent: a, sources: [a/b], scratch: /s, target: 1h ago }\n".to_owned(),
                "drills.d",
                "latest only",
            ),
            (
                "drills:\n  ../x: { kind: recovery, agent: a, sources: [a/b], scratch: /s }\n".to_owned(),
                "drills.../x",
                "name",
            ),
        ];
        for (yaml, place, what) in cases {
            let err = drills_from_yaml(&yaml).unwrap_err().to_string();
            assert!(err.contains(place) && err.contains(what), "{yaml:?} gave {err:?}");
        }
        assert!(drills_from_yaml("storage_lifecycle: {}\n").unwrap().drills.is_empty());
    }
}
