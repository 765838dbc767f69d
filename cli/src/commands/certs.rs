//! `lifeboat certs init`: a development CA and certificates for the
//! coordinator, agents and operators, so mutual TLS works out of the box.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lifeboat_common::tls::{DevCaRequest, issue_dev_certs};

/// Certificates for the control plane's mutual TLS.
#[derive(Args)]
pub struct CertsCommand {
    #[command(subcommand)]
    sub: CertsSub,
}

#[derive(Subcommand)]
enum CertsSub {
    /// Make a development CA in DIR (once) and issue certificates from it.
    /// With no --coordinator, --agent or --admin: one of each for this host
    /// and an operator named `admin`.
    Init(InitArgs),
}

#[derive(Args)]
struct InitArgs {
    /// Where the CA and the certificates go.
    #[arg(long)]
    dir: PathBuf,
    /// A coordinator certificate by name; repeatable.
    #[arg(long)]
    coordinator: Vec<String>,
    /// A DNS name or IP address coordinators are reached at (default:
    /// localhost, 127.0.0.1, ::1 and this host's name); repeatable.
    #[arg(long)]
    host: Vec<String>,
    /// An agent certificate for this host name; repeatable.
    #[arg(long)]
    agent: Vec<String>,
    /// An operator certificate for this login; repeatable.
    #[arg(long)]
    admin: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

impl CertsCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let CertsSub::Init(mut args) = self.sub;
        let this_host = gethostname::gethostname().to_string_lossy().into_owned();
        if args.coordinator.is_empty() && args.agent.is_empty() && args.admin.is_empty() {
            args.coordinator.push(this_host.clone());
            args.agent.push(this_host.clone());
            args.admin.push("admin".into());
        }
        if args.host.is_empty() {
            args.host = vec!["localhost".into(), "127.0.0.1".into(), "::1".into(), this_host];
        }
        let request = DevCaRequest {
            coordinators: args.coordinator,
            hosts: args.host,
            agents: args.agent,
            admins: args.admin,
            days: args.days,
        };
        let written = issue_dev_certs(&args.dir, &request)
            .with_context(|| format!("issuing certificates in {}", args.dir.display()))?;
        for path in &written {
            println!("{}", path.display());
        }
        eprintln!(
            "{} certificates in {} (keys beside them, mode 0600); the CA key there signs more: keep it off production machines",
            written.len(),
            args.dir.display()
        );
        Ok(0)
    }
}
