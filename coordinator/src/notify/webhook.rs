//! A plain JSON webhook: the event and the incident as stored.

use lifeboat_common::policy::alerting::Secret;
use serde_json::json;

use super::{Context, post_json};
use crate::alerts::incidents::{Incident, Notify};

pub(super) async fn send(
    http: &reqwest::Client,
    url: &str,
    token: Option<&Secret>,
    incident: &Incident,
    notify: Notify,
    ctx: &Context,
) -> Result<(), String> {
    let token = token.map(Secret::read).transpose().map_err(|e| e.0)?;
    let body = json!({ "event": notify.name(), "coordinator": ctx.coordinator, "incident": incident });
    post_json(http, url, &body, token.as_deref()).await
}
