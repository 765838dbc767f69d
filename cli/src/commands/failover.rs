//! `lifeboat failover`: failover groups as the leader holds them (`status`),
//! a promotion by hand (`promote`) or without loss (`switchover`), both of
//! the admin role, and maintenance (`pause`,
//! `resume`: nothing automatic meanwhile). Every call is audited.

use anyhow::Result;
use clap::{Args, Subcommand};
use lifeboat_proto::v1;

use super::control::{ControlArgs, print_json};

/// Failover groups: where they stand, promotions, maintenance.
#[derive(Args)]
pub struct FailoverCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Each group: primary, epoch, members with their lag, the last failover
    /// with its measured RTO and RPO (exit 2 when a primary is lost and
    /// nothing can be promoted).
    Status {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Promote a member by hand (admin role).
    Promote {
        #[command(flatten)]
        control: ControlArgs,
        /// The group.
        group: String,
        /// The member to promote, HOST/SOURCE.
        #[arg(long)]
        to: String,
        /// Promote it even when it is past max_lag or not reporting.
        #[arg(long)]
        force: bool,
    },
    /// Hand the primary role to a standby without losing a commit: the
    /// primary stops cleanly, the standby replays its last WAL from the
    /// repository and promotes, the old primary follows it (admin role).
    Switchover {
        #[command(flatten)]
        control: ControlArgs,
        /// The group.
        group: String,
        /// The standby to hand over to, HOST/SOURCE.
        #[arg(long)]
        to: String,
    },
    /// Stop automatic failover of a group (admin role).
    Pause {
        #[command(flatten)]
        control: ControlArgs,
        /// The group.
        group: String,
    },
    /// Resume automatic failover of a group (admin role).
    Resume {
        #[command(flatten)]
        control: ControlArgs,
        /// The group.
        group: String,
    },
}

impl FailoverCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        match self.action {
            Action::Status { control: args } => {
                let control = args.connect()?;
                let reply =
                    control.call(|mut c| async move { c.failover_status(v1::FailoverStatusRequest {}).await }).await?;
                if args.json {
                    print_json(&reply)?;
                } else if reply.groups.is_empty() {
                    println!("no failover groups in the policy");
                }
                if !args.json {
                    reply.groups.iter().for_each(print);
                }
                let stuck = reply.groups.iter().any(|g| g.primary_lost_unix_ms > 0 && !g.blocked.is_empty());
                Ok(if stuck { 2 } else { 0 })
            }
            Action::Promote { control: args, group, to, force } => {
                let control = args.connect()?;
                let request = v1::PromoteRequest { group, to, force };
                let reply = control
                    .call(|mut c| {
                        let request = request.clone();
                        async move { c.promote(request).await }
                    })
                    .await?;
                show(&args, &reply)
            }
            Action::Switchover { control: args, group, to } => {
                let control = args.connect()?;
                let request = v1::PromoteRequest { group, to, force: false };
                let reply = control
                    .call(|mut c| {
                        let request = request.clone();
                        async move { c.switchover(request).await }
                    })
                    .await?;
                show(&args, &reply)
            }
            Action::Pause { control, group } => pause(&control, group, true).await,
            Action::Resume { control, group } => pause(&control, group, false).await,
        }
    }
}

async fn pause(args: &ControlArgs, group: String, pause: bool) -> Result<u8> {
    let control = args.connect()?;
    let request = v1::PauseFailoverRequest { group, pause };
    let reply = control
        .call(|mut c| {
            let request = request.clone();
            async move { c.pause_failover(request).await }
        })
        .await?;
    show(args, &reply)
}

fn show(args: &ControlArgs, reply: &v1::FailoverGroupReply) -> Result<u8> {
    if args.json {
        print_json(reply)?;
    } else if let Some(g) = &reply.group {
        print(g);
    }
    Ok(0)
}

fn print(g: &v1::FailoverGroup) {
    let mode = match (g.automatic, g.paused) {
        (_, true) => "PAUSED",
        (true, false) => "automatic",
        (false, false) => "manual",
    };
    println!(
        "{} ({}): primary {} epoch {}, {mode}, failover after {}s, max lag {}s",
        g.name, g.kind, g.primary, g.epoch, g.failover_after_seconds, g.max_lag_seconds
    );
    if g.primary_lost_unix_ms > 0 {
        println!("    PRIMARY SILENT since {}", super::control::when(g.primary_lost_unix_ms / 1000));
    }
    if !g.blocked.is_empty() {
        println!("    nothing would be promoted: {}", g.blocked);
    }
    println!(
        "    {:<28} {:<10} {:<9} {:<8} {:>14} {:>10}  STATE",
        "MEMBER", "REGION", "ATTACHED", "ROLE", "BEHIND BYTES", "BEHIND"
    );
    for m in &g.members {
        let state = m.state.clone().unwrap_or_default();
        let role = match v1::MemberRole::try_from(state.role) {
            Ok(v1::MemberRole::Primary) => "primary",
            Ok(v1::MemberRole::Standby) => "standby",
            _ if state.fenced => "FENCED",
            _ => "stopped",
        };
        let note = if m.member == g.primary || m.eligible { state.detail.clone() } else { m.why_not.clone() };
        println!(
            "    {:<28} {:<10} {:<9} {:<8} {:>14} {:>9.1}s  {}",
            m.member,
            m.region,
            if m.connected { "yes" } else { "no" },
            role,
            m.lag_bytes,
            m.lag_seconds,
            note
        );
    }
    if let Some(f) = &g.last_failover {
        let accepted = if f.accepted_unix_ms > 0 {
            format!(
                "accepted writes after {:.1}s (RTO); RPO {} bytes / {:.1}s",
                f.rto_seconds, f.rpo_bytes, f.rpo_seconds
            )
        } else {
            "not yet accepting writes".to_owned()
        };
        println!("    last failover: {} -> {} (epoch {}, {}): {accepted}", f.from, f.to, f.epoch, f.cause);
    }
}
