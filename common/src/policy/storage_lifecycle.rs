//! The seed's `storage_lifecycle` block:
//!
//! ```yaml
//! storage_lifecycle:
//!   hot_tier:     { age: 0-7 days,   storage_class: "S3 Standard" }
//!   warm_tier:    { age: 8-30 days,  storage_class: "S3 Standard-IA" }
//!   cold_tier:    { age: 31-90 days, storage_class: "S3 Glacier" }
//!   archive_tier: { age: 91+ days,   storage_class: "S3 Glacier Deep Archive" }
//! ```
//!
//! Each tier's storage class says which tier it is (S3 or Azure names), its
//! age range when data enters it. The ranges must follow each other with no
//! gap or overlap, and colder classes must come later.

use crate::invalid::Invalid;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::store::lifecycle::{Lifecycle, StorageTier};

/// A policy that cannot be used, saying where and why.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not YAML, or not the expected shape.
    #[error("policy is not valid YAML of the expected shape: {0}")]
    Syntax(String),
    /// The document lacks a block the caller needs.
    #[error("policy has no {0} block")]
    MissingBlock(&'static str),
    /// A `monitoring` entry is wrong.
    #[error("monitoring.{entry}: {reason}")]
    Monitoring {
        /// Which entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An `alerting` setting is wrong.
    #[error("alerting.{setting}: {reason}")]
    Alerting {
        /// Which setting.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A price is wrong.
    #[error("storage_prices.{setting}: {reason}")]
    Prices {
        /// Which price.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A failover group is wrong.
    #[error("failover.{group}: {reason}")]
    Failover {
        /// The group's name.
        group: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A recovery objective or a drill is wrong.
    #[error("{entry}: {reason}")]
    Drill {
        /// `recovery_objectives.NAME` or `drills.NAME`.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tier is wrong.
    #[error("storage_lifecycle.{tier}: {reason}")]
    Tier {
        /// The tier's name in the block.
        tier: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Document {
    storage_lifecycle: Option<BTreeMap<String, TierSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierSpec {
    age: String,
    storage_class: String,
    /// Descriptive only.
    #[serde(default, rename = "access_pattern")]
    _access_pattern: Option<serde::de::IgnoredAny>,
}

/// Reads the `storage_lifecycle` block of a policy document.
pub fn storage_lifecycle_from_yaml(text: &str) -> Result<Lifecycle, PolicyError> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let tiers = doc.storage_lifecycle.ok_or(PolicyError::MissingBlock("storage_lifecycle"))?;
    let mut parsed = Vec::new();
    for (name, spec) in &tiers {
        let bad = |reason: String| PolicyError::Tier { tier: name.clone(), reason };
        let (from, to) = parse_age(&spec.age).map_err(|r| bad(format!("age {:?}: {r}", spec.age)))?;
        let tier = parse_class(&spec.storage_class).map_err(|r| bad(format!("storage_class: {r}")))?;
        parsed.push((from, to, tier, name.clone()));
    }
    parsed.sort_by_key(|t| t.0);
    let mut lifecycle = Lifecycle { warm_after: None, cold_after: None, archive_after: None };
    let mut expect_from = 0u32;
    let mut last_tier: Option<StorageTier> = None;
    for (i, (from, to, tier, name)) in parsed.iter().enumerate() {
        let bad = |reason: String| PolicyError::Tier { tier: name.clone(), reason };
        if *from != expect_from {
            return Err(bad(format!(
                "starts at day {from}, but the tier before ends at day {} (ages must follow each other)",
                expect_from.saturating_sub(1)
            )));
        }
        if last_tier.is_some_and(|t| *tier <= t) {
            return Err(bad(format!("{tier:?} comes after a tier at least as cold")));
        }
        match (to, i + 1 == parsed.len()) {
            (None, false) => return Err(bad("only the last tier may be open-ended (N+ days)".into())),
            (Some(_), true) if parsed.len() > 1 => {
                return Err(bad("the last tier must be open-ended (N+ days): data has to go somewhere".into()));
            }
            _ => {}
        }
        match tier {
            StorageTier::Hot => {}
            StorageTier::Warm => lifecycle.warm_after = Some(*from),
            StorageTier::Cold => lifecycle.cold_after = Some(*from),
            StorageTier::Archive => lifecycle.archive_after = Some(*from),
        }
        expect_from = to.map_or(u32::MAX, |t| t.saturating_add(1));
        last_tier = Some(*tier);
    }
    Ok(lifecycle)
}

/// `0-7 days` → (0, Some(7)); `91+ days` → (91, None).
fn parse_age(age: &str) -> Result<(u32, Option<u32>), String> {
    let s = age.trim();
    let s = s.strip_suffix("days").or_else(|| s.strip_suffix("day")).ok_or("must end in \"days\"")?.trim();
    let number = |n: &str| n.trim().parse::<u32>().map_err(|_| format!("{n:?} is not a number of days"));
    if let Some(from) = s.strip_suffix('+') {
        return Ok((number(from)?, None));
    }
    let (from, to) = s.split_once('-').ok_or("must be \"N-M days\" or \"N+ days\"")?;
    let (from, to) = (number(from)?, number(to)?);
    if to < from {
        return Err(format!("ends (day {to}) before it starts (day {from})"));
    }
    Ok((from, Some(to)))
}

/// An S3 storage class or Azure access tier name, as people write them.
fn parse_class(class: &str) -> Result<StorageTier, Invalid> {
    let squashed: String = class.to_ascii_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let squashed = squashed.strip_prefix("s3").unwrap_or(&squashed);
    let squashed = squashed.strip_prefix("azure").unwrap_or(squashed);
    match squashed {
        "standard" | "hot" => Ok(StorageTier::Hot),
        "standardia" | "infrequentaccess" | "cool" => Ok(StorageTier::Warm),
        "glacier" | "glacierflexibleretrieval" | "cold" => Ok(StorageTier::Cold),
        "glacierdeeparchive" | "deeparchive" | "archive" => Ok(StorageTier::Archive),
        _ => Err(format!(
            "{class:?} is not a known class (S3 Standard, S3 Standard-IA, S3 Glacier, S3 Glacier Deep Archive; Azure Hot, Cool, Cold, Archive)"
        ).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block exactly as the seed writes it.
    const SEED: &str = r#"
backup_schedules:
  anything: [1, 2]
storage_lifecycle:
  hot_tier:
    age: 0-7 days
    storage_class: "S3 Standard"
    access_pattern: "Frequent"
  
  warm_tier:
    age: 8-30 days
    storage_class: "S3 Standard-IA"
    access_pattern: "Infrequent"
  
  cold_tier:
    age: 31-90 days
    storage_class: "S3 Glacier"
    access_pattern: "Rare"
  
  archive_tier:
    age: 91+ days
    storage_class: "S3 Glacier Deep Archive"
    access_pattern: "Compliance only"
"#;

    #[test]
    fn the_seed_parses_to_its_own_days() {
        assert_eq!(storage_lifecycle_from_yaml(SEED).unwrap(), Lifecycle::default());
    }

    #[test]
    fn malformed_policies_say_what_is_wrong() {
        let cases = [
            ("storage_lifecycle: [", "not valid YAML"),
            ("other: 1", "no storage_lifecycle"),
            (
                "storage_lifecycle:\n  hot:\n    age: 0-7 weeks\n    storage_class: S3 Standard",
                "storage_lifecycle.hot: age",
            ),
            (
                "storage_lifecycle:\n  hot:\n    age: 0-7 days\n    storage_class: S3 Tepid\n",
                "\"S3 Tepid\" is not a known class",
            ),
            (
                "storage_lifecycle:\n  a:\n    age: 0-7 days\n    storage_class: Hot\n  b:\n    age: 9+ days\n    storage_class: Cool\n",
                "starts at day 9",
            ),
            (
                "storage_lifecycle:\n  a:\n    age: 0-7 days\n    storage_class: Archive\n  b:\n    age: 8+ days\n    storage_class: Cool\n",
                "at least as cold",
            ),
            (
                "storage_lifecycle:\n  a:\n    age: 0-7 days\n    storage_class: Hot\n  b:\n    age: 8-9 days\n    storage_class: Cool\n",
                "must be open-ended",
            ),
            ("storage_lifecycle:\n  a:\n    age: 0+ days\n    storage_class: Hot\n    colour: red\n", "unknown field"),
        ];
        for (text, wanted) in cases {
            let err = storage_lifecycle_from_yaml(text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text:?}: {err}");
        }
    }
}
