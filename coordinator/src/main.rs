//! `lifeboat-coordinator`: the control plane's server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lifeboat_common::audit::AuditLog;
use lifeboat_common::telemetry::{entry, metrics};
use lifeboat_coordinator::config::{CoordinatorConfig, Policy};
use lifeboat_coordinator::core::{self, Shared};
use lifeboat_coordinator::service::Gate;
use lifeboat_coordinator::service::listener;
use tokio::signal::unix::{SignalKind, signal};

/// Lifeboat's coordinator.
#[derive(Parser)]
#[command(name = "lifeboat-coordinator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator (SIGHUP reloads the policy; a malformed one is
    /// refused and the one in force stays).
    Run {
        /// The configuration file (TOML).
        #[arg(long, env = "LIFEBOAT_COORDINATOR_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file and the policy it names, then exit.
    Check {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let name = "lifeboat-coordinator";
    match &cli.command {
        Command::Run { config } => {
            // Traces start with logging, before the runtime runs the command;
            // a configuration that does not load is reported by `serve`.
            let otlp = CoordinatorConfig::load(config).ok().and_then(|c| c.otlp_endpoint);
            entry::run_daemon(name, "info", otlp.as_deref(), async move { run(cli).await.map(|()| 0) })
        }
        Command::Check { .. } => entry::run(name, async move { run(cli).await.map(|()| 0) }),
    }
}

fn load(config_path: &Path) -> Result<(CoordinatorConfig, Policy)> {
    let config = CoordinatorConfig::load(config_path)?;
    let policy = Policy::load(&config.policy).context("the policy is refused")?;
    Ok((config, policy))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check { config } => {
            let (config, policy) = load(&config)?;
            println!(
                "{}: ok; policy {}: {} schedules, {} monitoring entries, {} alert channels",
                config.name,
                policy.path.display(),
                policy.schedules.len(),
                policy.monitoring.len(),
                policy.alerting.channels.len()
            );
            Ok(())
        }
        Command::Run { config: config_path } => serve(&config_path).await,
    }
}

/// One socket per agent: take the hard limit on descriptors, not the soft one.
fn raise_descriptor_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn serve(config_path: &Path) -> Result<()> {
    let (config, policy) = load(config_path)?;
    raise_descriptor_limit();
    let tls = config.tls.server().context("the coordinator's TLS files")?;
    let audit_path = config.state_dir.join("audit.log");
    let audit = Arc::new(AuditLog::open(&audit_path).with_context(|| format!("audit log {}", audit_path.display()))?);
    let gate = Arc::new(Gate::new(config.role_map()?, audit.clone()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let metrics_endpoint = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let backend = core::open_backend(&config).await.context("opening the control-plane state")?;
    tracing::info!(
        name = config.name,
        listen = %config.listen,
        url = config.url(),
        state = if config.etcd.is_some() { "etcd" } else { "embedded" },
        schedules = policy.schedules.len(),
        "coordinator starting"
    );
    let retention = config.repository.clone().map(|r| (r, config.retention_every, config.prune_grace));
    let storage = config.repository.clone().map(|r| (r, config.storage_every));
    let shared = core::start(config, policy, backend, audit);
    match retention {
        Some((settings, every, grace)) => {
            tokio::spawn(lifeboat_coordinator::retention::keep_applying(shared.clone(), settings, every, grace));
        }
        None => shared.set_retention("off: no [repository] in the configuration".into()),
    }
    if let Some((settings, every)) = storage {
        tokio::spawn(lifeboat_coordinator::storage::keep_measuring(shared.clone(), settings, every));
    }
    tokio::spawn(reload_on_hangup(shared.clone()));
    if let Some(endpoint) = metrics_endpoint {
        let scrape = Arc::new(lifeboat_coordinator::metrics::CoordinatorScrape { shared: shared.clone() });
        tokio::spawn(endpoint.serve(scrape));
    }
    listener::serve(listener, tls, shared, gate, shutdown()).await?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// SIGHUP: the policy is read again; a malformed one is refused, naming
/// the line, and the one in force stays.
async fn reload_on_hangup(shared: Arc<Shared>) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else { return };
    while hangups.recv().await.is_some() {
        let path = shared.config.policy.clone();
        match Policy::load(&path) {
            Ok(policy) => {
                tracing::info!(path = %path.display(), schedules = policy.schedules.len(), "policy reloaded");
                *shared.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
            }
            Err(e) => tracing::error!(error = %e, "policy reload refused; the policy in force stays"),
        }
    }
}

async fn shutdown() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
