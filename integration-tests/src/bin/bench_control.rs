//! Control-plane load: N real agent streams (each its own certificate, its
//! own mutual-TLS HTTP/2 connection, a hello and a heartbeat every 5 s)
//! against two coordinators sharing a three-member etcd. It measures the
//! leader's CPU and memory at each size, then SIGKILLs the leader and times
//! how long until every agent is attached to the new one. No peer runs
//! beside it: restic and pgBackRest have no control plane; the figures are
//! set against the issue's targets (5,000 agents on under one core and
//! 512 MiB; failover under 2 × TTL + 2 s).
//!
//! Each agent describes three sources; every tenth agent's first source is
//! on a 20 s schedule, and the simulated agent answers each assignment with
//! a finished backup, so jobs flow through scheduling and dispatch while
//! it is measured. At each size it times scrapes of the leader's
//! `/metrics` (and their size). The first leader exports no traces; the
//! coordinator that takes over exports them to an OTLP receiver in this
//! process, so the two steady-state CPU figures at the largest size are
//! tracing off and on under the same load.
//!
//! Usage: bench_control [WORK_DIR] [SIZES]   (default: /tmp/lifeboat-bench-control 1000,5000)

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lifeboat_common::tls::{DevCaRequest, issue_dev_certs};
use lifeboat_integration_tests::control::{Deployment, EtcdSettings, Proc, free_port, scrape};
use lifeboat_integration_tests::etcd::EtcdCluster;
use lifeboat_proto::v1;
use lifeboat_proto::v1::agent_control_client::AgentControlClient;
use lifeboat_proto::v1::agent_message::Body;
use lifeboat_proto::v1::coordinator_message::Body as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const HEARTBEAT: Duration = Duration::from_secs(5);
const TTL_SECS: u64 = 3;
const STEADY: Duration = Duration::from_secs(30);
const COORDINATORS: [&str; 2] = ["c1", "c2"];

/// Which coordinator each simulated agent is attached to (0: none, i+1: COORDINATORS[i]).
struct Attached {
    to: Vec<AtomicU8>,
    /// Milliseconds since the start when it last attached.
    at_ms: Vec<AtomicU64>,
    start: Instant,
}

impl Attached {
    fn count(&self, coordinator: u8) -> usize {
        self.to.iter().filter(|a| a.load(Ordering::Relaxed) == coordinator).count()
    }
}

/// One simulated agent: attach, follow redirects, heartbeat; again after any failure.
async fn simulate(i: usize, host: String, urls: Arc<Vec<String>>, tls: rustls::ClientConfig, attached: Arc<Attached>) {
    let mut next = i;
    let mut hint: Option<String> = None;
    let mut failures = 0u32;
    // As the real agent: a coordinator it could not reach is named to the
    // next, which holds the stream until a new leader is elected.
    let mut unreachable = String::new();
    loop {
        let url = hint.take().unwrap_or_else(|| {
            next += 1;
            urls[next % urls.len()].clone()
        });
        match session(i, &host, &url, &unreachable, &tls, &attached).await {
            Ok(Some(leader)) => {
                hint = Some(leader);
                continue;
            }
            Ok(None) => {
                failures = 0;
                unreachable.clear();
                hint = Some(url);
            }
            Err(_) => {
                failures += 1;
                unreachable = url;
                if failures < urls.len() as u32 {
                    attached.to[i].store(0, Ordering::Relaxed);
                    continue;
                }
            }
        }
        attached.to[i].store(0, Ordering::Relaxed);
        // Full jitter, as the real agent does.
        let cap = Duration::from_millis(200).saturating_mul(1 << failures.min(5)).min(Duration::from_secs(5));
        let jitter = (i as u64).wrapping_mul(2654435761).wrapping_add(u64::from(failures) * 97) % 1000;
        tokio::time::sleep(cap.mul_f64(jitter as f64 / 1000.0).max(Duration::from_millis(50))).await;
    }
}

/// `Ok(Some(leader))` on a redirect; `Ok(None)` when an attached stream ended.
async fn session(
    i: usize,
    host: &str,
    url: &str,
    unreachable: &str,
    tls: &rustls::ClientConfig,
    attached: &Attached,
) -> Result<Option<String>> {
    let channel = lifeboat_common::tls::channel(url, tls.clone())?;
    let mut client = AgentControlClient::new(channel);
    let (tx, rx) = mpsc::channel(8);
    let hello = v1::Hello {
        host: host.to_owned(),
        region: "bench".into(),
        agent_version: "bench".into(),
        sources: vec![
            v1::Source {
                id: "files".into(),
                kind: v1::SourceKind::Files.into(),
                paths: vec!["/srv".into()],
                schedules: if scheduled(i) { vec!["files.media".into()] } else { Vec::new() },
                version: String::new(),
                rpo_seconds: 3600,
            },
            v1::Source {
                id: "pg-main".into(),
                kind: v1::SourceKind::Postgres.into(),
                paths: vec!["/var/lib/postgresql/15/main".into()],
                schedules: Vec::new(),
                version: String::new(),
                rpo_seconds: 300,
            },
            v1::Source {
                id: "configs".into(),
                kind: v1::SourceKind::Files.into(),
                paths: vec!["/etc/app".into()],
                schedules: Vec::new(),
                version: String::new(),
                rpo_seconds: 86_400,
            },
        ],
        running_jobs: Vec::new(),
        max_jobs: 1,
        unreachable_leader: unreachable.to_owned(),
    };
    tx.send(v1::AgentMessage { body: Some(Body::Hello(hello)) }).await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await?.and_then(|m| m.body) {
        Some(In::Welcome(w)) => {
            let index = COORDINATORS.iter().position(|c| *c == w.coordinator).map_or(0, |p| p as u8 + 1);
            attached.to[i].store(index, Ordering::Relaxed);
            attached.at_ms[i].store(attached.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        Some(In::Redirect(r)) => return Ok(Some(r.leader_url)),
        _ => bail!("no welcome"),
    }
    // Heartbeats spread over the interval, not all at once.
    let offset = Duration::from_millis((i as u64 * 7919) % HEARTBEAT.as_millis() as u64);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, HEARTBEAT);
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(v1::CoordinatorMessage { body: Some(In::Assign(job)) })) => {
                    // A backup done at once: what the coordinator records of a real one.
                    let now = chrono_ms();
                    let snapshot = v1::SnapshotSummary {
                        snapshot_id: format!("{:064x}", now),
                        source_kind: "files".into(),
                        hostname: host.to_owned(),
                        time_unix: now / 1000,
                        files: 100,
                        bytes_read: 1 << 20,
                        bytes_new_stored: 1 << 16,
                        duration_seconds: 0.5,
                        ..Default::default()
                    };
                    let result = v1::JobResult {
                        job_id: job.job_id,
                        ok: true,
                        snapshot: Some(snapshot),
                        finished_unix_ms: now,
                        ..Default::default()
                    };
                    if tx.send(v1::AgentMessage { body: Some(Body::Result(result)) }).await.is_err() {
                        return Ok(None);
                    }
                }
                Ok(Some(_)) => {}
                _ => return Ok(None),
            },
            _ = beat.tick() => {
                let heartbeat = v1::Heartbeat {
                    sent_unix_ms: chrono_ms(),
                    sources: vec![v1::SourceState { source_id: "files".into(), ..Default::default() }],
                    running_jobs: Vec::new(),
                    seq: 0,
                };
                if tx.send(v1::AgentMessage { body: Some(Body::Heartbeat(heartbeat)) }).await.is_err() {
                    return Ok(None);
                }
            }
        }
    }
}

/// Whether agent `i` has a source on the 20 s schedule: every tenth, or
/// every `LIFEBOAT_BENCH_SCHEDULE_EVERY`th (0: none, no jobs at all).
fn scheduled(i: usize) -> bool {
    let every = std::env::var("LIFEBOAT_BENCH_SCHEDULE_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(10usize);
    every > 0 && i.is_multiple_of(every)
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// CPU seconds (user + system) and resident memory of a process.
fn usage(pid: i32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (fields[11].parse::<f64>()? + fields[12].parse::<f64>()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((cpu, kib("VmRSS:"), kib("VmHWM:")))
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn measure_steady(leader: &Proc, n: usize, attached: &Attached, who: u8) -> Result<f64> {
    let (cpu0, _, _) = usage(leader.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(STEADY);
    let (cpu1, rss, hwm) = usage(leader.pid())?;
    let cores = (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    println!(
        "{n:>5} agents ({} attached): leader CPU {:.3} cores ({:.1} ms per heartbeat), RSS {:.1} MiB (peak {:.1} MiB)",
        attached.count(who),
        cores,
        (cpu1 - cpu0) * 1000.0 / (n as f64 * STEADY.as_secs_f64() / HEARTBEAT.as_secs_f64()),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(cores)
}

/// Times scrapes of the leader's `/metrics`: the median and slowest of five, and the size.
fn measure_scrape(addr: &str, n: usize) -> Result<()> {
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut series = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let text = scrape(addr).context("scraping the leader's /metrics")?;
        times.push(t.elapsed());
        bytes = text.len();
        series = text.lines().filter(|l| !l.starts_with('#')).count();
    }
    times.sort();
    println!(
        "{n:>5} agents: a scrape of the leader's /metrics takes {:.0} ms (slowest of 5: {:.0} ms; target under 1 s), {:.1} MiB, {series} samples",
        times[2].as_secs_f64() * 1000.0,
        times[4].as_secs_f64() * 1000.0,
        bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

fn wait_attached(attached: &Attached, to: u8, n: usize, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    while attached.count(to) < n {
        if start.elapsed() > within {
            bail!("only {} of {n} agents attached after {within:?}", attached.count(to));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(start.elapsed())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let work = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/lifeboat-bench-control".into()));
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1000,5000".into())
        .split(',')
        .map(|s| s.parse().context("sizes are numbers"))
        .collect::<Result<_>>()?;
    let max = sizes.iter().copied().max().unwrap_or(0);
    raise_fd_limit();
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(work.join("etcd"))?;
    let mut etcd = EtcdCluster::start(&work.join("etcd"), 3);
    let d = Deployment::new(&work, &COORDINATORS, &[]);
    let hosts: Vec<String> = (0..max).map(|i| format!("load-{i:05}")).collect();
    let issued = Instant::now();
    issue_dev_certs(
        &d.certs,
        &DevCaRequest { coordinators: vec![], hosts: vec![], agents: hosts.clone(), admins: vec![], days: 2 },
    )?;
    println!("{max} agent certificates issued in {:.1}s", issued.elapsed().as_secs_f64());
    let policy = d.policy("policy.yaml", "backup_schedules:\n  files:\n    media:\n      interval: \"20s\"\n");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let receiver = lifeboat_integration_tests::otlp::Receiver::start(&runtime);
    let settings = EtcdSettings { endpoints: etcd.endpoints(), prefix: "/lifeboat/bench".into(), ttl_secs: TTL_SECS };
    let ports: Vec<u16> = COORDINATORS.iter().map(|_| free_port()).collect();
    let urls: Arc<Vec<String>> = Arc::new(ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect());
    let metrics: Vec<String> = COORDINATORS.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut coordinators: Vec<Proc> = Vec::new();
    for (i, (name, port)) in COORDINATORS.iter().zip(&ports).enumerate() {
        let config = d.coordinator_config(name, *port, &policy, Some(&settings));
        // Heartbeats as in production; agents lost after 30 s.
        let text = std::fs::read_to_string(&config)
            .unwrap_or_default()
            .replace("heartbeat = \"1s\"\nlost_after = \"6s\"", "heartbeat = \"5s\"\nlost_after = \"30s\"")
            .replace("retention_every = \"2s\"", "retention_every = \"1h\"");
        // The first exports no traces; the second, which leads after the
        // failover, exports them to the receiver.
        // LIFEBOAT_BENCH_TRACE_FIRST=1: the first exports too, for a
        // second run that compares the same leader with and without.
        let trace_first = std::env::var_os("LIFEBOAT_BENCH_TRACE_FIRST").is_some_and(|v| v == "1");
        let traces = if i == 0 && !trace_first {
            String::new()
        } else {
            format!("otlp_endpoint = \"{}\"\n", receiver.endpoint())
        };
        std::fs::write(&config, format!("metrics_listen = \"{}\"\n{traces}{text}", metrics[i])).ok();
        coordinators.push(d.start_coordinator(&config));
        // The first leads.
        std::thread::sleep(Duration::from_secs(3));
    }

    let attached = Arc::new(Attached {
        to: (0..max).map(|_| AtomicU8::new(0)).collect(),
        at_ms: (0..max).map(|_| AtomicU64::new(0)).collect(),
        start: Instant::now(),
    });
    let leader_index = |attached: &Attached| -> u8 { if attached.count(1) >= attached.count(2) { 1 } else { 2 } };
    let certs = d.certs.clone();
    let load = |from: usize, to: usize| -> Result<()> {
        for (i, host) in hosts.iter().enumerate().take(to).skip(from) {
            let tls = client_tls(&certs, host)?;
            runtime.spawn(simulate(i, host.clone(), urls.clone(), tls, attached.clone()));
            if i % 100 == 99 {
                // A ramp, not a stampede of handshakes.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    };
    let mut started = 0;
    let mut off = 0.0;
    for &n in &sizes {
        load(started, n)?;
        started = n;
        let who = leader_index(&attached);
        let took = wait_attached(&attached, who, n, Duration::from_secs(300))?;
        println!(
            "{n:>5} agents attached to {} ({:.1}s after the last was started)",
            COORDINATORS[who as usize - 1],
            took.as_secs_f64()
        );
        let leader = &coordinators[who as usize - 1];
        off = measure_steady(leader, n, &attached, who)?;
        measure_scrape(&metrics[who as usize - 1], n)?;
    }

    // Failover: SIGKILL the leader; time until every agent is attached to the new one.
    let old = leader_index(&attached);
    let new = if old == 1 { 2 } else { 1 };
    let killed_ms = attached.start.elapsed().as_millis() as u64;
    coordinators[old as usize - 1].kill();
    let took = wait_attached(&attached, new, max, Duration::from_secs(120))?;
    let slowest = attached.at_ms.iter().map(|a| a.load(Ordering::Relaxed)).max().unwrap_or(0).saturating_sub(killed_ms);
    let target = Duration::from_secs(2 * TTL_SECS + 2);
    println!(
        "failover: all {max} agents attached to {} {:.2}s after the leader was killed (last welcome {:.2}s; target under {:.0}s = 2 x TTL {TTL_SECS}s + 2s)",
        COORDINATORS[new as usize - 1],
        took.as_secs_f64(),
        slowest as f64 / 1000.0,
        target.as_secs_f64()
    );
    let (_, rss, hwm) = usage(coordinators[new as usize - 1].pid())?;
    println!("new leader after failover: RSS {:.1} MiB (peak {:.1} MiB)", rss as f64 / 1024.0, hwm as f64 / 1024.0);
    let spans_before = receiver.spans().len();
    let on = measure_steady(&coordinators[new as usize - 1], max, &attached, new)?;
    measure_scrape(&metrics[new as usize - 1], max)?;
    if std::env::var_os("LIFEBOAT_BENCH_TRACE_FIRST").is_some_and(|v| v == "1") {
        println!(
            "tracing: both leaders export; the first used {off:.3} cores at {max} agents (compare with a run without LIFEBOAT_BENCH_TRACE_FIRST); {} spans received",
            receiver.spans().len()
        );
    } else {
        println!(
            "tracing: the leader without traces used {off:.3} cores, the one exporting them {on:.3} cores at {max} agents ({:+.1} %; target under +5 %); {} spans received while measured, in {} exports",
            (on / off.max(1e-9) - 1.0) * 100.0,
            receiver.spans().len() - spans_before,
            receiver.exports()
        );
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(coordinators);
    etcd.kill(0);
    Ok(())
}

fn client_tls(certs: &Path, host: &str) -> Result<rustls::ClientConfig> {
    Ok(lifeboat_common::tls::client_config(
        &certs.join("ca.pem"),
        &certs.join(format!("agent-{host}.pem")),
        &certs.join(format!("agent-{host}.key")),
    )?)
}
