//! Multi-region failover with real processes: a coordinator, an agent per
//! region, a PostgreSQL 15 primary under a writer that records every
//! acknowledged commit, and a standby its agent builds from the
//! repository. The primary's region is lost (agent SIGKILLed, server
//! stopped immediate) and the standby must be promoted within the bounds;
//! the leader stalls (SIGSTOP) and the primary must fence itself, then
//! resume when a confirmation comes again. A Redis master in the same
//! position has its writes paused, and a replica takes over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use lifeboat_integration_tests::control::{serial, wait_for};
use lifeboat_integration_tests::failover::{
    REDIS_REGIONS, RedisRegions, Regions, Settings, accepts_connections, num, pg_stop, tail,
};
use lifeboat_integration_tests::net_regions::NetRegions;
use lifeboat_integration_tests::postgres::Cluster;
use lifeboat_integration_tests::writer::{Writer, first_accepted, ids_in, ids_on, sql_on};

/// The group's bounds in these tests.
const FAILOVER_AFTER: u64 = 10;

fn start(max_lag: u64, rejoin: &str) -> Regions {
    Regions::start(&Settings { max_lag, failover_after: FAILOVER_AFTER, rejoin: rejoin.into(), synchronous: false })
}

#[test]
fn the_primary_region_lost_promotes_the_standby_within_failover_after_and_max_lag() {
    let _one = serial();
    let mut r = start(30, "auto");
    r.wait_standby_eligible();
    // The standby streams from the primary as well as following the repository.
    let streaming =
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'lifeboat_standby' AND state = 'streaming'";
    wait_for(Duration::from_secs(30), "the standby to stream from the primary", || {
        (r.primary.sql(streaming) == "1").then_some(())
    });
    let writer = Writer::start(r.primary.port, Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(5));

    // Region fra lost: its agent and its server die together.
    r.fra.kill();
    r.primary.kill();
    let lost = SystemTime::now();
    let lost_at = Instant::now();
    let acked = writer.stop();
    assert!(acked.len() > 50, "the writer committed only {} rows", acked.len());

    let group = wait_for(Duration::from_secs(FAILOVER_AFTER + 60), "the standby's promotion", || {
        let group = r.status()?;
        (group["primary"] == "dub-db1/pg" && num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0).then_some(group)
    });
    let took = lost_at.elapsed();
    let failover = &group["lastFailover"];
    eprintln!("failover: {failover}\ndetected and promoted {took:?} after the loss");
    assert_eq!(num(&group["epoch"]), 2.0, "{group}");
    assert!(failover["cause"].as_str().unwrap().starts_with("automatic"), "{failover}");
    // RTO: within failover_after and 15 s more.
    assert!(took.as_secs_f64() <= (FAILOVER_AFTER + 15) as f64, "promoted {took:?} after the loss\n{}", r.logs());
    assert!(accepts_connections(r.standby_port));
    let rto = num(&failover["rtoSeconds"]);
    assert!(rto >= FAILOVER_AFTER as f64 - 1.0 && rto <= (FAILOVER_AFTER + 15) as f64, "{failover}");

    // RPO: every commit acknowledged more than 5 s before the loss is there.
    let present = ids_on(r.standby_port);
    let missing: Vec<_> = acked.iter().filter(|a| !present.contains(&a.id)).collect();
    let oldest_missing = missing.iter().map(|a| lost.duration_since(a.at).unwrap_or_default()).max();
    eprintln!(
        "{} commits acknowledged, {} missing after the failover (the oldest {:?} before the loss)",
        acked.len(),
        missing.len(),
        oldest_missing
    );
    assert!(oldest_missing.is_none_or(|d| d < Duration::from_secs(5)), "lost commits older than 5 s: {missing:?}");

    // The new primary writes, and streams its new timeline into the repository.
    let promoted = Cluster::running(&r.standby_pgdata, &r.standby_pgdata, r.standby_port);
    promoted.sql("INSERT INTO lifeboat_writes (id) VALUES (-1)");
    assert_eq!(promoted.sql("SELECT pg_is_in_recovery()"), "f");
    wait_for(Duration::from_secs(30), "the new timeline's history in the repository", || {
        r.deployment.repo.join("wal/00000002/00000002.history").exists().then_some(())
    });
    let audit = std::fs::read_to_string(r.dir.path().join("coordinator-c1/audit.log")).unwrap();
    assert!(audit.contains("Failover/Promote") && audit.contains("Failover/Accepted"), "{audit}");

    // Region fra returns: its old primary must not come back as a primary;
    // with rejoin: auto its agent rewinds it (pg_rewind) into a standby of
    // the new timeline, and it catches up with what the new primary wrote.
    promoted.sql("INSERT INTO lifeboat_writes (id) VALUES (-2)");
    r.fra = r.deployment.start_agent(&r.dir.path().join("agent-fra-db1.toml"));
    wait_for(Duration::from_secs(120), "the old primary to rejoin as a standby", || {
        let group = r.status()?;
        let fra = Regions::member(&group, "fra-db1/pg");
        (fra["state"]["role"] == "MEMBER_ROLE_STANDBY" && fra["eligible"] == true).then_some(())
    });
    let rejoined = Cluster::running(&r.primary.pgdata, &r.primary.run_dir, r.primary.port);
    wait_for(Duration::from_secs(30), "the rejoined standby to replay the new primary's writes", || {
        (rejoined.sql("SELECT count(*) FROM lifeboat_writes WHERE id = -2") == "1").then_some(())
    });
    assert_eq!(rejoined.sql("SELECT pg_is_in_recovery()"), "t");
    wait_for(Duration::from_secs(30), "the rejoined standby to stream from the new primary", || {
        (promoted.sql(streaming) == "1").then_some(())
    });
    // Rewound against the reachable new primary, not rebuilt from the
    // repository (the partition test covers that, with no path between
    // the regions' servers).
    let log = r.fra.log_text();
    assert!(log.contains("the former primary was rewound to the new primary"), "{}", r.logs());
    assert!(!log.contains("rebuilding this former primary"), "{}", r.logs());
    drop(rejoined);
    drop(promoted);
    r.fra.kill();
    r.dub.kill();
    pg_stop(&r.standby_pgdata);
    pg_stop(&r.primary.pgdata);
}

/// Regions in network namespaces, each with an etcd member and a
/// coordinator, the leader in `fra` with the primary: `fra` is cut off
/// under a writer, then `dub` (primary by then), then `fra` again. Each
/// time the cut-off primary must stop acknowledging commits before its
/// successor accepts one, the leadership must move out of a cut-off
/// region, and the old primary must rejoin as a standby once its region
/// returns.
#[test]
fn a_partitioned_primary_is_fenced_before_its_successor_accepts_a_write_three_times_over() {
    let _one = serial();
    let settings = Settings { max_lag: 30, failover_after: FAILOVER_AFTER, rejoin: "auto".into(), synchronous: false };
    let mut r = NetRegions::start(&settings);
    let mut pair = ("fra", "dub");
    for round in 1..=3 {
        let p = r.partition(pair.0, pair.1, round, Duration::from_secs(FAILOVER_AFTER));
        eprintln!("round {round}, {} cut off: {p:?}", pair.0);
        assert_eq!(p.split_brain, 0, "round {round}: commits acknowledged by two primaries: {p:?}\n{}", r.logs());
        assert!(p.fenced, "round {round}: the old primary still accepts connections: {p:?}");
        assert!(p.acked > 50, "round {round}: the writer committed only {} rows", p.acked);
        if round == 1 {
            assert_eq!(p.leader_before, "c-fra", "{p:?}");
        }
        let cut_off = format!("c-{}", pair.0);
        assert!(
            !p.leader_after.is_empty() && p.leader_after != cut_off,
            "round {round}: no leader, or the cut-off region's: {p:?}"
        );
        assert!(
            p.promoted_after <= Duration::from_secs(FAILOVER_AFTER + 20),
            "round {round}: promoted {:?} after the cut\n{}",
            p.promoted_after,
            r.logs()
        );
        pair = (pair.1, pair.0);
    }
    let group = r.status().unwrap();
    assert_eq!(num(&group["epoch"]), 4.0, "{group}");
    let audit = std::fs::read_to_string(r.dir.path().join("coordinator-c-fra/audit.log")).unwrap_or_default()
        + &std::fs::read_to_string(r.dir.path().join("coordinator-c-dub/audit.log")).unwrap_or_default()
        + &std::fs::read_to_string(r.dir.path().join("coordinator-c-iad/audit.log")).unwrap_or_default();
    assert_eq!(audit.matches("Failover/Promote").count(), 3, "{audit}");
    r.stop_servers();
}

/// The leader's region lost with the primary (coordinator, etcd member,
/// agent SIGKILLed, server stopped immediate): a coordinator of another
/// region takes the leadership and promotes the standby.
#[test]
fn the_leaders_region_lost_with_the_primary_a_coordinator_elsewhere_leads_and_promotes() {
    let _one = serial();
    let settings =
        Settings { max_lag: 30, failover_after: FAILOVER_AFTER, rejoin: "manual".into(), synchronous: false };
    let mut r = NetRegions::start(&settings);
    r.wait_eligible("dub", Duration::from_secs(120));
    assert_eq!(r.leader().as_deref(), Some("c-fra"));
    let fra_ns = r.net.region("fra").ns.clone();
    let writer = Writer::start_in(Some(&fra_ns), r.database("fra").port, Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(3));
    r.lose("fra");
    let lost = SystemTime::now();
    let acked = writer.stop();
    let dub_ns = r.net.region("dub").ns.clone();
    let first = first_accepted(Some(&dub_ns), r.database("dub").port, -1, Duration::from_secs(FAILOVER_AFTER + 60));
    let first = first.unwrap_or_else(|| panic!("dub never accepted a write\n{}", r.logs()));
    let rto = first.duration_since(lost).unwrap_or_default();
    let leader = r.leader().unwrap_or_default();
    eprintln!("{leader} leads; dub accepted its first write {rto:?} after fra was lost");
    assert!(leader == "c-dub" || leader == "c-iad", "leader {leader:?}");
    let group = r.status().unwrap();
    assert_eq!(group["primary"], "dub-db1/pg", "{group}");
    assert!(group["lastFailover"]["cause"].as_str().unwrap_or_default().starts_with("automatic"), "{group}");
    assert!(rto <= Duration::from_secs(FAILOVER_AFTER + 15), "promoted {rto:?} after the loss\n{}", r.logs());
    let present = ids_in(Some(&dub_ns), r.database("dub").port);
    let missing: Vec<_> = acked.iter().filter(|a| !present.contains(&a.id)).collect();
    let oldest = missing.iter().map(|a| lost.duration_since(a.at).unwrap_or_default()).max();
    eprintln!("{} of {} commits lost, the oldest {oldest:?} before the loss", missing.len(), acked.len());
    assert!(oldest.is_none_or(|d| d < Duration::from_secs(5)), "lost commits older than 5 s: {missing:?}");
    r.stop_servers();
}

#[test]
fn a_lagging_standby_is_not_promoted_and_says_why_until_an_admin_forces_it() {
    let _one = serial();
    let mut r = start(3, "manual");
    r.wait_standby_eligible();
    let standby = Cluster::running(&r.standby_pgdata, &r.standby_pgdata, r.standby_port);
    standby.sql("SELECT pg_wal_replay_pause()");
    let writer = Writer::start(r.primary.port, Duration::from_millis(20));
    std::thread::sleep(Duration::from_secs(8));
    r.fra.kill();
    r.primary.kill();
    let lost = SystemTime::now();
    let acked = writer.stop();

    // Past failover_after: nothing promoted, and status says why.
    std::thread::sleep(Duration::from_secs(FAILOVER_AFTER + 4));
    let group = r.status().unwrap();
    assert_eq!(group["primary"], "fra-db1/pg", "{group}");
    let blocked = group["blocked"].as_str().unwrap_or_default();
    assert!(blocked.contains("past max_lag 3s"), "{group}");
    let out = r.deployment.admin(&r.url, "vera", &["failover", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing would be promoted"));

    // Promoting is an admin's call, and refused past max_lag without --force.
    let promote = ["failover", "promote", "orders-db", "--to", "dub-db1/pg"];
    let out = r.deployment.admin(&r.url, "alice", &promote);
    assert!(!out.status.success(), "an operator promoted");
    let out = r.deployment.admin(&r.url, "root", &promote);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("past max_lag") && said.contains("--force"), "{said}");
    let forced = [&promote[..], &["--force"]].concat();
    let out = r.deployment.admin(&r.url, "root", &forced);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(Duration::from_secs(60), "the forced promotion", || {
        let group = r.status()?;
        (num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0).then_some(())
    });
    // Replay resumed before the promotion: all the repository held is there.
    let present = ids_on(r.standby_port);
    let missing: Vec<_> = acked.iter().filter(|a| !present.contains(&a.id)).collect();
    let oldest = missing.iter().map(|a| lost.duration_since(a.at).unwrap_or_default()).max();
    assert!(oldest.is_none_or(|d| d < Duration::from_secs(5)), "lost commits older than 5 s: {missing:?}");
    let audit = std::fs::read_to_string(r.dir.path().join("coordinator-c1/audit.log")).unwrap();
    assert!(audit.contains("manual by admin:root (forced)"), "{audit}");
    drop(standby);
    r.dub.kill();
    pg_stop(&r.standby_pgdata);
}

#[test]
fn a_primary_unconfirmed_for_fence_after_fences_itself_and_resumes_when_confirmed() {
    let _one = serial();
    let mut r = start(30, "manual");
    r.wait_standby_eligible();
    // The leader stalls past fence_after (5 s for failover_after 10 s) but
    // not past failover_after counted from its recovery: the primary must
    // stop accepting writes, and nothing is promoted.
    let paused = Instant::now();
    r.coordinator.pause();
    wait_for(Duration::from_secs(20), "the primary to fence itself", || {
        (!accepts_connections(r.primary.port)).then_some(())
    });
    let fenced_after = paused.elapsed();
    // fence_after is 5 s; a heartbeat answered just before the pause may extend it by one beat.
    assert!(fenced_after >= Duration::from_secs(4), "fenced {fenced_after:?} after the leader stalled");
    let log = r.fra.log_text();
    assert!(log.contains("fencing PostgreSQL"), "{}", tail(&log));
    r.coordinator.resume();
    wait_for(Duration::from_secs(30), "the primary to be confirmed and started again", || {
        accepts_connections(r.primary.port).then_some(())
    });
    eprintln!("fenced {fenced_after:?} after the leader stalled; serving again {:?} after it", paused.elapsed());
    assert!(r.fra.log_text().contains("unfencing"), "{}", r.logs());
    let group = wait_for(Duration::from_secs(10), "the primary reported unfenced", || {
        let group = r.status()?;
        (Regions::member(&group, "fra-db1/pg")["state"]["fenced"] != true).then_some(group)
    });
    assert_eq!(group["primary"], "fra-db1/pg", "{group}\n{}", r.logs());
    assert_eq!(num(&group["epoch"]), 1.0, "{group}");
    // The restarted server is under pg_ctl now: stop it at the end.
    r.fra.kill();
    r.dub.kill();
    pg_stop(&r.primary.pgdata);
    pg_stop(&r.standby_pgdata);
}

#[test]
fn a_switchover_and_back_loses_no_commit_and_the_old_primary_follows_each_time() {
    let _one = serial();
    let mut r = start(30, "manual");
    r.wait_standby_eligible();
    let ports = [(r.primary.port, "dub-db1/pg", r.standby_port), (r.standby_port, "fra-db1/pg", r.primary.port)];
    for (round, (from_port, to, to_port)) in ports.into_iter().enumerate() {
        let writer = Writer::start(from_port, Duration::from_millis(10));
        std::thread::sleep(Duration::from_secs(3));
        let started = Instant::now();
        let out = r.deployment.admin(&r.url, "root", &["failover", "switchover", "orders-db", "--to", to]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let group = wait_for(Duration::from_secs(90), "the switchover", || {
            let group = r.status()?;
            (num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0 && group["primary"] == to).then_some(group)
        });
        let took = started.elapsed();
        // The writer's last commits on the old primary were acknowledged
        // before it stopped; every one must be on the new primary.
        let acked = writer.stop();
        let present = ids_on(to_port);
        let missing: Vec<i64> = acked.iter().filter(|a| !present.contains(&a.id)).map(|a| a.id).collect();
        eprintln!(
            "switchover {round}: to {to} in {took:?} ({}), {} commits acknowledged, {} missing",
            group["lastFailover"],
            acked.len(),
            missing.len()
        );
        assert!(missing.is_empty(), "switchover {round} lost commits {missing:?}\n{}", r.logs());
        assert!(group["lastFailover"]["cause"].as_str().unwrap_or_default().starts_with("switchover"), "{group}");
        // The old primary follows the new timeline as a standby, without a rebuild.
        let old = if round == 0 { "fra-db1/pg" } else { "dub-db1/pg" };
        wait_for(Duration::from_secs(60), "the old primary to follow as a standby", || {
            let group = r.status()?;
            (Regions::member(&group, old)["state"]["role"] == "MEMBER_ROLE_STANDBY").then_some(())
        });
        // The next round's writer counts from 1 again.
        sql_on(to_port, "TRUNCATE lifeboat_writes");
    }
    let logs = format!("{}{}", r.fra.log_text(), r.dub.log_text());
    assert!(logs.contains("follows the new timeline as a standby"), "{}", r.logs());
    assert!(!logs.contains("rebuilding this former primary"), "{}", r.logs());
    r.fra.kill();
    r.dub.kill();
    pg_stop(&r.standby_pgdata);
    pg_stop(&r.primary.pgdata);
}

/// A write and the master's replication offset once it was acknowledged.
struct RedisAck {
    key: String,
    offset: u64,
}

/// Writes keys to a Redis master, recording each acknowledged one with the
/// master's replication offset read after it.
struct RedisWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<RedisAck>>,
}

impl RedisWriter {
    fn start(port: u16) -> RedisWriter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
            let mut conn = client.get_connection().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut acked = Vec::new();
            for i in 0.. {
                if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("w:{port}:{i}");
                if redis::cmd("SET").arg(&key).arg(i).query::<()>(&mut conn).is_err() {
                    break;
                }
                let Ok(info) = redis::cmd("INFO").arg("replication").query::<String>(&mut conn) else { break };
                let offset = info_field(&info, "master_repl_offset").parse().unwrap();
                acked.push(RedisAck { key, offset });
                std::thread::sleep(Duration::from_millis(5));
            }
            acked
        });
        RedisWriter { stop, thread }
    }

    /// Stops it (or finds it stopped by an error) and returns what was acknowledged.
    fn stop(self) -> Vec<RedisAck> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The keys of `acked` missing on the server at `port`.
fn missing_on(port: u16, acked: &[&RedisAck]) -> Vec<String> {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap();
    acked
        .iter()
        .filter(|a| !redis::cmd("EXISTS").arg(&a.key).query::<bool>(&mut conn).unwrap())
        .map(|a| a.key.clone())
        .collect()
}

/// One `SET` on the server at `port` with a short answer timeout: whether
/// it was acknowledged (a fenced master pauses it).
fn redis_set_answers(port: u16, key: &str) -> bool {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else { return false };
    conn.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    redis::cmd("SET").arg(key).arg("1").query::<()>(&mut conn).is_ok()
}

fn redis_replication(port: u16) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2)).unwrap();
    redis::cmd("INFO").arg("replication").query(&mut conn).unwrap()
}

fn info_field(info: &str, name: &str) -> String {
    info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or_default().trim().to_owned()
}

#[test]
fn a_redis_master_pauses_unconfirmed_and_its_replica_is_promoted_when_its_region_is_lost() {
    let _one = serial();
    let mut r = RedisRegions::start(30, FAILOVER_AFTER);
    r.wait_replicas_eligible();
    let master_port = r.servers[0].port;

    // The leader stalls past fence_after: the master's writes are paused
    // (none acknowledged), and resume when a confirmation comes again.
    r.coordinator.pause();
    let paused = Instant::now();
    wait_for(Duration::from_secs(20), "the master's agent to fence it", || {
        r.agents[0].log_text().contains("fencing Redis").then_some(())
    });
    let fenced_after = paused.elapsed();
    assert!(fenced_after >= Duration::from_secs(4), "fenced {fenced_after:?} after the leader stalled");
    assert!(!redis_set_answers(master_port, "probe"), "a fenced master acknowledged a write\n{}", r.logs());
    r.coordinator.resume();
    wait_for(Duration::from_secs(30), "the master's writes to resume", || {
        redis_set_answers(master_port, "probe").then_some(())
    });
    wait_for(Duration::from_secs(5), "the agent to log the fence lifted", || {
        r.agents[0].log_text().contains("unfenced").then_some(())
    });

    let writer = RedisWriter::start(master_port);
    std::thread::sleep(Duration::from_secs(3));

    // Region fra lost: its agent and its server die together.
    r.agents[0].kill();
    r.servers[0].kill();
    let lost_at = Instant::now();
    let acked = writer.stop();
    assert!(acked.len() > 100, "the writer had only {} writes acknowledged", acked.len());

    let group = wait_for(Duration::from_secs(FAILOVER_AFTER + 60), "a replica's promotion", || {
        let group = r.status()?;
        (group["primary"] != "fra-cache/cache" && num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0).then_some(group)
    });
    let took = lost_at.elapsed();
    eprintln!("failover: {}\npromoted {took:?} after the loss", group["lastFailover"]);
    assert!(took.as_secs_f64() <= (FAILOVER_AFTER + 15) as f64, "promoted {took:?} after the loss\n{}", r.logs());
    let promoted = REDIS_REGIONS.iter().position(|reg| group["primary"] == format!("{reg}-cache/cache")).unwrap();
    let other = if promoted == 1 { 2 } else { 1 };
    let (new, follower) = (&r.servers[promoted], &r.servers[other]);
    assert_eq!(info_field(&redis_replication(new.port), "role"), "master");

    // Every write acknowledged at or before the promoted offset is there.
    let at: u64 = group["lastFailover"]["promotedLsn"].as_str().unwrap().parse().unwrap();
    let missing = missing_on(new.port, &acked.iter().filter(|a| a.offset <= at).collect::<Vec<_>>());
    let beyond = acked.iter().filter(|a| a.offset > at).count();
    eprintln!("{} writes acknowledged, {beyond} after the promoted offset {at}", acked.len());
    assert!(missing.is_empty(), "acknowledged before offset {at} but missing: {missing:?}");
    // The RPO recorded is what the leader knew the old master had past the
    // promoted offset: no more than the writer saw acknowledged (give or
    // take a replication PING, 14 bytes).
    let newest = acked.iter().map(|a| a.offset).max().unwrap_or(0);
    let rpo = num(&group["lastFailover"]["rpoBytes"]);
    assert!(
        rpo <= (newest.saturating_sub(at) + 64) as f64,
        "RPO {rpo} bytes, acknowledged up to {newest}, promoted at {at}"
    );

    // The other replica follows the new primary and receives its writes.
    wait_for(Duration::from_secs(30), "the other replica to follow the new primary", || {
        let info = redis_replication(follower.port);
        (info_field(&info, "master_port") == new.port.to_string() && info_field(&info, "master_link_status") == "up")
            .then_some(())
    });
    redis::cmd("SET").arg("after-failover").arg("1").query::<()>(&mut new.conn()).unwrap();
    wait_for(Duration::from_secs(10), "the write on the new primary to reach the other replica", || {
        redis::cmd("EXISTS").arg("after-failover").query::<bool>(&mut follower.conn()).unwrap().then_some(())
    });
    let audit = std::fs::read_to_string(r.dir.path().join("coordinator-c1/audit.log")).unwrap();
    assert!(audit.contains("Failover/Promote") && audit.contains("Failover/Accepted"), "{audit}");
    for agent in &mut r.agents {
        agent.kill();
    }
}

#[test]
fn a_redis_switchover_and_back_loses_no_write_and_the_old_master_follows_each_time() {
    let _one = serial();
    let mut r = RedisRegions::start(30, FAILOVER_AFTER);
    r.wait_replicas_eligible();
    for (round, (from, to)) in [(0, 1), (1, 0)].into_iter().enumerate() {
        let to_member = format!("{}-cache/cache", REDIS_REGIONS[to]);
        let writer = RedisWriter::start(r.servers[from].port);
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        let out = r.deployment.admin(&r.url, "root", &["failover", "switchover", "cache", "--to", &to_member]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let group = wait_for(Duration::from_secs(60), "the switchover", || {
            let group = r.status()?;
            (num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0 && group["primary"] == to_member).then_some(group)
        });
        let took = started.elapsed();
        // The old master's writes were paused: none acknowledged after its final offset.
        let acked = writer.stop();
        let missing = missing_on(r.servers[to].port, &acked.iter().collect::<Vec<_>>());
        eprintln!(
            "redis switchover {round}: to {to_member} in {took:?} ({}), {} writes acknowledged, {} missing",
            group["lastFailover"],
            acked.len(),
            missing.len()
        );
        assert!(acked.len() > 50, "the writer had only {} writes acknowledged", acked.len());
        assert!(missing.is_empty(), "switchover {round} lost writes {missing:?}\n{}", r.logs());
        wait_for(Duration::from_secs(30), "the old master to follow the new one", || {
            let info = redis_replication(r.servers[from].port);
            (info_field(&info, "master_port") == r.servers[to].port.to_string()
                && info_field(&info, "master_link_status") == "up")
                .then_some(())
        });
        assert!(redis_set_answers(r.servers[to].port, "after-switchover"), "{}", r.logs());
    }
    let logs: String = r.agents.iter().map(|a| a.log_text()).collect();
    let followed = logs.matches("the former primary follows the new one").count();
    assert_eq!((followed, logs.matches("lossless=true").count()), (2, 2), "{}", r.logs());
    for agent in &mut r.agents {
        agent.kill();
    }
}

/// A cold member (no server of its own) stands by at the offset of the
/// master's newest snapshot; when the master's region is lost, its agent
/// restores that snapshot, starts a server on it, and it becomes the
/// primary: every write the snapshot holds is there, and it takes writes.
#[test]
fn a_cold_redis_member_is_restored_from_the_newest_snapshot_when_the_master_is_lost() {
    let _one = serial();
    let mut r = RedisRegions::start_cold(120, FAILOVER_AFTER);
    let master_port = r.servers[0].port;
    let before = RedisWriter::start(master_port);
    std::thread::sleep(Duration::from_secs(2));
    let in_snapshot = before.stop();
    // A snapshot of the master, taken by its agent at the coordinator's request.
    let out = r.deployment.admin(&r.url, "alice", &["backup", "run", "fra-cache/cache", "--wait"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), r.logs());
    let cold = "dub-cache/cache";
    let group = wait_for(Duration::from_secs(60), "the cold member to stand by, eligible", || {
        let group = r.status()?;
        (Regions::member(&group, cold)["eligible"] == true).then_some(group)
    });
    let member = Regions::member(&group, cold);
    assert!(member["state"]["detail"].as_str().unwrap_or_default().starts_with("cold standby"), "{member}");
    let after = RedisWriter::start(master_port);
    std::thread::sleep(Duration::from_secs(2));

    r.agents[0].kill();
    r.servers[0].kill();
    let lost_at = Instant::now();
    let later = after.stop();
    let group = wait_for(Duration::from_secs(FAILOVER_AFTER + 60), "the cold member's promotion", || {
        let group = r.status()?;
        (group["primary"] == cold && num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0).then_some(group)
    });
    let took = lost_at.elapsed();
    eprintln!("failover: {}\npromoted {took:?} after the loss", group["lastFailover"]);
    assert!(took.as_secs_f64() <= (FAILOVER_AFTER + 15) as f64, "promoted {took:?} after the loss\n{}", r.logs());
    let (port, dir) = r.cold.clone().unwrap();
    let restored = lifeboat_integration_tests::redis::RedisServer::adopt(&dir, port);
    assert_eq!(info_field(&redis_replication(port), "role"), "master");
    let missing = missing_on(port, &in_snapshot.iter().collect::<Vec<_>>());
    assert!(missing.is_empty() && in_snapshot.len() > 100, "{} of {} missing", missing.len(), in_snapshot.len());
    // What was written after the snapshot is the recovery point's price.
    let lost = missing_on(port, &later.iter().collect::<Vec<_>>()).len();
    eprintln!(
        "{} writes in the snapshot, all there; {lost} of {} written after it lost",
        in_snapshot.len(),
        later.len()
    );
    redis::cmd("SET").arg("after-failover").arg("1").query::<()>(&mut restored.conn()).unwrap();
    assert!(r.agents[1].log_text().contains("restoring the primary's newest snapshot"), "{}", r.logs());
    r.agents[1].kill();
    drop(restored);
}
