//! Throwaway etcd clusters for tests: members on loopback ports of their
//! own, data in a temporary directory, killable one by one (SIGKILL, as
//! `../shared/SERVICES.md` advises) and restartable.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{self, NetRegion};

/// One member.
struct Member {
    name: String,
    /// Its address (127.0.0.1, or its region's).
    ip: String,
    client_port: u16,
    peer_port: u16,
    /// The network namespace it runs in (None: the test's own).
    ns: Option<String>,
    child: Option<Child>,
}

/// A cluster of `etcd` processes.
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    initial: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

impl EtcdCluster {
    /// Starts `n` members on loopback under `dir` and waits until the cluster answers.
    pub fn start(dir: &Path, n: usize) -> Self {
        let members = (1..=n)
            .map(|i| Member {
                name: format!("m{i}"),
                ip: "127.0.0.1".into(),
                client_port: free_port(),
                peer_port: free_port(),
                ns: None,
                child: None,
            })
            .collect();
        Self::start_members(dir, members)
    }

    /// Starts a member in each region (named after it, on its address).
    pub fn start_in(dir: &Path, regions: &[&NetRegion]) -> Self {
        let members = regions
            .iter()
            .map(|r| Member {
                name: r.name.clone(),
                ip: r.ip.clone(),
                client_port: 2379,
                peer_port: 2380,
                ns: Some(r.ns.clone()),
                child: None,
            })
            .collect();
        Self::start_members(dir, members)
    }

    fn start_members(dir: &Path, members: Vec<Member>) -> Self {
        let etcd = which("etcd");
        assert!(etcd.is_some(), "etcd is not installed: run `deploy/services.sh install` (Debian package etcd-server)");
        let initial =
            members.iter().map(|m| format!("{}=http://{}:{}", m.name, m.ip, m.peer_port)).collect::<Vec<_>>().join(",");
        let n = members.len();
        let mut cluster = EtcdCluster { dir: dir.to_owned(), members, initial };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name))).expect("etcd log file");
        let child = netns::command(m.ns.as_deref(), "etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--logger=zap", "--log-outputs=stderr", "--initial-cluster-token", "lifeboat-test"])
            .arg(format!("--listen-client-urls=http://{}:{}", m.ip, m.client_port))
            .arg(format!("--advertise-client-urls=http://{}:{}", m.ip, m.client_port))
            .arg(format!("--listen-peer-urls=http://{}:{}", m.ip, m.peer_port))
            .arg(format!("--initial-advertise-peer-urls=http://{}:{}", m.ip, m.peer_port))
            .arg(format!("--initial-cluster={}", self.initial))
            .arg(format!("--initial-cluster-state={state}"))
            // Fast elections: loopback is quick, tests are short.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.members[i].child = Some(child);
    }

    /// Client endpoints of every member (`http://IP:PORT`).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://{}:{}", m.ip, m.client_port)).collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i, "existing");
    }

    /// Waits until a member answers a health check (quorum present).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let endpoints = self.endpoints().join(",");
        loop {
            // Asked from the first member's namespace: the others are reachable from there.
            let ok = netns::command(self.members[0].ns.as_deref(), "etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoints, "--command-timeout=1s", "endpoint", "health", "--cluster"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy; logs in {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.exists())
}
