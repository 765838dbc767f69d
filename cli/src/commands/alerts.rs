//! `lifeboat alerts`: the leader's incidents, and `alerts ack ID`, which
//! stops one's escalation (operator role; audited like every admin call).

use anyhow::Result;
use clap::Args;
use lifeboat_proto::v1;

use super::control::{ControlArgs, print_json, when};

/// Incidents: open ones, or all with `--all`; `ack ID` acknowledges one.
#[derive(Args)]
pub struct AlertsCommand {
    #[command(flatten)]
    control: ControlArgs,
    /// `ack`: acknowledge an open incident, which then goes to no further
    /// channel (operator role).
    action: Option<Action>,
    /// The incident's id, for `ack` (`lifeboat alerts` lists them).
    id: Option<String>,
    /// Resolved incidents too.
    #[arg(long)]
    all: bool,
}

/// What to do with an incident.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Action {
    /// Acknowledge it: escalation stops.
    Ack,
}

fn print(i: &v1::Incident) {
    let state = if i.resolved_unix_ms > 0 {
        format!("resolved {}", when(i.resolved_unix_ms / 1000))
    } else if !i.acknowledged_by.is_empty() {
        format!("acknowledged by {}", i.acknowledged_by)
    } else {
        "open".to_owned()
    };
    let reached: Vec<&str> = i.channels.iter().take(i.reached as usize).map(String::as_str).collect();
    println!("{}  {}  {:<8} {}", i.id, when(i.opened_unix_ms / 1000), i.severity, state);
    println!("    {}", i.summary);
    if !i.channels.is_empty() {
        let next = if i.escalate_unix_ms > 0 {
            format!("; next channel at {}", when(i.escalate_unix_ms / 1000))
        } else {
            String::new()
        };
        println!(
            "    told: {} of {}{next}",
            if reached.is_empty() { "-".into() } else { reached.join(", ") },
            i.channels.join(" -> ")
        );
    }
    for n in i.notices.iter().filter(|n| n.sent_unix_ms == 0) {
        let why = if n.error.is_empty() { "owed".to_owned() } else { format!("failed: {}", n.error) };
        println!("    {} {}: {why}", n.channel, n.notify);
    }
}

impl AlertsCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let json = self.control.json;
        match (self.action, self.id) {
            (Some(Action::Ack), Some(id)) => {
                let request = v1::AckIncidentRequest { id };
                let reply = control
                    .call(|mut c| {
                        let request = request.clone();
                        async move { c.ack_incident(request).await }
                    })
                    .await?;
                if json {
                    print_json(&reply)?;
                } else if let Some(i) = &reply.incident {
                    print(i);
                }
                Ok(0)
            }
            (Some(Action::Ack), None) => anyhow::bail!("alerts ack needs the incident's id"),
            (None, _) => {
                let all = self.all;
                let reply = control
                    .call(|mut c| async move { c.list_incidents(v1::ListIncidentsRequest { all }).await })
                    .await?;
                if json {
                    print_json(&reply)?;
                } else {
                    if reply.incidents.is_empty() {
                        println!("no {}incidents", if all { "" } else { "open " });
                    }
                    reply.incidents.iter().for_each(print);
                }
                // Like `status`: 2 while something is open, for scripts.
                Ok(if reply.incidents.iter().any(|i| i.resolved_unix_ms == 0) { 2 } else { 0 })
            }
        }
    }
}
