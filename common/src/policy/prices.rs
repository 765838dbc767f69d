//! The policy's `storage_prices` block: what a GB-month costs in each tier
//! of each kind of store, for the coordinator's estimate of the monthly
//! storage cost (the seed's "Monitor backup storage costs").
//!
//! ```yaml
//! storage_prices:      # USD per GB-month (10^9 bytes)
//!   s3:    { hot: 0.023, warm: 0.0125, cold: 0.0036, archive: 0.00099 }
//!   azure: { hot: 0.018, warm: 0.01,   cold: 0.0036, archive: 0.00099 }
//!   local: { hot: 0 }
//! ```
//!
//! A kind or tier left out keeps its default: the providers' published list
//! prices for the first pricing band, AWS S3 in us-east-1 (Standard,
//! Standard-IA, Glacier Flexible Retrieval, Glacier Deep Archive) and Azure
//! Blob LRS in East US (Hot, Cool, Cold, Archive), as listed in 2025. A
//! local directory costs nothing unless priced. Requests, retrievals and
//! egress are not counted.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::PolicyError;
use crate::store::lifecycle::StorageTier;

/// The kinds of store priced.
pub const KINDS: [&str; 3] = ["s3", "azure", "local"];

/// Prices per GB-month, by store kind and tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    by_kind: BTreeMap<String, [f64; 4]>,
}

fn index(tier: StorageTier) -> usize {
    match tier {
        StorageTier::Hot => 0,
        StorageTier::Warm => 1,
        StorageTier::Cold => 2,
        StorageTier::Archive => 3,
    }
}

impl Default for Prices {
    fn default() -> Self {
        let by_kind = BTreeMap::from([
            // AWS S3, us-east-1: Standard, Standard-IA, Glacier Flexible Retrieval, Glacier Deep Archive.
            ("s3".to_owned(), [0.023, 0.0125, 0.0036, 0.00099]),
            // Azure Blob LRS, East US: Hot, Cool, Cold, Archive.
            ("azure".to_owned(), [0.018, 0.01, 0.0036, 0.00099]),
            ("local".to_owned(), [0.0; 4]),
        ]);
        Prices { by_kind }
    }
}

impl Prices {
    /// USD per GB-month of `tier` in a store of `kind` (`s3`, `azure`, `local`).
    pub fn per_gb_month(&self, kind: &str, tier: StorageTier) -> f64 {
        self.by_kind.get(kind).map_or(0.0, |p| p[index(tier)])
    }

    /// The estimated monthly cost of `bytes` there.
    pub fn monthly(&self, kind: &str, tier: StorageTier, bytes: u64) -> f64 {
        self.per_gb_month(kind, tier) * bytes as f64 / 1e9
    }
}

#[derive(Deserialize)]
struct Document {
    storage_prices: Option<BTreeMap<String, BTreeMap<String, f64>>>,
}

/// The `storage_prices` block of a policy document, over the defaults.
pub fn prices_from_yaml(text: &str) -> Result<Prices, PolicyError> {
    let doc: Document = serde_norway::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    let mut prices = Prices::default();
    let bad = |setting: String, reason: String| PolicyError::Prices { setting, reason };
    for (kind, tiers) in doc.storage_prices.unwrap_or_default() {
        let Some(row) = prices.by_kind.get_mut(&kind) else {
            return Err(bad(kind, format!("not a kind of store ({})", KINDS.join(", "))));
        };
        for (tier, price) in tiers {
            let t: StorageTier =
                tier.parse().map_err(|e: crate::invalid::Invalid| bad(format!("{kind}.{tier}"), e.0))?;
            if !(price >= 0.0 && price.is_finite()) {
                return Err(bad(format!("{kind}.{tier}"), format!("{price}: a price in USD per GB-month, 0 or more")));
            }
            row[index(t)] = price;
        }
    }
    Ok(prices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_hold_where_the_policy_says_nothing() {
        let prices = prices_from_yaml("storage_prices:\n  s3: { warm: 0.01 }\n  local: { hot: 0.002 }\n").unwrap();
        assert_eq!(prices.per_gb_month("s3", StorageTier::Warm), 0.01);
        assert_eq!(prices.per_gb_month("s3", StorageTier::Hot), 0.023);
        assert_eq!(prices.per_gb_month("azure", StorageTier::Archive), 0.00099);
        assert!((prices.monthly("local", StorageTier::Hot, 500_000_000_000) - 1.0).abs() < 1e-9);
        assert_eq!(prices_from_yaml("backup_schedules: {}\n").unwrap(), Prices::default());
        let err = prices_from_yaml("storage_prices:\n  tape: { hot: 1 }\n").unwrap_err().to_string();
        assert!(err.contains("tape") && err.contains("s3, azure, local"), "{err}");
        let err = prices_from_yaml("storage_prices:\n  s3: { lukewarm: 1 }\n").unwrap_err().to_string();
        assert!(err.contains("s3.lukewarm"), "{err}");
        let err = prices_from_yaml("storage_prices:\n  s3: { hot: -1 }\n").unwrap_err().to_string();
        assert!(err.contains("s3.hot"), "{err}");
    }
}
