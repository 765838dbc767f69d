//! The agent's `/metrics`: whether it is attached to the leader, its
//! running jobs' progress, its jobs' outcomes, and each streaming source's
//! WAL.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use lifeboat_common::telemetry::metrics::{Counters, Registry, Scrape, gauges};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::Gauge;

use super::Agent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    result: &'static str,
}

/// The agent's jobs by kind and outcome.
#[derive(Debug, Clone, Default)]
pub(super) struct Outcomes(Counters<OutcomeLabels>);

impl Outcomes {
    /// Counts a job that ended.
    pub(super) fn count(&self, kind: &'static str, result: &'static str) {
        self.0.get_or_create(&OutcomeLabels { kind, result }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
    source: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// The agent's scrape.
pub(super) struct AgentScrape {
    pub(super) agent: Arc<Agent>,
}

#[async_trait::async_trait]
impl Scrape for AgentScrape {
    async fn registry(&self) -> Registry {
        self.agent.registry()
    }
}

impl Agent {
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        let attached = Gauge::<i64>::default();
        attached.set(i64::from(self.attached.load(Ordering::Relaxed)));
        r.register("lifeboat_agent_attached", "1 while a stream to the leading coordinator is open", attached);
        r.register("lifeboat_agent_jobs", "Jobs this agent ran, by kind and outcome", self.outcomes.0.clone());
        let done = gauges::<JobLabels>(&mut r, "lifeboat_agent_job_bytes_done", "Bytes a running job has processed");
        let total = gauges::<JobLabels>(
            &mut r,
            "lifeboat_agent_job_bytes_total",
            "Bytes a running job will process (once counted)",
        );
        let files = gauges::<JobLabels>(&mut r, "lifeboat_agent_job_files_done", "Files a running job has processed");
        let rate = gauges::<JobLabels>(
            &mut r,
            "lifeboat_agent_job_rate_bytes_per_second",
            "A running job's average rate since it started",
        );
        let elapsed =
            gauges::<JobLabels>(&mut r, "lifeboat_agent_job_elapsed_seconds", "How long a running job has run");
        {
            let book = self.book();
            for (id, job) in &book.running {
                let labels = JobLabels { job: id.clone(), source: job.source_id.clone(), kind: job.kind };
                let p = job.progress.snapshot();
                let seconds = job.started.elapsed().as_secs_f64();
                done.get_or_create(&labels).set(p.bytes_done as f64);
                if p.totals_known {
                    total.get_or_create(&labels).set(p.bytes_total as f64);
                }
                files.get_or_create(&labels).set(p.files_done as f64);
                elapsed.get_or_create(&labels).set(seconds);
                if seconds > 0.0 {
                    rate.get_or_create(&labels).set(p.bytes_done as f64 / seconds);
                }
            }
        }
        let connected =
            gauges::<SourceLabels>(&mut r, "lifeboat_wal_stream_connected", "1 while the replication connection is up");
        let lag_bytes = gauges::<SourceLabels>(
            &mut r,
            "lifeboat_wal_stream_lag_bytes",
            "Bytes of WAL the server has that the repository lacks",
        );
        let lag_seconds = gauges::<SourceLabels>(
            &mut r,
            "lifeboat_wal_archive_lag_seconds",
            "Seconds since the server had WAL the repository still lacks",
        );
        let stored = Counters::<SourceLabels>::default();
        r.register(
            "lifeboat_wal_pushed_segments",
            "WAL segments this agent streamed into the repository since it started",
            stored.clone(),
        );
        for source in &self.sources {
            let health = source.health();
            let Some(wal) = health.wal else { continue };
            let labels = SourceLabels { source: source.id().to_owned() };
            connected.get_or_create(&labels).set(if wal.connected { 1.0 } else { 0.0 });
            lag_bytes.get_or_create(&labels).set(wal.lag_bytes as f64);
            lag_seconds.get_or_create(&labels).set(wal.lag_seconds);
            stored.get_or_create(&labels).inc_by(health.wal_segments_stored);
        }
        r
    }
}
