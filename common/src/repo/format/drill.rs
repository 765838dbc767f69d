//! A restore drill's report, `drills/<id>`: sealed JSON kept in the
//! repository so the evidence of a drill outlives the control plane.
//! The same JSON is what `lifeboat drill run --json` and `lifeboat drills
//! show ID --json` print.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It held.
    Passed,
    /// It did not.
    Failed,
    /// It held with a reservation that counts against the objectives, not
    /// the checks (the newest recovery point is older than the RPO).
    Warning,
}

/// One check of the pre-recovery checklist or after recovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked (`objects present`, `pg_amcheck`, `sql: SELECT …`).
    pub name: String,
    /// How it ended.
    pub result: Outcome,
    /// What it found.
    pub message: String,
    /// The source it checked (none: the drill as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How long it took, where it is timed on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl Check {
    /// A check that held.
    pub fn passed(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check { name: name.into(), result: Outcome::Passed, message: message.into(), source: None, seconds: None }
    }

    /// A check that did not.
    pub fn failed(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check { name: name.into(), result: Outcome::Failed, message: message.into(), source: None, seconds: None }
    }

    /// One that held with a reservation.
    pub fn warning(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check { result: Outcome::Warning, ..Check::passed(name, message) }
    }

    /// Passed when `ok`, failed otherwise.
    pub fn of(name: impl Into<String>, ok: bool, message: impl Into<String>) -> Check {
        if ok { Check::passed(name, message) } else { Check::failed(name, message) }
    }

    /// The same check, about `source`.
    pub fn about(mut self, source: &str) -> Check {
        self.source = Some(source.to_owned());
        self
    }

    /// The same check, timed from `started`.
    pub fn timed(mut self, started: std::time::Instant) -> Check {
        self.seconds = Some(started.elapsed().as_secs_f64());
        self
    }

    /// Whether it held (with a reservation or without).
    pub fn ok(&self) -> bool {
        self.result != Outcome::Failed
    }
}

/// A timed part of the drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `fetch`, `checklist`, `restore`, `replay`, `checks` or `cleanup`.
    pub name: String,
    /// The source it was about (none: the drill as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How long it took.
    pub seconds: f64,
}

/// An objective and whether the drill met it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The objective's name in the policy.
    pub objective: String,
    /// Its RTO.
    pub rto_target_seconds: f64,
    /// Its RPO.
    pub rpo_target_seconds: f64,
    /// Measured RTO within it.
    pub rto_met: bool,
    /// Measured RPO within it.
    pub rpo_met: bool,
}

/// One source's recovery in a drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRun {
    /// `HOST/SOURCE`.
    pub source: String,
    /// The source's kind.
    pub kind: String,
    /// The snapshot (base backup) restored, if one was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// When that snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_time: Option<DateTime<Utc>>,
    /// The newest point recovered (for PostgreSQL the last replayed commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_point: Option<DateTime<Utc>>,
    /// What the recovery did, in one line.
    #[serde(default)]
    pub summary: String,
    /// From the drill's start to its last check passing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    /// The age of the newest point recovered, at the drill's start (or at
    /// its target time, for a point-in-time drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<f64>,
    /// Its objective, if one binds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Every check about it passed.
    pub passed: bool,
}

impl SourceRun {
    /// `source` (`HOST/SOURCE`), of `kind`, before anything is known of its run.
    pub fn new(source: String, kind: String) -> SourceRun {
        SourceRun {
            source,
            kind,
            snapshot: None,
            snapshot_time: None,
            recovered_point: None,
            summary: String::new(),
            rto_seconds: None,
            rpo_seconds: None,
            verdict: None,
            passed: false,
        }
    }
}

/// A drill run's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The start (`YYYYMMDDTHHMMSSZ`), the drill's name and four random hex
    /// digits that tell apart two runs of one second: sorts by start.
    pub id: String,
    /// The drill's name in the policy.
    pub drill: String,
    /// Its kind (`recovery`, `full_system`).
    pub kind: String,
    /// The host that ran it.
    pub agent: String,
    /// Where recovery was to stop, as the policy says it.
    pub target: String,
    /// The simulated disaster.
    pub started: DateTime<Utc>,
    /// When clean-up ended.
    pub finished: DateTime<Utc>,
    /// Every check passed.
    pub passed: bool,
    /// Every objective met (false when a check failed).
    pub objectives_met: bool,
    /// From the start to the last check passing (none when one failed).
    pub rto_seconds: Option<f64>,
    /// The largest RPO of its sources.
    pub rpo_seconds: Option<f64>,
    /// The objective the whole is measured against (full system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The timed parts.
    pub phases: Vec<Phase>,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Each source's recovery.
    pub sources: Vec<SourceRun>,
    /// The scratch directory.
    pub scratch: String,
    /// Whether the restored copy was left there.
    pub kept: bool,
    /// What stopped the drill before its end, if anything did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The seed of its random choices (packs read, files sampled).
    pub seed: u64,
}

impl DrillReport {
    /// `passed`, `objectives_missed` or `failed`: as metrics count it.
    pub fn outcome(&self) -> &'static str {
        match (self.passed, self.objectives_met) {
            (true, true) => "passed",
            (true, false) => "objectives_missed",
            (false, _) => "failed",
        }
    }

    /// One line: what, pass or fail, RTO and RPO against the objectives.
    pub fn headline(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1}s"));
        let failed_check = self.checks.iter().find(|c| !c.ok()).map(|c| format!("FAILED ({}: {})", c.name, c.message));
        let verdict = match (self.outcome(), &self.error) {
            ("passed", _) => "PASSED, objectives met".to_owned(),
            ("objectives_missed", _) => "PASSED its checks, objectives MISSED".to_owned(),
            (_, Some(e)) => format!("FAILED ({e})"),
            (_, None) => failed_check.unwrap_or_else(|| "FAILED".to_owned()),
        };
        format!(
            "drill {} ({}): {verdict}; RTO {}, RPO {}",
            self.id,
            self.kind,
            secs(self.rto_seconds),
            secs(self.rpo_seconds)
        )
    }

    /// The report as a runbook pastes it: target against actual, phases,
    /// checks, the backups used.
    pub fn markdown(&self) -> String {
        let mut md = format!("## Drill `{}`: {}\n\n", self.id, if self.passed { "passed" } else { "FAILED" });
        md.push_str(&format!(
            "- drill: `{}` ({}), on `{}`, target {}\n- started {}, finished {}\n- scratch: `{}`{}\n",
            self.drill,
            self.kind,
            self.agent,
            self.target,
            self.started.to_rfc3339(),
            self.finished.to_rfc3339(),
            self.scratch,
            if self.kept { " (kept)" } else { "" }
        ));
        if let Some(e) = &self.error {
            md.push_str(&format!("- stopped by: {e}\n"));
        }
        let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1} s"));
        let target = |t: f64| format!("{t:.0} s");
        md.push_str("\n| source | objective | RTO target | RTO actual | RPO target | RPO actual | met |\n");
        md.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
        let mut row = |who: &str, v: Option<&Verdict>, rto: Option<f64>, rpo: Option<f64>| {
            let (name, rt, pt, met) = match v {
                Some(v) => (
                    v.objective.as_str(),
                    target(v.rto_target_seconds),
                    target(v.rpo_target_seconds),
                    if v.rto_met && v.rpo_met { "yes" } else { "**no**" },
                ),
                None => ("-", "-".into(), "-".into(), "-"),
            };
            md.push_str(&format!("| {who} | {name} | {rt} | {} | {pt} | {} | {met} |\n", secs(rto), secs(rpo)));
        };
        for s in &self.sources {
            row(&s.source, s.verdict.as_ref(), s.rto_seconds, s.rpo_seconds);
        }
        if let Some(v) = &self.verdict {
            row("(whole)", Some(v), self.rto_seconds, self.rpo_seconds);
        }
        md.push_str("\n| phase | source | seconds |\n| --- | --- | --- |\n");
        for p in &self.phases {
            md.push_str(&format!("| {} | {} | {:.1} |\n", p.name, p.source.as_deref().unwrap_or("-"), p.seconds));
        }
        md.push_str("\n| check | source | result | message |\n| --- | --- | --- | --- |\n");
        for c in &self.checks {
            let result = match c.result {
                Outcome::Passed => "passed",
                Outcome::Warning => "**warning**",
                Outcome::Failed => "**failed**",
            };
            let message = c.message.replace('|', "\\|").replace('\n', " ");
            md.push_str(&format!("| {} | {} | {result} | {message} |\n", c.name, c.source.as_deref().unwrap_or("-")));
        }
        md.push_str("\nBackups used:\n");
        for s in &self.sources {
            let when = s.snapshot_time.map(|t| format!(" taken {}", t.to_rfc3339())).unwrap_or_default();
            md.push_str(&format!(
                "- {}: snapshot {}{when}; {}\n",
                s.source,
                s.snapshot.as_deref().unwrap_or("none"),
                if s.summary.is_empty() { "-" } else { &s.summary }
            ));
        }
        md
    }
}
