//! Storage tiers and the lifecycle that moves data objects through them as
//! they age (the seed's `storage_lifecycle`: hot 0–7 days, warm 8–30, cold
//! 31–90, archive 91+). Only data objects (packs, WAL) ever leave the hot
//! tier: metadata (config, keys, indexes, snapshots) must stay readable at
//! once, so a restore can always say which objects need rehydrating.

use crate::invalid::Invalid;
use std::str::FromStr;

/// The longest age a lifecycle may name (a century), so day counts stay
/// far inside what every service accepts.
pub const MAX_DAYS: u32 = 36_500;

pub use crate::repo::format::layout::TIERED_PREFIXES;

/// Whether objects under `key` may leave the hot tier.
pub fn is_tiered(key: &str) -> bool {
    TIERED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// A storage tier, hottest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StorageTier {
    /// S3 Standard, Azure Hot.
    Hot,
    /// S3 Standard-IA, Azure Cool.
    Warm,
    /// S3 Glacier Flexible Retrieval, Azure Cold.
    Cold,
    /// S3 Glacier Deep Archive, Azure Archive (must be rehydrated to read).
    Archive,
}

impl StorageTier {
    /// Its name, as `from_str` reads it and metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            StorageTier::Hot => "hot",
            StorageTier::Warm => "warm",
            StorageTier::Cold => "cold",
            StorageTier::Archive => "archive",
        }
    }
}

impl FromStr for StorageTier {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s.to_ascii_lowercase().as_str() {
            "hot" | "standard" => Ok(StorageTier::Hot),
            "warm" | "cool" | "standard_ia" => Ok(StorageTier::Warm),
            "cold" | "glacier" => Ok(StorageTier::Cold),
            "archive" | "deep_archive" => Ok(StorageTier::Archive),
            other => Err(Invalid(format!("unknown storage tier {other:?} (hot, warm, cold, archive)"))),
        }
    }
}

/// When data objects move to colder tiers, in days since they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Days before the warm tier (None: never).
    pub warm_after: Option<u32>,
    /// Days before the cold tier (None: never).
    pub cold_after: Option<u32>,
    /// Days before the archive tier (None: never).
    pub archive_after: Option<u32>,
}

impl Default for Lifecycle {
    /// The seed's `storage_lifecycle`.
    fn default() -> Self {
        Lifecycle { warm_after: Some(8), cold_after: Some(31), archive_after: Some(91) }
    }
}

/// A lifecycle whose days do not increase with the tiers.
#[derive(Debug, thiserror::Error)]
#[error("invalid lifecycle: {0}")]
pub struct InvalidLifecycle(String);

impl Lifecycle {
    /// The transitions in order, each tier with its day.
    pub fn transitions(&self) -> Vec<(StorageTier, u32)> {
        [
            (StorageTier::Warm, self.warm_after),
            (StorageTier::Cold, self.cold_after),
            (StorageTier::Archive, self.archive_after),
        ]
        .into_iter()
        .filter_map(|(t, d)| d.map(|d| (t, d)))
        .collect()
    }

    /// Checks that colder tiers come no sooner (equal days skip a tier),
    /// and that every day is within a century.
    pub fn validate(&self) -> Result<(), InvalidLifecycle> {
        let t = self.transitions();
        if let Some((tier, days)) = t.iter().find(|(_, d)| *d > MAX_DAYS) {
            return Err(InvalidLifecycle(format!("{tier:?} after {days} days: at most {MAX_DAYS} days")));
        }
        match t.windows(2).find(|w| w[1].1 < w[0].1) {
            Some(w) => Err(InvalidLifecycle(format!(
                "{:?} after {} days cannot come before {:?} after {} days",
                w[1].0, w[1].1, w[0].0, w[0].1
            ))),
            None => Ok(()),
        }
    }

    /// The tier an object of `age_days` belongs in.
    pub fn tier_for_age(&self, age_days: u32) -> StorageTier {
        self.transitions()
            .into_iter()
            .filter(|(_, d)| age_days >= *d)
            .map(|(t, _)| t)
            .next_back()
            .unwrap_or(StorageTier::Hot)
    }
}

/// What applying a lifecycle did to one store.
#[derive(Debug, Clone)]
pub struct LifecycleOutcome {
    /// The store.
    pub store: String,
    /// What was done, in a sentence.
    pub summary: String,
    /// Where the store's rules forced a change to the requested days.
    pub adjustments: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lifecycle() {
        let l = Lifecycle::default();
        l.validate().unwrap();
        assert_eq!(l.tier_for_age(0), StorageTier::Hot);
        assert_eq!(l.tier_for_age(7), StorageTier::Hot);
        assert_eq!(l.tier_for_age(8), StorageTier::Warm);
        assert_eq!(l.tier_for_age(31), StorageTier::Cold);
        assert_eq!(l.tier_for_age(400), StorageTier::Archive);
        assert!(Lifecycle { warm_after: Some(30), cold_after: Some(10), archive_after: None }.validate().is_err());
        let skip = Lifecycle { warm_after: Some(0), cold_after: Some(0), archive_after: Some(0) };
        skip.validate().unwrap();
        assert_eq!(skip.tier_for_age(0), StorageTier::Archive);
        assert!(is_tiered("data/ab/x") && !is_tiered("index/x") && !is_tiered("config"));
    }
}
