//! Whether a group's primary is lost and which standby may replace it: a
//! pure judgement over what the agents last reported, so every rule can
//! be tested without processes.
//!
//! A standby's lag is measured against the newest position the primary
//! was known at. In bytes that is a difference of positions; in seconds it
//! is how long ago the primary was first seen past the standby's replay
//! position, from the positions the leader has been recording (so a quiet
//! primary does not make a caught-up standby look late). The positions
//! are kept in the control-plane state as well, so a leader elected after
//! the primary went silent (its region lost with the old leader) still
//! knows where the primary was; only then are two hosts' clocks compared.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lifeboat_common::policy::failover::{FailoverGroup, GroupKind, Member};
use lifeboat_proto::v1;

use super::record::GroupRecord;
use crate::agents::MemberSeen;

/// How long a promotion may take to be confirmed before another may be ordered.
const PROMOTION_PATIENCE: Duration = Duration::from_secs(120);

/// Silence shorter than this is a heartbeat on its way, not worth showing.
const SILENT_AFTER: Duration = Duration::from_secs(3);

/// Positions the primary was seen at, oldest first, and when it was last heard.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Positions {
    seen: VecDeque<(DateTime<Utc>, u64)>,
    #[serde(default)]
    heard: Option<DateTime<Utc>>,
}

/// Positions kept per group (about an hour at one heartbeat a second).
const POSITIONS_KEPT: usize = 4096;

impl Positions {
    /// Records the primary heard at `lsn` at `at` (the position only when it moved).
    pub fn record(&mut self, at: DateTime<Utc>, lsn: u64) {
        self.heard = Some(at);
        if self.seen.back().is_some_and(|(_, last)| *last >= lsn) {
            return;
        }
        if self.seen.len() == POSITIONS_KEPT {
            self.seen.pop_front();
        }
        self.seen.push_back((at, lsn));
    }

    /// The newest position known.
    pub fn newest(&self) -> Option<u64> {
        self.seen.back().map(|(_, l)| *l)
    }

    /// When the primary was last heard.
    pub fn heard(&self) -> Option<DateTime<Utc>> {
        self.heard
    }

    /// The positions of the last `window` before the primary was last
    /// heard, and the newest one older than that (a standby behind all of
    /// them is judged at least that far behind, never as recent).
    pub fn recent(&self, window: Duration) -> Positions {
        let since = self.heard.zip(chrono::Duration::from_std(window).ok()).and_then(|(h, w)| h.checked_sub_signed(w));
        let Some(since) = since else { return self.clone() };
        let first = self.seen.iter().rposition(|(t, _)| *t < since).unwrap_or(0);
        Positions { seen: self.seen.iter().skip(first).copied().collect(), heard: self.heard }
    }

    /// When the primary was first seen past `lsn`.
    pub fn first_past(&self, lsn: u64) -> Option<DateTime<Utc>> {
        self.seen.iter().find(|(_, l)| *l > lsn).map(|(t, _)| *t)
    }
}

/// A member's reported position as one number: PostgreSQL's `X/Y` LSN,
/// or Redis's replication offset (which a promoted replica carries on).
pub fn position(kind: GroupKind, text: &str) -> Option<u64> {
    match kind {
        GroupKind::Postgres => text.parse::<lifeboat_common::repo::format::wal::Lsn>().ok().map(|l| l.0),
        GroupKind::Redis => text.parse().ok(),
    }
}

/// What the leader knows of one member.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// Which.
    pub member: &'a Member,
    /// Its agent holds a stream to this leader.
    pub connected: bool,
    /// When its agent was last heard (for the primary: what its silence counts from).
    pub last_seen: Option<DateTime<Utc>>,
    /// Its server, as last reported.
    pub seen: Option<&'a MemberSeen>,
}

/// One member, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// Which.
    pub member: Member,
    /// Behind the primary's newest known position.
    pub lag_bytes: u64,
    /// How long ago the primary was first seen past its position.
    pub lag_seconds: f64,
    /// Could be promoted now.
    pub eligible: bool,
    /// If not, why.
    pub why_not: String,
}

/// A group, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Since when the primary's agent is silent (none: it is heard).
    pub primary_silent_since: Option<DateTime<Utc>>,
    /// Every member but the primary.
    pub members: Vec<Judged>,
    /// The most advanced eligible standby.
    pub candidate: Option<Member>,
    /// Why nothing would be (or was) promoted; empty when something can be.
    pub blocked: String,
    /// Promote the candidate now.
    pub promote_now: bool,
}

/// Judges `group` with its stored `record` at `now`. `started` is when
/// this leader's term began: agents get a whole `failover_after` from it to
/// find the new leader before their silence counts.
pub fn judge(
    group: &FailoverGroup,
    record: &GroupRecord,
    observed: &[Observed<'_>],
    positions: &Positions,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Judgement {
    let primary = observed.iter().find(|o| o.member.to_string() == record.primary);
    let primary_lsn = positions
        .newest()
        .into_iter()
        .chain(primary.and_then(|p| p.seen).and_then(|s| position(group.kind, &s.state.lsn)))
        .max();
    // Silence is counted from the last heartbeat, not from the stream: a
    // partitioned or paused agent's stream can stay open for a long while.
    let last_heard = primary.and_then(|p| p.last_seen).map_or(started, |s| s.max(started));
    let silent_for = (now - last_heard).to_std().unwrap_or_default();
    // A standby's lag counts to when the primary was last heard, by this
    // leader or (kept in the state) by the one before it.
    let lag_until = primary.and_then(|p| p.last_seen).into_iter().chain(positions.heard()).max().unwrap_or(last_heard);
    let silent_since = (silent_for >= SILENT_AFTER).then_some(last_heard);
    let mut members = Vec::new();
    for o in observed.iter().filter(|o| o.member.to_string() != record.primary) {
        let state = o.seen.map(|s| &s.state);
        let lsn = state.and_then(|s| position(group.kind, &s.lsn));
        let lag_bytes = match (primary_lsn, lsn) {
            (Some(p), Some(l)) => p.saturating_sub(l),
            _ => 0,
        };
        let lag_seconds = lsn
            .and_then(|l| positions.first_past(l))
            .map_or(0.0, |t| (lag_until - t).num_milliseconds().max(0) as f64 / 1000.0);
        let why_not = if !o.connected {
            "its agent is not attached".to_owned()
        } else if let Some(s) = state.filter(|s| s.fenced) {
            format!("it is fenced ({})", s.detail)
        } else if state.is_none_or(|s| s.role != v1::MemberRole::Standby as i32) {
            let detail = state.map_or("no report yet", |s| s.detail.as_str());
            format!("it is not running as a standby ({detail})")
        } else if lsn.is_none() {
            "it has not reported a replay position".to_owned()
        } else if primary_lsn.is_none() {
            "the primary's position is not known".to_owned()
        } else if lag_seconds > group.max_lag.as_secs_f64() {
            format!("{lag_seconds:.0}s behind, past max_lag {}s", group.max_lag.as_secs())
        } else if let Some(max) = group.max_lag_bytes.filter(|max| lag_bytes > *max) {
            format!("{lag_bytes} bytes behind, past max_lag_bytes {max}")
        } else {
            String::new()
        };
        members.push(Judged {
            member: o.member.clone(),
            lag_bytes,
            lag_seconds,
            eligible: why_not.is_empty(),
            why_not,
        });
    }
    // Most advanced first; the policy's order breaks ties.
    let candidate = members
        .iter()
        .enumerate()
        .filter(|(_, j)| j.eligible)
        .min_by_key(|(i, j)| (j.lag_bytes, *i))
        .map(|(_, j)| j.member.clone());
    let in_flight = record
        .last_failover
        .as_ref()
        .filter(|f| f.accepted.is_none() && f.epoch == record.epoch)
        .is_some_and(|f| (now - f.ordered).to_std().unwrap_or_default() < PROMOTION_PATIENCE);
    let blocked = if candidate.is_none() {
        if members.is_empty() {
            "the group has no standby".to_owned()
        } else {
            let reasons: Vec<String> = members.iter().map(|j| format!("{}: {}", j.member, j.why_not)).collect();
            format!("no standby is eligible ({})", reasons.join("; "))
        }
    } else if !group.automatic {
        "automatic failover is off for this group".to_owned()
    } else if record.paused {
        "paused by an operator".to_owned()
    } else if in_flight {
        "a promotion is in progress".to_owned()
    } else {
        String::new()
    };
    let due = silent_for >= group.failover_after;
    Judgement {
        primary_silent_since: silent_since,
        members,
        candidate,
        promote_now: due && blocked.is_empty(),
        blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_common::policy::failover::failover_from_yaml;

    fn group() -> FailoverGroup {
        let yaml = "failover:\n  orders:\n    kind: postgres\n    members: [a/pg, b/pg, c/pg]\n    primary: a/pg\n    max_lag: 30s\n    failover_after: 10s\n";
        failover_from_yaml(yaml).unwrap().remove(0)
    }

    fn record() -> GroupRecord {
        GroupRecord { name: "orders".into(), primary: "a/pg".into(), epoch: 1, paused: false, last_failover: None }
    }

    fn seen(role: v1::MemberRole, lsn: &str, at: DateTime<Utc>) -> MemberSeen {
        MemberSeen {
            state: v1::MemberState {
                group: "orders".into(),
                epoch: 1,
                role: role as i32,
                lsn: lsn.into(),
                ..Default::default()
            },
            reported: at,
        }
    }

    #[test]
    fn promotes_the_most_advanced_standby_only_after_failover_after() {
        let g = group();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let mut positions = Positions::default();
        positions.record(t0, 0x100);
        positions.record(t0 + chrono::Duration::seconds(5), 0x300);
        let (a, b, c) = (&g.members[0], &g.members[1], &g.members[2]);
        let pa = seen(v1::MemberRole::Primary, "0/300", t0);
        let sb = seen(v1::MemberRole::Standby, "0/200", t0);
        let sc = seen(v1::MemberRole::Standby, "0/300", t0);
        let lost_at = t0 + chrono::Duration::seconds(5);
        let observed = |connected_a: bool| {
            vec![
                Observed { member: a, connected: connected_a, last_seen: Some(lost_at), seen: Some(&pa) },
                Observed { member: b, connected: true, last_seen: Some(lost_at), seen: Some(&sb) },
                Observed { member: c, connected: true, last_seen: Some(lost_at), seen: Some(&sc) },
            ]
        };
        let j = judge(&g, &record(), &observed(true), &positions, t0, lost_at + chrono::Duration::seconds(1));
        assert_eq!(j.primary_silent_since, None);
        assert!(!j.promote_now);
        assert_eq!(j.candidate.as_ref(), Some(c), "{j:?}");
        // b is 0x100 bytes behind, but the primary passed its position only as it was last heard.
        assert_eq!(j.members[0].lag_bytes, 0x100);
        assert!(j.members[0].lag_seconds.abs() < 1e-9, "{j:?}");
        let early = judge(&g, &record(), &observed(false), &positions, t0, lost_at + chrono::Duration::seconds(9));
        assert!(!early.promote_now);
        let due = judge(&g, &record(), &observed(false), &positions, t0, lost_at + chrono::Duration::seconds(10));
        assert!(due.promote_now && due.candidate.as_ref() == Some(c), "{due:?}");
        // A new leader counts from its own start.
        let later_term = lost_at + chrono::Duration::seconds(8);
        let j = judge(&g, &record(), &observed(false), &positions, later_term, lost_at + chrono::Duration::seconds(12));
        assert!(!j.promote_now);
    }

    #[test]
    fn a_leader_that_never_heard_the_primary_judges_by_the_positions_kept_before_it() {
        let g = group();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        // What the previous leader kept: the primary at 0x300, last heard at t0 + 6 s.
        let mut kept = Positions::default();
        kept.record(t0, 0x100);
        kept.record(t0 + chrono::Duration::seconds(5), 0x300);
        kept.record(t0 + chrono::Duration::seconds(6), 0x300);
        let kept: Positions = serde_json::from_slice(&serde_json::to_vec(&kept).unwrap()).unwrap();
        assert_eq!((kept.newest(), kept.heard()), (Some(0x300), Some(t0 + chrono::Duration::seconds(6))));
        let (a, b) = (&g.members[0], &g.members[1]);
        let sb = seen(v1::MemberRole::Standby, "0/200", t0);
        let observed = vec![
            Observed { member: a, connected: false, last_seen: None, seen: None },
            Observed { member: b, connected: true, last_seen: Some(t0), seen: Some(&sb) },
        ];
        // This leader's term began 20 s later: the silence counts from it,
        // the lag to when the primary was last heard.
        let started = t0 + chrono::Duration::seconds(20);
        let j = judge(&g, &record(), &observed, &kept, started, started + chrono::Duration::seconds(10));
        assert!(j.promote_now && j.candidate.as_ref() == Some(b), "{j:?}");
        assert_eq!(j.members[0].lag_bytes, 0x100);
        // The primary passed 0/200 at t0 + 5 s and was last heard a second later.
        assert!((j.members[0].lag_seconds - 1.0).abs() < 1e-9, "{j:?}");
        let early = judge(&g, &record(), &observed, &kept, started, started + chrono::Duration::seconds(9));
        assert!(!early.promote_now, "{early:?}");
    }

    #[test]
    fn recent_positions_keep_one_older_than_the_window() {
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let mut all = Positions::default();
        for (secs, lsn) in [(0, 0x100), (50, 0x200), (80, 0x300), (100, 0x400)] {
            all.record(t0 + chrono::Duration::seconds(secs), lsn);
        }
        let recent = all.recent(Duration::from_secs(40));
        // 0x200 (50 s) is the newest older than 60 s: a standby at 0x100 is still found behind it.
        assert_eq!(recent.first_past(0x100), Some(t0 + chrono::Duration::seconds(50)));
        assert_eq!((recent.newest(), recent.heard()), (all.newest(), all.heard()));
        assert_eq!(recent.seen.len(), 3);
    }

    #[test]
    fn a_lagging_or_absent_standby_is_not_promoted_and_the_reason_is_given() {
        let g = group();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let mut positions = Positions::default();
        positions.record(t0, 0x1000);
        // Past b's position a minute before it was last heard.
        positions.record(t0 + chrono::Duration::seconds(1), 0x1800);
        positions.record(t0 + chrono::Duration::seconds(60), 0x2000);
        let (a, b, c) = (&g.members[0], &g.members[1], &g.members[2]);
        let sb = seen(v1::MemberRole::Standby, "0/1000", t0);
        let mut fenced = seen(v1::MemberRole::Unspecified, "0/2000", t0);
        fenced.state.fenced = true;
        fenced.state.detail = "stopped".into();
        let heard = t0 + chrono::Duration::seconds(61);
        let observed = vec![
            Observed { member: a, connected: false, last_seen: Some(heard), seen: None },
            Observed { member: b, connected: true, last_seen: Some(heard), seen: Some(&sb) },
            Observed { member: c, connected: true, last_seen: Some(heard), seen: Some(&fenced) },
        ];
        let j = judge(&g, &record(), &observed, &positions, t0, heard + chrono::Duration::seconds(30));
        assert!(!j.promote_now);
        assert!(j.members[0].why_not.contains("past max_lag 30s"), "{j:?}");
        assert!(j.members[1].why_not.contains("fenced"), "{j:?}");
        assert!(j.blocked.starts_with("no standby is eligible"), "{}", j.blocked);
        // Paused: the candidate is named, nothing happens.
        let sb = seen(v1::MemberRole::Standby, "0/2000", t0);
        let observed = vec![
            Observed { member: a, connected: false, last_seen: Some(heard), seen: None },
            Observed { member: b, connected: true, last_seen: Some(heard), seen: Some(&sb) },
        ];
        let paused = GroupRecord { paused: true, ..record() };
        let j = judge(&g, &paused, &observed, &positions, t0, heard + chrono::Duration::seconds(30));
        assert_eq!(j.candidate.as_ref(), Some(b));
        assert!(!j.promote_now && j.blocked == "paused by an operator", "{j:?}");
    }
}
