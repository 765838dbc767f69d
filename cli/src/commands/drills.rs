//! `lifeboat drills`: the restore drills the coordinators ran, one
//! report in full (`show ID`, as JSON or the Markdown a runbook pastes),
//! and one drill of the policy started by hand (`run NAME`).

use anyhow::{Context, Result, bail};
use clap::Args;
use lifeboat_common::repo::format::drill::DrillReport;
use lifeboat_proto::v1;

use super::control::{Control, ControlArgs, follow, wait_for};
use super::drill::{exit_code, print_report};

/// Restore drills through the coordinator: the runs, newest first;
/// `show ID` one report whole; `run NAME` one drill of the policy now.
#[derive(Args)]
pub struct DrillsCommand {
    #[command(flatten)]
    control: ControlArgs,
    /// `show`: one run's whole report (target against actual, phases,
    /// checks, the backups used); `run`: run a drill of the policy now, on
    /// its agent (operator role).
    action: Option<Action>,
    /// The run's id (or a unique prefix) for `show`; the drill's name for `run`.
    name: Option<String>,
    /// `show`: as Markdown, for a runbook.
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
    /// `run`: wait for it to end and print its report (exit 1 when it
    /// fails, 2 when it passes and misses an objective).
    #[arg(long)]
    wait: bool,
    /// The newest this many runs (0: all kept).
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

/// What to do.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Action {
    /// Show one run's report.
    Show,
    /// Run a drill now.
    Run,
}

fn parse(json: &str) -> Result<DrillReport> {
    serde_json::from_str(json).context("the coordinator sent a drill report this client cannot read")
}

impl DrillsCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let json = self.control.json;
        match (self.action, self.name) {
            (None, _) => list(&control, json, self.limit).await,
            (Some(_), None) => bail!("name the run (show ID) or the drill (run NAME)"),
            (Some(Action::Show), Some(id)) => show(&control, json, self.markdown, id).await,
            (Some(Action::Run), Some(name)) => run(&control, json, self.wait, name).await,
        }
    }
}

async fn list(control: &Control, json: bool, limit: u32) -> Result<u8> {
    let request = v1::ListDrillsRequest { limit };
    let reply = control.call(|mut c| async move { c.list_drills(request).await }).await?;
    let reports: Vec<DrillReport> = reply.reports_json.iter().map(|j| parse(j)).collect::<Result<_>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(0);
    }
    if reports.is_empty() {
        println!("no drill has run yet");
    }
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1}s"));
    for r in &reports {
        let result = match r.outcome() {
            "passed" => "passed",
            "objectives_missed" => "passed, objectives MISSED",
            _ => "FAILED",
        };
        let against: Vec<String> = r
            .sources
            .iter()
            .filter_map(|s| s.verdict.as_ref())
            .chain(r.verdict.as_ref())
            .map(|v| format!("{} {:.0}s/{:.0}s", v.objective, v.rto_target_seconds, v.rpo_target_seconds))
            .collect();
        println!(
            "{}  {:<11} {:<26} RTO {:>8}  RPO {:>8}  objectives (RTO/RPO): {}",
            r.id,
            r.kind,
            result,
            secs(r.rto_seconds),
            secs(r.rpo_seconds),
            if against.is_empty() { "none".to_owned() } else { against.join(", ") }
        );
    }
    Ok(0)
}

/// Prints `report` as asked; the exit code says how it went.
fn print(report: &DrillReport, json: bool, markdown: bool) -> Result<u8> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else if markdown {
        print!("{}", report.markdown());
    } else {
        print_report(report);
    }
    Ok(exit_code(report))
}

async fn show(control: &Control, json: bool, markdown: bool, id: String) -> Result<u8> {
    let request = v1::ShowDrillRequest { id };
    let reply = control
        .call(|mut c| {
            let request = request.clone();
            async move { c.show_drill(request).await }
        })
        .await?;
    print(&parse(&reply.report_json)?, json, markdown)
}

async fn run(control: &Control, json: bool, wait: bool, name: String) -> Result<u8> {
    let request = v1::RunDrillRequest { name: name.clone() };
    let reply = control
        .call(|mut c| {
            let request = request.clone();
            async move { c.run_drill(request).await }
        })
        .await?;
    if !wait {
        return follow(control, json, reply, false).await;
    }
    let Some(job) = reply.job else { bail!("the coordinator answered without the job") };
    let job = wait_for(control, job, json).await?;
    let id = job.result.as_ref().map(|r| r.drill_report_id.clone()).unwrap_or_default();
    if id.is_empty() {
        let error = job.result.map(|r| r.error).unwrap_or_default();
        bail!("drill {name} ended without a report: {error}");
    }
    show(control, json, false, id).await
}
