//! The admin client: the coordinator's `Admin` service over mutual TLS
//! (`status`, `agents`, `jobs`, `cancel`, `backup run`, `restore agent`,
//! `audit log`). A write sent to a follower is sent again to the leader it
//! names.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use lifeboat_proto::v1;
use lifeboat_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// The metadata key a follower's refusal carries the leader's URL in.
const LEADER_URL_KEY: &str = "lifeboat-leader-url";

/// How to reach the coordinator, and as whom.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    /// The coordinator (`https://host:port`); a follower sends writes on to the leader.
    #[arg(long, env = "LIFEBOAT_COORDINATOR")]
    pub coordinator: String,
    /// A directory made by `lifeboat certs init`: its `ca.pem`, and
    /// `admin-<login>.pem`/`.key` for `--login`.
    #[arg(long, env = "LIFEBOAT_CERTS")]
    pub certs: Option<PathBuf>,
    /// The operator login whose certificate to use from `--certs`.
    #[arg(long, env = "LIFEBOAT_LOGIN")]
    pub login: Option<String>,
    /// The deployment's CA certificate (instead of `--certs`).
    #[arg(long, env = "LIFEBOAT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The client certificate (instead of `--certs`/`--login`).
    #[arg(long, env = "LIFEBOAT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, env = "LIFEBOAT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Print the answer as JSON (the proto3 JSON mapping).
    #[arg(long)]
    pub json: bool,
}

impl ControlArgs {
    fn files(&self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let from_dir = |name: &str| self.certs.as_ref().map(|d| d.join(name));
        let login_file = |ext: &str| self.login.as_ref().and_then(|l| from_dir(&format!("admin-{l}.{ext}")));
        let ca = self.tls_ca.clone().or_else(|| from_dir("ca.pem"));
        let cert = self.tls_cert.clone().or_else(|| login_file("pem"));
        let key = self.tls_key.clone().or_else(|| login_file("key"));
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Ok((ca, cert, key)),
            _ => bail!("name the TLS files: --certs DIR --login NAME, or --tls-ca, --tls-cert and --tls-key"),
        }
    }

    /// A client of the coordinator.
    pub fn connect(&self) -> Result<Control> {
        let (ca, cert, key) = self.files()?;
        let tls = lifeboat_common::tls::client_config(&ca, &cert, &key).context("the client's TLS files")?;
        Ok(Control { url: self.coordinator.clone(), tls })
    }
}

/// A connection to a coordinator.
pub struct Control {
    url: String,
    tls: rustls::ClientConfig,
}

impl Control {
    fn client(&self, url: &str) -> Result<AdminClient<Channel>> {
        let channel =
            lifeboat_common::tls::channel(url, self.tls.clone()).with_context(|| format!("coordinator {url}"))?;
        Ok(AdminClient::new(channel))
    }

    /// Makes a call; one refused by a follower is made again at the leader.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match call(self.client(&self.url)?).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                let leader = status.metadata().get(LEADER_URL_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
                match leader {
                    Some(leader) if status.code() == tonic::Code::FailedPrecondition => {
                        tracing::info!(leader, "sent on to the leader");
                        call(self.client(&leader)?)
                            .await
                            .map(tonic::Response::into_inner)
                            .map_err(|s| refused(&leader, &s))
                    }
                    _ => Err(refused(&self.url, &status)),
                }
            }
        }
    }
}

fn refused(url: &str, status: &tonic::Status) -> anyhow::Error {
    let what = match status.code() {
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::NotFound => "not found",
        _ => "refused",
    };
    anyhow::anyhow!("coordinator {url}: {what}: {}", status.message())
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn when(unix: i64) -> String {
    match DateTime::<Utc>::from_timestamp(unix, 0) {
        Some(t) if unix > 0 => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        _ => "never".into(),
    }
}

fn ago(seconds: f64) -> String {
    if seconds < 0.0 {
        return "-".into();
    }
    humantime::format_duration(Duration::from_secs(seconds as u64)).to_string()
}

fn kind_name(kind: i32) -> &'static str {
    match v1::SourceKind::try_from(kind) {
        Ok(v1::SourceKind::Files) => "files",
        Ok(v1::SourceKind::Postgres) => "postgres",
        Ok(v1::SourceKind::Redis) => "redis",
        _ => "?",
    }
}

fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Queued) => "queued",
        Ok(v1::JobState::Running) => "running",
        Ok(v1::JobState::Succeeded) => "succeeded",
        Ok(v1::JobState::Failed) => "failed",
        Ok(v1::JobState::Cancelled) => "cancelled",
        _ => "?",
    }
}

/// `lifeboat status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    control: ControlArgs,
}

impl StatusArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let status = control.call(|mut c| async move { c.status(v1::StatusRequest {}).await }).await?;
        if self.control.json {
            print_json(&status)?;
            return Ok(0);
        }
        println!(
            "coordinator {}: leader {} at {} (term {})",
            status.coordinator,
            if status.leader.is_empty() { "none" } else { &status.leader },
            status.leader_url,
            status.term
        );
        if !status.degraded.is_empty() {
            println!("DEGRADED: {}", status.degraded);
        }
        println!("retention: {}", status.retention);
        println!(
            "{:<32} {:<9} {:<20} {:>10} {:>12} {:<8} NEXT RUN",
            "SOURCE", "KIND", "LAST BACKUP", "RPO", "BEHIND", "STATE"
        );
        for s in &status.sources {
            let next = s.next_runs.iter().min_by_key(|n| n.at_unix);
            let state = if s.rpo_breached { "BREACHED" } else { "ok" };
            println!(
                "{:<32} {:<9} {:<20} {:>10} {:>12} {:<8} {}",
                format!("{}/{}", s.host, s.source_id),
                kind_name(s.kind),
                when(s.last_backup_unix),
                ago(f64::from(s.rpo_seconds)),
                ago(s.lag_seconds),
                state,
                next.map_or_else(
                    || "on change / by hand".to_owned(),
                    |n| format!("{} ({})", when(n.at_unix), n.schedule_id)
                ),
            );
            if let Some(w) = &s.wal {
                println!(
                    "{:<32} WAL {}: stored {} of {}, {} bytes / {:.1} s behind",
                    "",
                    if w.connected { "streaming" } else { "DISCONNECTED" },
                    w.stored_lsn,
                    w.server_lsn,
                    w.lag_bytes,
                    w.lag_seconds
                );
            }
        }
        Ok(if status.sources.iter().any(|s| s.rpo_breached) || !status.degraded.is_empty() { 2 } else { 0 })
    }
}

/// `lifeboat agents`.
#[derive(Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    control: ControlArgs,
}

impl AgentsArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let reply = control.call(|mut c| async move { c.list_agents(v1::ListAgentsRequest {}).await }).await?;
        if self.control.json {
            print_json(&reply)?;
            return Ok(0);
        }
        println!("{:<24} {:<10} {:<10} {:<12} {:<20} SOURCES", "HOST", "REGION", "VERSION", "STATE", "LAST SEEN");
        for a in &reply.agents {
            let state = match (a.connected, a.lost) {
                (true, _) => "attached",
                (false, true) => "LOST",
                (false, false) => "detached",
            };
            let sources: Vec<&str> = a.sources.iter().map(|s| s.id.as_str()).collect();
            println!(
                "{:<24} {:<10} {:<10} {:<12} {:<20} {}",
                a.host,
                a.region,
                a.agent_version,
                state,
                when(a.last_seen_unix_ms / 1000),
                sources.join(", ")
            );
        }
        Ok(0)
    }
}

/// `lifeboat jobs`.
#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Only this host's jobs.
    #[arg(long)]
    host: Option<String>,
    /// Only jobs queued or running.
    #[arg(long)]
    active: bool,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

fn print_job(job: &v1::Job) {
    let a = job.assignment.clone().unwrap_or_default();
    let detail = match (&job.result, &job.progress) {
        (Some(r), _) if r.ok => {
            r.snapshot.as_ref().map_or(String::new(), |s| format!("snapshot {}", short(&s.snapshot_id)))
        }
        (Some(r), _) => r.error.clone(),
        (None, Some(p)) => format!("{}/{} files, {} bytes", p.files_done, p.files_total, p.bytes_done),
        (None, None) => String::new(),
    };
    println!(
        "{:<64} {:<10} {:>2} {:>2} {:<20} {}",
        a.job_id,
        state_name(job.state),
        a.attempt,
        a.priority,
        when(job.created_unix_ms / 1000),
        detail
    );
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl JobsArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let request =
            v1::ListJobsRequest { host: self.host.unwrap_or_default(), active: self.active, limit: self.limit };
        let reply = control
            .call(|mut c| {
                let request = request.clone();
                async move { c.list_jobs(request).await }
            })
            .await?;
        if self.control.json {
            print_json(&reply)?;
            return Ok(0);
        }
        println!("{:<64} {:<10} {:>2} {:>2} {:<20} DETAIL", "JOB", "STATE", "AT", "PR", "CREATED");
        for job in &reply.jobs {
            print_job(job);
        }
        Ok(0)
    }
}

/// `lifeboat cancel JOB`.
#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// The job's id.
    job: String,
    /// Why (recorded in the job and the audit log).
    #[arg(long, default_value = "by hand")]
    reason: String,
}

impl CancelArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        let control = self.control.connect()?;
        let request = v1::CancelJobRequest { job_id: self.job.clone(), reason: self.reason.clone() };
        let reply = control
            .call(|mut c| {
                let request = request.clone();
                async move { c.cancel_job(request).await }
            })
            .await?;
        if self.control.json {
            print_json(&reply)?;
        } else if let Some(job) = &reply.job {
            print_job(job);
        }
        Ok(0)
    }
}

/// `HOST/SOURCE`.
pub fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((host, source)) if !host.is_empty() && !source.is_empty() => Ok((host.to_owned(), source.to_owned())),
        _ => Err(format!("{s:?} is not HOST/SOURCE")),
    }
}

/// Waits until `job` ends, saying on stderr (unless `quiet`) how it stands.
pub async fn wait_for(control: &Control, mut job: v1::Job, quiet: bool) -> Result<v1::Job> {
    let id = job.assignment.as_ref().map(|a| a.job_id.clone()).unwrap_or_default();
    if !quiet {
        eprintln!("job {id} {} on {}", state_name(job.state), job.host);
    }
    let mut last_line = String::new();
    while !matches!(
        v1::JobState::try_from(job.state),
        Ok(v1::JobState::Succeeded | v1::JobState::Failed | v1::JobState::Cancelled)
    ) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let request = v1::ListJobsRequest { host: job.host.clone(), active: false, limit: u32::MAX };
        let jobs = control
            .call(|mut c| {
                let request = request.clone();
                async move { c.list_jobs(request).await }
            })
            .await?;
        job = jobs
            .jobs
            .into_iter()
            .find(|j| j.assignment.as_ref().is_some_and(|a| a.job_id == id))
            .with_context(|| format!("job {id} is no longer listed"))?;
        let line = format!(
            "job {id} {} (attempt {})",
            state_name(job.state),
            job.assignment.as_ref().map_or(0, |a| a.attempt)
        );
        if !quiet && line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
    }
    Ok(job)
}

/// Prints the job just made, and with `wait`, follows it to its end:
/// exit 0 when it succeeded, 1 when it did not.
pub async fn follow(control: &Control, json: bool, reply: v1::JobReply, wait: bool) -> Result<u8> {
    let Some(job) = reply.job else { bail!("the coordinator answered without the job") };
    let id = job.assignment.as_ref().map(|a| a.job_id.clone()).unwrap_or_default();
    let job = match wait {
        true => wait_for(control, job, json).await?,
        false if !json => {
            eprintln!("job {id} {} on {}", state_name(job.state), job.host);
            job
        }
        false => job,
    };
    if json {
        print_json(&job)?;
    } else if let Some(r) = &job.result {
        match (&r.snapshot, r.ok) {
            (Some(s), true) => println!("{}", s.snapshot_id),
            (None, true) => println!("{id}"),
            (_, false) => eprintln!("job {id} {}: {}", state_name(job.state), r.error),
        }
    } else {
        println!("{id}");
    }
    let ok = !wait || job.state == i32::from(v1::JobState::Succeeded);
    Ok(if ok { 0 } else { 1 })
}
