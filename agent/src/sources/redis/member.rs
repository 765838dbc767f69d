//! A Redis source as a member of a failover group: its agent keeps the
//! server in the role the leader orders, under the same lease as a
//! PostgreSQL member ([`Tenure`]).
//!
//! - **Primary**: a master that writes only under a lease. When the lease
//!   lapses its writes are paused (`CLIENT PAUSE … WRITE`: writes wait,
//!   none is acknowledged, reads go on), kept paused until a leader
//!   confirms the same epoch. The pause is asked again every second, so a
//!   restarted server is paused again within one.
//! - **Standby**: a replica. After a failover the other replicas are
//!   pointed at the new primary (`REPLICAOF`). A master found under an
//!   epoch that made it a standby is paused at once; it follows the new
//!   primary by itself when nothing it acknowledged would be lost (the new
//!   primary's previous replication id is this server's, valid past its
//!   offset: a switchover), otherwise only with `rejoin: auto` (a full
//!   resynchronisation drops what it wrote after the new primary left it).
//! - **Promotion**: a replica under a newer epoch's primary order; for a
//!   switchover, once its offset reached the old primary's paused offset;
//!   then `REPLICAOF NO ONE` (the offset carries on) and the group's hooks.
//! - **Sentinel**: a set Sentinel manages is reported on (its master's
//!   role and offset) and fenced like any primary, but never promoted or
//!   repointed behind Sentinel's back.
//! - **Cold** (`[source.member.cold]`): with no server answering, a
//!   standby at the offset of the primary's newest snapshot; promoted, it
//!   is restored from that snapshot and started ([`cold`](super::cold)).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use lifeboat_proto::v1;
use serde::Deserialize;
use tokio::sync::watch;

use lifeboat_common::repo::format::snapshot::Snapshot;
use lifeboat_common::repo::{Repository, SnapshotId};

use super::RedisError;
use super::cold::{ColdConfig, bring_up, newest_snapshot};
use super::endpoint::{Access, Connection, HostPort, Prefer, REDIS_PORT, Target, Url};
use super::sentinel::locate;
use super::server::{Role, Server};
use crate::sources::Order;
use crate::sources::tenure::{Standing, Tenure, run_hooks};

/// How often the server is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long a look at the server may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a switchover's successor may take to reach the old primary's offset.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
/// A fence's pause, asked again every second while fenced: long enough
/// that it never ends by itself while the agent is away.
const FENCE_PAUSE_MS: u64 = 30 * 24 * 3600 * 1000;

/// How often a cold member looks for a newer snapshot of the primary.
const SNAPSHOTS_EVERY: Duration = Duration::from_secs(10);

/// `[source.member]`: what the agent of a failover member needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Where its state (the epoch, role and lease held) is kept across restarts.
    pub state_dir: PathBuf,
    /// With no server running: stand by on the primary's snapshots.
    pub cold: Option<ColdConfig>,
}

/// What a cold member stands by on.
#[derive(Debug, Default)]
struct StandingBy {
    /// This member, `HOST/SOURCE`.
    me: String,
    /// The primary it was last ordered to follow (whose snapshots it restores).
    primary: Option<String>,
    /// The newest snapshot of it, and when the repository was last asked.
    newest: Option<(SnapshotId, Snapshot)>,
    asked: Option<Instant>,
}

/// The server as looked at.
#[derive(Debug, Clone, Default)]
struct Looked {
    /// Where it is (under Sentinel: the master the sentinels name).
    /// None: it did not answer.
    addr: Option<HostPort>,
    master: bool,
    /// A replica's master, and whether the link is up.
    following: Option<(HostPort, bool)>,
    offset: u64,
    replid: String,
    /// Paused by this agent's fence, at this offset (final while paused:
    /// a master whose writes are paused sends no more to its replicas).
    paused_offset: Option<u64>,
}

/// The controller of one member.
#[derive(Debug)]
pub struct Member {
    source: String,
    connection: Connection,
    /// A set Sentinel manages: reported and fenced, never promoted or repointed.
    under_sentinel: bool,
    tenure: Tenure,
    looked: Mutex<Looked>,
    cold: Option<ColdConfig>,
    standing_by: tokio::sync::Mutex<StandingBy>,
    /// The offset of the snapshot a cold standby stands at (for the heartbeat).
    cold_offset: Mutex<Option<u64>>,
}

impl Member {
    /// The controller of the server `connection` reaches, keeping its state in `config.state_dir`.
    pub fn new(source: &str, connection: Connection, config: &MemberConfig) -> Arc<Self> {
        let file = config.state_dir.join(format!("{source}.lifeboat-member.json"));
        let tenure = Tenure::open(file, connection.url.clone());
        let under_sentinel = Url::parse(&connection.url).is_ok_and(|u| matches!(u.target, Target::Sentinels { .. }));
        Arc::new(Member {
            source: source.to_owned(),
            connection,
            under_sentinel,
            tenure,
            looked: Mutex::new(Looked::default()),
            cold: config.cold.clone(),
            standing_by: tokio::sync::Mutex::new(StandingBy::default()),
            cold_offset: Mutex::new(None),
        })
    }

    /// Takes an order (newer epochs only) and the lease it renews.
    pub fn order(&self, order: Order) {
        self.tenure.take(order);
    }

    fn looked(&self) -> Looked {
        self.looked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Its state for the heartbeat (none when it is not a member).
    pub fn report(&self) -> Option<v1::MemberState> {
        let mut state = self.tenure.report()?;
        let looked = self.looked();
        let cold_offset = *self.cold_offset.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(offset) = cold_offset.filter(|_| looked.addr.is_none()) {
            state.role = v1::MemberRole::Standby.into();
            state.lsn = offset.to_string();
            return Some(state);
        }
        // A master whose writes this agent paused accepts none: it is not
        // a primary, and its offset is final (a switchover's successor
        // catches up to it). One not known to be paused may be writable.
        let role = match (looked.addr.is_some(), looked.master) {
            (false, _) => v1::MemberRole::Unspecified,
            (true, true) if looked.paused_offset.is_some() => v1::MemberRole::Unspecified,
            (true, true) => v1::MemberRole::Primary,
            // Never a candidate for promotion behind Sentinel's back.
            (true, false) if self.under_sentinel => v1::MemberRole::Unspecified,
            (true, false) => v1::MemberRole::Standby,
        };
        state.role = role.into();
        state.lsn = if looked.addr.is_some() { looked.offset.to_string() } else { String::new() };
        if let Some(offset) = looked.paused_offset.filter(|_| looked.master) {
            state.final_lsn = offset.to_string();
        }
        state.address = looked.addr.map(|a| a.to_string()).unwrap_or_default();
        Some(state)
    }

    /// Keeps the server in its ordered role until `shutdown` is set
    /// (a cold member restores from `repo`); `host` is this agent's.
    pub async fn run(self: Arc<Self>, repo: Repository, host: String, mut shutdown: watch::Receiver<bool>) {
        self.standing_by.lock().await.me = format!("{host}/{}", self.source);
        loop {
            if let Err(e) = self.step(&repo).await {
                tracing::error!(source = self.source, error = %e, "failover member");
                self.tenure.set_detail(format!("error: {e}"));
            }
            if !self.tenure.rest(LOOK_EVERY, &mut shutdown).await {
                return;
            }
        }
    }

    /// One look at the server, and what the order asks of it.
    async fn step(&self, repo: &Repository) -> Result<(), RedisError> {
        if !self.tenure.is_member() {
            return Ok(());
        }
        let (url, access) = self.connection.access()?;
        let (looked, server) = self.look(&url, &access).await;
        let standing = self.tenure.standing();
        let primary = standing.primary();
        if let Some(cold) = &self.cold {
            if server.is_none() {
                let stood = self.step_cold(repo, cold, &url, &access, standing).await;
                if !matches!(stood, Ok(true)) {
                    self.set_cold_offset(None);
                }
                return stood.map(|_| ());
            }
            self.set_cold_offset(None);
        }
        let Standing { order, kept, epoch, leased, .. } = standing;
        let Some(mut server) = server else {
            self.tenure.set_detail(if primary {
                "primary, but its server does not answer"
            } else {
                "standby, but its server does not answer"
            });
            return Ok(());
        };
        if primary {
            if !leased {
                if looked.master {
                    let why = "no leader has confirmed this primary's epoch within fence_after";
                    self.fence(&mut server, why).await?;
                    self.tenure.set_detail(format!("fenced: {why}"));
                    return Ok(());
                }
                self.tenure.set_detail("waiting for a leader to confirm this primary's epoch");
                return Ok(());
            }
            if !looked.master {
                if epoch > kept.epoch || kept.role != v1::MemberRole::Primary as i32 {
                    self.promote(&mut server, &looked, &order.unwrap_or_default()).await?;
                    // Reported as it is now, not as it was before the promotion.
                    self.look(&url, &access).await;
                    return Ok(());
                }
                self.tenure.set_detail("a replica, though primary: waiting");
                return Ok(());
            }
            if kept.fenced {
                if epoch != kept.epoch {
                    // Fenced, then made primary under a newer epoch without
                    // having followed the one between: its data is not the group's.
                    self.fence(&mut server, "a former primary").await?;
                    self.tenure.set_detail(
                        "fenced: ordered primary under a newer epoch, but this former primary never followed the last one; restore it by hand",
                    );
                    return Ok(());
                }
                self.unpause(&mut server).await?;
                tracing::warn!(source = self.source, epoch, "unfenced: a leader confirmed this primary's epoch");
            }
            self.tenure.hold(epoch, v1::MemberRole::Primary, false);
            self.tenure.set_detail("primary: accepting writes");
            return Ok(());
        }
        // A standby.
        let primary = order.and_then(|o| HostPort::parse(&o.primary_address, REDIS_PORT).ok());
        if looked.master {
            // Another is primary under a newer epoch: this one must not write.
            self.fence(&mut server, "another member is primary under a newer epoch").await?;
            self.tenure.hold(epoch, v1::MemberRole::Primary, true);
            let Some(primary) = primary.filter(|p| Some(p) != looked.addr.as_ref()) else {
                self.tenure.set_detail("fenced: a former primary; waiting for the new primary's address");
                return Ok(());
            };
            if self.under_sentinel {
                self.tenure.set_detail("fenced: a former primary under Sentinel; never repointed behind its back");
                return Ok(());
            }
            let asked = tokio::time::timeout(LOOK_TIMEOUT, follows_without_loss(&access, &primary, &looked)).await;
            let Some(lossless) = asked.ok().flatten() else {
                self.tenure.set_detail(format!("fenced: a former primary; waiting for {primary} to become master"));
                return Ok(());
            };
            if !lossless && !kept.rejoin_auto {
                self.tenure.set_detail(format!(
                    "fenced: a former primary with writes {primary} does not have; rejoin is manual (REPLICAOF it and CLIENT UNPAUSE, or set rejoin: auto)"
                ));
                return Ok(());
            }
            replicaof(&mut server, &primary).await?;
            self.unpause(&mut server).await?;
            tracing::warn!(source = self.source, %primary, lossless, "the former primary follows the new one");
            // Looked at again before the fence is dropped: never reported
            // as the writable master it was a moment ago.
            self.look(&url, &access).await;
            self.tenure.hold(epoch, v1::MemberRole::Standby, false);
            return Ok(());
        }
        match (&primary, &looked.following) {
            // Never itself: a successor held back as a standby is named primary already.
            (Some(primary), Some((master, _)))
                if primary != master && Some(primary) != looked.addr.as_ref() && !self.under_sentinel =>
            {
                replicaof(&mut server, primary).await?;
                tracing::warn!(source = self.source, %primary, was = %master, "the replica follows the group's new primary");
            }
            (_, Some((master, link_up))) => {
                let link = if *link_up { "up" } else { "down" };
                self.tenure.set_detail(format!("standby: a replica of {master} (link {link})"));
            }
            (_, None) => {}
        }
        if kept.fenced {
            // A replica now (repointed by hand, or by Sentinel): a pause
            // left on it would stop it applying its master's stream.
            self.unpause(&mut server).await?;
        }
        self.tenure.hold(epoch, v1::MemberRole::Standby, false);
        Ok(())
    }

    fn set_cold_offset(&self, offset: Option<u64>) {
        *self.cold_offset.lock().unwrap_or_else(|p| p.into_inner()) = offset;
    }

    /// A cold member with no server: a standby at the offset of the
    /// primary's newest snapshot (true), or, ordered primary, restored from it.
    async fn step_cold(
        &self,
        repo: &Repository,
        cold: &ColdConfig,
        url: &Url,
        access: &Access,
        standing: Standing,
    ) -> Result<bool, RedisError> {
        let primary = standing.primary();
        let Standing { order, kept, epoch, leased, .. } = standing;
        let order = order.unwrap_or_default();
        let mut by = self.standing_by.lock().await;
        // A successor held back as a standby is named primary already: never itself.
        let other = !order.primary.is_empty() && order.primary != by.me;
        if !primary && other && by.primary.as_deref() != Some(order.primary.as_str()) {
            by.primary = Some(order.primary.clone());
            by.asked = None;
        }
        let Some(of) = by.primary.clone() else {
            self.tenure.set_detail("cold: no server, and no primary named yet whose snapshots to stand by on");
            return Ok(false);
        };
        if by.asked.is_none_or(|t| t.elapsed() >= SNAPSHOTS_EVERY) {
            by.newest = newest_snapshot(repo, &of).await?;
            by.asked = Some(Instant::now());
        }
        let Some(newest) = by.newest.clone() else {
            self.tenure.set_detail(format!("cold: no server, and no snapshot of {of} to restore yet"));
            return Ok(false);
        };
        let offset = newest.1.redis.as_ref().map_or(0, |r| r.replication_offset);
        let about = format!("snapshot {} of {of} at offset {offset}, taken {}", newest.0.short(), newest.1.time);
        if !primary {
            self.set_cold_offset(Some(offset));
            self.tenure.set_detail(format!("cold standby: no server; would restore {about}"));
            self.tenure.hold(epoch, v1::MemberRole::Standby, false);
            return Ok(true);
        }
        if !(epoch > kept.epoch || kept.role != v1::MemberRole::Primary as i32) {
            self.tenure.set_detail("primary, but its server does not answer");
            return Ok(false);
        }
        if let Ok(target) = order.replay_to.parse::<u64>()
            && target > offset
        {
            self.tenure.set_detail(format!(
                "a switchover needs everything to offset {target}, and the newest snapshot stops at {offset}: not promoting"
            ));
            return Ok(false);
        }
        if !leased {
            self.tenure.set_detail("promotion deferred: the lease ran out");
            return Ok(false);
        }
        let Target::Server(addr) = &url.target else {
            return Err(RedisError::Config("a cold member needs a redis:// URL naming the server to start".into()));
        };
        self.tenure.set_detail(format!("promoting under epoch {epoch}: restoring {about}"));
        tracing::warn!(group = order.group, epoch, snapshot = %newest.0.short(), offset, "restoring the primary's newest snapshot to promote");
        let started = bring_up(repo, &newest, cold, addr).await?;
        let promoted_at = Utc::now();
        self.tenure.promoted(epoch, promoted_at, &offset.to_string());
        tracing::warn!(
            group = order.group,
            epoch,
            offset,
            keys = started.keys,
            pid = started.pid,
            "promoted: a server restored from the newest snapshot accepts writes"
        );
        self.tenure
            .set_detail(format!("promoted from {about}: {} keys loaded in {:.1}s", started.keys, started.load_seconds));
        drop(by);
        run_hooks(
            &order,
            addr.to_string(),
            vec![("REDIS_HOST", addr.host.clone()), ("REDIS_PORT", addr.port.to_string())],
        );
        // Reported as it is now: a master.
        self.look(url, access).await;
        Ok(false)
    }

    /// Looks at the server (none when it does not answer) and keeps what
    /// was seen for the heartbeat.
    async fn look(&self, url: &Url, access: &Access) -> (Looked, Option<Server>) {
        let (looked, server) = match tokio::time::timeout(LOOK_TIMEOUT, look(url, access)).await {
            Ok(Ok((looked, server))) => (looked, Some(server)),
            Ok(Err(e)) => {
                tracing::debug!(source = self.source, error = %e, "cannot look at the server");
                (Looked::default(), None)
            }
            Err(_) => (Looked::default(), None),
        };
        let mut kept = self.looked.lock().unwrap_or_else(|p| p.into_inner());
        let mut looked = looked;
        // Still the paused master it was: the pause holds (asked again this step).
        if looked.master && kept.master && looked.addr == kept.addr && self.tenure.standing().kept.fenced {
            looked.paused_offset = kept.paused_offset;
        }
        *kept = looked.clone();
        drop(kept);
        (looked, server)
    }

    /// Lifts a fence's pause.
    async fn unpause(&self, server: &mut Server) -> Result<(), RedisError> {
        server.query::<()>(redis::cmd("CLIENT").arg("UNPAUSE"), "CLIENT UNPAUSE").await?;
        self.looked.lock().unwrap_or_else(|p| p.into_inner()).paused_offset = None;
        Ok(())
    }

    /// Pauses the server's writes (asked again at each look while fenced);
    /// the caller says what it waits for.
    async fn fence(&self, server: &mut Server, why: &str) -> Result<(), RedisError> {
        if !self.tenure.standing().kept.fenced {
            self.tenure.fence();
            tracing::error!(source = self.source, why, "fencing Redis: pausing its writes");
        }
        let pause = redis::cmd("CLIENT").arg("PAUSE").arg(FENCE_PAUSE_MS).arg("WRITE").clone();
        server.query::<()>(&pause, "CLIENT PAUSE").await?;
        // Read once paused: no write is acknowledged past it.
        let offset = offset_of(server).await?;
        self.looked.lock().unwrap_or_else(|p| p.into_inner()).paused_offset = Some(offset);
        Ok(())
    }

    /// Makes the replica a master (for a switchover, once it reached the
    /// old primary's offset) and runs the hooks.
    async fn promote(&self, server: &mut Server, looked: &Looked, order: &v1::RoleOrder) -> Result<(), RedisError> {
        if self.under_sentinel {
            self.tenure.set_detail("ordered primary, but Sentinel manages this set: never promoted behind its back");
            return Ok(());
        }
        self.tenure.set_detail(format!("promoting under epoch {}", order.epoch));
        if let Ok(target) = order.replay_to.parse::<u64>() {
            let started = Instant::now();
            let mut offset = looked.offset;
            while offset < target {
                if started.elapsed() > CATCH_UP_LIMIT {
                    return Err(RedisError::Usage(format!(
                        "switchover: the replica reached offset {offset}, not the old primary's {target}; not promoting"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                offset = offset_of(server).await?;
            }
        }
        if !self.tenure.leased() {
            self.tenure.set_detail("promotion deferred: the lease ran out");
            return Ok(());
        }
        server.query::<()>(redis::cmd("REPLICAOF").arg("NO").arg("ONE"), "REPLICAOF NO ONE").await?;
        // A pause left from an earlier fence would keep the new primary from writing.
        self.unpause(server).await?;
        let promoted_at = Utc::now();
        let offset = offset_of(server).await?;
        self.tenure.promoted(order.epoch, promoted_at, &offset.to_string());
        tracing::warn!(group = order.group, epoch = order.epoch, offset, "promoted: accepting writes");
        self.tenure.set_detail(format!("promoted at offset {offset}"));
        let addr = looked.addr.clone().unwrap_or_else(|| server.addr.clone());
        run_hooks(
            order,
            addr.to_string(),
            vec![("REDIS_HOST", addr.host.clone()), ("REDIS_PORT", addr.port.to_string())],
        );
        Ok(())
    }
}

/// Connects to the server (under Sentinel: the master it names) and reads
/// its replication state.
async fn look(url: &Url, access: &Access) -> Result<(Looked, Server), RedisError> {
    let (mut server, role) = locate(url, access, Prefer::Master).await?;
    let info = server.info("replication").await?;
    let looked = Looked {
        addr: Some(server.addr.clone()),
        master: role == Role::Master,
        following: match role {
            Role::Replica { master, connected } => Some((master, connected)),
            _ => None,
        },
        offset: info.get("master_repl_offset").unwrap_or_default(),
        replid: info.get("master_replid").unwrap_or_default(),
        paused_offset: None,
    };
    Ok((looked, server))
}

/// Whether this former master can follow `primary` losing nothing: the
/// new primary's previous replication history is this server's, and runs
/// at least as far as its offset (a partial resynchronisation). None until
/// `primary` answers as a master (following a replica not yet promoted
/// would make a loop).
async fn follows_without_loss(access: &Access, primary: &HostPort, looked: &Looked) -> Option<bool> {
    let mut new = Server::open(primary, access).await.ok()?;
    let info = new.info("replication").await.ok()?;
    if info.get::<String>("role").as_deref() != Some("master") {
        return None;
    }
    // second_repl_offset is one past the last offset the previous id covers.
    Some(
        info.get::<String>("master_replid2").is_some_and(|id| id == looked.replid)
            && info.get::<u64>("second_repl_offset").is_some_and(|end| end > looked.offset),
    )
}

/// Makes the server a replica of `primary`.
async fn replicaof(server: &mut Server, primary: &HostPort) -> Result<(), RedisError> {
    let cmd = redis::cmd("REPLICAOF").arg(&primary.host).arg(primary.port).clone();
    server.query::<()>(&cmd, "REPLICAOF").await
}

/// The server's replication offset.
async fn offset_of(server: &mut Server) -> Result<u64, RedisError> {
    Ok(server.info("replication").await?.get("master_repl_offset").unwrap_or_default())
}
