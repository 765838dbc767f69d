//! PagerDuty's Events API v2: a trigger opens (or, repeated, joins) the
//! alert whose `dedup_key` it names; a resolve with the same key ends it.

use lifeboat_common::policy::alerting::Secret;
use serde_json::json;

use super::{Context, post_json};
use crate::alerts::incidents::{Incident, Notify};

/// The `dedup_key` of an incident: stable for its life, unique per incident.
pub fn dedup_key(incident: &Incident) -> String {
    format!("lifeboat:{}", incident.id)
}

pub(super) async fn send(
    http: &reqwest::Client,
    url: &str,
    routing_key: &Secret,
    incident: &Incident,
    notify: Notify,
    ctx: &Context,
) -> Result<(), String> {
    let routing_key = routing_key.read().map_err(|e| e.0)?;
    let body = match notify {
        Notify::Trigger => json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key(incident),
            "client": "Lifeboat",
            "payload": {
                // PagerDuty cuts summaries at 1024 characters.
                "summary": incident.summary.chars().take(1024).collect::<String>(),
                "source": incident.target,
                "severity": incident.severity.name(),
                "timestamp": incident.opened.to_rfc3339(),
                "component": incident.target.split('/').next().unwrap_or_default(),
                "group": ctx.coordinator,
                "class": incident.alert.name(),
                "custom_details": incident.details,
            },
        }),
        Notify::Resolve => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(incident),
        }),
    };
    post_json(http, url, &body, None).await
}
