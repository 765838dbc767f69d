//! Restore drills in the control plane: each run's report kept at
//! `<prefix>/drills/<id>` (its agent also seals it into the repository),
//! the newest run of each drill for metrics and alerts, and what an agent
//! is sent to run one.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use lifeboat_common::repo::format::drill::DrillReport;
use lifeboat_common::repo::ops::drill_reports::find_drill_report_in;
use lifeboat_proto::v1;
use tonic::Status;

use crate::agents::AgentRecord;
use crate::alerts::Alert;
use crate::alerts::conditions::Condition;
use crate::config::Policy;
use crate::state::{Op, State, StateError};

/// The newest run of one drill, as metrics and alerts see it.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillRow {
    /// The drill's name.
    pub drill: String,
    /// The run's report id.
    pub id: String,
    /// Every check passed.
    pub passed: bool,
    /// Every objective met.
    pub objectives_met: bool,
    /// `passed`, `objectives_missed` or `failed`.
    pub outcome: &'static str,
    /// Measured RTO, when it passed.
    pub rto_seconds: Option<f64>,
    /// Measured RPO.
    pub rpo_seconds: Option<f64>,
    /// When it ended.
    pub finished: DateTime<Utc>,
    /// Its headline.
    pub headline: String,
}

impl DrillRow {
    fn of(report: &DrillReport) -> DrillRow {
        DrillRow {
            drill: report.drill.clone(),
            id: report.id.clone(),
            passed: report.passed,
            objectives_met: report.objectives_met,
            outcome: report.outcome(),
            rto_seconds: report.rto_seconds,
            rpo_seconds: report.rpo_seconds,
            finished: report.finished,
            headline: report.headline(),
        }
    }
}

/// The reports in the state, and the newest run of each drill.
#[derive(Debug, Default)]
pub struct DrillBook {
    prefix: String,
    latest: BTreeMap<String, DrillRow>,
}

fn parse(key: &str, value: &[u8]) -> Option<DrillReport> {
    serde_json::from_slice(value)
        .map_err(|e| tracing::warn!(key, error = %e, "unreadable drill report left alone"))
        .ok()
}

impl DrillBook {
    fn key(prefix: &str, id: &str) -> String {
        format!("{prefix}/drills/{id}")
    }

    /// Every report stored under `prefix`, newest first.
    pub async fn reports(state: State<'_>, prefix: &str) -> Result<Vec<DrillReport>, StateError> {
        let mut reports: Vec<DrillReport> = state
            .list(&format!("{prefix}/drills/"))
            .await?
            .into_iter()
            .filter_map(|(key, stored)| parse(&key, &stored.value))
            .collect();
        reports.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.id.cmp(&a.id)));
        Ok(reports)
    }

    /// The newest run of each drill stored under `prefix`.
    pub async fn load(state: State<'_>, prefix: &str) -> Result<Self, StateError> {
        let mut book = DrillBook { prefix: prefix.to_owned(), latest: BTreeMap::new() };
        for report in Self::reports(state, prefix).await? {
            let newer = book.latest.get(&report.drill).is_none_or(|r| r.finished <= report.finished);
            if newer {
                book.latest.insert(report.drill.clone(), DrillRow::of(&report));
            }
        }
        Ok(book)
    }

    /// Keeps a report an agent sent; returns it, or none when it does not parse.
    pub async fn record(&mut self, state: State<'_>, json: &str) -> Result<Option<DrillReport>, StateError> {
        let Some(report) = parse("a drill job's result", json.as_bytes()) else { return Ok(None) };
        let key = Self::key(&self.prefix, &report.id);
        state.commit_if(&[], &[Op::Put(key, json.as_bytes().to_vec())]).await?;
        let newer = self.latest.get(&report.drill).is_none_or(|r| r.finished <= report.finished);
        if newer {
            self.latest.insert(report.drill.clone(), DrillRow::of(&report));
        }
        Ok(Some(report))
    }

    /// The newest run of each drill.
    pub fn latest(&self) -> impl Iterator<Item = &DrillRow> {
        self.latest.values()
    }
}

/// `ListDrills`, from the state (the leader and followers alike).
pub async fn list(
    state: State<'_>,
    prefix: &str,
    request: &v1::ListDrillsRequest,
) -> Result<v1::ListDrillsReply, Status> {
    let reports = DrillBook::reports(state, prefix).await.map_err(unreadable)?;
    let limit = if request.limit == 0 { usize::MAX } else { request.limit as usize };
    let reports_json = reports.iter().take(limit).filter_map(|r| serde_json::to_string(r).ok()).collect();
    Ok(v1::ListDrillsReply { reports_json })
}

/// `ShowDrill`, from the state.
pub async fn show(state: State<'_>, prefix: &str, request: &v1::ShowDrillRequest) -> Result<v1::DrillReply, Status> {
    let reports = DrillBook::reports(state, prefix).await.map_err(unreadable)?;
    let report = find_drill_report_in(&reports, &request.id).map_err(Status::not_found)?;
    let report_json = serde_json::to_string(report).map_err(|e| Status::internal(e.to_string()))?;
    Ok(v1::DrillReply { report_json })
}

fn unreadable(e: StateError) -> Status {
    Status::unavailable(format!("cannot read the state: {e}"))
}

/// What an agent is sent to run drill `name`: the policy as written, and
/// each source's priority as the agents' hellos and the schedules say.
pub fn spec<'a>(policy: &Policy, name: &str, agents: impl Iterator<Item = &'a AgentRecord>) -> v1::DrillSpec {
    let mut priorities = HashMap::new();
    for agent in agents {
        for source in agent.sources.values() {
            let best = source.source.schedules.iter().filter_map(|id| policy.schedule(id)).map(|s| s.priority).min();
            if let Some(p) = best {
                priorities.insert(format!("{}/{}", agent.host, source.source.id), u32::from(p));
            }
        }
    }
    v1::DrillSpec { policy_yaml: policy.text.clone(), name: name.to_owned(), priorities }
}

/// A drill whose newest run failed, or passed and missed an objective.
pub fn conditions<'a>(latest: impl Iterator<Item = &'a DrillRow>, policy: &Policy) -> Vec<Condition> {
    let mut found = Vec::new();
    for row in latest {
        // A drill taken out of the policy alerts no more.
        if policy.drills.drill(&row.drill).is_none() {
            continue;
        }
        let alert = match row.outcome {
            "failed" => Alert::DrillFailed,
            "objectives_missed" => Alert::DrillObjectiveMissed,
            _ => continue,
        };
        let mut details = BTreeMap::from([("report".to_owned(), row.id.clone())]);
        if let Some(rto) = row.rto_seconds {
            details.insert("rto_seconds".into(), format!("{rto:.1}"));
        }
        if let Some(rpo) = row.rpo_seconds {
            details.insert("rpo_seconds".into(), format!("{rpo:.1}"));
        }
        found.push(Condition {
            alert,
            target: format!("drill:{}", row.drill),
            summary: format!("{} (lifeboat drills show {})", row.headline, row.id),
            details,
            channels: policy.alerting.default_channels.clone(),
            entry: None,
        });
    }
    found
}
