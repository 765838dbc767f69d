//! `lifeboat audit verify`: checks an audit log's hash chain.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use lifeboat_common::audit::verify;

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
        let AuditSub::Verify(args) = self.sub;
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
