//! Three regions in network namespaces (`fra`, `dub`, `iad`), each with
//! an etcd member and a coordinator; a PostgreSQL 15 primary under its
//! agent in `fra` and a standby its agent builds from the repository in
//! `dub`. A region is lost by cutting its link, or by killing all it runs.
//! The test's own commands reach the coordinators from `iad`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::control::{Deployment, EtcdSettings, KeptOnFailure, Proc, configure, free_port, wait_for};
use crate::etcd::EtcdCluster;
use crate::failover::{
    Regions, SYNC_NAME, Settings, accepts_connections_in, base_backup, logs_of, pg_stop, postgres_policy,
    postgres_source,
};
use crate::netns::Net;
use crate::postgres::{Cluster, give_to_postgres, postgres_dir};
use crate::writer::{Acked, Writer, first_accepted, ids_in};

/// The regions, in order: the primary's, the standby's, the third.
pub const REGIONS: [&str; 3] = ["fra", "dub", "iad"];

/// The port every coordinator listens on (in its own namespace).
const COORDINATOR_PORT: u16 = 7443;

/// A database member: its region, agent, server port and data directory.
pub struct Database {
    /// Its region.
    pub region: &'static str,
    /// The group member's name (`fra-db1/pg`).
    pub member: String,
    /// Its agent.
    pub agent: Proc,
    /// Its agent's configuration.
    pub config: PathBuf,
    /// Its server's port (on 127.0.0.1 in the region).
    pub port: u16,
    /// Its data directory.
    pub pgdata: PathBuf,
}

/// What one partition showed.
#[derive(Debug, Clone)]
pub struct Partition {
    /// The leader before the cut.
    pub leader_before: String,
    /// The leader once the new primary accepted a write.
    pub leader_after: String,
    /// From the cut to the new primary's first acknowledged write.
    pub promoted_after: Duration,
    /// From the old primary's last acknowledged commit to the new one's
    /// first (None: the new one accepted before the old one stopped).
    pub quiet_before_first: Option<Duration>,
    /// Commits the old primary acknowledged once the new one accepted writes.
    pub split_brain: usize,
    /// Commits the old primary acknowledged in all.
    pub acked: usize,
    /// Of those, the ones missing from the new primary.
    pub lost: usize,
    /// Of those, the ones acknowledged after the cut (by a primary cut off).
    pub acked_after_cut: usize,
    /// Whether the old primary refused connections (fenced) at the end.
    pub fenced: bool,
}

/// The deployment across the three regions. Fields drop in order: the
/// processes, then the namespaces, then the directory they worked in.
pub struct NetRegions {
    /// Certificates, repository, configurations.
    pub deployment: Deployment,
    /// The coordinators, in the order of [`REGIONS`].
    pub coordinators: Vec<Proc>,
    /// Their URLs.
    pub urls: Vec<String>,
    /// The databases of `fra` and `dub`.
    pub databases: Vec<Database>,
    /// The primary at the start (started by the test, in `fra`).
    pub primary: Cluster,
    /// The etcd members.
    pub etcd: EtcdCluster,
    /// The namespaces (everything above runs in them).
    pub net: Net,
    /// Where everything is (kept when a test fails).
    pub dir: KeptOnFailure,
}

impl Drop for NetRegions {
    fn drop(&mut self) {
        // The servers the agents started are not this process's children.
        self.stop_servers();
    }
}

impl NetRegions {
    /// Starts the regions; the coordinator of `fra` first, so that it leads.
    pub fn start(settings: &Settings) -> NetRegions {
        let synchronous = &settings.synchronous;
        let dir = KeptOnFailure::new();
        let net = Net::create(&REGIONS);
        let ips: Vec<&str> = REGIONS.iter().map(|r| net.region(r).ip.as_str()).collect();
        let names: Vec<String> = REGIONS.iter().map(|r| format!("c-{r}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut deployment = Deployment::with_hosts(dir.path(), &name_refs, &["fra-db1", "dub-db1"], &ips);
        deployment.reach = Some(net.region("iad").ns.clone());
        // The servers' restore_command (wal-fetch) runs as postgres.
        give_to_postgres(&deployment.repo);
        give_to_postgres(&deployment.key);
        let etcd_dir = dir.path().join("etcd");
        std::fs::create_dir_all(&etcd_dir).unwrap();
        let regions: Vec<_> = REGIONS.iter().map(|r| net.region(r)).collect();
        let etcd = EtcdCluster::start_in(&etcd_dir, &regions);
        let policy = deployment.policy("policy.yaml", &postgres_policy(settings));
        let etcd_settings =
            EtcdSettings { endpoints: etcd.endpoints(), prefix: "/lifeboat/failover".into(), ttl_secs: 3 };
        let urls: Vec<String> = ips.iter().map(|ip| format!("https://{ip}:{COORDINATOR_PORT}")).collect();
        let mut coordinators = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            let listen = format!("{}:{COORDINATOR_PORT}", region.ip);
            let config = deployment.coordinator_config_on(&names[i], &listen, &policy, Some(&etcd_settings));
            coordinators.push(deployment.start_coordinator_in(&config, Some(&region.ns)));
            if i == 0 {
                wait_for(Duration::from_secs(30), "the coordinator of fra to lead", || {
                    let status = deployment.admin_json(&urls[0], "vera", &["status"])?;
                    (status["leader"] == "c-fra").then_some(())
                });
            }
        }

        let fra_ns = net.region("fra").ns.clone();
        let conf = if *synchronous { format!("synchronous_standby_names = '{}'\n", SYNC_NAME) } else { String::new() };
        let mut primary = Cluster::init(dir.path(), "fra", &conf);
        primary.netns = Some(fra_ns.clone());
        primary.start();
        let mut databases = Vec::new();
        let fra =
            Self::start_database(&deployment, &net, &urls, "fra", primary.pgdata.clone(), primary.port, *synchronous);
        databases.push(fra);
        base_backup(&deployment, &primary);
        let standby_pgdata = postgres_dir(dir.path(), "dub").join("data");
        let dub = Self::start_database(&deployment, &net, &urls, "dub", standby_pgdata, free_port(), *synchronous);
        databases.push(dub);
        NetRegions { deployment, coordinators, urls, databases, primary, etcd, net, dir }
    }

    fn start_database(
        deployment: &Deployment,
        net: &Net,
        urls: &[String],
        region: &'static str,
        pgdata: PathBuf,
        port: u16,
        synchronous: bool,
    ) -> Database {
        let host = format!("{region}-db1");
        let config = deployment.agent_config(&host, urls, &postgres_source(&pgdata, port, synchronous, false));
        configure(&config, &format!("region = \"{region}\""));
        let agent = deployment.start_agent_in(&config, Some(&net.region(region).ns));
        Database { region, member: format!("{host}/pg"), agent, config, port, pgdata }
    }

    /// The name of the leader, as the coordinator of a region still
    /// reachable from `iad` says (its own asked first: `fra` may be cut off).
    pub fn leader(&self) -> Option<String> {
        self.urls.iter().rev().find_map(|url| {
            let status = self.deployment.admin_json(url, "vera", &["status"])?;
            status["leader"].as_str().filter(|l| !l.is_empty()).map(str::to_owned)
        })
    }

    /// The group as the leader's `lifeboat failover status --json` shows it.
    pub fn status(&self) -> Option<serde_json::Value> {
        let leader = self.leader()?;
        let i = REGIONS.iter().position(|r| leader == format!("c-{r}"))?;
        let reply = self.deployment.admin_json(&self.urls[i], "vera", &["failover", "status"])?;
        Some(reply["groups"][0].clone())
    }

    /// The database member of `region`.
    pub fn database(&self, region: &str) -> &Database {
        self.databases.iter().find(|d| d.region == region).unwrap_or_else(|| panic!("no database in {region}"))
    }

    /// Waits until `region`'s member is a standby, eligible for promotion.
    pub fn wait_eligible(&self, region: &str, within: Duration) {
        let member = &self.database(region).member;
        wait_for(within, &format!("{member} to be an eligible standby"), || {
            let group = self.status()?;
            let m = Regions::member(&group, member);
            (m["state"]["role"] == "MEMBER_ROLE_STANDBY" && m["eligible"] == true).then_some(())
        });
    }

    /// Whether `region`'s server accepts connections (asked from inside the region).
    pub fn accepts_connections(&self, region: &str) -> bool {
        accepts_connections_in(Some(&self.net.region(region).ns), self.database(region).port)
    }

    /// The tails of the processes' logs.
    pub fn logs(&self) -> String {
        let names: Vec<String> = REGIONS.iter().map(|r| format!("c-{r}")).collect();
        let mut named: Vec<(&str, &Proc)> = names.iter().map(String::as_str).zip(&self.coordinators).collect();
        named.extend(self.databases.iter().map(|d| (d.member.as_str(), &d.agent)));
        logs_of(&named)
    }

    /// Cuts off region `from`, whose server is the primary, under a
    /// writer there, until `to`'s server accepts its first write; then
    /// joins `from` again and waits until its server is an eligible
    /// standby of the new primary (the group needs `rejoin: auto`).
    pub fn partition(&self, from: &str, to: &str, round: i64, failover_after: Duration) -> Partition {
        self.wait_eligible(to, Duration::from_secs(120));
        let leader_before = self.leader().unwrap_or_default();
        let (old, new) = (self.database(from), self.database(to));
        let (old_ns, new_ns) = (&self.net.region(from).ns, &self.net.region(to).ns);
        let writer = Writer::start_in(Some(old_ns), old.port, Duration::from_millis(20));
        std::thread::sleep(Duration::from_secs(3));
        self.net.cut(from);
        let cut = SystemTime::now();
        // A negative id per round: the writer's own ids are positive.
        let first = first_accepted(Some(new_ns), new.port, -round, failover_after + Duration::from_secs(60));
        let Some(first) = first else {
            self.net.heal(from);
            panic!(
                "round {round}: {} never accepted a write after {from} was cut off
{}",
                new.member,
                self.logs()
            );
        };
        // Whatever the old primary acknowledges from now on is split brain.
        std::thread::sleep(Duration::from_secs(2));
        let acked = writer.stop();
        let fenced = !self.accepts_connections(from);
        let present = ids_in(Some(new_ns), new.port);
        let leader_after = self.leader().unwrap_or_default();
        self.net.heal(from);
        let after_first: Vec<&Acked> = acked.iter().filter(|a| a.at >= first).collect();
        let last_old = acked.last().map(|a| a.at);
        let outcome = Partition {
            leader_before,
            leader_after,
            promoted_after: first.duration_since(cut).unwrap_or_default(),
            quiet_before_first: last_old.and_then(|l| first.duration_since(l).ok()),
            split_brain: after_first.len(),
            acked: acked.len(),
            lost: acked.iter().filter(|a| !present.contains(&a.id)).count(),
            acked_after_cut: acked.iter().filter(|a| a.at >= cut).count(),
            fenced,
        };
        self.wait_eligible(from, Duration::from_secs(180));
        outcome
    }

    /// Loses region `region` whole: its coordinator, etcd member and agent
    /// SIGKILLed, its server stopped immediate.
    pub fn lose(&mut self, region: &str) {
        let i = REGIONS.iter().position(|r| *r == region).unwrap_or_else(|| panic!("no region {region}"));
        self.coordinators[i].kill();
        self.etcd.kill(i);
        if let Some(d) = self.databases.iter_mut().find(|d| d.region == region) {
            d.agent.kill();
            pg_stop(&d.pgdata);
        }
    }

    /// Stops the servers the agents started (they are not the test's children).
    pub fn stop_servers(&mut self) {
        for d in &mut self.databases {
            d.agent.kill();
            pg_stop(&d.pgdata);
        }
    }
}
