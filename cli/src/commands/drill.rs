//! `lifeboat drill run --policy FILE NAME`: one restore drill of the
//! policy, run here without a coordinator, its report stored in the
//! repository and printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_agent::daemon::config::AgentConfig;
use lifeboat_agent::drill::{DrillContext, clean_up_cut_short, retention_days, run_drill};
use lifeboat_agent::progress::Progress;
use lifeboat_agent::sources::Source;
use lifeboat_common::policy::backup_schedules_from_yaml;
use lifeboat_common::policy::drills::drills_from_yaml;
use lifeboat_common::policy::failover::Member;
use lifeboat_common::repo::format::drill::{DrillReport, Outcome, Verdict};

use crate::RepoArgs;
use crate::progress::ProgressView;

/// Restore drills run here, offline.
#[derive(Args)]
pub struct DrillCommand {
    #[command(subcommand)]
    command: DrillSub,
}

#[derive(Subcommand)]
enum DrillSub {
    /// Run one drill of the policy on this machine: checklist, recovery
    /// into its scratch directory, checks, RTO and RPO against the
    /// objectives, clean-up; the report is stored in the repository (exit
    /// 1 when it fails, 2 when it passes but misses an objective).
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The policy file with the `drills:` (and `recovery_objectives:`) blocks.
    #[arg(long)]
    policy: PathBuf,
    /// The agent's configuration on this host: its host name, its sources
    /// (production, which the drill never touches) and, without --repo,
    /// its repository.
    #[arg(long)]
    agent_config: Option<PathBuf>,
    /// The lifeboat-agent binary a restored server fetches WAL with (default: beside this one).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The drill's name in the policy.
    name: String,
}

impl DrillCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        match self.command {
            DrillSub::Run(r) => r.run().await,
        }
    }
}

/// Each source's priority: the highest (lowest number) of its schedules'.
fn priorities(host: &str, sources: &[Arc<dyn Source>], policy_text: &str) -> BTreeMap<Member, u8> {
    let Ok(schedules) = backup_schedules_from_yaml(policy_text) else { return BTreeMap::new() };
    let of: BTreeMap<String, u8> = schedules.iter().map(|s| (s.id(), s.priority)).collect();
    sources
        .iter()
        .filter_map(|s| {
            let best = s.describe().schedules.iter().filter_map(|id| of.get(id).copied()).min()?;
            Some((Member { host: host.to_owned(), source: s.id().to_owned() }, best))
        })
        .collect()
}

impl RunArgs {
    async fn run(self) -> Result<u8> {
        let text = std::fs::read_to_string(&self.policy)
            .with_context(|| format!("reading policy {}", self.policy.display()))?;
        let policy = drills_from_yaml(&text).with_context(|| format!("policy {}", self.policy.display()))?;
        let Some(drill) = policy.drill(&self.name).cloned() else {
            let names: Vec<&str> = policy.drills.iter().map(|d| d.name.as_str()).collect();
            bail!(
                "policy {} has no drill {:?} (it has: {})",
                self.policy.display(),
                self.name,
                if names.is_empty() { "none".to_owned() } else { names.join(", ") }
            );
        };
        let agent = match &self.agent_config {
            Some(path) => {
                Some(AgentConfig::load(path).with_context(|| format!("agent configuration {}", path.display()))?)
            }
            None => None,
        };
        let spec = match (&agent, self.repo.repo.is_empty() && self.repo.config.is_none()) {
            (Some(a), true) => {
                self.repo.spec_with(a.repository.clone(), self.agent_config.as_deref().unwrap_or(Path::new("")))?
            }
            _ => self.repo.spec()?,
        };
        let (repo, _stores) = spec.open().await?;
        let host = match &agent {
            Some(a) => a.host.clone(),
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let local: Vec<Arc<dyn Source>> =
            agent.iter().flat_map(|a| a.sources.iter().map(|s| s.section().build())).collect();
        let agent_bin = match self.agent_bin {
            Some(p) => p,
            None => std::env::current_exe().context("locating this binary")?.with_file_name("lifeboat-agent"),
        };
        let agent_bin =
            std::path::absolute(&agent_bin).with_context(|| format!("resolving {}", agent_bin.display()))?;

        for (report, _) in clean_up_cut_short(&repo, &host, |m| m.job.is_none()).await {
            // An agent's own jobs are its to report to the coordinator.
            eprintln!("lifeboat: {} (its scratch {} removed)", report.headline(), report.scratch);
        }
        if drill.agent != host {
            eprintln!(
                "lifeboat: note: the policy runs drill {} on {}; running it here, on {host}",
                drill.name, drill.agent
            );
        }
        let progress = Arc::new(Progress::default());
        let ctx = DrillContext {
            repo,
            spec,
            priorities: priorities(&host, &local, &text),
            retention_days: retention_days(&text),
            host,
            local,
            policy,
            agent_bin: Some(agent_bin),
            job: None,
            progress: progress.clone(),
        };
        let view = ProgressView::start("drill", progress);
        let report = run_drill(&ctx, &drill).await;
        drop(view);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        Ok(exit_code(&report))
    }
}

/// 0: passed and met; 2: passed, an objective missed; 1: failed.
pub fn exit_code(report: &DrillReport) -> u8 {
    match report.outcome() {
        "passed" => 0,
        "objectives_missed" => 2,
        _ => 1,
    }
}

/// An objective and how the measures stood against it.
fn against(v: &Verdict) -> String {
    let met = |m: bool| if m { "met" } else { "MISSED" };
    format!(
        "{} (RTO {:.0}s {}, RPO {:.0}s {})",
        v.objective,
        v.rto_target_seconds,
        met(v.rto_met),
        v.rpo_target_seconds,
        met(v.rpo_met)
    )
}

/// The report for a terminal: the headline, each source against its
/// objective, the phases and the checks.
pub fn print_report(report: &DrillReport) {
    println!("{}", report.headline());
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1}s"));
    for s in &report.sources {
        let against = match &s.verdict {
            Some(v) => format!(" against {}", against(v)),
            None => " (no objective binds it)".to_owned(),
        };
        println!("  {}: RTO {}, RPO {}{against}", s.source, secs(s.rto_seconds), secs(s.rpo_seconds));
        if !s.summary.is_empty() {
            println!("    {}", s.summary);
        }
    }
    if let Some(v) = &report.verdict {
        println!("  whole against {}", against(v));
    }
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|p| match &p.source {
            Some(s) => format!("{} ({s}) {:.1}s", p.name, p.seconds),
            None => format!("{} {:.1}s", p.name, p.seconds),
        })
        .collect();
    println!("  phases: {}", phases.join(", "));
    for c in &report.checks {
        let about = c.source.as_deref().map(|s| format!(" [{s}]")).unwrap_or_default();
        let result = match c.result {
            Outcome::Passed => "ok  ",
            Outcome::Warning => "WARN",
            Outcome::Failed => "FAIL",
        };
        println!("  {result} {}{about}: {}", c.name, c.message);
    }
    if let Some(e) = &report.error {
        println!("  stopped: {e}");
    }
    println!("  report stored as drills/{}", report.id);
}
