//! Failover groups under the leader: their stored state (primary, epoch),
//! the orders each member's agent is sent with every heartbeat answer
//! (which are, for a primary, the lease it keeps writing under), the
//! judgement of a lost primary, and promotions, automatic or by hand.
//!
//! The order of events in a partition, which is what keeps two primaries
//! from ever accepting writes at once: the old primary's agent stops
//! hearing confirmations and fences its server `fence_after` after the
//! last heartbeat it had confirmed; this leader (or a new one, counting
//! from the start of its term) promotes only `failover_after` after it
//! last heard that agent, and `failover_after` exceeds `fence_after` by a
//! margin the policy enforces. A promotion raises the epoch in a
//! conditional write, so an order from a leader that lost its term cannot
//! be written, and an agent ignores orders of an older epoch.

pub mod fence;
pub mod judge;
pub mod record;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use lifeboat_common::policy::failover::{FailoverGroup, GroupKind, Member, Rejoin};
use lifeboat_proto::v1;

use self::judge::{Judgement, Observed, Positions, judge, position};
use self::record::{FailoverEvent, GroupRecord};
use crate::agents::{AgentRecord, MemberSeen};
use crate::state::{Condition, Op, State, StateError, encode};

/// How often the leader writes a primary's positions to the state.
const KEEP_POSITIONS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How much history past `max_lag` is kept in the state.
const KEPT_BEYOND_MAX_LAG: std::time::Duration = std::time::Duration::from_secs(60);

/// A primary's positions as kept in the state, with whose they are.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct KeptPositions {
    primary: String,
    epoch: u64,
    positions: Positions,
}

/// Where group `name`'s primary positions are kept (apart from the group
/// records, which are listed under their own prefix).
fn positions_key(prefix: &str, name: &str) -> String {
    format!("{}{name}", positions_prefix(prefix))
}

fn positions_prefix(prefix: &str) -> String {
    format!("{prefix}/failover-positions/")
}

/// A group's record and the revision it was read or written at.
#[derive(Debug, Clone)]
struct Stored {
    record: GroupRecord,
    revision: i64,
}

/// Why an operator's promotion was refused.
#[derive(Debug, thiserror::Error)]
pub enum PromoteRefused {
    /// No group of that name in the policy.
    #[error("no failover group {0:?} in the policy")]
    NoGroup(String),
    /// Not a member of the group.
    #[error("{member} is not a member of group {group}")]
    NotMember {
        /// The group.
        group: String,
        /// What was named.
        member: String,
    },
    /// Already its primary.
    #[error("{0} is the primary already")]
    AlreadyPrimary(String),
    /// Not ready for a switchover.
    #[error("{member} cannot take over: {why}")]
    NotReady {
        /// The member.
        member: String,
        /// Why.
        why: String,
    },
    /// A promotion is under way.
    #[error("a promotion of {to} is under way (its predecessor's lease runs out by {until}); wait for it")]
    InProgress {
        /// The member being promoted.
        to: String,
        /// When it is released at the latest.
        until: DateTime<Utc>,
    },
    /// A switchover needs a primary that answers.
    #[error("the primary's agent is silent: a switchover needs it to stop cleanly (use promote to fail over)")]
    PrimarySilent,
    /// Not eligible, and not forced.
    #[error("{member} cannot be promoted: {why} (give --force to promote it anyway)")]
    NotEligible {
        /// The member.
        member: String,
        /// Why.
        why: String,
    },
}

/// What a promotion did, for the audit log and the caller.
#[derive(Debug, Clone)]
pub struct Promoted {
    /// The group.
    pub group: String,
    /// The event recorded.
    pub event: FailoverEvent,
}

/// A promotion to make.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The member promoted.
    pub to: Member,
    /// `automatic: ...`, or `manual by WHO`.
    pub cause: String,
    /// When the old primary was last heard (or now, when it is alive).
    pub lost: DateTime<Utc>,
    /// The old primary's lease has surely run out by then.
    pub hold_until: DateTime<Utc>,
    /// When it is ordered.
    pub now: DateTime<Utc>,
    /// A switchover (the old primary stops cleanly first).
    pub switchover: bool,
}

/// Every group of the policy, as this leader holds it.
#[derive(Debug, Default)]
pub struct GroupBook {
    stored: HashMap<String, Stored>,
    /// The primary's positions, per group.
    positions: HashMap<String, Positions>,
    /// When each group's positions were last written to the state.
    kept: HashMap<String, DateTime<Utc>>,
    /// The positions of the primary before the last promotion, for its RPO.
    previous: HashMap<String, Positions>,
}

impl GroupBook {
    /// Reads the stored groups.
    pub async fn load(state: State<'_>, prefix: &str) -> Result<Self, StateError> {
        let mut book = GroupBook::default();
        for (_, v) in state.list(&GroupRecord::prefix(prefix)).await? {
            match serde_json::from_slice::<GroupRecord>(&v.value) {
                Ok(record) => {
                    book.stored.insert(record.name.clone(), Stored { record, revision: v.revision });
                }
                Err(e) => tracing::error!(error = %e, "unreadable failover group record ignored"),
            }
        }
        Ok(book)
    }

    /// Reads the primaries' positions an earlier leader kept (only a
    /// leader judges by them: a follower's view does without).
    pub async fn load_positions(&mut self, state: State<'_>, prefix: &str) -> Result<(), StateError> {
        for (key, v) in state.list(&positions_prefix(prefix)).await? {
            let group = key.rsplit('/').next().unwrap_or_default().to_owned();
            match serde_json::from_slice::<KeptPositions>(&v.value) {
                // Only the current primary's: a promotion's clean-up may not have happened.
                Ok(kept)
                    if self
                        .stored
                        .get(&group)
                        .is_some_and(|s| s.record.primary == kept.primary && s.record.epoch == kept.epoch) =>
                {
                    self.positions.insert(group, kept.positions);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(group, error = %e, "unreadable primary positions ignored"),
            }
        }
        Ok(())
    }

    /// Stores a first record for each group of the policy that has none:
    /// the policy's primary, epoch 1.
    pub async fn ensure(&mut self, state: State<'_>, prefix: &str, groups: &[FailoverGroup]) -> Result<(), StateError> {
        let missing: Vec<&FailoverGroup> = groups.iter().filter(|g| !self.stored.contains_key(&g.name)).collect();
        for group in missing {
            let record = GroupRecord {
                name: group.name.clone(),
                primary: group.primary.to_string(),
                epoch: 1,
                paused: false,
                last_failover: None,
            };
            let key = GroupRecord::key(prefix, &group.name);
            let put = Op::Put(key.clone(), encode("a failover group", &record)?);
            match state.commit_if(&[Condition::Absent(key.clone())], &[put]).await? {
                Some(revision) => {
                    tracing::info!(group = group.name, primary = record.primary, "failover group started");
                    self.stored.insert(group.name.clone(), Stored { record, revision });
                }
                None => {
                    // Written meanwhile (by a previous leader): read it.
                    if let Some(v) = state.get(&key).await? {
                        match serde_json::from_slice::<GroupRecord>(&v.value) {
                            Ok(record) => {
                                self.stored.insert(group.name.clone(), Stored { record, revision: v.revision });
                            }
                            Err(e) => {
                                tracing::error!(group = group.name, error = %e, "unreadable failover group record")
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The promotion of `group` still under way: its successor is held back
    /// until this time or has not accepted writes yet.
    pub fn in_progress(&self, group: &str, now: DateTime<Utc>) -> Option<&FailoverEvent> {
        let record = &self.stored.get(group)?.record;
        record.last_failover.as_ref().filter(|f| f.epoch == record.epoch && f.accepted.is_none() && now < f.hold_until)
    }

    /// The record of a group.
    pub fn record(&self, group: &str) -> Option<&GroupRecord> {
        self.stored.get(group).map(|s| &s.record)
    }

    /// Whether `host` has a member in any group.
    pub fn has_members(groups: &[FailoverGroup], host: &str) -> bool {
        groups.iter().any(|g| g.members.iter().any(|m| m.host == host))
    }

    /// Takes in a heartbeat of `agent`: the primaries' positions, and a
    /// promoted member's first report of accepting writes (its RTO).
    /// Returns the failovers that completed.
    pub async fn heard(
        &mut self,
        state: State<'_>,
        prefix: &str,
        groups: &[FailoverGroup],
        agent: &AgentRecord,
        now: DateTime<Utc>,
    ) -> Result<Vec<FailoverEvent>, StateError> {
        let mut completed = Vec::new();
        for group in groups {
            let Some(primary) = self.stored.get(&group.name).map(|s| s.record.primary.clone()) else { continue };
            let Some(seen) = member_of(agent, &primary).and_then(|s| s.member.as_ref()) else { continue };
            let reports_primary = seen.state.role == v1::MemberRole::Primary as i32 && !seen.state.fenced;
            if reports_primary && let Some(lsn) = position(group.kind, &seen.state.lsn) {
                self.positions.entry(group.name.clone()).or_default().record(now, lsn);
                self.keep_positions(state, prefix, group, now).await;
            }
            let Some(stored) = self.stored.get(&group.name) else { continue };
            let waiting = stored.record.last_failover.as_ref().is_some_and(|f| f.accepted.is_none() && f.to == primary);
            if waiting && reports_primary && seen.state.epoch == stored.record.epoch && seen.state.promoted_unix_ms > 0
            {
                let mut record = stored.record.clone();
                if let Some(event) = record.last_failover.as_mut() {
                    event.accepted = DateTime::from_timestamp_millis(seen.state.promoted_unix_ms).or(Some(now));
                    event.promoted_lsn.clone_from(&seen.state.promoted_lsn);
                    event.promoted_position = position(group.kind, &event.promoted_lsn);
                    if let Some(p) = event.promoted_position
                        && event.old_past_promoted.is_none()
                    {
                        event.old_past_promoted = self.previous.get(&group.name).and_then(|h| h.first_past(p));
                    }
                    completed.push(event.clone());
                }
                self.write(state, prefix, record).await?;
            }
        }
        Ok(completed)
    }

    /// The orders for `host`'s members: its role in each group, the epoch,
    /// and what it needs to act on them.
    pub fn orders_for(
        &self,
        groups: &[FailoverGroup],
        host: &str,
        agents: &HashMap<String, AgentRecord>,
        now: DateTime<Utc>,
    ) -> Vec<v1::RoleOrder> {
        let mut orders = Vec::new();
        for group in groups {
            let Some(stored) = self.stored.get(&group.name) else { continue };
            let current = stored.record.last_failover.as_ref().filter(|f| f.epoch == stored.record.epoch);
            let old = current.map_or(StepDown::NotYet, |f| stepped_down(agents, &f.from, f.epoch));
            // Until the old primary has surely stopped, its successor waits
            // as a standby: until its lease has run out, or it reports
            // itself stopped (for a switchover: cleanly, with its shutdown
            // checkpoint) or following. Never again once the successor
            // promoted: its own report says so before its acceptance is
            // recorded (the answer to a heartbeat goes before the heartbeat
            // is taken in).
            let held = current.is_some_and(|f| {
                f.accepted.is_none()
                    && !reports_promoted(agents, &f.to, f.epoch)
                    && now < f.hold_until
                    && match &old {
                        StepDown::NotYet => true,
                        StepDown::Stopped(lsn) => f.switchover && lsn.is_empty(),
                        StepDown::Following => false,
                    }
            });
            let replay_to = match (&old, current.is_some_and(|f| f.switchover)) {
                (StepDown::Stopped(lsn), true) => lsn.clone(),
                _ => String::new(),
            };
            let primary_address = stored
                .record
                .primary
                .parse::<Member>()
                .ok()
                .and_then(|p| seen(agents, &p))
                .map(|m| m.state.address.clone())
                .unwrap_or_default();
            for member in group.members.iter().filter(|m| m.host == host) {
                // Until the old primary has surely stopped, its successor waits as a standby.
                let primary = member.to_string() == stored.record.primary && !held;
                orders.push(v1::RoleOrder {
                    group: group.name.clone(),
                    source_id: member.source.clone(),
                    role: if primary { v1::MemberRole::Primary } else { v1::MemberRole::Standby }.into(),
                    epoch: stored.record.epoch,
                    fence_after_ms: u32::try_from(group.fence_after.as_millis()).unwrap_or(u32::MAX),
                    rejoin_auto: group.rejoin == Rejoin::Auto,
                    after_promotion: group
                        .after_promotion
                        .iter()
                        .map(|h| v1::Hook {
                            argv: h.command.clone(),
                            timeout_seconds: u32::try_from(h.timeout.as_secs()).unwrap_or(u32::MAX),
                        })
                        .collect(),
                    primary: stored.record.primary.clone(),
                    primary_address: primary_address.clone(),
                    replay_to: if primary { replay_to.clone() } else { String::new() },
                });
            }
        }
        orders
    }

    /// Judges every group at `now`.
    pub fn judge_all<'g>(
        &self,
        groups: &'g [FailoverGroup],
        agents: &HashMap<String, AgentRecord>,
        connected: impl Fn(&str) -> bool,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Vec<(&'g FailoverGroup, Judgement)> {
        let empty = Positions::default();
        groups
            .iter()
            .filter_map(|group| {
                let stored = self.stored.get(&group.name)?;
                let observed: Vec<Observed<'_>> = group
                    .members
                    .iter()
                    .map(|m| Observed {
                        member: m,
                        connected: connected(&m.host),
                        last_seen: agents.get(&m.host).map(|a| a.last_seen),
                        seen: seen(agents, m),
                    })
                    .collect();
                let positions = self.positions.get(&group.name).unwrap_or(&empty);
                Some((group, judge(group, &stored.record, &observed, positions, started, now)))
            })
            .collect()
    }

    /// Writes `group`'s recent positions to the state every
    /// [`KEEP_POSITIONS_EVERY`], so a leader elected after the primary went
    /// silent knows where it was (as of up to that long before). A failure
    /// is only logged: the positions are kept again next time.
    async fn keep_positions(&mut self, state: State<'_>, prefix: &str, group: &FailoverGroup, now: DateTime<Utc>) {
        let name = group.name.as_str();
        let due = self.kept.get(name).is_none_or(|t| (now - *t).to_std().unwrap_or_default() >= KEEP_POSITIONS_EVERY);
        let (Some(positions), Some(stored)) = (self.positions.get(name).filter(|_| due), self.stored.get(name)) else {
            return;
        };
        let kept = KeptPositions {
            primary: stored.record.primary.clone(),
            epoch: stored.record.epoch,
            // Only what judging a standby against max_lag needs: the record stays small.
            positions: positions.recent(group.max_lag + KEPT_BEYOND_MAX_LAG),
        };
        let put = match encode("a primary's positions", &kept) {
            Ok(bytes) => Op::Put(positions_key(prefix, name), bytes),
            Err(e) => return tracing::warn!(group = name, error = %e, "cannot encode the primary's positions"),
        };
        match state.commit_if(&[], &[put]).await {
            Ok(_) => {
                self.kept.insert(name.to_owned(), now);
            }
            Err(e) => tracing::warn!(group = name, error = %e, "cannot keep the primary's positions in the state"),
        }
    }

    /// Makes `to` the primary of `group` under a new epoch (the caller has
    /// judged it may). The write is conditional on the record not having
    /// changed since it was read.
    pub async fn promote(
        &mut self,
        state: State<'_>,
        prefix: &str,
        group: &FailoverGroup,
        promotion: Promotion,
    ) -> Result<Option<Promoted>, StateError> {
        let Some(stored) = self.stored.get(&group.name) else { return Ok(None) };
        let old_lsn = self.positions.get(&group.name).and_then(Positions::newest).unwrap_or(0);
        let event = FailoverEvent {
            from: stored.record.primary.clone(),
            to: promotion.to.to_string(),
            epoch: stored.record.epoch + 1,
            cause: promotion.cause,
            lost: promotion.lost,
            ordered: promotion.now,
            accepted: None,
            promoted_lsn: String::new(),
            promoted_position: None,
            old_lsn,
            old_past_promoted: None,
            hold_until: promotion.hold_until,
            switchover: promotion.switchover,
        };
        let record = GroupRecord {
            primary: promotion.to.to_string(),
            epoch: event.epoch,
            last_failover: Some(event.clone()),
            ..stored.record.clone()
        };
        self.write(state, prefix, record).await?;
        // The old primary's positions stay for the RPO; the new one's start afresh.
        if let Some(old) = self.positions.remove(&group.name) {
            self.previous.insert(group.name.clone(), old);
        }
        self.kept.remove(&group.name);
        if let Err(e) = state.commit_if(&[], &[Op::Delete(positions_key(prefix, &group.name))]).await {
            tracing::warn!(group = group.name, error = %e, "cannot drop the old primary's positions from the state");
        }
        Ok(Some(Promoted { group: group.name.clone(), event }))
    }

    /// Pauses or resumes automatic failover of `group`: false when there is no such group.
    pub async fn set_paused(
        &mut self,
        state: State<'_>,
        prefix: &str,
        group: &str,
        paused: bool,
    ) -> Result<bool, StateError> {
        let Some(stored) = self.stored.get(group) else { return Ok(false) };
        let record = GroupRecord { paused, ..stored.record.clone() };
        self.write(state, prefix, record).await.map(|()| true)
    }

    async fn write(&mut self, state: State<'_>, prefix: &str, record: GroupRecord) -> Result<(), StateError> {
        let key = GroupRecord::key(prefix, &record.name);
        let revision = self.stored.get(&record.name).map(|s| s.revision);
        let condition = match revision {
            Some(r) => Condition::Revision(key.clone(), r),
            None => Condition::Absent(key.clone()),
        };
        let put = Op::Put(key.clone(), encode("a failover group", &record)?);
        match state.commit_if(&[condition], &[put]).await? {
            Some(revision) => {
                self.stored.insert(record.name.clone(), Stored { record, revision });
                Ok(())
            }
            None => {
                // Changed behind this leader's back: take what is there.
                if let Some(v) = state.get(&key).await?
                    && let Ok(theirs) = serde_json::from_slice::<GroupRecord>(&v.value)
                {
                    self.stored.insert(theirs.name.clone(), Stored { record: theirs, revision: v.revision });
                }
                Err(StateError::Conflict(key))
            }
        }
    }

    /// A group on the wire.
    pub fn to_proto(
        &self,
        group: &FailoverGroup,
        judgement: Option<&Judgement>,
        agents: &HashMap<String, AgentRecord>,
        connected: impl Fn(&str) -> bool,
    ) -> v1::FailoverGroup {
        let record = self.stored.get(&group.name).map(|s| &s.record);
        let primary = record.map_or_else(|| group.primary.to_string(), |r| r.primary.clone());
        let members = group
            .members
            .iter()
            .map(|m| {
                let agent = agents.get(&m.host);
                let judged = judgement.and_then(|j| j.members.iter().find(|x| &x.member == m));
                v1::FailoverMember {
                    member: m.to_string(),
                    region: agent.map(|a| a.region.clone()).unwrap_or_default(),
                    connected: connected(&m.host),
                    state: seen(agents, m).map(|s| s.state.clone()),
                    lag_bytes: judged.map_or(0, |j| j.lag_bytes),
                    lag_seconds: judged.map_or(0.0, |j| j.lag_seconds),
                    eligible: judged.is_some_and(|j| j.eligible),
                    why_not: judged.map(|j| j.why_not.clone()).unwrap_or_default(),
                }
            })
            .collect();
        v1::FailoverGroup {
            name: group.name.clone(),
            kind: match group.kind {
                GroupKind::Postgres => "postgres",
                GroupKind::Redis => "redis",
            }
            .into(),
            primary,
            epoch: record.map_or(0, |r| r.epoch),
            automatic: group.automatic,
            paused: record.is_some_and(|r| r.paused),
            failover_after_seconds: u32::try_from(group.failover_after.as_secs()).unwrap_or(u32::MAX),
            max_lag_seconds: u32::try_from(group.max_lag.as_secs()).unwrap_or(u32::MAX),
            members,
            blocked: judgement.map(|j| j.blocked.clone()).unwrap_or_default(),
            last_failover: record.and_then(|r| r.last_failover.as_ref()).map(FailoverEvent::to_proto),
            primary_lost_unix_ms: judgement.and_then(|j| j.primary_silent_since).map_or(0, |t| t.timestamp_millis()),
        }
    }
}

/// Where an old primary stands after a promotion, as it last reported.
enum StepDown {
    /// Still writable, or not heard under the new epoch.
    NotYet,
    /// Stopped: its shutdown checkpoint's position (empty when it did not stop cleanly).
    Stopped(String),
    /// Running as a standby.
    Following,
}

/// Where the old primary `from` stands under `epoch`.
fn stepped_down(agents: &HashMap<String, AgentRecord>, from: &str, epoch: u64) -> StepDown {
    let Ok(m) = from.parse::<Member>() else { return StepDown::NotYet };
    match seen(agents, &m).map(|s| &s.state).filter(|s| s.epoch >= epoch) {
        Some(s) if s.role == v1::MemberRole::Standby as i32 => StepDown::Following,
        Some(s) if s.role == v1::MemberRole::Unspecified as i32 => StepDown::Stopped(s.final_lsn.clone()),
        _ => StepDown::NotYet,
    }
}

/// Whether `member` reports itself promoted under `epoch`, and writable.
fn reports_promoted(agents: &HashMap<String, AgentRecord>, member: &str, epoch: u64) -> bool {
    let Ok(m) = member.parse::<Member>() else { return false };
    seen(agents, &m).is_some_and(|s| {
        s.state.promoted_epoch == epoch && !s.state.fenced && s.state.role == v1::MemberRole::Primary as i32
    })
}

/// What `member`'s agent last reported of its server.
fn seen<'a>(agents: &'a HashMap<String, AgentRecord>, member: &Member) -> Option<&'a MemberSeen> {
    agents.get(&member.host)?.sources.get(&member.source)?.member.as_ref()
}

/// The source record of `member` (`HOST/SOURCE`) if `agent` is its host.
fn member_of<'a>(agent: &'a AgentRecord, member: &str) -> Option<&'a crate::agents::SourceRecord> {
    let m: Member = member.parse().ok()?;
    (m.host == agent.host).then(|| agent.sources.get(&m.source)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::policy::failover::failover_from_yaml;

    fn group() -> FailoverGroup {
        let yaml = "failover:\n  orders:\n    kind: postgres\n    members: [a/pg, b/pg]\n    primary: a/pg\n    max_lag: 30s\n    failover_after: 10s\n";
        failover_from_yaml(yaml).unwrap().remove(0)
    }

    /// Agents `a` and `b`, `a`'s member reporting `role` under `epoch` with `final_lsn`.
    fn agents(role: v1::MemberRole, epoch: u64, final_lsn: &str, now: DateTime<Utc>) -> HashMap<String, AgentRecord> {
        let mut agents = HashMap::new();
        for host in ["a", "b"] {
            let hello = v1::Hello {
                host: host.into(),
                sources: vec![v1::Source {
                    id: "pg".into(),
                    kind: v1::SourceKind::Postgres.into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let mut record = AgentRecord::from_hello(&hello, None, now);
            if host == "a"
                && let Some(source) = record.sources.get_mut("pg")
            {
                let state =
                    v1::MemberState { epoch, role: role.into(), final_lsn: final_lsn.into(), ..Default::default() };
                source.member = Some(crate::agents::MemberSeen { state, reported: now });
            }
            agents.insert(host.to_owned(), record);
        }
        agents
    }

    /// A book where `b` was just promoted over `a` (epoch 2), held until `hold_until`.
    fn promoted(switchover: bool, hold_until: DateTime<Utc>, now: DateTime<Utc>) -> GroupBook {
        let event = FailoverEvent {
            from: "a/pg".into(),
            to: "b/pg".into(),
            epoch: 2,
            cause: "test".into(),
            lost: now,
            ordered: now,
            accepted: None,
            promoted_lsn: String::new(),
            promoted_position: None,
            old_lsn: 0,
            old_past_promoted: None,
            hold_until,
            switchover,
        };
        let record = GroupRecord {
            name: "orders".into(),
            primary: "b/pg".into(),
            epoch: 2,
            paused: false,
            last_failover: Some(event),
        };
        let mut book = GroupBook::default();
        book.stored.insert("orders".into(), Stored { record, revision: 1 });
        book
    }

    fn role_of_b(book: &GroupBook, agents: &HashMap<String, AgentRecord>, now: DateTime<Utc>) -> (i32, String) {
        let orders = book.orders_for(&[group()], "b", agents, now);
        (orders[0].role, orders[0].replay_to.clone())
    }

    #[test]
    fn a_successor_waits_until_the_old_primary_stopped_or_its_lease_ran_out() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let later = now + chrono::Duration::seconds(10);
        let book = promoted(false, later, now);
        let standby = v1::MemberRole::Standby as i32;
        let primary = v1::MemberRole::Primary as i32;
        // The old primary still writes (or was not heard under epoch 2): held.
        assert_eq!(role_of_b(&book, &agents(v1::MemberRole::Primary, 2, "", now), now).0, standby);
        assert_eq!(role_of_b(&book, &agents(v1::MemberRole::Unspecified, 1, "", now), now).0, standby);
        // Stopped under epoch 2 (even uncleanly): released.
        assert_eq!(role_of_b(&book, &agents(v1::MemberRole::Unspecified, 2, "", now), now).0, primary);
        // Silent: released once its lease has surely run out.
        assert_eq!(role_of_b(&book, &agents(v1::MemberRole::Primary, 1, "", now), later).0, primary);
    }

    #[test]
    fn a_switchover_successor_replays_to_the_shutdown_checkpoint_and_is_not_held_again() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let book = promoted(true, now + chrono::Duration::seconds(70), now);
        let (standby, primary) = (v1::MemberRole::Standby as i32, v1::MemberRole::Primary as i32);
        // Stopped, but not cleanly: a switchover waits for the checkpoint.
        assert_eq!(role_of_b(&book, &agents(v1::MemberRole::Unspecified, 2, "", now), now).0, standby);
        let (role, replay_to) = role_of_b(&book, &agents(v1::MemberRole::Unspecified, 2, "0/3000028", now), now);
        assert_eq!((role, replay_to.as_str()), (primary, "0/3000028"));
        // The old primary now follows as a standby: the successor stays primary.
        assert_eq!(role_of_b(&book, &agents(v1::MemberRole::Standby, 2, "", now), now).0, primary);
        // The old primary's own order: a standby of epoch 2, with no lease.
        let orders = book.orders_for(&[group()], "a", &agents(v1::MemberRole::Primary, 1, "", now), now);
        assert_eq!((orders[0].role, orders[0].epoch), (standby, 2));
    }

    #[tokio::test]
    async fn the_primary_positions_outlive_the_leader_and_go_with_a_promotion() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state::EmbeddedState::open(&dir.path().join("state.redb")).unwrap();
        let (state, prefix, groups) = (State::Embedded(&db), "/t", [group()]);
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let mut book = GroupBook::load(state, prefix).await.unwrap();
        book.ensure(state, prefix, &groups).await.unwrap();
        let mut agents = agents(v1::MemberRole::Primary, 1, "", t0);
        let a = agents.get_mut("a").unwrap();
        for (secs, lsn) in [(0, "0/100"), (1, "0/200"), (3, "0/300")] {
            if let Some(seen) = a.sources.get_mut("pg").and_then(|s| s.member.as_mut()) {
                seen.state.lsn = lsn.into();
            }
            book.heard(state, prefix, &groups, a, t0 + chrono::Duration::seconds(secs)).await.unwrap();
        }
        // A new leader reads what was kept (every 2 s: as of the third report).
        let leader = |state| async move {
            let mut book = GroupBook::load(state, prefix).await.unwrap();
            book.load_positions(state, prefix).await.unwrap();
            book
        };
        let next = leader(state).await;
        let kept = &next.positions["orders"];
        assert_eq!((kept.newest(), kept.heard()), (Some(0x300), Some(t0 + chrono::Duration::seconds(3))));
        // A promotion drops them; and positions of an earlier primary are never taken as the new one's.
        let promotion = Promotion {
            to: groups[0].members[1].clone(),
            cause: "test".into(),
            lost: t0,
            hold_until: t0,
            now: t0 + chrono::Duration::seconds(10),
            switchover: false,
        };
        let stale = state.get(&positions_key(prefix, "orders")).await.unwrap().unwrap().value;
        book.promote(state, prefix, &groups[0], promotion).await.unwrap();
        assert!(!leader(state).await.positions.contains_key("orders"));
        state.commit_if(&[], &[Op::Put(positions_key(prefix, "orders"), stale)]).await.unwrap();
        assert!(!leader(state).await.positions.contains_key("orders"));
    }

    #[test]
    fn a_successor_that_reports_itself_promoted_is_never_held_again() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let book = promoted(true, now + chrono::Duration::seconds(70), now);
        // The old primary's report is stale (still a writable primary)...
        let mut agents = agents(v1::MemberRole::Primary, 2, "", now);
        assert_eq!(role_of_b(&book, &agents, now).0, v1::MemberRole::Standby as i32);
        // ...and a promotion of an earlier epoch releases nothing, but the
        // successor's report of its promotion under epoch 2 does, before the
        // leader recorded it.
        for (promoted_epoch, role) in [(1, v1::MemberRole::Standby), (2, v1::MemberRole::Primary)] {
            let state = v1::MemberState {
                epoch: 2,
                role: v1::MemberRole::Primary.into(),
                promoted_unix_ms: now.timestamp_millis(),
                promoted_epoch,
                ..Default::default()
            };
            if let Some(source) = agents.get_mut("b").and_then(|b| b.sources.get_mut("pg")) {
                source.member = Some(crate::agents::MemberSeen { state, reported: now });
            }
            assert_eq!(role_of_b(&book, &agents, now).0, role as i32, "promoted under epoch {promoted_epoch}");
        }
    }
}
