//! Refused TLS handshakes, audited without letting a flood fill the disk:
//! in each window the first refusal of each kind (a foreign CA, an expired
//! certificate, ...) from an address is written at once, the others from
//! that address are counted and written as one line per kind when the
//! window closes. Past a bounded number of addresses per window, and of
//! kinds per address, the rest are counted together, so a flood costs a
//! bounded number of lines whatever its sources.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use lifeboat_common::audit::AuditRecord;

/// How long refusals are gathered before their counts are written.
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Addresses followed one by one in a window; the rest are counted together.
const TRACKED_ADDRESSES: usize = 256;
/// Kinds of refusal followed one by one per address in a window.
const KINDS_PER_ADDRESS: usize = 8;

/// The refusals of the window under way.
#[derive(Debug)]
pub struct RefusalLog {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    since: DateTime<Utc>,
    /// Refusals after the first, by address and kind.
    repeats: HashMap<IpAddr, HashMap<String, Repeats>>,
    /// Refusals from addresses past the tracked ones.
    untracked: Repeats,
}

#[derive(Debug, Default)]
struct Repeats {
    count: u64,
    last_reason: String,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog {
            window: Mutex::new(Window { since: Utc::now(), repeats: HashMap::new(), untracked: Repeats::default() }),
        }
    }
}

/// The kind of a refusal: its reason without the numbers that change from
/// one attempt to the next (times, serials).
fn kind(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn record(principal: String, result: String) -> AuditRecord {
    AuditRecord { principal, role: None, action: "tls-handshake".into(), target: None, result }
}

impl RefusalLog {
    /// Notes a refused handshake; returns the record to write now (the
    /// address's first in this window), if any.
    pub fn refused(&self, peer: SocketAddr, reason: &str) -> Option<AuditRecord> {
        let mut guard = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *guard;
        let (ip, kind) = (peer.ip(), kind(reason));
        let tracked = w.repeats.len() < TRACKED_ADDRESSES || w.repeats.contains_key(&ip);
        let kinds = tracked.then(|| w.repeats.entry(ip).or_default());
        let repeat = match kinds {
            Some(kinds) if kinds.contains_key(&kind) => kinds.get_mut(&kind),
            Some(kinds) if kinds.len() < KINDS_PER_ADDRESS => {
                kinds.insert(kind, Repeats::default());
                return Some(record(format!("unauthenticated {peer}"), format!("denied: {reason}")));
            }
            _ => Some(&mut w.untracked),
        };
        if let Some(r) = repeat {
            r.count += 1;
            r.last_reason = reason.to_owned();
        }
        None
    }

    /// Closes the window: one record per address refused again in it, and
    /// one for the untracked addresses; then a new window starts.
    pub fn close_window(&self) -> Vec<AuditRecord> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        let span = format!("between {} and {}", w.since.format("%H:%M:%SZ"), now.format("%H:%M:%SZ"));
        let mut out: Vec<AuditRecord> = w
            .repeats
            .drain()
            .flat_map(|(ip, kinds)| kinds.into_values().map(move |r| (ip, r)))
            .filter(|(_, r)| r.count > 0)
            .map(|(ip, r)| {
                record(
                    format!("unauthenticated {ip}"),
                    format!("denied: {} more refused handshakes {span} (last: {})", r.count, r.last_reason),
                )
            })
            .collect();
        out.sort_by(|a, b| a.principal.cmp(&b.principal));
        if w.untracked.count > 0 {
            out.push(record(
                "unauthenticated (past the addresses and kinds followed one by one)".into(),
                format!(
                    "denied: {} refused handshakes {span} not written one by one (last: {})",
                    w.untracked.count, w.untracked.last_reason
                ),
            ));
        }
        *w = Window { since: now, repeats: HashMap::new(), untracked: Repeats::default() };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_address_is_one_line_and_a_count() {
        let log = RefusalLog::default();
        let peer: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let first = log.refused(peer, "unknown issuer").unwrap();
        assert_eq!(first.principal, "unauthenticated 10.0.0.9:40000");
        for port in 1..5000u16 {
            let other_port = SocketAddr::new(peer.ip(), 40000 + port % 20000);
            assert!(log.refused(other_port, "unknown issuer").is_none());
        }
        let closed = log.close_window();
        assert_eq!(closed.len(), 1);
        assert!(closed[0].result.contains("4999 more refused handshakes"), "{:?}", closed[0]);
        // A new window writes the address's first refusal again: evidence stays.
        assert!(log.refused(peer, "unknown issuer").is_some());
        // Another kind of refusal from the same address is its own evidence,
        // however its numbers change.
        assert!(log.refused(peer, "expired at 10:00:01").is_some());
        assert!(log.refused(peer, "expired at 10:00:02").is_none());
    }

    #[test]
    fn a_flood_from_many_addresses_costs_a_bounded_number_of_lines() {
        let log = RefusalLog::default();
        let mut written = 0;
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            written += usize::from(log.refused(SocketAddr::new(ip.into(), 1234), "unknown issuer").is_some());
        }
        let closed = log.close_window();
        assert_eq!(written, TRACKED_ADDRESSES);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(closed[0].result.contains("9744 refused handshakes"), "{:?}", closed[0]);
    }
}
