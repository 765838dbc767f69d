//! What every kind's failover member holds, whatever its server: the
//! leader's newest order, the lease a primary writes under, and the epoch,
//! role and fence it keeps across an agent restart.
//!
//! A primary may accept writes only while a heartbeat answered less than
//! `fence_after` ago confirms its epoch. The lease is timed from the
//! agent's own send instant, so no clocks are compared across hosts. It is
//! kept on disk as wall time (written aside and renamed), so a restarted
//! agent has no more of it than was left; a file that cannot be read is
//! taken for a primary whose lease ran out, so its server is fenced until a
//! leader says otherwise.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat_proto::v1;
use serde::{Deserialize, Serialize};

use super::Order;

/// What survives an agent restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Kept {
    /// The group (empty: not a member).
    pub group: String,
    /// The epoch the server was last put in its role under.
    pub epoch: u64,
    /// The role it holds: 1 primary, 2 standby (the wire's values).
    pub role: i32,
    /// Its agent stopped its writes: only a leader's confirmation lifts that.
    pub fenced: bool,
    /// The lease's end, wall clock (ms).
    lease_until_unix_ms: i64,
    /// How long a confirmation lasts.
    pub fence_after_ms: u32,
    /// A former primary is rebuilt as a standby by itself.
    pub rejoin_auto: bool,
    /// When it accepted writes after its promotion, and at which position.
    pub promoted_unix_ms: i64,
    /// The position it was promoted at.
    pub promoted_lsn: String,
    /// The epoch it was promoted under.
    #[serde(default)]
    pub promoted_epoch: u64,
    /// The role last ordered and the newest epoch ordered: a restarted
    /// agent acts on these until the leader speaks again (never on the
    /// server's own past role).
    #[serde(default)]
    pub ordered_role: i32,
    /// The newest epoch ordered.
    #[serde(default)]
    pub ordered_epoch: u64,
}

/// What a member's controller acts on in one step.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The newest order since this agent started, if any.
    pub order: Option<v1::RoleOrder>,
    /// What is kept.
    pub kept: Kept,
    /// The role ordered (from the order, else as kept).
    pub role: i32,
    /// The epoch ordered.
    pub epoch: u64,
    /// A lease is running.
    pub leased: bool,
}

impl Standing {
    /// Ordered to be the primary.
    pub fn primary(&self) -> bool {
        self.role == v1::MemberRole::Primary as i32
    }
}

#[derive(Debug, Default)]
struct Held {
    kept: Kept,
    order: Option<v1::RoleOrder>,
    /// The lease's end on this host's monotonic clock.
    lease_until: Option<Instant>,
    detail: String,
}

/// One member's tenure, shared by its controller and the heartbeat.
#[derive(Debug)]
pub struct Tenure {
    /// The server, in logs.
    server: String,
    file: PathBuf,
    held: Mutex<Held>,
    /// Rung by each order: the controller acts on it at once.
    wake: tokio::sync::Notify,
}

impl Tenure {
    /// The tenure kept in `file`, of the server named `server` in logs.
    pub fn open(file: PathBuf, server: String) -> Tenure {
        let kept: Option<Kept> = match std::fs::read(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| unknown(&file, &e.to_string()))),
            Err(e) => Some(unknown(&file, &e.to_string())),
        };
        let mut held = Held::default();
        if let Some(kept) = kept {
            let left = kept.lease_until_unix_ms - Utc::now().timestamp_millis();
            held.lease_until = (left > 0).then(|| Instant::now() + Duration::from_millis(left.unsigned_abs()));
            held.kept = kept;
        }
        Tenure { server, file, held: Mutex::new(held), wake: tokio::sync::Notify::new() }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where it is kept.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether a leader ever ordered it (or its state says it was ordered).
    pub fn is_member(&self) -> bool {
        !self.held().kept.group.is_empty()
    }

    /// Takes an order (newer epochs only) and the lease it renews.
    pub fn take(&self, order: Order) {
        let mut h = self.held();
        let newest = h.kept.epoch.max(h.kept.ordered_epoch);
        if order.order.epoch < newest {
            tracing::warn!(
                group = order.order.group,
                epoch = order.order.epoch,
                newest,
                "order of an older epoch ignored"
            );
            return;
        }
        let fence_after = Duration::from_millis(order.order.fence_after_ms.into());
        if order.order.role == v1::MemberRole::Primary as i32 {
            if order.order.epoch > newest {
                // A lease is for one epoch.
                h.lease_until = None;
            }
            if let Some(at) = order.confirmed_at {
                let until = at + fence_after;
                h.lease_until = Some(h.lease_until.map_or(until, |u| u.max(until)));
            }
        } else {
            h.lease_until = None;
        }
        h.kept.ordered_role = order.order.role;
        h.kept.ordered_epoch = order.order.epoch;
        h.kept.group.clone_from(&order.order.group);
        h.kept.fence_after_ms = order.order.fence_after_ms;
        h.kept.rejoin_auto = order.order.rejoin_auto;
        h.order = Some(order.order);
        self.save(&mut h);
        drop(h);
        self.wake.notify_one();
    }

    /// Waits `pause`, or less when an order comes; false once `shutdown` is set.
    pub async fn rest(&self, pause: Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = self.wake.notified() => true,
            _ = shutdown.wait_for(|s| *s) => false,
        }
    }

    /// What to act on now.
    pub fn standing(&self) -> Standing {
        let h = self.held();
        Standing {
            role: h.order.as_ref().map_or(h.kept.ordered_role, |o| o.role),
            epoch: h.order.as_ref().map_or(h.kept.ordered_epoch, |o| o.epoch),
            leased: self.leased_in(&h),
            order: h.order.clone(),
            kept: h.kept.clone(),
        }
    }

    fn leased_in(&self, h: &Held) -> bool {
        h.lease_until.is_some_and(|u| Instant::now() < u)
    }

    /// Whether a lease runs now (checked again just before a promotion).
    pub fn leased(&self) -> bool {
        self.leased_in(&self.held())
    }

    /// Records the epoch, role and fence held.
    pub fn hold(&self, epoch: u64, role: v1::MemberRole, fenced: bool) {
        let mut h = self.held();
        if h.kept.epoch != epoch || h.kept.role != role as i32 || h.kept.fenced != fenced {
            h.kept.epoch = epoch;
            h.kept.role = role.into();
            h.kept.fenced = fenced;
            self.save(&mut h);
        }
    }

    /// Records the fence before the server is stopped or paused: a crash
    /// meanwhile leaves it fenced.
    pub fn fence(&self) {
        let mut h = self.held();
        h.kept.fenced = true;
        self.save(&mut h);
    }

    /// Records the fence lifted (a leader confirmed the epoch held).
    pub fn unfence(&self) {
        let mut h = self.held();
        h.kept.fenced = false;
        self.save(&mut h);
    }

    /// Records a promotion under `epoch` at `position`, accepting writes since `at`.
    pub fn promoted(&self, epoch: u64, at: DateTime<Utc>, position: &str) {
        let mut h = self.held();
        h.kept.epoch = epoch;
        h.kept.role = v1::MemberRole::Primary.into();
        h.kept.fenced = false;
        h.kept.promoted_unix_ms = at.timestamp_millis();
        h.kept.promoted_lsn = position.to_owned();
        h.kept.promoted_epoch = epoch;
        self.save(&mut h);
    }

    /// Says what the member is doing (logged when it changes).
    pub fn set_detail(&self, detail: impl Into<String>) {
        let detail = detail.into();
        let mut h = self.held();
        if h.detail != detail {
            tracing::info!(server = self.server, "{detail}");
            h.detail = detail;
        }
    }

    /// The report's fields every kind fills alike (none when not a member);
    /// the kind adds its server's role and positions.
    pub fn report(&self) -> Option<v1::MemberState> {
        let h = self.held();
        if h.kept.group.is_empty() {
            return None;
        }
        Some(v1::MemberState {
            group: h.kept.group.clone(),
            epoch: h.kept.epoch,
            fenced: h.kept.fenced,
            promoted_unix_ms: h.kept.promoted_unix_ms,
            promoted_lsn: h.kept.promoted_lsn.clone(),
            promoted_epoch: h.kept.promoted_epoch,
            detail: h.detail.clone(),
            ..v1::MemberState::default()
        })
    }

    /// Writes what must survive a restart (the lease's end as wall time).
    fn save(&self, h: &mut Held) {
        h.kept.lease_until_unix_ms = h.lease_until.map_or(0, |u| {
            let left = u.saturating_duration_since(Instant::now());
            Utc::now().timestamp_millis() + i64::try_from(left.as_millis()).unwrap_or(i64::MAX / 2)
        });
        // Written aside and renamed: a crash leaves the old state or the new, never half.
        let tmp = self.file.with_extension("json.tmp");
        let written = serde_json::to_vec(&h.kept).map_err(std::io::Error::other).and_then(|bytes| {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        });
        if let Err(e) = written {
            tracing::error!(file = %self.file.display(), error = %e, "cannot keep the failover member's state");
        }
    }
}

/// What to assume when the kept state cannot be read: a primary whose
/// lease has run out, so a writable server is fenced until a leader says
/// otherwise.
fn unknown(file: &Path, why: &str) -> Kept {
    tracing::error!(file = %file.display(), error = why, "the failover member's state is unreadable: fencing until a leader confirms");
    Kept {
        group: "(unknown until a leader's order)".into(),
        ordered_role: v1::MemberRole::Primary.into(),
        role: v1::MemberRole::Primary.into(),
        ..Kept::default()
    }
}

/// Runs the group's promotion hooks in order, in the background, with the
/// group, the epoch and the new primary's address in their environment
/// (`extra` adds the kind's own, such as `PGHOST`); a failed hook is
/// logged, and the promotion stands.
pub fn run_hooks(order: &v1::RoleOrder, address: String, extra: Vec<(&'static str, String)>) {
    let order = order.clone();
    tokio::spawn(async move {
        for hook in &order.after_promotion {
            run_hook(&order, hook, &address, &extra).await;
        }
    });
}

async fn run_hook(order: &v1::RoleOrder, hook: &v1::Hook, address: &str, extra: &[(&'static str, String)]) {
    let Some((program, args)) = hook.argv.split_first() else { return };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("LIFEBOAT_GROUP", &order.group)
        .env("LIFEBOAT_PRIMARY", &order.primary)
        .env("LIFEBOAT_EPOCH", order.epoch.to_string())
        .env("LIFEBOAT_ADDRESS", address)
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let timeout = Duration::from_secs(hook.timeout_seconds.max(1).into());
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => tracing::info!(hook = program, "promotion hook ran"),
        Ok(Ok(out)) => tracing::error!(
            hook = program,
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "promotion hook failed"
        ),
        Ok(Err(e)) => tracing::error!(hook = program, error = %e, "cannot run the promotion hook"),
        Err(_) => tracing::error!(hook = program, timeout_s = timeout.as_secs(), "promotion hook timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(role: v1::MemberRole, epoch: u64, confirmed: Option<Instant>) -> Order {
        Order {
            order: v1::RoleOrder {
                group: "orders".into(),
                source_id: "pg".into(),
                role: role.into(),
                epoch,
                fence_after_ms: 5000,
                ..v1::RoleOrder::default()
            },
            confirmed_at: confirmed,
        }
    }

    #[test]
    fn a_confirmed_primary_is_leased_and_keeps_no_more_of_it_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        let t = Tenure::open(file.clone(), "s".into());
        assert!(!t.is_member() && t.report().is_none());
        t.take(order(v1::MemberRole::Primary, 1, Some(Instant::now())));
        t.hold(1, v1::MemberRole::Primary, false);
        let s = t.standing();
        assert!(s.leased && s.primary() && s.epoch == 1);
        // Reopened (an agent restart): the same lease's end, the same role.
        let again = Tenure::open(file, "s".into());
        let s = again.standing();
        assert!(s.leased && s.primary() && s.kept.epoch == 1 && again.is_member());
        // An order of an older epoch changes nothing.
        again.take(order(v1::MemberRole::Standby, 0, None));
        assert!(again.standing().primary());
        // A standby order ends the lease.
        again.take(order(v1::MemberRole::Standby, 2, None));
        let s = again.standing();
        assert!(!s.leased && !s.primary() && s.epoch == 2);
    }

    #[test]
    fn a_lease_is_for_one_epoch_and_a_lapsed_one_is_not_renewed_by_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        let t = Tenure::open(file.clone(), "s".into());
        t.take(order(v1::MemberRole::Primary, 1, Some(Instant::now())));
        // Primary again under a newer epoch, with no confirmation yet: no lease.
        t.take(order(v1::MemberRole::Primary, 2, None));
        assert!(!t.standing().leased);
        // Confirmed long ago: lapsed, and still lapsed when reopened.
        let past = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        t.take(order(v1::MemberRole::Primary, 2, Some(past)));
        assert!(!t.leased());
        assert!(!Tenure::open(file, "s".into()).leased());
    }

    #[test]
    fn an_unreadable_state_is_a_primary_without_a_lease() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        std::fs::write(&file, b"{not json").unwrap();
        let t = Tenure::open(file, "s".into());
        let s = t.standing();
        assert!(t.is_member() && s.primary() && !s.leased, "{s:?}");
    }

    #[test]
    fn fencing_and_promotion_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        let t = Tenure::open(file.clone(), "s".into());
        t.take(order(v1::MemberRole::Primary, 3, Some(Instant::now())));
        t.fence();
        assert!(Tenure::open(file.clone(), "s".into()).standing().kept.fenced);
        t.promoted(3, Utc::now(), "0/3000000");
        let report = Tenure::open(file, "s".into()).report().unwrap();
        assert!(
            !report.fenced && report.epoch == 3 && report.promoted_lsn == "0/3000000" && report.promoted_unix_ms > 0
        );
        assert_eq!(report.promoted_epoch, 3);
    }
}
