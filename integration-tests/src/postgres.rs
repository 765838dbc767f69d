//! PostgreSQL 15 clusters for tests: made by `initdb` in a temporary
//! directory and run as the `postgres` user (the server refuses root), on a
//! port of their own, killable with SIGKILL.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns;

/// Where PostgreSQL 15's programs are (`LIFEBOAT_PG_BIN` overrides).
pub fn pg_bin(program: &str) -> PathBuf {
    let dir = std::env::var("LIFEBOAT_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let path = Path::new(&dir).join(program);
    assert!(
        path.exists(),
        "PostgreSQL 15 is not installed ({} missing): run `deploy/services.sh install`",
        path.display()
    );
    path
}

/// The uid and gid of the `postgres` user.
pub fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("running id");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the postgres user exists (deploy/services.sh install)");
    let out = Command::new("id").args(["-g", "postgres"]).output().expect("running id");
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the postgres group exists");
    (uid, gid)
}

/// Gives `path` (recursively) to the postgres user.
pub fn give_to_postgres(path: &Path) {
    let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().expect("running chown");
    assert!(status.success(), "chown {}", path.display());
}

/// A command run as the postgres user.
pub fn as_postgres(program: &Path) -> Command {
    as_postgres_in(None, program)
}

/// A command run as the postgres user, in network namespace `ns` when one is named.
pub fn as_postgres_in(ns: Option<&str>, program: &Path) -> Command {
    let mut c = netns::command(ns, "setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
    c
}

/// A directory the postgres user can use, inside a temporary directory.
pub fn postgres_dir(parent: &Path, name: &str) -> PathBuf {
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).expect("opening the temp dir");
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("creating a directory");
    give_to_postgres(&dir);
    dir
}

/// One test cluster.
pub struct Cluster {
    /// The data directory.
    pub pgdata: PathBuf,
    /// Where its Unix socket and log live.
    pub run_dir: PathBuf,
    /// Its port.
    pub port: u16,
    server: Option<Child>,
    /// Started by someone else's pg_ctl (e.g. `lifeboat restore --start`).
    external: bool,
    /// The network namespace it runs in (None: the test's own).
    pub netns: Option<String>,
}

impl Cluster {
    /// `initdb` (with data checksums) in `parent/name`, with `conf` appended
    /// to postgresql.conf; not started.
    pub fn init(parent: &Path, name: &str, conf: &str) -> Self {
        let pgdata = postgres_dir(parent, name).join("data");
        let run_dir = postgres_dir(parent, &format!("{name}-run"));
        let out = as_postgres(&pg_bin("initdb"))
            .args(["-D"])
            .arg(&pgdata)
            .args(["-U", "postgres", "--auth=trust", "--data-checksums", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("running initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let base = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nwal_level = replica\nmax_wal_senders = 5\nlogging_collector = off\n",
            run_dir.display()
        );
        let mut f =
            std::fs::OpenOptions::new().append(true).open(pgdata.join("postgresql.conf")).expect("postgresql.conf");
        std::io::Write::write_all(&mut f, format!("{base}{conf}\n").as_bytes()).expect("writing postgresql.conf");
        Cluster { pgdata, run_dir, port, server: None, external: false, netns: None }
    }

    /// A cluster around an existing (e.g. restored) data directory.
    pub fn existing(pgdata: &Path, run_dir: &Path, port: u16) -> Self {
        Cluster {
            pgdata: pgdata.to_owned(),
            run_dir: run_dir.to_owned(),
            port,
            server: None,
            external: false,
            netns: None,
        }
    }

    /// A cluster already running, started by pg_ctl elsewhere; stopped on drop.
    pub fn running(pgdata: &Path, run_dir: &Path, port: u16) -> Self {
        Cluster {
            pgdata: pgdata.to_owned(),
            run_dir: run_dir.to_owned(),
            port,
            server: None,
            external: true,
            netns: None,
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if std::mem::take(&mut self.external) {
            let _ =
                as_postgres(&pg_bin("pg_ctl")).arg("-D").arg(&self.pgdata).args(["stop", "-m", mode, "-w"]).output();
        }
    }

    /// Starts the server in the foreground of a child process (so a test can
    /// SIGKILL it) and waits until it accepts connections, up to `wait`.
    pub fn start_waiting(&mut self, wait: Duration) -> bool {
        let log = std::fs::File::create(self.run_dir.join("server.log")).expect("server log");
        let child = as_postgres_in(self.netns.as_deref(), &pg_bin("postgres"))
            .arg("-D")
            .arg(&self.pgdata)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        self.server = Some(child);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let ok = netns::command(self.netns.as_deref(), pg_bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            if let Some(Ok(Some(_))) = self.server.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Starts the server; panics with its log if it does not come up.
    pub fn start(&mut self) {
        if !self.start_waiting(Duration::from_secs(60)) {
            panic!("PostgreSQL did not start:\n{}", self.log());
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the postmaster with SIGKILL (backends follow when they notice).
    pub fn kill(&mut self) {
        self.pg_ctl_stop("immediate");
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A fast, clean shutdown.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
        if self.server.is_some() {
            let _ =
                as_postgres(&pg_bin("pg_ctl")).arg("-D").arg(&self.pgdata).args(["stop", "-m", "fast", "-w"]).output();
            if let Some(mut c) = self.server.take() {
                let _ = c.wait();
            }
        }
    }

    /// Runs SQL through psql and returns its unaligned output.
    pub fn sql(&self, sql: &str) -> String {
        let out = netns::command(self.netns.as_deref(), pg_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("running psql");
        assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Connection options for lifeboat (`--host --port --user`).
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            self.port.to_string(),
            "--user".into(),
            "postgres".into(),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A binary of this workspace beside the running test's (cargo builds every
/// workspace binary for `cargo test --workspace`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // Tests run from target/<profile>/deps, benchmarks from target/<profile>.
    let mut dir = exe.parent().expect("target/<profile>");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let bin = dir.join(name);
    assert!(bin.exists(), "{} not built: run `cargo build --workspace` first", bin.display());
    bin
}
