//! A Redis server, or a set under Sentinel, as a [`Source`]: its
//! `[[source]]` section, captures and restores through the trait.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use indicatif::HumanBytes;
use lifeboat_proto::v1;
use serde::Deserialize;

use super::capture::{CaptureOptions, capture_redis};
use super::endpoint::{Connection, Target, Url};
use super::member::{Member, MemberConfig};
use super::restore::restore_redis;
use crate::sources::rehearsal::{ClonePlan, DrillPlan, PlanRequest, Recovered, Scratch};
use crate::sources::{
    BackupContext, BackupDone, Common, Ongoing, Order, RestoreContext, RestoreDone, RestoreRequest, Source,
    SourceError, SourceHealth, SourceSection, pick_snapshot,
};

/// A `[[source]]` of `kind = "redis"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Id, schedules, RPO.
    #[serde(flatten)]
    pub common: Common,
    /// The URL, credentials, CA and preference.
    #[serde(flatten)]
    pub connection: Connection,
    /// As a member of a failover group: where its agent keeps its state.
    pub member: Option<MemberConfig>,
}

impl SourceSection for RedisConfig {
    fn common(&self) -> &Common {
        &self.common
    }

    fn check(&self) -> Result<(), String> {
        if self.connection.url.is_empty() {
            return Err(format!("source {:?}: a redis source needs url", self.common.id));
        }
        self.connection.check().map(|_| ()).map_err(|e| format!("source {:?}: {e}", self.common.id))
    }

    fn resolve(&mut self, base: &Path) {
        self.connection.resolve(base);
        if let Some(m) = self.member.as_mut()
            && m.state_dir.is_relative()
        {
            m.state_dir = base.join(&m.state_dir);
        }
    }

    fn build(&self) -> Arc<dyn Source> {
        Arc::new(RedisSource::new(self.clone()))
    }
}

/// A Redis source, with the options of one capture beyond its configuration.
#[derive(Debug, Default)]
pub struct RedisSource {
    config: RedisConfig,
    compression_level: Option<i32>,
    /// Its failover member's controller, once the daemon started it.
    member: OnceLock<Arc<Member>>,
}

impl RedisSource {
    /// The source `config` describes.
    pub fn new(config: RedisConfig) -> Self {
        RedisSource { config, compression_level: None, member: OnceLock::new() }
    }

    /// The zstd level of the data.
    pub fn with_compression_level(mut self, level: Option<i32>) -> Self {
        self.compression_level = level;
        self
    }
}

#[async_trait::async_trait]
impl Source for RedisSource {
    fn id(&self) -> &str {
        &self.config.common.id
    }

    fn describe(&self) -> v1::Source {
        let url = Url::parse(&self.config.connection.url)
            .map_or_else(|_| self.config.connection.url.clone(), |u| u.to_string());
        self.config.common.to_proto(v1::SourceKind::Redis, vec![url])
    }

    async fn backup(&self, ctx: BackupContext) -> Result<BackupDone, SourceError> {
        let opts = CaptureOptions {
            connection: self.config.connection.clone(),
            hostname: ctx.hostname,
            tags: ctx.tags,
            compression_level: self.compression_level,
        };
        let outcome = capture_redis(&ctx.repo, opts, ctx.progress).await.map_err(SourceError::kind)?;
        let s = &outcome.snapshot.summary;
        let mut remarks = Vec::new();
        let headline = match &outcome.snapshot.redis {
            Some(r) => {
                let keys: u64 = r.keyspace.iter().map(|d| d.keys).sum();
                remarks.push(match r.checksum {
                    Some(crc) => format!("RDB checksum verified ({crc:016x})"),
                    None => "RDB not checksummed: the server runs with rdbchecksum no".to_owned(),
                });
                format!(
                    "Redis snapshot {} saved: RDB v{} of {} from {} ({} {}, {} at offset {}), {keys} keys in {} databases; {} new ({} stored) in {:.1}s",
                    outcome.id.short(),
                    r.rdb_version,
                    HumanBytes(r.rdb_bytes),
                    r.server,
                    if r.role == "master" { "master" } else { "replica" },
                    r.version,
                    r.replication_id,
                    r.replication_offset,
                    r.keyspace.len(),
                    HumanBytes(s.bytes_new),
                    HumanBytes(s.bytes_stored),
                    s.duration_secs
                )
            }
            None => format!("Redis snapshot {} saved", outcome.id.short()),
        };
        Ok(BackupDone {
            id: outcome.id,
            snapshot: outcome.snapshot,
            headline,
            remarks,
            warnings: Vec::new(),
            incomplete: false,
        })
    }

    async fn restore(&self, ctx: RestoreContext, request: RestoreRequest) -> Result<RestoreDone, SourceError> {
        let (id, snapshot) =
            pick_snapshot(&ctx.repo, request.snapshot.as_deref(), &ctx.hostname, &self.config.common).await?;
        let started = std::time::Instant::now();
        let done =
            restore_redis(&ctx.repo, &id, &snapshot, &request.target, ctx.progress).await.map_err(SourceError::kind)?;
        let keys: u64 = snapshot.redis.iter().flat_map(|r| &r.keyspace).map(|d| d.keys).sum();
        let headline = format!(
            "restored Redis snapshot {} of {} ({keys} keys at capture) to {}: {} in {:.1}s; start redis-server with dir {} to load it",
            id.short(),
            snapshot.time.format("%Y-%m-%d %H:%M:%S UTC"),
            done.rdb.display(),
            HumanBytes(done.bytes),
            started.elapsed().as_secs_f64(),
            request.target.display(),
        );
        Ok(RestoreDone { snapshot: id, headline, warnings: done.warnings, failed: Vec::new() })
    }

    fn ports(&self) -> Vec<u16> {
        match Url::parse(&self.config.connection.url).map(|u| u.target) {
            Ok(Target::Server(server)) => vec![server.port],
            Ok(Target::Sentinels { sentinels, .. }) => sentinels.iter().map(|s| s.port).collect(),
            Err(_) => Vec::new(),
        }
    }

    async fn drill_plan(&self, request: PlanRequest<'_>) -> Result<DrillPlan, SourceError> {
        DrillPlan::newest_snapshot(&request, "redis")
    }

    async fn drill_recover(
        &self,
        ctx: RestoreContext,
        plan: &DrillPlan,
        scratch: Scratch,
    ) -> Result<Box<dyn Recovered>, SourceError> {
        super::drill::recover(ctx, plan, scratch).await
    }

    async fn drill_standby(&self) -> Result<ClonePlan, SourceError> {
        super::drill::standby(&self.config.connection).await.map_err(SourceError::kind)
    }

    async fn drill_clone(
        &self,
        ctx: RestoreContext,
        plan: &ClonePlan,
        scratch: Scratch,
    ) -> Result<Box<dyn Recovered>, SourceError> {
        let _ = ctx;
        super::drill::clone(&self.config.connection, plan, scratch).await.map_err(SourceError::kind)
    }

    fn start(&self, ongoing: Ongoing) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(config) = &self.config.member else { return Vec::new() };
        let member = self
            .member
            .get_or_init(|| Member::new(&self.config.common.id, self.config.connection.clone(), config))
            .clone();
        vec![tokio::spawn(member.run(ongoing.repo, ongoing.host, ongoing.shutdown))]
    }

    fn health(&self) -> SourceHealth {
        SourceHealth { member: self.member.get().and_then(|m| m.report()), ..SourceHealth::default() }
    }

    fn order(&self, order: Order) -> Result<(), String> {
        match (self.member.get(), &self.config.member) {
            (Some(member), _) => {
                member.order(order);
                Ok(())
            }
            (None, None) => Err(format!(
                "source {} is named in failover group {}, but has no [source.member] table (state_dir)",
                self.config.common.id, order.order.group
            )),
            (None, Some(_)) => Err(format!("source {} is not running under the daemon", self.config.common.id)),
        }
    }
}
