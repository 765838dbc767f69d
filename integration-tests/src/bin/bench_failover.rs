//! Failover benchmark, on this machine with `failover_after = 10s`: region
//! losses (the primary's agent SIGKILLed and its server stopped immediate,
//! under a writer that records each acknowledged commit), with WAL
//! streamed asynchronously and synchronously, and switchovers back and
//! forth under the writer. It prints the RTO (loss to the standby
//! accepting writes, by this process's clock and as the leader recorded
//! it), the RPO (acknowledged commits missing from the new primary, and
//! how long before the loss the oldest of them was acknowledged), and
//! the switchover time and loss, beside the seed's targets. Then
//! partitions between regions in network namespaces (each with an etcd
//! member and a coordinator): the primary's region cut off under a
//! writer, back and forth, counting commits the cut-off primary
//! acknowledged once its successor accepted writes (split brain).
//!
//!   bench_failover [LOSSES] [SWITCHOVERS] [SYNCHRONOUS_LOSSES] [PARTITIONS]   (default: 10 10 3 20)

// A benchmark: a failed step stops it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use lifeboat_integration_tests::control::wait_for;
use lifeboat_integration_tests::failover::{Regions, Settings, num, pg_stop};
use lifeboat_integration_tests::net_regions::{NetRegions, Partition};
use lifeboat_integration_tests::writer::{Writer, ids_on, sql_on};

const FAILOVER_AFTER: u64 = 10;

/// One region loss, measured.
struct Loss {
    rto: Duration,
    recorded_rto: f64,
    lost: usize,
    oldest_lost: Duration,
    acked: usize,
}

fn settings(synchronous: bool) -> Settings {
    Settings { max_lag: 30, failover_after: FAILOVER_AFTER, rejoin: "manual".into(), synchronous }
}

fn region_loss(synchronous: bool) -> Loss {
    let mut r = Regions::start(&settings(synchronous));
    r.wait_standby_eligible();
    let writer = Writer::start(r.primary.port, Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(5));
    r.fra.kill();
    r.primary.kill();
    let (lost_at, lost_wall) = (Instant::now(), SystemTime::now());
    let acked = writer.stop();
    let group = wait_for(Duration::from_secs(FAILOVER_AFTER + 90), "the promotion", || {
        let group = r.status()?;
        (num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0).then_some(group)
    });
    let rto = lost_at.elapsed();
    let present = ids_on(r.standby_port);
    let missing: Vec<_> = acked.iter().filter(|a| !present.contains(&a.id)).collect();
    let oldest_lost =
        missing.iter().map(|a| lost_wall.duration_since(a.at).unwrap_or_default()).max().unwrap_or_default();
    r.dub.kill();
    pg_stop(&r.standby_pgdata);
    Loss {
        rto,
        recorded_rto: num(&group["lastFailover"]["rtoSeconds"]),
        lost: missing.len(),
        oldest_lost,
        acked: acked.len(),
    }
}

/// Switchovers back and forth: (time from the command to writes accepted, commits lost) each.
fn switchovers(n: usize) -> Vec<(Duration, usize)> {
    let mut r = Regions::start(&settings(false));
    r.wait_standby_eligible();
    let mut measured = Vec::new();
    let members = [("dub-db1/pg", r.standby_port, r.primary.port), ("fra-db1/pg", r.primary.port, r.standby_port)];
    for i in 0..n {
        let (to, to_port, from_port) = members[i % 2];
        // The old primary follows as a standby before the next round.
        wait_for(Duration::from_secs(120), "both members replaying or primary", || {
            let group = r.status()?;
            let from = if i % 2 == 0 { "fra-db1/pg" } else { "dub-db1/pg" };
            (group["primary"] == from && Regions::member(&group, to)["eligible"] == true).then_some(())
        });
        let writer = Writer::start(from_port, Duration::from_millis(10));
        std::thread::sleep(Duration::from_secs(2));
        let started = Instant::now();
        let out = r.deployment.admin(&r.url, "root", &["failover", "switchover", "orders-db", "--to", to]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let epoch = (i + 2) as f64;
        wait_for(Duration::from_secs(120), "the switchover", || {
            let group = r.status()?;
            (num(&group["epoch"]) == epoch && num(&group["lastFailover"]["acceptedUnixMs"]) > 0.0).then_some(())
        });
        let took = started.elapsed();
        let acked = writer.stop();
        let present = ids_on(to_port);
        let lost = acked.iter().filter(|a| !present.contains(&a.id)).count();
        println!(
            "switchover {:>2} to {to}: {:.2} s, {} commits acknowledged, {lost} lost",
            i + 1,
            took.as_secs_f64(),
            acked.len()
        );
        measured.push((took, lost));
        sql_on(to_port, "TRUNCATE lifeboat_writes");
    }
    r.fra.kill();
    r.dub.kill();
    pg_stop(&r.standby_pgdata);
    pg_stop(&r.primary.pgdata);
    measured
}

fn partitions(n: usize) -> Vec<Partition> {
    if n == 0 {
        return Vec::new();
    }
    let settings = Settings { rejoin: "auto".into(), ..settings(false) };
    let mut r = NetRegions::start(&settings);
    let mut pair = ("fra", "dub");
    let mut seen = Vec::new();
    for round in 1..=n {
        let p = r.partition(pair.0, pair.1, round as i64, Duration::from_secs(FAILOVER_AFTER));
        println!(
            "partition {round:>2} ({} cut off): new primary's first write {:.1} s after the cut, {} commits acknowledged by the old primary after it, \
             old primary silent {} before it, {} of {} commits lost ({} acknowledged by the cut-off primary after the cut), leader {} -> {}",
            pair.0,
            p.promoted_after.as_secs_f64(),
            p.split_brain,
            p.quiet_before_first.map_or("not".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            p.lost,
            p.acked,
            p.acked_after_cut,
            p.leader_before,
            p.leader_after,
        );
        seen.push(p);
        pair = (pair.1, pair.0);
    }
    r.stop_servers();
    seen
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn report(name: &str, losses: &[Loss]) {
    let rto: Vec<f64> = losses.iter().map(|l| l.rto.as_secs_f64()).collect();
    let recorded: Vec<f64> = losses.iter().map(|l| l.recorded_rto).collect();
    let lost: Vec<f64> = losses.iter().map(|l| l.lost as f64).collect();
    let age: Vec<f64> = losses.iter().map(|l| l.oldest_lost.as_secs_f64()).collect();
    let acked: usize = losses.iter().map(|l| l.acked).sum();
    println!(
        "{name}: {} losses, RTO median {:.1} s, max {:.1} s (recorded by the leader from the last heartbeat: median {:.1} s, max {:.1} s); \
         RPO: commits lost median {:.0}, max {:.0} (of {acked} acknowledged in all), oldest lost commit median {:.2} s, max {:.2} s before the loss",
        losses.len(),
        median(rto.clone()),
        max(&rto),
        median(recorded.clone()),
        max(&recorded),
        median(lost.clone()),
        max(&lost),
        median(age.clone()),
        max(&age),
    );
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (losses, switches, sync_losses, cuts) = (
        args.first().copied().unwrap_or(10),
        args.get(1).copied().unwrap_or(10),
        args.get(2).copied().unwrap_or(3),
        args.get(3).copied().unwrap_or(20),
    );
    let mut asynchronous = Vec::new();
    for i in 0..losses {
        let l = region_loss(false);
        println!(
            "region loss {:>2} (async): RTO {:.1} s, {} of {} commits lost, the oldest {:.2} s before the loss",
            i + 1,
            l.rto.as_secs_f64(),
            l.lost,
            l.acked,
            l.oldest_lost.as_secs_f64()
        );
        asynchronous.push(l);
    }
    let mut synchronous = Vec::new();
    for i in 0..sync_losses {
        let l = region_loss(true);
        println!(
            "region loss {:>2} (sync): RTO {:.1} s, {} of {} commits lost",
            i + 1,
            l.rto.as_secs_f64(),
            l.lost,
            l.acked
        );
        synchronous.push(l);
    }
    let switched = switchovers(switches);
    let cut = partitions(cuts);
    println!();
    println!("failover_after = {FAILOVER_AFTER}s, fence_after = 5s, max_lag = 30s, WAL streamed every 1 s (async)");
    report("async", &asynchronous);
    report("synchronous", &synchronous);
    let times: Vec<f64> = switched.iter().map(|(t, _)| t.as_secs_f64()).collect();
    let lost: usize = switched.iter().map(|(_, l)| l).sum();
    println!(
        "switchover: {} rounds, median {:.2} s, max {:.2} s, {lost} commits lost in all",
        switched.len(),
        median(times.clone()),
        max(&times)
    );
    println!(
        "targets: RTO within failover_after + 15 s = {} s; RPO async under 5 s, synchronous 0; switchover under 10 s with 0 lost; seed: RTO 15 min, RPO 5 min",
        FAILOVER_AFTER + 15
    );
    let promoted: Vec<f64> = cut.iter().map(|p| p.promoted_after.as_secs_f64()).collect();
    let quiet: Vec<f64> = cut.iter().filter_map(|p| p.quiet_before_first).map(|d| d.as_secs_f64()).collect();
    let quietest = quiet.iter().copied().reduce(f64::min).unwrap_or(0.0);
    println!(
        "partitions: {} rounds, split brain {} commits (acknowledged by a cut-off primary once its successor accepted writes; in {} rounds), \
         new primary's first write median {:.1} s, max {:.1} s after the cut; the old primary silent at least {quietest:.1} s before it",
        cut.len(),
        cut.iter().map(|p| p.split_brain).sum::<usize>(),
        cut.iter().filter(|p| p.split_brain > 0).count(),
        median(promoted.clone()),
        max(&promoted),
    );
}
