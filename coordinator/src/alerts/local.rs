//! What every coordinator raises by itself, leader or not: no coordinator
//! leads, or the control-plane store cannot be used. The state store may be
//! what is down, so these incidents are kept in memory and sent at once to
//! the policy's `default_channels`; their id is the same on every
//! coordinator of the deployment, so PagerDuty and Alertmanager see one
//! incident however many coordinators report it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::Alert;
use super::incidents::{Incident, Notice, Notify, Send};
use crate::core::{NodeRole, Shared};

/// How often the coordinator looks.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What is wrong now, if anything.
fn problem(shared: &Shared) -> Option<String> {
    if let Some(why) = shared.degraded() {
        return Some(why);
    }
    match &*shared.role.borrow() {
        NodeRole::Follower { leader: None } => Some("no coordinator leads: nothing is scheduled".to_owned()),
        _ => None,
    }
}

/// Watches for as long as the coordinator runs: a problem lasting past
/// `lost_after` opens the incident; its end resolves it.
pub async fn watch(shared: Arc<Shared>, prefix: String) {
    let mut since: Option<tokio::time::Instant> = None;
    let mut open: Option<Incident> = None;
    let target = format!("deployment {prefix}");
    let id = format!("no_leader-{}", prefix.trim_matches('/').replace('/', "_"));
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let now = Utc::now();
        match problem(&shared) {
            Some(why) => {
                let started = *since.get_or_insert_with(tokio::time::Instant::now);
                if open.is_none() && started.elapsed() >= shared.config.lost_after {
                    let channels = shared.policy().alerting.default_channels.clone();
                    let incident = Incident {
                        id: id.clone(),
                        alert: Alert::NoLeader,
                        target: target.clone(),
                        severity: Alert::NoLeader.severity(),
                        summary: format!("{}, seen by coordinator {}", why, shared.config.name),
                        details: BTreeMap::from([("coordinator".to_owned(), shared.config.name.clone())]),
                        reached: channels.len(),
                        notices: channels.iter().map(|c| Notice::owed(c, Notify::Trigger)).collect(),
                        channels,
                        entry: None,
                        opened: now,
                        resolved: None,
                        acknowledged: None,
                        escalate_at: None,
                    };
                    tracing::error!(incident = id, reason = why, "incident opened: the control plane is down");
                    send_all(&shared, &incident, Notify::Trigger);
                    open = Some(incident);
                }
            }
            None => {
                since = None;
                if let Some(mut incident) = open.take() {
                    incident.resolved = Some(now);
                    tracing::info!(incident = id, "incident resolved: a coordinator leads again");
                    send_all(&shared, &incident, Notify::Resolve);
                }
            }
        }
    }
}

fn send_all(shared: &Shared, incident: &Incident, notify: Notify) {
    let policy = shared.policy();
    for name in &incident.channels {
        let send = Send { incident: incident.clone(), channel: name.clone(), notify };
        shared.notifier.spawn(send, policy.alerting.channels.get(name).cloned(), false);
    }
}
