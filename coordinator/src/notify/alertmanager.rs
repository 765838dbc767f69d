//! Prometheus Alertmanager's v2 API, so a stack that already routes
//! Prometheus's alerts routes Lifeboat's: an open incident is posted as a
//! firing alert (and again every minute, or Alertmanager resolves it after
//! its `resolve_timeout`), a resolved one with its `endsAt`.

use serde_json::{Value, json};

use super::{Context, post_json};
use crate::alerts::Alert;
use crate::alerts::incidents::{Incident, Notify};

/// The alert's name as Prometheus rules spell theirs (`LifeboatBackupFailed`).
pub fn alertname(alert: Alert) -> String {
    let camel: String = alert
        .name()
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect();
    format!("Lifeboat{camel}")
}

/// The alerts to post for an incident's notice.
pub fn alerts(incident: &Incident, notify: Notify, ctx: &Context) -> Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), json!(incident.summary));
    for (k, v) in &incident.details {
        annotations.insert(k.clone(), json!(v));
    }
    let mut alert = json!({
        "labels": {
            "alertname": alertname(incident.alert),
            "severity": incident.severity.name(),
            "target": incident.target,
            "incident": incident.id,
            "service": "lifeboat",
            "coordinator": ctx.coordinator,
        },
        "annotations": annotations,
        "startsAt": incident.opened.to_rfc3339(),
    });
    if notify == Notify::Resolve {
        alert["endsAt"] = json!(incident.resolved.unwrap_or_else(chrono::Utc::now).to_rfc3339());
    }
    json!([alert])
}

pub(super) async fn send(
    http: &reqwest::Client,
    url: &str,
    incident: &Incident,
    notify: Notify,
    ctx: &Context,
) -> Result<(), String> {
    let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
    post_json(http, &endpoint, &alerts(incident, notify, ctx), None).await
}
