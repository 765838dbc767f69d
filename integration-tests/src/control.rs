//! Real control-plane processes for tests and benchmarks: a development CA
//! and certificates, a repository, coordinator and agent configuration
//! files, the processes themselves (killable with SIGKILL, pausable with
//! SIGSTOP), and the `lifeboat` admin client with `--json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use lifeboat_common::tls::{DevCaRequest, issue_dev_certs};

use crate::netns;
use crate::postgres::workspace_bin;

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Adds top-level `key = value` lines (TOML, the value as written) to a
/// configuration file, before its first table.
pub fn configure(path: &Path, lines: &str) {
    let text = std::fs::read_to_string(path).expect("reading the configuration");
    std::fs::write(path, format!("{lines}\n{text}")).expect("writing the configuration");
}

/// `GET http://ADDR/metrics`: the body, or `None` when nothing answers.
pub fn scrape(addr: &str) -> Option<String> {
    http_get(addr, "/metrics")
}

/// `GET http://ADDR/PATH` (HTTP/1.0, so the body comes whole, unchunked):
/// the body of a 200 answer, or `None`.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.split(' ').nth(1).is_some_and(|code| code == "200").then(|| body.to_owned())
}

/// The value of the sample `name{labels}` in a scrape, where every label
/// given (`key="value"`) is among the sample's.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        (metric == name && labels.iter().all(|l| rest.contains(l))).then(|| value.parse().ok())?
    })
}

/// One test at a time within a test binary: each runs etcd members,
/// coordinators, agents and services, and on two cores several at once
/// starve etcd's heartbeats into elections no deployment would see.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `[[source]]` table: files source `docs` over `dir`, bound to
/// `schedules` (TOML strings, comma-separated), RPO one hour.
pub fn files_source(dir: &Path, schedules: &str) -> String {
    format!(
        "[[source]]\nid = \"docs\"\nkind = \"files\"\npaths = [\"{}\"]\nschedules = [{schedules}]\nrpo = \"1h\"\n",
        dir.display()
    )
}

/// A test directory left in place, with its processes' logs, when the test fails.
pub struct KeptOnFailure(pub tempfile::TempDir);

impl KeptOnFailure {
    /// A new temporary directory.
    pub fn new() -> Self {
        KeptOnFailure(tempfile::tempdir().expect("a temporary directory"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for KeptOnFailure {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("logs of the failed test kept in {}", self.0.path().display());
        }
    }
}

/// A running coordinator or agent.
pub struct Proc {
    child: Option<Child>,
    /// Its log (stderr and stdout).
    pub log: PathBuf,
}

impl Proc {
    fn spawn(bin: &str, config: &Path, log: PathBuf, ns: Option<&str>) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = netns::command(ns, workspace_bin(bin))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            // Its own local state (a drill's markers), beside its log.
            .env("LIFEBOAT_STATE_DIR", log.with_extension("state"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        Proc { child: Some(child), log }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGSTOP: frozen, sockets open (a partition, from the others' side).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}

/// A deployment's files: CA and certificates, a repository and its key.
pub struct Deployment {
    /// Where everything is.
    pub dir: PathBuf,
    /// `lifeboat certs init`'s directory.
    pub certs: PathBuf,
    /// The repository.
    pub repo: PathBuf,
    /// Its master key.
    pub key: PathBuf,
    /// The network namespace the test's admin commands run in (None: its own).
    pub reach: Option<String>,
}

/// etcd for coordinators.
pub struct EtcdSettings {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// Lease TTL in seconds.
    pub ttl_secs: u64,
}

impl Deployment {
    /// Certificates for `coordinators` (on 127.0.0.1), `agents` and the
    /// operators `alice` (operator), `vera` (viewer) and `root` (admin);
    /// an initialised repository.
    pub fn new(dir: &Path, coordinators: &[&str], agents: &[&str]) -> Self {
        Self::with_hosts(dir, coordinators, agents, &[])
    }

    /// As [`Deployment::new`], with the coordinators' certificates naming
    /// `addresses` as well.
    pub fn with_hosts(dir: &Path, coordinators: &[&str], agents: &[&str], addresses: &[&str]) -> Self {
        let certs = dir.join("certs");
        let mut hosts = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        hosts.extend(addresses.iter().map(|a| a.to_string()));
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        issue_dev_certs(
            &certs,
            &DevCaRequest {
                coordinators: owned(coordinators),
                hosts,
                agents: owned(agents),
                admins: owned(&["alice", "vera", "root"]),
                days: 2,
            },
        )
        .expect("issuing certificates");
        let (repo, key) = (dir.join("repo"), dir.join("master.key"));
        let lifeboat = workspace_bin("lifeboat");
        let run = |args: &[&str]| {
            let out = Command::new(&lifeboat).args(args).output().expect("running lifeboat");
            assert!(out.status.success(), "lifeboat {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["key", "generate", "--out", key.to_str().unwrap_or_default()]);
        run(&[
            "repo",
            "init",
            "--repo",
            repo.to_str().unwrap_or_default(),
            "--key-file",
            key.to_str().unwrap_or_default(),
        ]);
        Deployment { dir: dir.to_owned(), certs, repo, key, reach: None }
    }

    /// Writes a policy file.
    pub fn policy(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, yaml).expect("writing the policy");
        path
    }

    /// Writes coordinator `name`'s configuration, listening on `127.0.0.1:port`.
    pub fn coordinator_config(&self, name: &str, port: u16, policy: &Path, etcd: Option<&EtcdSettings>) -> PathBuf {
        self.coordinator_config_on(name, &format!("127.0.0.1:{port}"), policy, etcd)
    }

    /// Writes coordinator `name`'s configuration, listening on `listen` (`IP:PORT`).
    pub fn coordinator_config_on(
        &self,
        name: &str,
        listen: &str,
        policy: &Path,
        etcd: Option<&EtcdSettings>,
    ) -> PathBuf {
        let c = &self.certs;
        let mut text = format!(
            "name = \"{name}\"\nlisten = \"{listen}\"\nstate_dir = \"{state}\"\npolicy = \"{policy}\"\n\
             heartbeat = \"1s\"\nlost_after = \"6s\"\nretry_after = \"1s\"\n\
             retention_every = \"2s\"\nprune_grace = \"1h\"\n\
             [tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             [roles]\nalice = \"operator\"\nvera = \"viewer\"\nroot = \"admin\"\n\
             [repository]\nrepo = \"{repo}\"\nkey_file = \"{master}\"\n",
            state = self.dir.join(format!("coordinator-{name}")).display(),
            policy = policy.display(),
            ca = c.join("ca.pem").display(),
            cert = c.join(format!("coordinator-{name}.pem")).display(),
            key = c.join(format!("coordinator-{name}.key")).display(),
            repo = self.repo.display(),
            master = self.key.display(),
        );
        if let Some(e) = etcd {
            let endpoints: Vec<String> = e.endpoints.iter().map(|u| format!("\"{u}\"")).collect();
            text.push_str(&format!(
                "[etcd]\nendpoints = [{}]\nprefix = \"{}\"\nttl = \"{}s\"\n",
                endpoints.join(", "),
                e.prefix,
                e.ttl_secs
            ));
        }
        let path = self.dir.join(format!("coordinator-{name}.toml"));
        std::fs::write(&path, text).expect("writing the coordinator's configuration");
        path
    }

    /// Writes agent `host`'s configuration; `sources` is TOML (`[[source]]` tables).
    pub fn agent_config(&self, host: &str, coordinators: &[String], sources: &str) -> PathBuf {
        let c = &self.certs;
        let urls: Vec<String> = coordinators.iter().map(|u| format!("\"{u}\"")).collect();
        let text = format!(
            "host = \"{host}\"\ncoordinators = [{urls}]\nmax_jobs = 1\n\
             [tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             [repository]\nrepo = \"{repo}\"\nkey_file = \"{master}\"\n{sources}",
            urls = urls.join(", "),
            ca = c.join("ca.pem").display(),
            cert = c.join(format!("agent-{host}.pem")).display(),
            key = c.join(format!("agent-{host}.key")).display(),
            repo = self.repo.display(),
            master = self.key.display(),
        );
        let path = self.dir.join(format!("agent-{host}.toml"));
        std::fs::write(&path, text).expect("writing the agent's configuration");
        path
    }

    /// Starts a coordinator.
    pub fn start_coordinator(&self, config: &Path) -> Proc {
        self.start_coordinator_in(config, None)
    }

    /// Starts a coordinator in network namespace `ns`.
    pub fn start_coordinator_in(&self, config: &Path, ns: Option<&str>) -> Proc {
        let stem = config.file_stem().and_then(|s| s.to_str()).unwrap_or("coordinator");
        Proc::spawn("lifeboat-coordinator", config, self.dir.join(format!("{stem}.log")), ns)
    }

    /// Starts an agent.
    pub fn start_agent(&self, config: &Path) -> Proc {
        self.start_agent_in(config, None)
    }

    /// Starts an agent in network namespace `ns`.
    pub fn start_agent_in(&self, config: &Path, ns: Option<&str>) -> Proc {
        let stem = config.file_stem().and_then(|s| s.to_str()).unwrap_or("agent");
        Proc::spawn("lifeboat-agent", config, self.dir.join(format!("{stem}.log")), ns)
    }

    /// Runs `lifeboat ARGS --coordinator URL` as operator `login`.
    pub fn admin(&self, url: &str, login: &str, args: &[&str]) -> Output {
        netns::command(self.reach.as_deref(), workspace_bin("lifeboat"))
            .args(args)
            .arg("--coordinator")
            .arg(url)
            .arg("--certs")
            .arg(&self.certs)
            .arg("--login")
            .arg(login)
            .output()
            .expect("running lifeboat")
    }

    /// `lifeboat snapshots --json`, read from the repository itself.
    pub fn snapshots(&self) -> serde_json::Value {
        let out = Command::new(workspace_bin("lifeboat"))
            .args(["snapshots", "--json", "--repo"])
            .arg(&self.repo)
            .arg("--key-file")
            .arg(&self.key)
            .output()
            .expect("running lifeboat snapshots");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("snapshots as JSON")
    }

    /// Waits until the coordinator at `url` has its first agent attached.
    pub fn wait_attached(&self, url: &str) {
        wait_for(Duration::from_secs(30), "the agent to attach", || {
            let agents = self.admin_json(url, "vera", &["agents"])?;
            (agents["agents"][0]["connected"] == true).then_some(())
        });
    }

    /// Runs `lifeboat ARGS --json` as `login` and parses what it printed;
    /// `None` when it failed.
    pub fn admin_json(&self, url: &str, login: &str, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.admin(url, login, &all);
        if !out.status.success() && out.status.code() != Some(2) {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}
