//! `lifeboat audit verify`: checks an audit log's hash chain.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_common::audit::verify;

use super::control::ControlArgs;

/// The audit log of admin calls.
#[derive(Args)]
pub struct AuditCommand {
    #[command(subcommand)]
    sub: AuditSub,
}

#[derive(Subcommand)]
enum AuditSub {
    /// Check that no entry was edited, removed, inserted or reordered.
    Verify(VerifyArgs),
    /// The coordinator's newest entries (needs the admin role).
    Log(LogArgs),
}

#[derive(Args)]
struct LogArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// At most this many entries, newest last.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

impl LogArgs {
    async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let limit = self.limit;
        let reply =
            control.call(|mut c| async move { c.audit(lifeboat_proto::v1::AuditRequest { limit }).await }).await?;
        if self.control.json {
            println!("{}", serde_json::to_string_pretty(&reply)?);
            return Ok(0);
        }
        for e in &reply.entries {
            let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(e.time_unix_ms).unwrap_or_default();
            let role = if e.role.is_empty() { String::new() } else { format!(" ({})", e.role) };
            let target = if e.target.is_empty() { String::new() } else { format!(" {}", e.target) };
            println!(
                "{:>6} {} {}{role} {}{target}: {}",
                e.seq,
                time.format("%Y-%m-%d %H:%M:%S"),
                e.principal,
                e.action,
                e.result
            );
        }
        println!("head {}", reply.head);
        Ok(0)
    }
}

#[derive(Args)]
struct VerifyArgs {
    /// The audit log file.
    file: PathBuf,
    /// The head hash recorded elsewhere: the log must end exactly there
    /// (catches a log rebuilt from some point on, or cut short).
    #[arg(long)]
    head: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl AuditCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let args = match self.sub {
            AuditSub::Verify(args) => args,
            AuditSub::Log(args) => return args.run().await,
        };
        let verified = verify(&args.file).with_context(|| format!("verifying {}", args.file.display()))?;
        if let Some(head) = &args.head
            && !head.eq_ignore_ascii_case(&verified.head)
        {
            bail!(
                "audit log {} ends at {} after {} entries, not at the expected head {head}: it was rewritten or cut short",
                args.file.display(),
                verified.head,
                verified.entries
            );
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&verified)?);
        } else {
            println!(
                "audit log {}: {} entries, chain intact, head {}",
                args.file.display(),
                verified.entries,
                verified.head
            );
        }
        Ok(0)
    }
}
