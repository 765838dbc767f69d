//! Monitoring services a test starts for itself, on free loopback ports,
//! from the packages `deploy/services.sh install` puts in place: a real
//! Prometheus, Alertmanager and SMTP server (aiosmtpd). Each is killed when
//! dropped; a missing one fails the test saying how to install it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::control::{free_port, http_get, wait_for};
use crate::services::services_dir;

/// A service started for one test.
pub struct Service {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its log.
    pub log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn spawn(program: &Path, args: &[String], dir: &Path, name: &str, addr: String) -> Service {
    assert!(
        program.exists() || which(program),
        "{} is missing: run deploy/services.sh install (it installs Prometheus, Alertmanager and aiosmtpd)",
        program.display()
    );
    std::fs::create_dir_all(dir).expect("the service's directory");
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("the service's log");
    let err = out.try_clone().expect("the service's log");
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    Service { child, addr, log }
}

fn which(program: &Path) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

impl Service {
    fn wait_answering(self, path: &str, what: &str) -> Self {
        let addr = self.addr.clone();
        wait_for(Duration::from_secs(30), what, || http_get(&addr, path));
        self
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Alertmanager (`prometheus-alertmanager`), routing everything to a receiver
/// that sends nowhere: what it holds is read through its API.
pub fn alertmanager(dir: &Path) -> Service {
    let port = free_port();
    let config = dir.join("alertmanager.yml");
    std::fs::create_dir_all(dir).expect("the directory");
    std::fs::write(
        &config,
        "route:\n  receiver: nowhere\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: nowhere\n",
    )
    .expect("alertmanager.yml");
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        format!("--storage.path={}", dir.join("alertmanager-data").display()),
        // No gossip port: one instance.
        "--cluster.listen-address=".to_owned(),
    ];
    spawn(Path::new("prometheus-alertmanager"), &args, dir, "alertmanager", format!("127.0.0.1:{port}"))
        .wait_answering("/api/v2/status", "Alertmanager to answer")
}

/// Prometheus scraping `targets` every second with `rules`, evaluated every second.
pub fn prometheus(dir: &Path, targets: &[String], rules: &Path) -> Service {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::create_dir_all(dir).expect("the directory");
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - \"{}\"\n\
             scrape_configs:\n  - job_name: lifeboat\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        ),
    )
    .expect("prometheus.yml");
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()),
    ];
    spawn(Path::new("prometheus"), &args, dir, "prometheus", format!("127.0.0.1:{port}"))
        .wait_answering("/-/ready", "Prometheus to be ready")
}

/// An SMTP server (aiosmtpd) that requires STARTTLS with `cert`/`key` and
/// keeps every message in the Maildir `dir/mail`.
pub fn smtp_server(dir: &Path, cert: &Path, key: &Path) -> (Service, PathBuf) {
    let port = free_port();
    // aiosmtpd makes the Maildir (with its tmp, new and cur) when it is absent.
    let mail = dir.join("mail");
    let program = services_dir().join("venv/bin/aiosmtpd");
    let args = vec![
        "-n".to_owned(),
        "-l".to_owned(),
        format!("127.0.0.1:{port}"),
        "--tlscert".to_owned(),
        cert.display().to_string(),
        "--tlskey".to_owned(),
        key.display().to_string(),
        "-c".to_owned(),
        "aiosmtpd.handlers.Mailbox".to_owned(),
        mail.display().to_string(),
    ];
    let service = spawn(&program, &args, dir, "smtp", format!("127.0.0.1:{port}"));
    let addr = service.addr.clone();
    wait_for(Duration::from_secs(30), "the SMTP server to listen", || std::net::TcpStream::connect(&addr).ok());
    (service, mail)
}

/// The messages in a Maildir, oldest first.
pub fn mails(maildir: &Path) -> Vec<String> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(maildir.join("new"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    files.into_iter().filter_map(|(_, p)| std::fs::read_to_string(p).ok()).collect()
}
