//! A Slack incoming webhook: Block Kit (header, summary, fields, details)
//! with a plain-text fallback for notifications and old clients.

use lifeboat_common::policy::alerting::Secret;
use serde_json::{Value, json};

use super::{Context, post_json, title};
use crate::alerts::incidents::{Incident, Notify};

/// The message for an incident's notice.
pub fn message(incident: &Incident, notify: Notify, ctx: &Context) -> Value {
    let title = title(incident, notify);
    let when = match (notify, incident.resolved) {
        (Notify::Resolve, Some(at)) => format!("*Resolved*\n{}", at.to_rfc3339()),
        _ => format!("*Opened*\n{}", incident.opened.to_rfc3339()),
    };
    let details: Vec<String> = incident.details.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    json!({
        "text": format!("{title}: {}", incident.summary),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": format!("Lifeboat {title}") } },
            { "type": "section", "text": { "type": "mrkdwn", "text": incident.summary } },
            { "type": "section", "fields": [
                { "type": "mrkdwn", "text": format!("*Target*\n{}", incident.target) },
                { "type": "mrkdwn", "text": format!("*Severity*\n{}", incident.severity.name()) },
                { "type": "mrkdwn", "text": when },
                { "type": "mrkdwn", "text": format!("*Incident*\n`{}`", incident.id) },
            ] },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": if details.is_empty() { format!("from {}", ctx.coordinator) } else { format!("{} · from {}", details.join(" · "), ctx.coordinator) } },
            ] },
        ],
    })
}

pub(super) async fn send(
    http: &reqwest::Client,
    url: &Secret,
    incident: &Incident,
    notify: Notify,
    ctx: &Context,
) -> Result<(), String> {
    let url = url.read().map_err(|e| e.0)?;
    post_json(http, &url, &message(incident, notify, ctx), None).await
}
