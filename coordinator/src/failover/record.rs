//! A failover group's state as stored at `<prefix>/failover/<group>`: who is
//! primary, under which epoch, whether automatic failover is paused, and
//! the last failover with what it measured. The policy names the initial
//! primary only; from the first term on, this record is the truth, and it
//! changes only in a conditional write on its own revision.

use chrono::{DateTime, Utc};
use lifeboat_common::policy::failover::GroupKind;
use lifeboat_proto::v1;

use super::judge;
use serde::{Deserialize, Serialize};

/// A group's stored state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group's name.
    pub name: String,
    /// The primary, `HOST/SOURCE`.
    pub primary: String,
    /// Raised by every promotion: an order of an older epoch is void.
    pub epoch: u64,
    /// Nothing automatic while set (maintenance).
    #[serde(default)]
    pub paused: bool,
    /// The newest failover or switchover.
    #[serde(default)]
    pub last_failover: Option<FailoverEvent>,
}

impl GroupRecord {
    /// The key of a group.
    pub fn key(prefix: &str, name: &str) -> String {
        format!("{prefix}/failover/{name}")
    }

    /// The prefix all groups are under.
    pub fn prefix(prefix: &str) -> String {
        format!("{prefix}/failover/")
    }
}

/// One promotion and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// The primary before.
    pub from: String,
    /// The member promoted.
    pub to: String,
    /// The epoch it was promoted under.
    pub epoch: u64,
    /// `automatic`, or `manual by WHO`.
    pub cause: String,
    /// When the old primary's agent was last heard (a manual promotion of a
    /// live primary: when it was ordered).
    pub lost: DateTime<Utc>,
    /// When the promotion was ordered.
    pub ordered: DateTime<Utc>,
    /// When the new primary accepted writes.
    pub accepted: Option<DateTime<Utc>>,
    /// The position it was promoted at.
    pub promoted_lsn: String,
    /// The same as one number, comparable with `old_lsn`.
    #[serde(default)]
    pub promoted_position: Option<u64>,
    /// The old primary's newest position known when it was ordered.
    pub old_lsn: u64,
    /// When the old primary was first seen past the promoted position.
    pub old_past_promoted: Option<DateTime<Utc>>,
    /// The new primary is told to promote only after this, unless the old
    /// one reports itself stopped first: by then its lease has lapsed.
    pub hold_until: DateTime<Utc>,
    /// A switchover: the new primary promotes only once it replayed the
    /// old one's shutdown checkpoint.
    #[serde(default)]
    pub switchover: bool,
}

impl FailoverEvent {
    /// The event on the wire, with its RTO and RPO once it completed.
    pub fn to_proto(&self) -> v1::FailoverEvent {
        // Records written before the position was kept as a number were all PostgreSQL's.
        let promoted = self.promoted_position.or_else(|| judge::position(GroupKind::Postgres, &self.promoted_lsn));
        let rto = self.accepted.map_or(0.0, |a| (a - self.lost).num_milliseconds().max(0) as f64 / 1000.0);
        let (rpo_bytes, rpo_seconds) = match promoted {
            Some(p) => (
                self.old_lsn.saturating_sub(p),
                self.old_past_promoted.map_or(0.0, |t| (self.lost - t).num_milliseconds().max(0) as f64 / 1000.0),
            ),
            None => (0, 0.0),
        };
        v1::FailoverEvent {
            from: self.from.clone(),
            to: self.to.clone(),
            epoch: self.epoch,
            cause: self.cause.clone(),
            lost_unix_ms: self.lost.timestamp_millis(),
            ordered_unix_ms: self.ordered.timestamp_millis(),
            accepted_unix_ms: self.accepted.map_or(0, |a| a.timestamp_millis()),
            rto_seconds: rto,
            rpo_bytes,
            rpo_seconds,
            promoted_lsn: self.promoted_lsn.clone(),
        }
    }
}
