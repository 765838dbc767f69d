//! Delivery of incidents' notices to their channels. Each notice is sent
//! by a task of its own, retried with back-off, so a dead channel delays
//! nothing else and never the scheduler; every attempt is counted in
//! `lifeboat_notifications_total`, and the outcome goes back to the core,
//! which records it with the incident.

mod alertmanager;
mod email;
mod pagerduty;
mod slack;
mod webhook;

use std::time::Duration;

use lifeboat_common::error_chain::error_chain;
use lifeboat_common::policy::alerting::Channel;
use tokio::sync::mpsc;

use crate::alerts::incidents::{Incident, Notify, Send};
use crate::core::Event;
use crate::metrics::Counts;

/// Attempts of one notice before it is given up.
pub const ATTEMPTS: u32 = 5;

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait after the first failed attempt (doubled after each).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What a channel is told besides the incident.
#[derive(Debug, Clone)]
pub struct Context {
    /// The coordinator sending it.
    pub coordinator: String,
}

/// How a notice went.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The incident.
    pub incident: String,
    /// The channel.
    pub channel: String,
    /// What it said.
    pub notify: Notify,
    /// Sent, or the last error.
    pub result: Result<(), String>,
    /// Attempts made.
    pub attempts: u32,
}

/// Sends notices; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    http: reqwest::Client,
    counts: Counts,
    events: mpsc::Sender<Event>,
    context: Context,
}

impl Notifier {
    /// A notifier reporting outcomes to the core's inbox.
    pub fn new(counts: Counts, events: mpsc::Sender<Event>, context: Context) -> Self {
        // Redirects are not followed: a webhook that moved is a failure to see.
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Notifier { http, counts, events, context }
    }

    /// Sends `send` on `channel` in a task of its own; the outcome reaches
    /// the core as [`Event::Delivered`] unless `record` is false (an
    /// Alertmanager refresh, which owes nothing).
    pub fn spawn(&self, send: Send, channel: Option<Channel>, record: bool) {
        let this = self.clone();
        tokio::spawn(async move {
            let Send { incident, channel: name, notify } = send;
            let (result, attempts) = match channel {
                None => (Err(format!("no channel {name:?} in the policy's alerting.channels")), 0),
                Some(channel) => this.with_retries(&name, &channel, &incident, notify).await,
            };
            match &result {
                Ok(()) => tracing::info!(
                    incident = incident.id,
                    channel = name,
                    notify = notify.name(),
                    attempts,
                    "notice sent"
                ),
                Err(e) => {
                    tracing::error!(incident = incident.id, channel = name, notify = notify.name(), attempts, error = %e, "notice not sent; gave up")
                }
            }
            if record {
                let delivered = Delivered { incident: incident.id, channel: name, notify, result, attempts };
                this.events.send(Event::Delivered(delivered)).await.ok();
            }
        });
    }

    async fn with_retries(
        &self,
        name: &str,
        channel: &Channel,
        incident: &Incident,
        notify: Notify,
    ) -> (Result<(), String>, u32) {
        let mut wait = FIRST_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let sent = tokio::time::timeout(ATTEMPT_TIMEOUT, self.deliver(channel, incident, notify))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs())));
            self.counts.notification(name, sent.is_ok());
            match sent {
                Ok(()) => return (Ok(()), attempt),
                Err(e) => {
                    tracing::warn!(incident = incident.id, channel = name, attempt, error = %e, "notice failed; retrying");
                    last = format!("{} {name}: {e}", channel.kind());
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        (Err(last), ATTEMPTS)
    }

    async fn deliver(&self, channel: &Channel, incident: &Incident, notify: Notify) -> Result<(), String> {
        let ctx = &self.context;
        match channel {
            Channel::Pagerduty { routing_key, url } => {
                pagerduty::send(&self.http, url, routing_key, incident, notify, ctx).await
            }
            Channel::Slack { url } => slack::send(&self.http, url, incident, notify, ctx).await,
            Channel::Email { .. } => email::send(channel, incident, notify, ctx).await,
            Channel::Alertmanager { url } => alertmanager::send(&self.http, url, incident, notify, ctx).await,
            Channel::Webhook { url, token } => {
                webhook::send(&self.http, url, token.as_ref(), incident, notify, ctx).await
            }
        }
    }
}

/// Posts `body` as JSON; any status but 2xx is an error with the start of its body.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    bearer: Option<&str>,
) -> Result<(), String> {
    let mut request = http.post(url).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    // A reqwest error's top line (`error sending request`) says nothing alone.
    let response = request.send().await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()))
}

/// `[TRIGGER] error backup_failed on web1/docs`-style title.
fn title(incident: &Incident, notify: Notify) -> String {
    match notify {
        Notify::Trigger => format!(
            "[{}] {} on {}",
            incident.severity.name().to_uppercase(),
            incident.alert.name().replace('_', " "),
            incident.target
        ),
        Notify::Resolve => {
            format!("[RESOLVED] {} on {}", incident.alert.name().replace('_', " "), incident.target)
        }
    }
}
