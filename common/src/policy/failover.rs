//! The policy's `failover:` block: groups of one PostgreSQL cluster or Redis
//! server with a member in each region, which one is primary at the start,
//! and the bounds automatic promotion works within. The current primary and
//! the group's epoch live in the control-plane state, never in this file.
//!
//! ```yaml
//! failover:
//!   orders:
//!     kind: postgres                 # or redis
//!     members: [fra-db1/orders, dub-db1/orders, iad-db1/orders]
//!     primary: fra-db1/orders        # at the start
//!     max_lag: 30s                   # a standby further behind is not promoted automatically
//!     max_lag_bytes: 16MiB           # optional, as well
//!     failover_after: 30s            # the primary's agent lost this long: promote
//!     fence_after: 20s               # the primary's agent unconfirmed this long: fence
//!     automatic: true
//!     rejoin: auto                   # or manual (the default)
//!     fence_command: [/usr/local/bin/stonith, --host, "{host}"]
//!     after_promotion:
//!       - command: [/usr/local/bin/switch-dns, orders]
//!         timeout: 60s
//! ```
//!
//! A partitioned primary must be fenced before its successor exists, so
//! `fence_after` is shorter than `failover_after` by at least
//! [`FENCE_MARGIN`]: time for a fast stop to finish and for a heartbeat
//! that was on its way to land. Left out, it is `failover_after` less a
//! third of it (at least the margin).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::PolicyError;
use super::monitoring::bytes;

/// How much shorter than `failover_after` `fence_after` must be.
pub const FENCE_MARGIN: Duration = Duration::from_secs(5);

/// What a group fails over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// A PostgreSQL cluster and its standbys.
    Postgres,
    /// A Redis server and its replicas.
    Redis,
}

/// What becomes of a fenced old primary when its region returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rejoin {
    /// It stays fenced until an operator acts.
    #[default]
    Manual,
    /// Its agent rebuilds it as a standby of the new primary.
    Auto,
}

/// A member of a group: a source of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// The agent's host.
    pub host: String,
    /// The source's id on it.
    pub source: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.source)
    }
}

impl std::str::FromStr for Member {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((host, source)) if !host.is_empty() && !source.is_empty() && !source.contains('/') => {
                Ok(Member { host: host.to_owned(), source: source.to_owned() })
            }
            _ => Err(format!("{s:?} is not HOST/SOURCE")),
        }
    }
}

/// A command run after a promotion, by the new primary's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
}

/// One failover group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverGroup {
    /// Its name (the key in the block).
    pub name: String,
    /// What it fails over.
    pub kind: GroupKind,
    /// Its members, the initial primary among them.
    pub members: Vec<Member>,
    /// The primary at the start.
    pub primary: Member,
    /// The replay lag past which a standby is not promoted automatically.
    pub max_lag: Duration,
    /// The same bound in bytes of WAL or replication offset, if given.
    pub max_lag_bytes: Option<u64>,
    /// How long the primary's agent must be lost before a promotion.
    pub failover_after: Duration,
    /// How long the primary's agent runs unconfirmed before it fences.
    pub fence_after: Duration,
    /// Whether the leader promotes by itself.
    pub automatic: bool,
    /// What becomes of a fenced old primary.
    pub rejoin: Rejoin,
    /// Run (by the leader) before a promotion, `{host}` replaced by the old
    /// primary's host: an infrastructure call that powers it off.
    pub fence_command: Option<Vec<String>>,
    /// Run by the new primary's agent after a promotion.
    pub after_promotion: Vec<Hook>,
}

impl FailoverGroup {
    /// The standbys at the start.
    pub fn standbys(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| **m != self.primary)
    }
}

#[derive(Deserialize)]
struct Document {
    failover: Option<BTreeMap<String, GroupSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    kind: GroupKind,
    members: Vec<String>,
    primary: String,
    max_lag: String,
    max_lag_bytes: Option<String>,
    failover_after: String,
    fence_after: Option<String>,
    #[serde(default = "yes")]
    automatic: bool,
    #[serde(default)]
    rejoin: Rejoin,
    fence_command: Option<Vec<String>>,
    #[serde(default)]
    after_promotion: Vec<HookSpec>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookSpec {
    command: Vec<String>,
    timeout: Option<String>,
}

/// How long a hook may run unless the policy says.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The `failover:` block of a policy document (none: no groups).
pub fn failover_from_yaml(text: &str) -> Result<Vec<FailoverGroup>, PolicyError> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let mut groups = Vec::new();
    let mut seen: HashSet<Member> = HashSet::new();
    for (name, spec) in doc.failover.unwrap_or_default() {
        let bad = |reason: String| PolicyError::Failover { group: name.clone(), reason };
        let duration = |field: &str, text: &str| {
            humantime::parse_duration(text).map_err(|e| bad(format!("{field}: {text:?}: {e}")))
        };
        let members = spec
            .members
            .iter()
            .map(|m| m.parse::<Member>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("members: {e}")))?;
        if members.len() < 2 {
            return Err(bad("a group needs at least two members (a primary and a standby)".into()));
        }
        for m in &members {
            if !seen.insert(m.clone()) {
                return Err(bad(format!("{m} is a member twice (of this group, or of another)")));
            }
        }
        let primary: Member = spec.primary.parse().map_err(|e| bad(format!("primary: {e}")))?;
        if !members.contains(&primary) {
            return Err(bad(format!("the primary {primary} is not one of the members")));
        }
        let max_lag = duration("max_lag", &spec.max_lag)?;
        if max_lag.is_zero() {
            return Err(bad("max_lag must be more than 0 (a synchronous standby still lags while it replays)".into()));
        }
        let max_lag_bytes = match &spec.max_lag_bytes {
            Some(text) => Some(bytes(text).map_err(|e| bad(format!("max_lag_bytes: {e}")))? as u64),
            None => None,
        };
        let failover_after = duration("failover_after", &spec.failover_after)?;
        if failover_after < FENCE_MARGIN * 2 {
            return Err(bad(format!(
                "failover_after {} is too short: at least {} (a fence before it, {} apart)",
                humantime::format_duration(failover_after),
                humantime::format_duration(FENCE_MARGIN * 2),
                humantime::format_duration(FENCE_MARGIN)
            )));
        }
        let fence_after = match &spec.fence_after {
            Some(text) => duration("fence_after", text)?,
            None => failover_after - (failover_after / 3).max(FENCE_MARGIN),
        };
        if fence_after + FENCE_MARGIN > failover_after {
            return Err(bad(format!(
                "fence_after {} must be at least {} shorter than failover_after {}: a partitioned primary is fenced before its successor exists",
                humantime::format_duration(fence_after),
                humantime::format_duration(FENCE_MARGIN),
                humantime::format_duration(failover_after)
            )));
        }
        if fence_after.is_zero() {
            return Err(bad("fence_after must be more than 0".into()));
        }
        if spec.fence_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(bad("fence_command is empty".into()));
        }
        let mut after_promotion = Vec::new();
        for (i, hook) in spec.after_promotion.into_iter().enumerate() {
            if hook.command.is_empty() {
                return Err(bad(format!("after_promotion[{i}]: the command is empty")));
            }
            let timeout = match &hook.timeout {
                Some(t) => duration(&format!("after_promotion[{i}].timeout"), t)?,
                None => HOOK_TIMEOUT,
            };
            after_promotion.push(Hook { command: hook.command, timeout });
        }
        groups.push(FailoverGroup {
            name: name.clone(),
            kind: spec.kind,
            members,
            primary,
            max_lag,
            max_lag_bytes,
            failover_after,
            fence_after,
            automatic: spec.automatic,
            rejoin: spec.rejoin,
            fence_command: spec.fence_command,
            after_promotion,
        });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "failover:\n  orders:\n    kind: postgres\n    members: [fra/orders, dub/orders, iad/orders]\n    primary: fra/orders\n    max_lag: 30s\n";

    fn with(extra: &str) -> Result<Vec<FailoverGroup>, String> {
        failover_from_yaml(&format!("{GROUP}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_example_policy_has_a_group_per_region() {
        let groups = failover_from_yaml(include_str!("../../../deploy/examples/policy.yaml")).unwrap();
        let g = &groups[0];
        assert_eq!((g.name.as_str(), g.members.len(), g.rejoin), ("orders-db", 3, Rejoin::Auto));
        assert_eq!((g.max_lag, g.fence_after), (Duration::from_secs(300), Duration::from_secs(20)));
    }

    #[test]
    fn a_group_with_its_defaults() {
        let groups = with("    failover_after: 30s\n").unwrap();
        let g = &groups[0];
        assert_eq!((g.name.as_str(), g.kind), ("orders", GroupKind::Postgres));
        assert_eq!(g.primary.to_string(), "fra/orders");
        assert_eq!(g.standbys().map(ToString::to_string).collect::<Vec<_>>(), ["dub/orders", "iad/orders"]);
        assert_eq!(g.fence_after, Duration::from_secs(20));
        assert!(g.automatic);
        assert_eq!(g.rejoin, Rejoin::Manual);
        assert!(g.after_promotion.is_empty() && g.fence_command.is_none() && g.max_lag_bytes.is_none());
        // A short failover_after still leaves the margin.
        assert_eq!(with("    failover_after: 12s\n").unwrap()[0].fence_after, Duration::from_secs(7));
        assert!(failover_from_yaml("backup_schedules: {}\n").unwrap().is_empty());
    }

    #[test]
    fn every_setting() {
        let g = &with(
            "    failover_after: 1m\n    fence_after: 40s\n    max_lag_bytes: 16MiB\n    automatic: false\n    rejoin: auto\n\
             \x20   fence_command: [stonith, --host, \"{host}\"]\n    after_promotion:\n      - command: [switch-dns, orders]\n        timeout: 2m\n      - command: [restart-app]\n",
        )
        .unwrap()[0];
        assert_eq!(g.fence_after, Duration::from_secs(40));
        assert_eq!(g.max_lag_bytes, Some(16 << 20));
        assert!(!g.automatic);
        assert_eq!(g.rejoin, Rejoin::Auto);
        assert_eq!(g.fence_command.as_deref(), Some(&["stonith".to_owned(), "--host".into(), "{host}".into()][..]));
        assert_eq!(g.after_promotion[0].timeout, Duration::from_secs(120));
        assert_eq!(g.after_promotion[1].timeout, HOOK_TIMEOUT);
    }

    #[test]
    fn wrong_groups_say_what_is_wrong() {
        for (extra, says) in [
            ("    failover_after: 30s\n    fence_after: 28s\n", "at least 5s shorter"),
            ("    failover_after: 6s\n", "too short"),
            ("    failover_after: soon\n", "failover_after"),
            ("    failover_after: 30s\n    after_promotion:\n      - command: []\n", "after_promotion[0]"),
            ("    failover_after: 30s\n    fence_command: []\n", "fence_command is empty"),
            ("    failover_after: 30s\n    rejoin: sometimes\n", "sometimes"),
            ("    failover_after: 30s\n    autmatic: true\n", "autmatic"),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.contains(says), "{extra}: {err}");
        }
        let doc = |members: &str, primary: &str| {
            failover_from_yaml(&format!(
                "failover:\n  g:\n    kind: redis\n    members: {members}\n    primary: {primary}\n    max_lag: 5s\n    failover_after: 30s\n"
            ))
            .unwrap_err()
            .to_string()
        };
        assert!(doc("[a/r]", "a/r").contains("at least two members"));
        assert!(doc("[a/r, a/r]", "a/r").contains("a member twice"));
        assert!(doc("[a/r, b/r]", "c/r").contains("not one of the members"));
        assert!(doc("[a/r, b]", "a/r").contains("\"b\" is not HOST/SOURCE"));
        let two = "failover:\n  one:\n    kind: redis\n    members: [a/r, b/r]\n    primary: a/r\n    max_lag: 5s\n    failover_after: 30s\n  \
                   two:\n    kind: redis\n    members: [b/r, c/r]\n    primary: c/r\n    max_lag: 5s\n    failover_after: 30s\n";
        assert!(failover_from_yaml(two).unwrap_err().to_string().contains("failover.two: b/r is a member twice"));
    }
}
