//! Regions of a failover group for tests and benchmarks: a coordinator,
//! an agent per region, and either a PostgreSQL 15 primary streaming into
//! the repository in `fra` with a standby its agent builds from the
//! repository in `dub`, or a Redis master in `fra` with replicas in `dub`
//! and `iad`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::{Deployment, KeptOnFailure, Proc, configure, free_port, wait_for};
use crate::netns;
use crate::postgres::{Cluster, as_postgres, give_to_postgres, pg_bin, postgres_dir, workspace_bin};
use crate::redis::RedisServer;

/// A failover group's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `max_lag`, seconds.
    pub max_lag: u64,
    /// `failover_after`, seconds.
    pub failover_after: u64,
    /// `rejoin`: `auto` or `manual`.
    pub rejoin: String,
    /// Commits wait for the repository (`wal_stream.synchronous`).
    pub synchronous: bool,
}

/// Two regions: `fra` with the primary, `dub` with the standby its agent builds.
pub struct Regions {
    /// Where everything is (kept when a test fails).
    pub dir: KeptOnFailure,
    /// Certificates, repository, configurations.
    pub deployment: Deployment,
    /// The coordinator's URL.
    pub url: String,
    /// The coordinator.
    pub coordinator: Proc,
    /// The primary at the start (in `fra`).
    pub primary: Cluster,
    /// The agents of `fra` and `dub`.
    pub fra: Proc,
    /// The agent of `dub`.
    pub dub: Proc,
    /// The standby's port and data directory (in `dub`).
    pub standby_port: u16,
    /// The standby's data directory.
    pub standby_pgdata: PathBuf,
}

/// A failover member's source; `stream_from_primary` where members reach
/// each other at the addresses they report (not across namespaces, where
/// each reports its own loopback).
pub(crate) fn postgres_source(pgdata: &Path, port: u16, synchronous: bool, stream_from_primary: bool) -> String {
    format!(
        "[[source]]\nid = \"pg\"\nkind = \"postgres\"\npgdata = \"{}\"\npg_host = \"127.0.0.1\"\npg_port = {port}\npg_user = \"postgres\"\nstream_from_primary = {stream_from_primary}\n\
         [source.wal_stream]\nslot = \"lifeboat\"\ninterval = \"1s\"\nsynchronous = {synchronous}\napplication_name = \"{SYNC_NAME}\"\n",
        pgdata.display()
    )
}

/// The policy of group `orders-db`: `fra-db1/pg` primary, `dub-db1/pg` its standby.
pub(crate) fn postgres_policy(settings: &Settings) -> String {
    let Settings { max_lag, failover_after, rejoin, .. } = settings;
    format!(
        "backup_schedules:\n  database:\n    full:\n      interval: \"24h\"\n      retention_days: 7\n\
         failover:\n  orders-db:\n    kind: postgres\n    members: [fra-db1/pg, dub-db1/pg]\n    primary: fra-db1/pg\n    \
         max_lag: {max_lag}s\n    failover_after: {failover_after}s\n    rejoin: {rejoin}\n"
    )
}

/// The stream's name in `synchronous_standby_names`.
pub(crate) const SYNC_NAME: &str = "lifeboat_sync";

fn region_config(path: &Path, region: &str) {
    configure(path, &format!("region = \"{region}\""));
}

impl Regions {
    /// Starts both regions, the primary streaming, a base backup taken, and
    /// the standby's agent told to build it.
    pub fn start(settings: &Settings) -> Regions {
        let synchronous = &settings.synchronous;
        let dir = KeptOnFailure::new();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let deployment = Deployment::new(dir.path(), &["c1"], &["fra-db1", "dub-db1"]);
        // The servers' restore_command (wal-fetch) runs as postgres.
        give_to_postgres(&deployment.repo);
        give_to_postgres(&deployment.key);
        let policy = deployment.policy("policy.yaml", &postgres_policy(settings));
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let coordinator = deployment.start_coordinator(&deployment.coordinator_config("c1", port, &policy, None));

        let conf = if *synchronous { format!("synchronous_standby_names = '{SYNC_NAME}'\n") } else { String::new() };
        let mut primary = Cluster::init(dir.path(), "fra", &conf);
        primary.start();
        let fra_config = deployment.agent_config(
            "fra-db1",
            std::slice::from_ref(&url),
            &postgres_source(&primary.pgdata, primary.port, *synchronous, true),
        );
        region_config(&fra_config, "fra");
        let fra = deployment.start_agent(&fra_config);
        base_backup(&deployment, &primary);

        let standby_port = free_port();
        let standby_pgdata = postgres_dir(dir.path(), "dub").join("data");
        let dub_config = deployment.agent_config(
            "dub-db1",
            std::slice::from_ref(&url),
            &postgres_source(&standby_pgdata, standby_port, *synchronous, true),
        );
        region_config(&dub_config, "dub");
        let dub = deployment.start_agent(&dub_config);
        Regions { dir, deployment, url, coordinator, primary, fra, dub, standby_port, standby_pgdata }
    }

    /// The group as `lifeboat failover status --json` shows it.
    pub fn status(&self) -> Option<serde_json::Value> {
        group_status(&self.deployment, &self.url)
    }

    /// A member of `group`, by name.
    pub fn member<'a>(group: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        group["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["member"] == name))
            .unwrap_or(&serde_json::Value::Null)
    }

    /// Waits until the standby replays and is eligible.
    pub fn wait_standby_eligible(&self) {
        wait_for(Duration::from_secs(120), "the standby to be built and eligible", || {
            let group = self.status()?;
            (Self::member(&group, "dub-db1/pg")["eligible"] == true).then_some(())
        });
    }

    /// The tails of the processes' logs.
    pub fn logs(&self) -> String {
        logs_of(&[("coordinator", &self.coordinator), ("fra", &self.fra), ("dub", &self.dub)])
    }
}

/// A Redis failover group in three regions: a master in `fra`, replicas
/// of it in `dub` and `iad`, each under its region's agent.
pub struct RedisRegions {
    /// Where everything is (kept when a test fails).
    pub dir: KeptOnFailure,
    /// Certificates, repository, configurations.
    pub deployment: Deployment,
    /// The coordinator's URL.
    pub url: String,
    /// The coordinator.
    pub coordinator: Proc,
    /// The servers of `fra`, `dub` and `iad` (only `fra`'s with a cold member).
    pub servers: Vec<RedisServer>,
    /// The agents of the regions, in the same order.
    pub agents: Vec<Proc>,
    /// A cold member's port and directory (its server, once restored).
    pub cold: Option<(u16, PathBuf)>,
}

/// The regions of a Redis group, in order; the first holds the master.
pub const REDIS_REGIONS: [&str; 3] = ["fra", "dub", "iad"];

impl RedisRegions {
    /// Starts the servers, the coordinator with group `cache` (`max_lag`
    /// and `failover_after` in seconds) and the agents.
    pub fn start(max_lag: u64, failover_after: u64) -> RedisRegions {
        Self::start_regions(&REDIS_REGIONS, false, max_lag, failover_after)
    }

    /// Two regions: the master in `fra`, and in `dub` a cold member (no
    /// server: restored from the master's newest snapshot when promoted).
    pub fn start_cold(max_lag: u64, failover_after: u64) -> RedisRegions {
        Self::start_regions(&REDIS_REGIONS[..2], true, max_lag, failover_after)
    }

    fn start_regions(regions: &[&str], cold: bool, max_lag: u64, failover_after: u64) -> RedisRegions {
        let dir = KeptOnFailure::new();
        let hosts: Vec<String> = regions.iter().map(|r| format!("{r}-cache")).collect();
        let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let deployment = Deployment::new(dir.path(), &["c1"], &host_refs);
        let members: Vec<String> = hosts.iter().map(|h| format!("{h}/cache")).collect();
        let policy = deployment.policy(
            "policy.yaml",
            &format!(
                "backup_schedules: {{}}
failover:
  cache:
    kind: redis
    members: [{}]
    primary: {}
    \
                 max_lag: {max_lag}s
    failover_after: {failover_after}s
    rejoin: manual
",
                members.join(", "),
                members[0]
            ),
        );
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let coordinator = deployment.start_coordinator(&deployment.coordinator_config("c1", port, &policy, None));
        let master = RedisServer::start(&dir.path().join("redis-fra"), &[]);
        let master_port = master.port.to_string();
        let mut servers = vec![master];
        let replicas = if cold { &[][..] } else { &regions[1..] };
        for region in replicas {
            let replica = RedisServer::start(
                &dir.path().join(format!("redis-{region}")),
                &["--replicaof", "127.0.0.1", &master_port],
            );
            servers.push(replica);
        }
        let cold = cold.then(|| (free_port(), dir.path().join("redis-dub-cold")));
        let mut urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
        let mut cold_table = String::new();
        if let Some((port, server_dir)) = &cold {
            urls.push(format!("redis://127.0.0.1:{port}"));
            cold_table = format!("[source.member.cold]\ndir = \"{}\"\n", server_dir.display());
        }
        let agents = regions
            .iter()
            .zip(&hosts)
            .zip(&urls)
            .map(|((region, host), server_url)| {
                let state = dir.path().join(format!("member-{region}"));
                std::fs::create_dir_all(&state).unwrap();
                let cold = if *region == regions[0] { "" } else { cold_table.as_str() };
                let source = format!(
                    "[[source]]\nid = \"cache\"\nkind = \"redis\"\nurl = \"{server_url}\"\n[source.member]\nstate_dir = \"{}\"\n{cold}",
                    state.display()
                );
                let config = deployment.agent_config(host, std::slice::from_ref(&url), &source);
                region_config(&config, region);
                deployment.start_agent(&config)
            })
            .collect();
        RedisRegions { dir, deployment, url, coordinator, servers, agents, cold }
    }

    /// The group as `lifeboat failover status --json` shows it.
    pub fn status(&self) -> Option<serde_json::Value> {
        group_status(&self.deployment, &self.url)
    }

    /// Waits until every replica is eligible.
    pub fn wait_replicas_eligible(&self) {
        wait_for(Duration::from_secs(60), "the replicas to be eligible", || {
            let group = self.status()?;
            REDIS_REGIONS[1..]
                .iter()
                .all(|r| Regions::member(&group, &format!("{r}-cache/cache"))["eligible"] == true)
                .then_some(())
        });
    }

    /// The tails of the processes' logs.
    pub fn logs(&self) -> String {
        let mut named = vec![("coordinator", &self.coordinator)];
        named.extend(REDIS_REGIONS.iter().copied().zip(&self.agents));
        logs_of(&named)
    }
}

/// A base backup of `primary` (from its namespace) while its agent
/// streams: standbys are built from it.
pub(crate) fn base_backup(deployment: &Deployment, primary: &Cluster) {
    let out = netns::command(primary.netns.as_deref(), workspace_bin("lifeboat"))
        .args(["backup", "postgres", "--pgdata"])
        .arg(&primary.pgdata)
        .args(["--repo"])
        .arg(&deployment.repo)
        .arg("--key-file")
        .arg(&deployment.key)
        .args(primary.conn_args())
        .output()
        .unwrap();
    assert!(out.status.success(), "base backup: {}", String::from_utf8_lossy(&out.stderr));
}

/// The tails of the named processes' logs, one after the other.
pub(crate) fn logs_of(named: &[(&str, &Proc)]) -> String {
    let parts: Vec<String> = named.iter().map(|(name, p)| format!("--- {name}\n{}", tail(&p.log_text()))).collect();
    parts.join("\n")
}

/// The first group as `lifeboat failover status --json` shows it, asked of `url`.
fn group_status(deployment: &Deployment, url: &str) -> Option<serde_json::Value> {
    let reply = deployment.admin_json(url, "vera", &["failover", "status"])?;
    Some(reply["groups"][0].clone())
}

/// The last lines of a log.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Whether a server on `port` accepts connections.
pub fn accepts_connections(port: u16) -> bool {
    accepts_connections_in(None, port)
}

/// Whether a server on `port` in network namespace `ns` accepts connections.
pub(crate) fn accepts_connections_in(ns: Option<&str>, port: u16) -> bool {
    netns::command(ns, pg_bin("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "-t", "2"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A number of the JSON mapping, where 64-bit integers are strings.
pub fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0.0)
}

/// Stops a server the agent started (not a child of the test).
pub fn pg_stop(pgdata: &Path) {
    let _ = as_postgres(&pg_bin("pg_ctl")).arg("-D").arg(pgdata).args(["stop", "-m", "immediate", "-w"]).output();
}
