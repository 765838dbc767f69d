//! The policy's `alerting` block: the channels incidents go to, declared
//! once and named from `monitoring.backup_jobs[].alert_channels`, and the
//! escalation delay of the seed's communication plan.
//!
//! ```yaml
//! alerting:
//!   escalate_after: 15m          # the seed: "Escalation: 15 minutes"
//!   default_channels: [pagerduty, slack, email]   # for what no entry watches
//!   channels:
//!     pagerduty: { type: pagerduty, routing_key: { env: LIFEBOAT_PAGERDUTY_KEY } }
//!     slack:     { type: slack, url: { file: /etc/lifeboat/slack-webhook } }
//!     email:     { type: email, smtp: "smtp.example.com:587", from: "lifeboat@example.com",
//!                  to: ["oncall@example.com"], username: lifeboat, password: { env: LIFEBOAT_SMTP_PASSWORD } }
//!     alertmanager: { type: alertmanager, url: "http://127.0.0.1:9093" }
//!     hook:      { type: webhook, url: "https://ops.example.com/lifeboat" }
//! ```
//!
//! Secrets (a routing key, Slack's webhook URL, which holds its token, an
//! SMTP password, a webhook's bearer token) are given as `{ file: PATH }`
//! or `{ env: NAME }`, never in clear, and read when a notification is
//! sent. Every endpoint's URL can be set (EU endpoints, proxies, tests).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::PolicyError;
use super::monitoring::MonitoredJob;
use crate::invalid::Invalid;

/// PagerDuty's Events API v2 (US service region).
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A secret, from a file or the environment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Secret {
    /// The file's contents, trimmed.
    File(PathBuf),
    /// The variable's value.
    Env(String),
}

impl Secret {
    /// Reads it now.
    pub fn read(&self) -> Result<String, Invalid> {
        let value = match self {
            Secret::File(path) => {
                std::fs::read_to_string(path).map_err(|e| Invalid(format!("secret file {}: {e}", path.display())))?
            }
            Secret::Env(name) => {
                std::env::var(name).map_err(|_| Invalid(format!("secret variable {name} is not set")))?
            }
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(Invalid(format!("the secret in {self} is empty")));
        }
        Ok(value)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::File(p) => write!(f, "file {}", p.display()),
            Secret::Env(n) => write!(f, "${n}"),
        }
    }
}

/// A channel incidents are sent to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Channel {
    /// PagerDuty's Events API v2: trigger and resolve by a stable `dedup_key`.
    Pagerduty {
        /// The integration's routing key.
        routing_key: Secret,
        /// The events endpoint (EU: `https://events.eu.pagerduty.com/v2/enqueue`).
        #[serde(default = "pagerduty_url")]
        url: String,
    },
    /// A Slack incoming webhook (Block Kit, with a text fallback).
    Slack {
        /// The webhook's URL, which holds its token.
        url: Secret,
    },
    /// Email over SMTP with STARTTLS.
    Email {
        /// `host:port` of the submission server.
        smtp: String,
        /// STARTTLS before anything is sent (off only for a server on loopback).
        #[serde(default = "yes")]
        starttls: bool,
        /// The sender.
        from: String,
        /// The recipients.
        to: Vec<String>,
        /// The login, if the server wants one.
        username: Option<String>,
        /// Its password.
        password: Option<Secret>,
        /// A CA to trust besides the system's (a private mail server).
        ca_file: Option<PathBuf>,
    },
    /// Prometheus Alertmanager's v2 API, so an existing stack routes Lifeboat's alerts.
    Alertmanager {
        /// Its base URL (`http://host:9093`).
        url: String,
    },
    /// Plain JSON posted to a URL.
    Webhook {
        /// Where.
        url: String,
        /// A bearer token, if the receiver wants one.
        token: Option<Secret>,
    },
}

fn pagerduty_url() -> String {
    PAGERDUTY_EVENTS_URL.to_owned()
}

fn yes() -> bool {
    true
}

impl Channel {
    /// The channel's type, as written.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Pagerduty { .. } => "pagerduty",
            Channel::Slack { .. } => "slack",
            Channel::Email { .. } => "email",
            Channel::Alertmanager { .. } => "alertmanager",
            Channel::Webhook { .. } => "webhook",
        }
    }
}

/// The `alerting` block, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerting {
    /// The channels, by name.
    pub channels: BTreeMap<String, Channel>,
    /// How long an incident waits, neither acknowledged nor resolved,
    /// before it goes to the next channel.
    pub escalate_after: Duration,
    /// Channels of incidents no monitoring entry covers (an agent lost, no
    /// leader, a store's copy lag, a source nothing watches).
    pub default_channels: Vec<String>,
    /// Success ratio over 30 days under which a source raises an incident (the seed: 99 %).
    pub min_success_ratio: f64,
    /// How far a backup's size may stray from its source's recent median (the seed: 20 %).
    pub size_deviation: f64,
    /// A secondary store's copy lag past this is an incident.
    pub max_copy_lag_bytes: u64,
}

impl Default for Alerting {
    fn default() -> Self {
        Alerting {
            channels: BTreeMap::new(),
            escalate_after: Duration::from_secs(15 * 60),
            default_channels: Vec::new(),
            min_success_ratio: 0.99,
            size_deviation: 0.20,
            max_copy_lag_bytes: 1 << 30,
        }
    }
}

#[derive(Deserialize)]
struct Document {
    alerting: Option<Raw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    channels: BTreeMap<String, Channel>,
    escalate_after: Option<String>,
    default_channels: Option<Vec<String>>,
    min_success_ratio: Option<f64>,
    size_deviation: Option<f64>,
    max_copy_lag: Option<String>,
}

/// The `alerting` block of a policy document (none: no channels), checked
/// against the monitoring entries that name its channels.
pub fn alerting_from_yaml(text: &str, monitoring: &[MonitoredJob]) -> Result<Alerting, PolicyError> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let mut alerting = Alerting::default();
    let bad = |setting: &str, reason: String| PolicyError::Alerting { setting: setting.to_owned(), reason };
    if let Some(raw) = doc.alerting {
        alerting.channels = raw.channels;
        if let Some(text) = raw.escalate_after {
            alerting.escalate_after =
                humantime::parse_duration(&text).map_err(|e| bad("escalate_after", format!("{text:?}: {e}")))?;
        }
        if let Some(r) = raw.min_success_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(bad("min_success_ratio", format!("{r}: between 0 and 1")));
            }
            alerting.min_success_ratio = r;
        }
        if let Some(d) = raw.size_deviation {
            if !(d > 0.0 && d.is_finite()) {
                return Err(bad("size_deviation", format!("{d}: a fraction above 0 (0.2 is 20 %)")));
            }
            alerting.size_deviation = d;
        }
        if let Some(text) = raw.max_copy_lag {
            alerting.max_copy_lag_bytes = super::monitoring::bytes(&text).map_err(|e| bad("max_copy_lag", e))? as u64;
        }
        alerting.default_channels = raw.default_channels.unwrap_or_else(|| alerting.channels.keys().cloned().collect());
    }
    for (name, channel) in &alerting.channels {
        if let Channel::Email { to, smtp, .. } = channel
            && (to.is_empty() || !smtp.contains(':'))
        {
            return Err(bad(
                &format!("channels.{name}"),
                "email needs smtp: \"host:port\" and at least one to:".into(),
            ));
        }
    }
    let known = |c: &String| alerting.channels.contains_key(c);
    if let Some(c) = alerting.default_channels.iter().find(|c| !known(c)) {
        return Err(bad("default_channels", format!("no channel {c:?} in alerting.channels")));
    }
    for job in monitoring {
        if let Some(c) = job.alert_channels.iter().find(|c| !known(c)) {
            return Err(PolicyError::Monitoring {
                entry: format!("backup_jobs {:?}", job.name),
                reason: format!(
                    "alert_channels names {c:?}, which alerting.channels does not declare ({})",
                    if alerting.channels.is_empty() {
                        "it declares none".to_owned()
                    } else {
                        alerting.channels.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            });
        }
    }
    Ok(alerting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backup_schedules_from_yaml;
    use crate::policy::monitoring::monitoring_from_yaml;

    fn load(text: &str) -> Result<Alerting, String> {
        let schedules = backup_schedules_from_yaml(text).map_err(|e| e.to_string())?;
        let jobs = monitoring_from_yaml(text, &schedules).map_err(|e| e.to_string())?;
        alerting_from_yaml(text, &jobs).map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_declares_every_channel_the_seed_names() {
        let alerting = load(include_str!("../../../deploy/examples/policy.yaml")).unwrap();
        assert_eq!(alerting.escalate_after, Duration::from_secs(900));
        let kinds: Vec<&str> = alerting.channels.values().map(Channel::kind).collect();
        assert_eq!(kinds, ["email", "pagerduty", "slack"]);
        assert!(
            matches!(&alerting.channels["pagerduty"], Channel::Pagerduty { url, .. } if url == PAGERDUTY_EVENTS_URL)
        );
    }

    #[test]
    fn secrets_are_never_in_clear_and_names_must_resolve() {
        let head = "backup_schedules:\n  db:\n    full: { cron: \"0 2 * * *\" }\n";
        let err =
            load(&format!("{head}alerting:\n  channels:\n    pd: {{ type: pagerduty, routing_key: \"R0123\" }}\n"))
                .unwrap_err();
        assert!(err.contains("line 6") && err.contains("file") && err.contains("env"), "{err}");
        let err = load(&format!(
            "{head}monitoring:\n  backup_jobs:\n    - name: Db Full\n      alert_channels: [pagerduty]\n"
        ))
        .unwrap_err();
        assert!(err.contains("\"pagerduty\"") && err.contains("declares none"), "{err}");
        let err =
            load(&format!("{head}alerting:\n  channels:\n    x: {{ type: carrier_pigeon, url: a }}\n")).unwrap_err();
        assert!(err.contains("line 6") && err.contains("carrier_pigeon"), "{err}");
        let err = load(&format!("{head}alerting:\n  escalate_after: soon\n")).unwrap_err();
        assert!(err.contains("alerting.escalate_after"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("pd.key");
        std::fs::write(&key, "R0123\n").unwrap();
        assert_eq!(Secret::File(key).read().unwrap(), "R0123");
        let err = Secret::Env("LIFEBOAT_TEST_UNSET_SECRET".into()).read().unwrap_err();
        assert!(err.0.contains("LIFEBOAT_TEST_UNSET_SECRET"), "{err}");
    }
}
