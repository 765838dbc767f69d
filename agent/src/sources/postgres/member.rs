//! A PostgreSQL source as a member of a failover group: its agent keeps
//! the server in the role the leader orders.
//!
//! - **Primary**: it may accept writes only while a heartbeat answered
//!   less than `fence_after` ago confirms its epoch. When the lease
//!   lapses (the leader is unreachable, or this host is cut off) the agent
//!   fences the server: a fast stop, kept until a leader confirms the same
//!   epoch again. The lease and the epoch held survive an agent restart
//!   (a file beside the data directory), so a restart neither lifts a
//!   fence nor extends a lease.
//! - **Standby**: built from the repository (the newest base backup,
//!   `standby.signal`, `restore_command` through `wal-fetch`, which
//!   serves the segment being streamed as far as it was stored), so it
//!   follows the primary to within seconds with no network path to it.
//!   A server found running as a primary under an epoch that made it a
//!   standby is stopped at once; it is rebuilt as a standby only when the
//!   group says `rejoin: auto`.
//! - **Promotion** (a primary order of a newer epoch to a standby): replay
//!   all the repository holds, `pg_promote`, a checkpoint so WAL
//!   streaming starts on the new timeline, the timeline's history stored,
//!   then the group's hooks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::engine::open::RepoSpec;
use lifeboat_proto::v1;
use tokio::sync::watch;

use super::connect::{ConnectArgs, SslMode};
use super::restore::parse_lsn;
use super::restore::{PgRestoreOptions, conf_literal, recovery_settings, restore_postgres, wal_fetch_command};
use super::startup::{output_as_owner, pg_program};
use super::{PgError, wal};
use crate::progress::Progress;
use crate::sources::owner::{give_to_owner_of, log_tail};
use crate::sources::tenure::{Standing, Tenure, run_hooks};
use crate::sources::{Order, RecoveryPoint};

/// The name a standby streaming from the primary gives itself there.
const STANDBY_NAME: &str = "lifeboat_standby";
/// How long the new primary is given to answer before a rewind.
const PRIMARY_ANSWERS_WITHIN: Duration = Duration::from_secs(10);
/// How often the server is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Replay unchanged this long after a promotion was ordered: all the
/// repository holds is replayed (the standby asks for more every second).
const CAUGHT_UP_AFTER: Duration = Duration::from_secs(3);
/// The longest a promotion waits for replay to settle.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);
/// How long a look at the server may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the stream of a server just stopped may go on, to store the
/// WAL the server sent as it shut down.
const STREAM_DRAIN: Duration = Duration::from_secs(2);
/// How long after a failure (a build that could not be made) the next try waits.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The server as looked at.
#[derive(Debug, Clone, Default)]
struct Looked {
    running: bool,
    in_recovery: bool,
    lsn: String,
    timeline: u32,
    last_replayed_commit_unix_ms: i64,
    replay_paused: bool,
    /// Stopped cleanly as a primary: where its shutdown checkpoint is, and on which timeline.
    final_lsn: String,
    final_timeline: u32,
}

/// The controller of one member.
#[derive(Debug)]
pub struct Member {
    pgdata: PathBuf,
    connect: ConnectArgs,
    pg_bin: Option<PathBuf>,
    tenure: Tenure,
    looked: Mutex<Looked>,
    /// Whether WAL may be streamed into the repository: only from an
    /// unfenced primary (a standby's stream would overwrite the
    /// primary's newest partial segment with older content).
    may_stream: watch::Sender<bool>,
    /// A standby streams from the primary when it is reachable.
    stream_from_primary: bool,
}

impl Member {
    /// The controller of the cluster at `pgdata`, reached through `connect`.
    pub fn new(pgdata: PathBuf, connect: ConnectArgs, pg_bin: Option<PathBuf>, stream_from_primary: bool) -> Arc<Self> {
        let name = pgdata.file_name().map_or_else(|| "pgdata".into(), |n| n.to_string_lossy().into_owned());
        let tenure =
            Tenure::open(pgdata.with_file_name(format!("{name}.lifeboat-member.json")), pgdata.display().to_string());
        // Not a member (no order, nothing kept): streaming as configured.
        let may_stream = watch::Sender::new(!tenure.is_member());
        Arc::new(Member {
            pgdata,
            connect,
            pg_bin,
            tenure,
            looked: Mutex::new(Looked::default()),
            may_stream,
            stream_from_primary,
        })
    }

    /// Whether WAL may be streamed now, and its changes.
    pub fn may_stream(&self) -> watch::Receiver<bool> {
        self.may_stream.subscribe()
    }

    /// Takes an order (newer epochs only) and the lease it renews.
    pub fn order(&self, order: Order) {
        self.tenure.take(order);
    }

    /// Its state for the heartbeat (none when it is not a member).
    pub fn report(&self) -> Option<v1::MemberState> {
        let mut state = self.tenure.report()?;
        let looked = self.looked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let role = match (looked.running, looked.in_recovery) {
            (false, _) => v1::MemberRole::Unspecified,
            (true, true) => v1::MemberRole::Standby,
            (true, false) => v1::MemberRole::Primary,
        };
        state.role = role.into();
        state.timeline = looked.timeline;
        state.lsn = looked.lsn;
        state.last_replayed_commit_unix_ms = looked.last_replayed_commit_unix_ms;
        state.address = format!("{}:{}", self.connect.host(), self.connect.port());
        state.replay_paused = looked.replay_paused;
        state.final_lsn = looked.final_lsn;
        Some(state)
    }

    fn set_detail(&self, detail: impl Into<String>) {
        self.tenure.set_detail(detail);
    }

    /// Keeps the server in its ordered role until `shutdown` is set.
    pub async fn run(self: Arc<Self>, repo: Repository, spec: RepoSpec, mut shutdown: watch::Receiver<bool>) {
        loop {
            let pause = match self.step(&repo, &spec).await {
                Ok(()) => LOOK_EVERY,
                Err(e) => {
                    tracing::error!(pgdata = %self.pgdata.display(), error = %e, "failover member");
                    self.set_detail(format!("error: {e}"));
                    // A primary's lease is watched every second whatever failed;
                    // a standby that could not be built waits before the next try.
                    if self.tenure.standing().primary() { LOOK_EVERY } else { RETRY_AFTER }
                }
            };
            if !self.tenure.rest(pause, &mut shutdown).await {
                return;
            }
        }
    }

    /// One look at the server, and what the order asks of it.
    async fn step(&self, repo: &Repository, spec: &RepoSpec) -> Result<(), PgError> {
        if !self.tenure.is_member() {
            // Not a member (yet): a standby's WAL is never streamed over the primary's.
            self.may_stream.send_replace(!self.pgdata.join("standby.signal").exists());
            return Ok(());
        }
        let looked = self.look().await;
        *self.looked.lock().unwrap_or_else(|p| p.into_inner()) = looked.clone();
        let standing = self.tenure.standing();
        let primary = standing.primary();
        let Standing { order, kept, epoch, leased, .. } = standing;
        let writable = looked.running && !looked.in_recovery;
        if primary {
            if !leased {
                if writable || (looked.running && kept.role == v1::MemberRole::Primary as i32 && !kept.fenced) {
                    return self.fence("no leader has confirmed this primary's epoch within fence_after").await;
                }
                self.may_stream.send_replace(false);
                if kept.fenced {
                    self.set_detail("fenced: waiting for a leader to confirm this primary's epoch");
                } else {
                    self.set_detail("waiting for a leader to confirm this primary's epoch");
                }
                return Ok(());
            }
            if looked.running && looked.in_recovery {
                if epoch > kept.epoch || kept.role != v1::MemberRole::Primary as i32 {
                    let order = order.unwrap_or_default();
                    return self.promote(repo, &order).await;
                }
                self.set_detail("a standby, though primary: waiting");
                return Ok(());
            }
            if !looked.running {
                if kept.fenced && epoch == kept.epoch {
                    self.unfence().await?;
                } else {
                    self.set_detail("primary, but its server is not running");
                }
                return Ok(());
            }
            self.tenure.hold(epoch, v1::MemberRole::Primary, false);
            self.may_stream.send_replace(true);
            self.set_detail("primary: accepting writes");
            return Ok(());
        }
        // A standby.
        if writable {
            // The epoch says another is primary: this one must not write.
            // The stream goes on until the server is down, to store its last
            // WAL (a switchover's successor replays up to it).
            self.tenure.hold(epoch, v1::MemberRole::Primary, kept.fenced);
            return self.fence("another member is primary under a newer epoch").await;
        }
        self.may_stream.send_replace(false);
        if looked.running {
            self.tenure.hold(epoch, v1::MemberRole::Standby, false);
            if self.stream_from_primary
                && let Some(order) = &order
            {
                // Not yet consistent, it takes no connection: the next look tries again.
                if let Err(e) = self.stream_from(&order.primary_address).await {
                    tracing::debug!(error = %e, "primary_conninfo not set yet");
                }
            }
            let paused = if looked.replay_paused { " (replay paused)" } else { "" };
            self.set_detail(format!("standby: replaying what the repository holds{paused}"));
            return Ok(());
        }
        let has_cluster = self.pgdata.join("PG_VERSION").exists();
        let was_standby = self.pgdata.join("standby.signal").exists();
        if has_cluster && was_standby && !kept.fenced {
            self.tenure.hold(epoch, v1::MemberRole::Standby, false);
            return self.start("starting the standby").await;
        }
        if has_cluster && !looked.final_lsn.is_empty() {
            // Stopped cleanly: it can follow a successor whose timeline
            // branched after its shutdown checkpoint, with no rebuild.
            match self.successor_after(repo, &looked).await? {
                Some(timeline) => {
                    self.become_standby(spec, &format!("following timeline {timeline}")).await?;
                    tracing::warn!(pgdata = %self.pgdata.display(), timeline, "the former primary follows the new timeline as a standby");
                    self.tenure.hold(epoch, v1::MemberRole::Standby, false);
                    return self.start("starting the former primary as a standby of the new timeline").await;
                }
                None if !kept.rejoin_auto => {
                    self.tenure.hold(epoch, v1::MemberRole::Primary, true);
                    self.set_detail(
                        "fenced: stopped cleanly; waiting for the new primary's timeline in the repository",
                    );
                    return Ok(());
                }
                None => {}
            }
        }
        if has_cluster && !kept.rejoin_auto {
            self.tenure.hold(epoch, v1::MemberRole::Primary, true);
            self.set_detail(
                "fenced: a former primary; rejoin is manual (restore it as a standby, or set rejoin: auto)",
            );
            return Ok(());
        }
        // A rewind that failed part-way leaves a directory no second
        // rewind can trust: only a rebuild follows it.
        let rewinding = self.tenure.file().with_extension("rewinding");
        if has_cluster
            && !rewinding.exists()
            && let Some(order) = &order
            && let Some(conninfo) = self.primary_conninfo(&order.primary_address)
        {
            match self.primary_branched(&order.primary_address).await {
                Ok(true) => match self.rewind(spec, &conninfo, &rewinding).await {
                    Ok(()) => {
                        self.tenure.hold(epoch, v1::MemberRole::Standby, false);
                        return self.start("starting the rewound former primary as a standby").await;
                    }
                    Err(e) => tracing::warn!(error = %e, "pg_rewind failed: rebuilding from the repository instead"),
                },
                Ok(false) => {
                    // pg_rewind would find nothing to rewind against yet.
                    self.set_detail("waiting for the new primary to checkpoint on its new timeline, to rewind");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the new primary cannot be asked: rebuilding from the repository instead");
                }
            }
        }
        self.build_standby(repo, spec, has_cluster).await?;
        let _ = std::fs::remove_file(&rewinding);
        self.tenure.hold(epoch, v1::MemberRole::Standby, false);
        self.start("starting the standby built from the repository").await
    }

    /// Points the standby's WAL receiver at the primary at `address`
    /// (`host:port`): it streams while the primary is reachable and
    /// follows the repository through `restore_command` when not.
    async fn stream_from(&self, address: &str) -> Result<(), PgError> {
        // A successor held back as a standby is named primary already:
        // streaming from itself, it would wait on itself and never read the
        // repository again.
        let conninfo = if self.is_own(address) {
            String::new()
        } else {
            match self.primary_conninfo(address) {
                Some(conninfo) => conninfo,
                None => return Ok(()),
            }
        };
        let client = self.connect.connect().await?;
        let now: String = client
            .query_one("SELECT current_setting('primary_conninfo')", &[])
            .await
            .map_err(PgError::db("reading primary_conninfo"))?
            .get(0);
        if now == conninfo {
            return Ok(());
        }
        // ALTER SYSTEM writes postgresql.auto.conf, which a standby may do.
        let set = format!("ALTER SYSTEM SET primary_conninfo = {}", conf_literal(&conninfo));
        client.batch_execute(&set).await.map_err(PgError::db("setting primary_conninfo"))?;
        client.batch_execute("SELECT pg_reload_conf()").await.map_err(PgError::db("reloading the configuration"))?;
        if conninfo.is_empty() {
            tracing::info!("the standby no longer streams: it is the successor named primary");
        } else {
            tracing::info!(primary = address, "the standby streams from the primary whenever it is reachable");
        }
        Ok(())
    }

    /// The connection string to the primary at `address` (`host:port`),
    /// as this source connects (user, TLS): `None` when this member does
    /// not stream from the primary, or the address is its own or a socket
    /// directory (another host's).
    fn primary_conninfo(&self, address: &str) -> Option<String> {
        let (host, port) = address.rsplit_once(':')?;
        if !self.stream_from_primary || self.is_own(address) || host.starts_with('/') {
            return None;
        }
        let value = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut conninfo = format!(
            "host={} port={} user={} application_name={STANDBY_NAME} connect_timeout=10",
            value(host),
            value(port),
            value(&self.connect.user_or_default())
        );
        if let (SslMode::VerifyFull, Some(ca)) = (self.connect.sslmode, &self.connect.sslrootcert) {
            conninfo.push_str(&format!(" sslmode=verify-full sslrootcert={}", value(&ca.display().to_string())));
        }
        Some(conninfo)
    }

    /// Whether `address` (`host:port`, as members report it) is this member's.
    fn is_own(&self, address: &str) -> bool {
        address == format!("{}:{}", self.connect.host(), self.connect.port())
    }

    /// Rewinds this former primary to where its timeline and the new
    /// primary's parted (`pg_rewind` from the server at `conninfo`, which
    /// copies only what changed since, after crash recovery if the server
    /// died), and makes it a standby of the new primary. Reads far less
    /// than a rebuild from the repository.
    async fn rewind(&self, spec: &RepoSpec, conninfo: &str, rewinding: &Path) -> Result<(), PgError> {
        self.set_detail("rewinding this former primary to the new primary (pg_rewind)");
        self.clear_stale_pid().await?;
        std::fs::write(rewinding, "").map_err(PgError::io("writing", rewinding))?;
        let program = self.program("pg_rewind");
        let mut cmd = std::process::Command::new(&program);
        cmd.arg("--target-pgdata")
            .arg(&self.pgdata)
            .arg(format!("--source-server={conninfo} dbname=postgres"))
            .arg("--write-recovery-conf");
        let out = output_as_owner(cmd, &program, &self.pgdata).await?;
        if !out.status.success() {
            return Err(PgError::Usage(format!(
                "pg_rewind on {}: {}",
                self.pgdata.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // pg_rewind copied the new primary's configuration files.
        self.become_standby(spec, "rewound to the new primary with pg_rewind").await?;
        self.append_settings(&self.own_address())?;
        std::fs::remove_file(rewinding).map_err(PgError::io("removing", rewinding))?;
        tracing::warn!(pgdata = %self.pgdata.display(), "the former primary was rewound to the new primary");
        Ok(())
    }

    /// Whether the primary at `address` runs, out of recovery, on a
    /// timeline after this cluster's last checkpoint's, with a checkpoint
    /// on it: before that `pg_rewind` reads no divergence, says no rewind
    /// is needed, and the server could not follow.
    async fn primary_branched(&self, address: &str) -> Result<bool, PgError> {
        let control = self.control_data().await.unwrap_or_default();
        let timeline = checkpoint_timeline(&control);
        let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
        let mut args = self.connect.clone();
        args.host = Some(host.to_owned());
        args.port = port.parse().ok();
        args.dbname = Some("postgres".to_owned());
        let asked = async {
            let client = args.connect().await?;
            let query = "SELECT pg_is_in_recovery(), (SELECT timeline_id FROM pg_control_checkpoint())";
            client.query_one(query, &[]).await.map_err(PgError::db("asking the new primary its timeline"))
        };
        let row = tokio::time::timeout(PRIMARY_ANSWERS_WITHIN, asked)
            .await
            .map_err(|_| PgError::Usage(format!("the new primary at {address} did not answer")))??;
        let (recovering, current): (bool, i32) = (row.get(0), row.get(1));
        Ok(!recovering && u32::try_from(current).is_ok_and(|c| c > timeline))
    }

    /// Removes a `postmaster.pid` left by a server that crashed (or was
    /// killed with its host), after `pg_ctl status` says none runs on it.
    async fn clear_stale_pid(&self) -> Result<(), PgError> {
        let pid = self.pgdata.join("postmaster.pid");
        if !pid.exists() {
            return Ok(());
        }
        if self.pg_ctl(&["status"]).await.is_ok() {
            return Err(PgError::Usage(format!("a server still runs on {}", self.pgdata.display())));
        }
        std::fs::remove_file(&pid).map_err(PgError::io("removing the stale", &pid))
    }

    /// The settings giving the server this member's own address (a backup
    /// or a rewind brings the primary's).
    fn own_address(&self) -> String {
        let mut settings = format!("port = {}\n", self.connect.port());
        if self.connect.host().starts_with('/') {
            settings.push_str(&format!("unix_socket_directories = '{}'\n", self.connect.host().replace('\'', "''")));
        }
        settings
    }

    /// Stops the server: a fast stop (clients cut, a shutdown checkpoint),
    /// an immediate one when that fails. The WAL stream goes on a moment
    /// longer, to store what the server sent as it stopped (a switchover's
    /// successor replays up to it).
    async fn fence(&self, why: &str) -> Result<(), PgError> {
        self.tenure.fence();
        tracing::error!(pgdata = %self.pgdata.display(), why, "fencing PostgreSQL");
        if let Err(e) = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "20"]).await {
            tracing::error!(pgdata = %self.pgdata.display(), error = %e, "a fast stop failed: stopping immediate");
            self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "10"]).await?;
        }
        self.set_detail(format!("fenced: {why}"));
        tokio::time::sleep(STREAM_DRAIN).await;
        self.may_stream.send_replace(false);
        Ok(())
    }

    /// Starts a fenced primary again: a leader confirmed its epoch.
    async fn unfence(&self) -> Result<(), PgError> {
        self.start("unfencing: a leader confirmed this primary's epoch").await?;
        self.tenure.unfence();
        Ok(())
    }

    async fn start(&self, what: &str) -> Result<(), PgError> {
        self.set_detail(what);
        // Beside the data directory, not in it: base backups do not carry it.
        let log = self.tenure.file().with_extension("log");
        let log_arg = log.display().to_string();
        let out = self.pg_ctl(&["start", "-w", "-t", "300", "-l", &log_arg]).await;
        if let Err(e) = out {
            return Err(PgError::Usage(format!("{e}\n{}", log_tail(&log, 15))));
        }
        Ok(())
    }

    /// The timeline after this cluster's, if the repository holds its
    /// history and it branched past `looked`'s shutdown checkpoint.
    async fn successor_after(&self, repo: &Repository, looked: &Looked) -> Result<Option<u32>, PgError> {
        let next = looked.final_timeline + 1;
        let Some(history) = wal::read(repo, &format!("{next:08X}.history")).await? else { return Ok(None) };
        let text = String::from_utf8_lossy(&history.content);
        let switch = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let parent: u32 = parts.next()?.parse().ok()?;
                (parent == looked.final_timeline).then(|| parts.next().and_then(parse_lsn)).flatten()
            })
            .next();
        let checkpoint = parse_lsn(&looked.final_lsn);
        Ok(match (switch, checkpoint) {
            (Some(s), Some(c)) if s > c => Some(next),
            _ => None,
        })
    }

    /// Makes a stopped cluster a standby that fetches WAL from the
    /// repository and follows the newest timeline; `why` goes in the
    /// settings' comment.
    async fn become_standby(&self, spec: &RepoSpec, why: &str) -> Result<(), PgError> {
        let control = self.control_data().await.unwrap_or_default();
        let segment_size = control.get("Bytes per WAL segment").and_then(|s| s.parse().ok()).unwrap_or(16u64 << 20);
        self.append_settings(&format!(
            "# Added by the lifeboat agent: a standby, {why}\n{}wal_retrieve_retry_interval = '1s'\n",
            recovery_settings(&wal_fetch_command(None, spec)?, segment_size)
        ))?;
        let signal = self.pgdata.join("standby.signal");
        std::fs::write(&signal, "").map_err(PgError::io("writing", &signal))?;
        give_to_owner_of(&self.pgdata, &signal).map_err(PgError::io("changing owner of", &signal))?;
        Ok(())
    }

    /// Appends `settings` to the cluster's `postgresql.auto.conf`.
    fn append_settings(&self, settings: &str) -> Result<(), PgError> {
        let auto = self.pgdata.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).map_err(PgError::io("reading", &auto))?;
        conf.push_str(settings);
        std::fs::write(&auto, conf).map_err(PgError::io("writing", &auto))
    }

    /// Restores the newest base backup into the data directory (reusing
    /// what matches when a cluster is there) and makes it a standby that
    /// fetches WAL from the repository.
    async fn build_standby(&self, repo: &Repository, spec: &RepoSpec, delta: bool) -> Result<(), PgError> {
        self.set_detail(if delta {
            "rebuilding this former primary as a standby from the repository"
        } else {
            "building a standby from the repository"
        });
        if delta {
            self.clear_stale_pid().await?;
        }
        if let Some(parent) = self.pgdata.parent()
            && !self.pgdata.exists()
        {
            std::fs::create_dir_all(&self.pgdata).map_err(PgError::io("creating", &self.pgdata))?;
            let meta = std::fs::metadata(parent).map_err(PgError::io("reading", parent))?;
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&self.pgdata, Some(meta.uid()), Some(meta.gid()))
                .map_err(PgError::io("changing owner of", &self.pgdata))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.pgdata, std::fs::Permissions::from_mode(0o700))
            .map_err(PgError::io("setting the mode of", &self.pgdata))?;
        let opts = PgRestoreOptions {
            target_dir: self.pgdata.clone(),
            from_backup: None,
            target: RecoveryPoint::Latest,
            restore_command: wal_fetch_command(None, spec)?,
            delta,
            tablespace_map: Vec::new(),
            threads: 0,
            protect: spec.local_paths(),
        };
        let outcome = restore_postgres(repo, opts, Arc::new(Progress::default())).await?;
        let signal = self.pgdata.join("recovery.signal");
        std::fs::rename(&signal, self.pgdata.join("standby.signal")).map_err(PgError::io("renaming", &signal))?;
        // Its own address, not the primary's the backup carries; and WAL
        // asked for every second, so it follows the repository closely.
        self.append_settings(&format!(
            "# Added by the lifeboat agent: a standby of the failover group\nwal_retrieve_retry_interval = '1s'\n{}",
            self.own_address()
        ))?;
        tracing::info!(backup = %outcome.backup.short(), pgdata = %self.pgdata.display(), "standby built from the repository");
        Ok(())
    }

    /// Replays what the repository holds, promotes, and runs the hooks.
    async fn promote(&self, repo: &Repository, order: &v1::RoleOrder) -> Result<(), PgError> {
        self.set_detail(format!("promoting under epoch {}: replaying what the repository holds", order.epoch));
        let client = self.connect.connect().await?;
        let fail = |what: &str| PgError::db(format!("{what} on {}", self.connect.describe()));
        client.batch_execute("SELECT pg_wal_replay_resume()").await.map_err(fail("resuming replay"))?;
        let started = Instant::now();
        let (mut last, mut since) = (String::new(), Instant::now());
        // A switchover names the old primary's shutdown checkpoint: nothing
        // before it may be left behind, so without it there is no promotion.
        let replay_to = (!order.replay_to.is_empty()).then(|| parse_lsn(&order.replay_to)).flatten();
        loop {
            let row = client
                .query_one("SELECT coalesce(pg_last_wal_replay_lsn()::text, '')", &[])
                .await
                .map_err(fail("reading the replay position"))?;
            let lsn: String = row.get(0);
            match replay_to {
                Some(target) if parse_lsn(&lsn).is_some_and(|l| l > target) => {
                    last = lsn;
                    break;
                }
                Some(_) if started.elapsed() > CATCH_UP_LIMIT => {
                    return Err(PgError::Usage(format!(
                        "switchover: replay reached {lsn}, not the old primary's shutdown checkpoint at {}: its last WAL is not in the repository; not promoting",
                        order.replay_to
                    )));
                }
                Some(_) => last = lsn,
                None if lsn != last => (last, since) = (lsn, Instant::now()),
                None if since.elapsed() >= CAUGHT_UP_AFTER => break,
                None if started.elapsed() > CATCH_UP_LIMIT => {
                    tracing::warn!(lsn = last, "replay did not settle; promoting where it is");
                    break;
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Catching up took a while: promote only under a lease still running.
        if !self.tenure.leased() {
            self.set_detail("promotion deferred: the lease ran out while replaying");
            return Ok(());
        }
        client.query_one("SELECT pg_promote(true, 60)", &[]).await.map_err(fail("promoting"))?;
        let promoted_at = Utc::now();
        // Streaming starts from the slot's restart point: a checkpoint puts it on the new timeline.
        client.batch_execute("CHECKPOINT").await.map_err(fail("checkpointing after the promotion"))?;
        let row = client
            .query_one("SELECT timeline_id::int8 FROM pg_control_checkpoint()", &[])
            .await
            .map_err(fail("reading the new timeline"))?;
        let timeline = u32::try_from(row.get::<_, i64>(0)).unwrap_or_default();
        let history = self.pgdata.join("pg_wal").join(format!("{timeline:08X}.history"));
        if history.exists() {
            wal::push(repo, &history).await?;
        }
        self.tenure.promoted(order.epoch, promoted_at, &last);
        self.may_stream.send_replace(true);
        tracing::warn!(group = order.group, epoch = order.epoch, lsn = last, timeline, "promoted: accepting writes");
        self.set_detail(format!("promoted at {last} onto timeline {timeline}"));
        // In the background: the lease is watched meanwhile.
        let (host, port) = (self.connect.host().to_owned(), self.connect.port().to_string());
        run_hooks(order, format!("{host}:{port}"), vec![("PGHOST", host), ("PGPORT", port)]);
        Ok(())
    }

    /// Whether the server runs, and where it stands.
    async fn look(&self) -> Looked {
        if !self.pgdata.join("postmaster.pid").exists() {
            return self.stopped().await;
        }
        match tokio::time::timeout(LOOK_TIMEOUT, self.query()).await {
            Ok(Some(looked)) => looked,
            // No answer is not "stopped": a server that runs but does not
            // answer (connections full, hung) is taken for what its data
            // directory says it is, and a primary is fenced like any other.
            _ if self.pg_ctl(&["status"]).await.is_ok() => {
                Looked { running: true, in_recovery: self.pgdata.join("standby.signal").exists(), ..Looked::default() }
            }
            _ => Looked::default(),
        }
    }

    /// The server's answer to where it stands; none when it does not answer.
    async fn query(&self) -> Option<Looked> {
        let client = self.connect.connect().await.ok()?;
        let sql = "SELECT pg_is_in_recovery(), \
                   CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0')::text \
                        ELSE pg_current_wal_lsn()::text END, \
                   (SELECT timeline_id::int8 FROM pg_control_checkpoint()), \
                   coalesce((extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000)::int8, 0), \
                   CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END";
        match client.query_one(sql, &[]).await {
            Ok(row) => Some(Looked {
                running: true,
                in_recovery: row.get(0),
                lsn: row.get(1),
                timeline: u32::try_from(row.get::<_, i64>(2)).unwrap_or_default(),
                last_replayed_commit_unix_ms: row.get(3),
                replay_paused: row.get(4),
                ..Looked::default()
            }),
            Err(e) => {
                tracing::debug!(error = %e, "cannot look at the server");
                None
            }
        }
    }

    /// A stopped server's control data: where a clean shutdown left it.
    async fn stopped(&self) -> Looked {
        let Some(control) = self.control_data().await else { return Looked::default() };
        if control.get("Database cluster state").map(String::as_str) != Some("shut down") {
            return Looked::default();
        }
        Looked {
            final_lsn: control.get("Latest checkpoint location").cloned().unwrap_or_default(),
            final_timeline: checkpoint_timeline(&control),
            ..Looked::default()
        }
    }

    /// `pg_controldata`'s lines as name and value.
    async fn control_data(&self) -> Option<std::collections::HashMap<String, String>> {
        if !self.pgdata.join("global/pg_control").exists() {
            return None;
        }
        let mut cmd = tokio::process::Command::new(self.program("pg_controldata"));
        cmd.arg("-D").arg(&self.pgdata).env("LC_ALL", "C");
        let out = cmd.output().await.ok().filter(|o| o.status.success())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Some(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    /// A PostgreSQL program for this cluster's major version.
    fn program(&self, name: &str) -> PathBuf {
        let major = std::fs::read_to_string(self.pgdata.join("PG_VERSION")).unwrap_or_default();
        pg_program(self.pg_bin.as_deref(), major.trim(), name)
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<(), PgError> {
        let program = self.program("pg_ctl");
        let mut cmd = std::process::Command::new(&program);
        cmd.arg("-D").arg(&self.pgdata).args(args);
        let out = output_as_owner(cmd, &program, &self.pgdata).await?;
        if !out.status.success() {
            return Err(PgError::Usage(format!(
                "pg_ctl {} on {}: {}",
                args.first().copied().unwrap_or_default(),
                self.pgdata.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// The timeline of the last checkpoint `pg_controldata` reported (0 when unknown).
fn checkpoint_timeline(control: &std::collections::HashMap<String, String>) -> u32 {
    control.get("Latest checkpoint's TimeLineID").and_then(|t| t.parse().ok()).unwrap_or(0)
}
