//! Redis 7.0 servers and sentinels for tests, started on free ports in a
//! directory of the test's and stopped when dropped; a dataset of every
//! type, and a key-by-key comparison of two servers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use crate::control::free_port;

/// The path of a Redis program, or a panic saying how to install it.
pub fn redis_program(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
        .unwrap_or_default();
    found.unwrap_or_else(|| panic!("{name} is not installed: run `deploy/services.sh install` (Debian's redis-server, redis-sentinel, redis-tools)"))
}

/// A running `redis-server` or `redis-sentinel`.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its directory (`dir`), holding its log.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port in `dir` (created), with no
    /// saving or AOF of its own, and `args` (`--name value` pairs) after.
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let mut cmd = Command::new(redis_program("redis-server"));
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--logfile", "redis.log"])
            .arg("--dir")
            .arg(dir)
            .args(args);
        Self::spawn(cmd, dir, port)
    }

    /// Starts a sentinel on a free port in `dir`, watching the master at
    /// `master_port` under `name`, with `quorum` and a one-second down time.
    pub fn sentinel(dir: &Path, name: &str, master_port: u16, quorum: u32) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile sentinel.log\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 10000\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(redis_program("redis-sentinel"));
        cmd.arg(&conf);
        Self::spawn(cmd, dir, port)
    }

    /// A server someone else started (e.g. `lifeboat restore redis
    /// --start`) at `port`, shut down (without saving) when dropped.
    pub fn adopt(dir: &Path, port: u16) -> Self {
        RedisServer { port, dir: dir.to_owned(), child: None }
    }

    fn spawn(mut cmd: Command, dir: &Path, port: u16) -> Self {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let server = RedisServer { port, dir: dir.to_owned(), child: Some(child) };
        let started = Instant::now();
        while server.try_connection().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis on port {port} did not answer; log: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn try_connection(&self) -> Option<Connection> {
        let mut c = redis::Client::open(self.url()).ok()?.get_connection().ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection (as the default user).
    pub fn conn(&self) -> Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Runs one command and returns its reply.
    pub fn cmd(&self, args: &[&str]) -> Value {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.conn()).unwrap_or_else(|e| panic!("{args:?} on port {}: {e}", self.port))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        ["redis.log", "sentinel.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILL (an adopted server: `SHUTDOWN NOSAVE`).
    pub fn kill(&mut self) {
        match self.child.take() {
            Some(mut c) => {
                c.kill().ok();
                c.wait().ok();
            }
            None => {
                if let Some(mut c) = self.try_connection() {
                    redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut c).ok();
                }
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fills databases 0, 1 and 7 with `keys` keys in all: strings, hashes,
/// lists, sets, sorted sets, streams, and strings and hashes with TTLs.
pub fn fill_every_type(conn: &mut Connection, keys: usize) {
    let shares = [(0u32, keys * 90 / 100), (1, keys * 8 / 100), (7, keys - keys * 90 / 100 - keys * 8 / 100)];
    for (db, n) in shares {
        redis::cmd("SELECT").arg(db).query::<()>(conn).unwrap();
        for start in (0..n).step_by(10_000) {
            let mut p = redis::pipe();
            for i in start..(start + 10_000).min(n) {
                let v = format!("value {i} of db {db}: {}", "x".repeat(i % 64));
                match i % 20 {
                    0 => {
                        p.hset_multiple(format!("hash:{i}"), &[("name", v.as_str()), ("n", &i.to_string()), ("f", "3")])
                    }
                    1 => p.rpush(format!("list:{i}"), &["first", v.as_str(), "last"]),
                    2 => p.sadd(format!("set:{i}"), &["a", "b", v.as_str()]),
                    3 => p.zadd_multiple(format!("zset:{i}"), &[(1.5, "one"), (i as f64, v.as_str())]),
                    4 => p.add_command(
                        redis::cmd("XADD").arg(format!("stream:{i}")).arg("*").arg("field").arg(&v).clone(),
                    ),
                    5 => p.set_ex(format!("ttl:{i}"), &v, 3600 + (i % 1000) as u64),
                    6 => p.hset(format!("ttlhash:{i}"), "f", &v).expire(format!("ttlhash:{i}"), 7200),
                    _ => p.set(format!("string:{i}"), &v),
                };
            }
            p.query::<()>(conn).unwrap();
        }
    }
    redis::cmd("SELECT").arg(0).query::<()>(conn).unwrap();
}

/// One key as compared: type, TTL in ms (-1: none), value (sets and
/// hashes sorted).
fn describe(conn: &mut Connection, keys: &[String]) -> Vec<(String, i64, String)> {
    let mut p = redis::pipe();
    for k in keys {
        p.cmd("TYPE").arg(k).cmd("PTTL").arg(k);
    }
    let meta: Vec<Value> = p.query(conn).unwrap();
    let mut values = redis::pipe();
    let mut kinds = Vec::new();
    for (k, pair) in keys.iter().zip(meta.chunks(2)) {
        let kind: String = redis::from_redis_value(pair[0].clone()).unwrap();
        let ttl: i64 = redis::from_redis_value(pair[1].clone()).unwrap();
        match kind.as_str() {
            "string" => values.cmd("GET").arg(k),
            "hash" => values.cmd("HGETALL").arg(k),
            "list" => values.cmd("LRANGE").arg(k).arg(0).arg(-1),
            "set" => values.cmd("SMEMBERS").arg(k),
            "zset" => values.cmd("ZRANGE").arg(k).arg(0).arg(-1).arg("WITHSCORES"),
            "stream" => values.cmd("XRANGE").arg(k).arg("-").arg("+"),
            other => panic!("key {k} has type {other}"),
        };
        kinds.push((kind, ttl));
    }
    let got: Vec<Value> = values.query(conn).unwrap();
    kinds
        .into_iter()
        .zip(got)
        .map(|((kind, ttl), value)| {
            let mut text = match value {
                Value::Array(items) | Value::Set(items) => items.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>(),
                Value::Map(pairs) => pairs.iter().map(|(k, v)| format!("{k:?}={v:?}")).collect(),
                other => vec![format!("{other:?}")],
            };
            if matches!(kind.as_str(), "set" | "hash") {
                if kind == "hash" {
                    let pairs: Vec<String> = text.chunks(2).map(|p| p.join("=")).collect();
                    text = pairs;
                }
                text.sort();
            }
            (kind, ttl, text.join(","))
        })
        .collect()
}

/// Compares every key of databases `dbs` of `a` with `b`: type, value,
/// and TTL within a second; returns the number of keys compared.
pub fn assert_same_keys(a: &RedisServer, b: &RedisServer, dbs: &[u32]) -> u64 {
    let (mut ca, mut cb) = (a.conn(), b.conn());
    let mut compared = 0u64;
    for db in dbs {
        redis::cmd("SELECT").arg(db).query::<()>(&mut ca).unwrap();
        redis::cmd("SELECT").arg(db).query::<()>(&mut cb).unwrap();
        let (na, nb): (u64, u64) =
            (redis::cmd("DBSIZE").query(&mut ca).unwrap(), redis::cmd("DBSIZE").query(&mut cb).unwrap());
        assert_eq!(na, nb, "db{db}: {na} keys on port {}, {nb} on port {}", a.port, b.port);
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(2000).query(&mut ca).unwrap();
            if !keys.is_empty() {
                let (da, db_) = (describe(&mut ca, &keys), describe(&mut cb, &keys));
                for ((k, x), y) in keys.iter().zip(&da).zip(&db_) {
                    assert_eq!((&x.0, &x.2), (&y.0, &y.2), "db{db} key {k}: type or value differs");
                    let ttl_ok = (x.1 < 0 && x.1 == y.1) || (x.1 >= 0 && y.1 >= 0 && (x.1 - y.1).abs() <= 1000);
                    assert!(ttl_ok, "db{db} key {k}: TTL {} ms against {} ms", x.1, y.1);
                }
                compared += keys.len() as u64;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    compared
}

/// A master, its replica and three sentinels (quorum two) watching it
/// under one name.
pub struct SentinelSet {
    /// The master at the start.
    pub master: RedisServer,
    /// Its replica at the start.
    pub replica: RedisServer,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
    /// The master's name in their configuration.
    pub name: String,
}

impl SentinelSet {
    /// Starts the set in `dir`, waiting until every sentinel sees the
    /// replica up and linked.
    pub fn start(dir: &Path, name: &str) -> Self {
        let master = RedisServer::start(&dir.join("master"), &["--repl-diskless-sync-delay", "0"]);
        let port = master.port.to_string();
        let args = ["--replicaof", "127.0.0.1", &port, "--repl-diskless-sync-delay", "0"];
        let replica = RedisServer::start(&dir.join("replica"), &args);
        let sentinels =
            (0..3).map(|i| RedisServer::sentinel(&dir.join(format!("sentinel{i}")), name, master.port, 2)).collect();
        let set = SentinelSet { master, replica, sentinels, name: name.to_owned() };
        set.wait_healthy_replica(set.replica.port);
        set
    }

    /// `sentinel://…/NAME` over the three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("sentinel://{}/{}", hosts.join(","), self.name)
    }

    /// Waits until every sentinel sees the replica at `port` up and linked.
    pub fn wait_healthy_replica(&self, port: u16) {
        crate::control::wait_for(Duration::from_secs(60), "the sentinels to see a healthy replica", || {
            self.sentinels.iter().all(|s| self.healthy_replica(s, port)).then_some(())
        });
    }

    fn healthy_replica(&self, sentinel: &RedisServer, port: u16) -> bool {
        let replicas: Vec<std::collections::HashMap<String, String>> =
            redis::cmd("SENTINEL").arg("replicas").arg(&self.name).query(&mut sentinel.conn()).unwrap_or_default();
        replicas.iter().any(|r| {
            r.get("port") == Some(&port.to_string())
                && r.get("master-link-status").is_some_and(|s| s == "ok")
                && r.get("flags").is_some_and(|f| !f.contains("down") && !f.contains("disconnected"))
        })
    }

    /// `SENTINEL FAILOVER`, waiting until the replica is the master the
    /// sentinels name and the old master is its healthy replica.
    pub fn fail_over(&self) {
        self.sentinels[0].cmd(&["SENTINEL", "FAILOVER", &self.name]);
        let new = self.replica.port.to_string();
        crate::control::wait_for(Duration::from_secs(60), "the failover to the replica", || {
            let named = self
                .sentinels
                .iter()
                .all(|s| format!("{:?}", s.cmd(&["SENTINEL", "get-master-addr-by-name", &self.name])).contains(&new));
            let old_role = format!("{:?}", self.master.cmd(&["ROLE"]));
            (named && old_role.contains("slave") && old_role.contains("connected")).then_some(())
        });
        self.wait_healthy_replica(self.master.port);
    }
}
