//! Email over SMTP (lettre), with STARTTLS required unless the server is
//! on loopback and the channel says `starttls: false`.

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use lifeboat_common::error_chain::error_chain;
use lifeboat_common::policy::alerting::Channel;

use super::{Context, title};
use crate::alerts::incidents::{Incident, Notify};

/// The message's body: the summary, the figures, and how to acknowledge.
pub fn body(incident: &Incident, notify: Notify, ctx: &Context) -> String {
    let mut text = format!("{}\n\n{}\n\n", title(incident, notify), incident.summary);
    text.push_str(&format!(
        "incident:  {}\ntarget:    {}\nseverity:  {}\nopened:    {}\n",
        incident.id,
        incident.target,
        incident.severity.name(),
        incident.opened.to_rfc3339()
    ));
    if let Some(at) = incident.resolved {
        text.push_str(&format!("resolved:  {}\n", at.to_rfc3339()));
    }
    for (k, v) in &incident.details {
        text.push_str(&format!("{k}: {v}\n"));
    }
    if notify == Notify::Trigger {
        text.push_str(&format!("\nTo stop its escalation: lifeboat alerts ack {}\n", incident.id));
    }
    text.push_str(&format!("\n-- Lifeboat coordinator {}\n", ctx.coordinator));
    text
}

pub(super) async fn send(channel: &Channel, incident: &Incident, notify: Notify, ctx: &Context) -> Result<(), String> {
    let Channel::Email { smtp, starttls, from, to, username, password, ca_file } = channel else {
        return Err("not an email channel".into());
    };
    let (host, port) = smtp.rsplit_once(':').ok_or_else(|| format!("smtp {smtp:?}: expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("smtp {smtp:?}: the port is not a number"))?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port);
    if *starttls {
        let mut tls = TlsParameters::builder(host.to_owned());
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            tls = tls.add_root_certificate(
                Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: {e}", path.display()))?,
            );
        }
        builder = builder.tls(Tls::Required(tls.build().map_err(|e| e.to_string())?));
    } else if !is_loopback(host) {
        return Err(format!(
            "refusing to send mail in clear to {host}: starttls: false is only for a server on loopback"
        ));
    }
    if let Some(user) = username {
        let secret = password.as_ref().map(|p| p.read()).transpose().map_err(|e| e.0)?.unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), secret));
    }
    let mailer = builder.build();
    let from: Mailbox = from.parse().map_err(|e| format!("from {from:?}: {e}"))?;
    let mut message = Message::builder().from(from).subject(format!("Lifeboat {}", title(incident, notify)));
    for recipient in to {
        message = message.to(recipient.parse().map_err(|e| format!("to {recipient:?}: {e}"))?);
    }
    let message =
        message.header(ContentType::TEXT_PLAIN).body(body(incident, notify, ctx)).map_err(|e| e.to_string())?;
    mailer.send(message).await.map(|_| ()).map_err(|e| error_chain(&e))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
