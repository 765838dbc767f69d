//! Redis benchmark, same server, same run: the floor (`redis-cli --rdb`,
//! what producing and sending the RDB costs the server), Lifeboat's
//! capture, and the peer a restic or WAL-G user runs (`redis-cli --rdb - |
//! restic backup --stdin`); then 1 % of the keys changed and both capture
//! again (bytes each repository grew); then restore to a started server,
//! Lifeboat's `restore redis --start` against `restic restore` plus a start.
//!
//!   bench_redis [WORK_DIR] [SIZE_GIB]   (default: /tmp/lifeboat-bench-redis 1)

// A benchmark: a failed step stops it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lifeboat_integration_tests::bench::{Measured, drop_caches, du, measure, sync_and_settle};
use lifeboat_integration_tests::control::free_port;
use lifeboat_integration_tests::redis::{RedisServer, redis_program};
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const RESTIC_PASSWORD: &str = "bench-only-passphrase";

/// A value of `len` bytes: words from a small vocabulary (text that LZF
/// and zstd compress) or random hex (that they mostly cannot), half each.
fn value(rng: &mut Xoshiro256PlusPlus, len: usize) -> String {
    const WORDS: &[&str] = &["session", "user", "cart", "token", "expires", "region", "eu-central-1", "item", "price"];
    let mut s = String::with_capacity(len + 16);
    if rng.next_u32().is_multiple_of(2) {
        while s.len() < len {
            s.push_str(WORDS[(rng.next_u32() as usize) % WORDS.len()]);
            s.push(' ');
        }
    } else {
        while s.len() < len {
            s.push_str(&format!("{:016x}", rng.next_u64()));
        }
    }
    s.truncate(len);
    s
}

/// Fills the server with about `bytes` of strings, hashes, lists, sets and
/// sorted sets; returns how many keys it made.
fn fill(server: &RedisServer, bytes: u64) -> Result<u64> {
    let mut conn = server.conn();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut i = 0u64;
    loop {
        let mut p = redis::pipe();
        for _ in 0..5_000 {
            let len = 100 + (rng.next_u32() % 500) as usize;
            match i % 20 {
                0 => {
                    let fields: Vec<(String, String)> =
                        (0..8).map(|f| (format!("field{f}"), value(&mut rng, len / 8))).collect();
                    p.hset_multiple(format!("hash:{i}"), &fields).ignore();
                }
                1 => {
                    let items: Vec<String> = (0..6).map(|_| value(&mut rng, len / 6)).collect();
                    p.rpush(format!("list:{i}"), items).ignore();
                }
                2 => {
                    let members: Vec<String> = (0..6).map(|_| value(&mut rng, len / 6)).collect();
                    p.sadd(format!("set:{i}"), members).ignore();
                }
                3 => {
                    let members: Vec<(f64, String)> = (0..6).map(|m| (m as f64, value(&mut rng, len / 6))).collect();
                    p.zadd_multiple(format!("zset:{i}"), &members).ignore();
                }
                _ => {
                    p.set(format!("string:{i}"), value(&mut rng, len)).ignore();
                }
            }
            i += 1;
        }
        p.query::<()>(&mut conn).context("loading the dataset")?;
        if i.is_multiple_of(100_000) {
            let info: redis::InfoDict = redis::cmd("INFO").arg("memory").query(&mut conn)?;
            if info.get::<u64>("used_memory_dataset").unwrap_or(0) >= bytes {
                return Ok(i);
            }
        }
    }
}

/// Gives new values to 1 % of the string keys, spread over the keyspace.
fn change_one_percent(server: &RedisServer, keys: u64) -> Result<u64> {
    let mut conn = server.conn();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut changed = 0;
    let mut p = redis::pipe();
    for i in (0..keys).filter(|i| i % 20 >= 4) {
        if rng.next_u32().is_multiple_of(100) {
            let len = 100 + (rng.next_u32() % 500) as usize;
            p.set(format!("string:{i}"), value(&mut rng, len)).ignore();
            changed += 1;
        }
    }
    p.query::<()>(&mut conn)?;
    Ok(changed)
}

/// Polls the server at `port` until it has loaded its dataset.
fn wait_loaded(port: u16) -> Result<()> {
    let started = Instant::now();
    loop {
        let ready = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("INFO").arg("persistence").query::<redis::InfoDict>(&mut c))
            .ok()
            .and_then(|i| i.get::<u8>("loading"));
        if ready == Some(0) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the server on port {port} did not load within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", script]).env("RESTIC_PASSWORD", RESTIC_PASSWORD);
    c
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let work = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/lifeboat-bench-redis".into()));
    let gib: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let bin_dir = std::env::current_exe()?.parent().context("binary directory")?.to_owned();
    let lifeboat = bin_dir.join("lifeboat");
    if !lifeboat.exists() {
        bail!("build lifeboat first (cargo build --release --workspace)");
    }
    let (redis_cli, restic) = (redis_program("redis-cli"), Path::new("/usr/bin/restic"));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;

    let server = RedisServer::start(&work.join("server"), &["--repl-diskless-sync-delay", "0"]);
    let t = Instant::now();
    let keys = fill(&server, (gib * (1u64 << 30) as f64) as u64)?;
    let info: redis::InfoDict = redis::cmd("INFO").arg("memory").query(&mut server.conn())?;
    println!(
        "dataset: {keys} keys, {:.2} GiB in memory, made in {:.1}s; redis-server 7.0, diskless replication, sync delay 0",
        info.get::<u64>("used_memory_dataset").unwrap_or(0) as f64 / (1u64 << 30) as f64,
        t.elapsed().as_secs_f64()
    );

    let (repo, key, restic_repo) = (work.join("lifeboat-repo"), work.join("lifeboat.key"), work.join("restic-repo"));
    let lb = |args: &[&str]| {
        let mut c = Command::new(&lifeboat);
        c.args(args).env("LIFEBOAT_REPO", &repo).env("LIFEBOAT_KEY_FILE", &key);
        c
    };
    measure(&mut lb(&["key", "generate", "--out", key.to_str().unwrap_or_default()]))?;
    measure(&mut lb(&["repo", "init"]))?;
    measure(&mut sh(&format!("{} init -q -r {}", restic.display(), restic_repo.display())))?;
    let url = server.url();
    let cli = format!("{} -p {}", redis_cli.display(), server.port);
    let rdb_size = {
        let out = sh(&format!("{cli} --rdb - 2>/dev/null | wc -c")).output()?;
        String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0)
    };
    println!("RDB: {:.1} MiB", mib(rdb_size));

    let restic_capture = format!(
        "{cli} --rdb - 2>/dev/null | {} backup -q -r {} --stdin --stdin-filename dump.rdb",
        restic.display(),
        restic_repo.display()
    );
    let mut rows: Vec<(&str, Measured, Measured, Measured, u64, u64)> = Vec::new();
    for step in ["first capture", "after 1% changed"] {
        if step != "first capture" {
            let changed = change_one_percent(&server, keys)?;
            println!("changed {changed} string keys (1 % of them, spread over the keyspace)");
        }
        let (lb_before, restic_before) = (du(&repo), du(&restic_repo));
        sync_and_settle();
        // The floor is a lower bound: the better of two runs (on a shared
        // machine one run now and then takes far longer).
        let mut floor = measure(&mut sh(&format!("{cli} --rdb - >/dev/null 2>&1"))).context("redis-cli --rdb")?;
        let again = measure(&mut sh(&format!("{cli} --rdb - >/dev/null 2>&1"))).context("redis-cli --rdb")?;
        if again.secs < floor.secs {
            floor = again;
        }
        sync_and_settle();
        let l = measure(&mut lb(&["backup", "redis", "--url", &url])).context("lifeboat backup redis")?;
        sync_and_settle();
        let r = measure(&mut sh(&restic_capture)).context("redis-cli --rdb - | restic backup --stdin")?;
        rows.push((step, floor, l, r, du(&repo) - lb_before, du(&restic_repo) - restic_before));
    }
    drop(server);

    let (lb_target, restic_target) = (work.join("restore-lifeboat"), work.join("restore-restic"));
    sync_and_settle();
    drop_caches();
    let lb_port = free_port();
    let t = Instant::now();
    measure(&mut lb(&[
        "restore",
        "redis",
        "latest",
        "--target-dir",
        lb_target.to_str().unwrap_or_default(),
        "--start",
        "--port",
        &lb_port.to_string(),
    ]))
    .context("lifeboat restore redis --start")?;
    let lb_restore = t.elapsed().as_secs_f64();
    let lb_restore_rss = {
        // The restore's own peak, without the server it started.
        let m =
            measure(&mut lb(&["restore", "redis", "latest", "--target-dir", work.join("again").to_str().unwrap()]))?;
        m.peak_rss_kib
    };
    drop(RedisServer::adopt(&lb_target, lb_port));
    sync_and_settle();
    drop_caches();
    let t = Instant::now();
    let r = measure(&mut sh(&format!(
        "{} restore -q latest -r {} --target {}",
        restic.display(),
        restic_repo.display(),
        restic_target.display()
    )))
    .context("restic restore")?;
    // Started as `restore redis --start` starts it: daemonised, on the
    // restored directory, waited on until loaded.
    let restic_port = free_port();
    let started = Command::new(redis_program("redis-server"))
        .args(["--bind", "127.0.0.1", "--port", &restic_port.to_string(), "--dbfilename", "dump.rdb"])
        .args(["--appendonly", "no", "--daemonize", "yes", "--logfile", "redis-server.log"])
        .arg("--dir")
        .arg(&restic_target)
        .status()?;
    if !started.success() {
        bail!("redis-server on {} did not start", restic_target.display());
    }
    wait_loaded(restic_port)?;
    let restic_restore = t.elapsed().as_secs_f64();
    drop(RedisServer::adopt(&restic_target, restic_port));

    println!(
        "\n{:<18} {:>8} {:>11} {:>9} {:>10} {:>9} {:>8} {:>10} {:>9} {:>10} {:>12} {:>12}",
        "step",
        "floor s",
        "lifeboat s",
        "restic s",
        "lb/floor",
        "speedup",
        "lb cpu",
        "restic cpu",
        "lb MiB",
        "restic MiB",
        "lb stored",
        "restic stored"
    );
    for (step, floor, l, r, ls, rs) in &rows {
        println!(
            "{step:<18} {:>8.2} {:>11.2} {:>9.2} {:>9.2}x {:>8.2}x {:>7.1}s {:>9.1}s {:>9.1} {:>10.1} {:>9.1} MiB {:>9.1} MiB",
            floor.secs,
            l.secs,
            r.secs,
            l.secs / floor.secs,
            r.secs / l.secs,
            l.cpu_secs,
            r.cpu_secs,
            l.peak_rss_kib as f64 / 1024.0,
            r.peak_rss_kib as f64 / 1024.0,
            mib(*ls),
            mib(*rs)
        );
    }
    let second = &rows[1];
    println!("second capture stored: lifeboat/restic {:.3}", second.4 as f64 / second.5.max(1) as f64);
    println!(
        "restore to a started server: lifeboat {lb_restore:.2}s (restore peak {:.1} MiB), restic restore + start {restic_restore:.2}s (restore peak {:.1} MiB): {:.2}x",
        lb_restore_rss as f64 / 1024.0,
        r.peak_rss_kib as f64 / 1024.0,
        restic_restore / lb_restore
    );
    if std::env::var_os("KEEP").is_none() {
        fs::remove_dir_all(&work).ok();
    }
    Ok(())
}
