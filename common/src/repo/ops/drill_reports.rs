//! Drill reports in the repository: written once under `drills/<id>`,
//! listed and found by id or unique prefix.

use bytes::Bytes;

use crate::repo::engine::repository::{Damaged, Repository};
use crate::repo::error::RepoError;
use crate::repo::format::drill::DrillReport;
use crate::repo::format::layout::{DRILL_KIND, DRILLS_PREFIX, drill_key};
use crate::repo::format::object;

/// Stores `report` under `drills/<id>`; returns its key. A report is never
/// replaced: a second one under the same id is refused.
pub async fn save_drill_report(repo: &Repository, report: &DrillReport) -> Result<String, RepoError> {
    let key = drill_key(&report.id);
    let payload =
        serde_json::to_vec(report).map_err(|e| RepoError::Encode { what: "drill report", reason: e.to_string() })?;
    let sealed = object::seal(repo.keyring(), DRILL_KIND, &key, payload, repo.config().compression_level)?;
    repo.store().put_if_absent(&key, Bytes::from(sealed)).await?;
    Ok(key)
}

/// Every drill report that can be read, oldest first, and those that cannot.
pub async fn drill_reports(repo: &Repository) -> Result<(Vec<DrillReport>, Vec<Damaged>), RepoError> {
    let (good, damaged) = repo.sealed_objects::<DrillReport>(DRILLS_PREFIX, DRILL_KIND).await?;
    let mut reports: Vec<DrillReport> = good.into_iter().map(|(_, r)| r).collect();
    reports.sort_by(|a, b| a.started.cmp(&b.started).then_with(|| a.id.cmp(&b.id)));
    Ok((reports, damaged))
}

/// The report whose id is `id` or starts with it (unique).
pub async fn find_drill_report(repo: &Repository, id: &str) -> Result<DrillReport, RepoError> {
    let (reports, _) = drill_reports(repo).await?;
    find_drill_report_in(&reports, id).cloned().map_err(RepoError::SnapshotLookup)
}

/// Among `reports`, the one whose id is `id` or starts with it (unique).
pub fn find_drill_report_in<'a>(reports: &'a [DrillReport], id: &str) -> Result<&'a DrillReport, String> {
    if let Some(exact) = reports.iter().find(|r| r.id == id) {
        return Ok(exact);
    }
    let mut matches = reports.iter().filter(|r| !id.is_empty() && r.id.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some(found), None) => Ok(found),
        (None, _) => Err(format!("{id}: no such drill report")),
        _ => Err(format!("{id}: prefix matches several drill reports: give more of the id")),
    }
}
