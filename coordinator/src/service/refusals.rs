//! Refused TLS handshakes, audited without letting a flood fill the disk:
//! in each window the first refusal from an address is written at once, the
//! others from that address are counted and written as one line when the
//! window closes. Past a bounded number of addresses per window, newcomers
//! are counted together, so a flood from many addresses costs a bounded
//! number of lines too.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use lifeboat_common::audit::AuditRecord;

/// How long refusals are gathered before their counts are written.
pub const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Addresses followed one by one in a window; the rest are counted together.
const TRACKED_ADDRESSES: usize = 256;

/// The refusals of the window under way.
#[derive(Debug)]
pub struct RefusalLog {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    since: DateTime<Utc>,
    /// Refusals after the first, by address.
    repeats: HashMap<IpAddr, Repeats>,
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

fn record(principal: String, result: String) -> AuditRecord {
    AuditRecord { principal, role: None, action: "tls-handshake".into(), target: None, result }
}

impl RefusalLog {
    /// Notes a refused handshake; returns the record to write now (the
    /// address's first in this window), if any.
    pub fn refused(&self, peer: SocketAddr, reason: &str) -> Option<AuditRecord> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let ip = peer.ip();
        if let Some(r) = w.repeats.get_mut(&ip) {
            r.count += 1;
            r.last_reason = reason.to_owned();
            return None;
        }
        if w.repeats.len() >= TRACKED_ADDRESSES {
            w.untracked.count += 1;
            w.untracked.last_reason = reason.to_owned();
            return None;
        }
        w.repeats.insert(ip, Repeats::default());
        Some(record(format!("unauthenticated {peer}"), format!("denied: {reason}")))
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
                "unauthenticated (addresses past the first 256)".into(),
                format!(
                    "denied: {} refused handshakes {span} from addresses not followed one by one (last: {})",
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
        assert!(log.refused(peer, "expired").is_some());
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
