//! PostgreSQL's WAL positions and file names, and where a WAL file lies in
//! the store (`wal/<timeline>/<name>`): parsed and printed here only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::repo::format::layout::WAL_PREFIX;

/// A WAL name or position that is not one PostgreSQL would write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalNameError {
    /// Not a WAL file name.
    #[error("{0:?} is not a WAL file name (segment, .partial, .stream, .history or .backup)")]
    FileName(String),
    /// Not a WAL position.
    #[error("{0:?} is not a WAL position (X/Y in hexadecimal)")]
    Lsn(String),
}

/// A position in the WAL (PostgreSQL's `pg_lsn`), printed `X/Y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = WalNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WalNameError::Lsn(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            (!h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(h, 16).ok())
                .flatten()
        };
        Ok(Lsn((half(hi).ok_or_else(bad)? << 32) | half(lo).ok_or_else(bad)?))
    }
}

/// Stored as the text PostgreSQL writes, parsed back on reading.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Lsn);

/// A timeline id: 1 at `initdb`, one more at each promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timeline(pub u32);

impl Timeline {
    /// A timeline as the server reports it (a signed integer in SQL).
    pub fn from_server(value: i64) -> Option<Timeline> {
        u32::try_from(value).ok().filter(|t| *t > 0).map(Timeline)
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
}

/// A whole WAL segment: `TTTTTTTTLLLLLLLLSSSSSSSS` (timeline, log, segment
/// within the log, in upper-case hex). Ordered by timeline, then position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// The timeline it belongs to.
    pub timeline: Timeline,
    /// The high 32 bits of its first LSN.
    pub log: u32,
    /// Its number within the log.
    pub seg: u32,
}

impl Segment {
    /// The segment of `timeline` holding `lsn`, for segments of `segment_size` bytes.
    pub fn holding(timeline: Timeline, lsn: Lsn, segment_size: u64) -> Segment {
        let size = segment_size.max(1);
        let n = lsn.0 / size;
        let per_log = (0x1_0000_0000u64 / size).max(1);
        // Both fit: n / per_log ≤ lsn >> 32 and n % per_log < 2^32 / size.
        Segment { timeline, log: (n / per_log) as u32, seg: (n % per_log) as u32 }
    }

    /// Its first LSN.
    pub fn start(&self, segment_size: u64) -> Lsn {
        Lsn((u64::from(self.log) << 32) + u64::from(self.seg) * segment_size)
    }

    /// The segment after it on the same timeline.
    pub fn next(&self, segment_size: u64) -> Option<Segment> {
        let per_log = 0x1_0000_0000u64.checked_div(segment_size)?;
        let (log, seg) =
            if u64::from(self.seg) + 1 >= per_log { (self.log.checked_add(1)?, 0) } else { (self.log, self.seg + 1) };
        Some(Segment { log, seg, ..*self })
    }

    /// Its position regardless of timeline (what recovery moves along).
    pub fn position(&self) -> (u32, u32) {
        (self.log, self.seg)
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline.0, self.log, self.seg)
    }
}

impl FromStr for Segment {
    type Err = WalNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WalNameError::FileName(s.to_owned());
        if s.len() != 24 || !is_hex(s) {
            return Err(bad());
        }
        let part = |r: std::ops::Range<usize>| s.get(r).and_then(|h| u32::from_str_radix(h, 16).ok()).ok_or_else(bad);
        Ok(Segment { timeline: Timeline(part(0..8)?), log: part(8..16)?, seg: part(16..24)? })
    }
}

serde_as_text!(Segment);

/// Suffix of the object holding a segment streamed only in part so far.
/// (Not PostgreSQL's `.partial`: that is the abandoned tail of a timeline
/// a promoted standby archives, and the two must not collide.)
pub const STREAMING_SUFFIX: &str = ".stream";

/// A file PostgreSQL archives, by what its name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFile {
    /// A whole segment.
    Segment(Segment),
    /// The abandoned tail of a timeline (`….partial`).
    Partial(Segment),
    /// A segment streamed only in part so far (`….stream`, Lifeboat's own).
    Streaming(Segment),
    /// A timeline history file (`00000002.history`).
    History(Timeline),
    /// A backup history file (`<segment>.<offset>.backup`).
    Backup(Segment, u32),
}

impl WalFile {
    /// The timeline its name carries.
    pub fn timeline(&self) -> Timeline {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) | WalFile::Streaming(s) | WalFile::Backup(s, _) => s.timeline,
            WalFile::History(t) => *t,
        }
    }

    /// The segment its name starts with (none for a history file).
    pub fn segment(&self) -> Option<Segment> {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) | WalFile::Streaming(s) | WalFile::Backup(s, _) => Some(*s),
            WalFile::History(_) => None,
        }
    }

    /// Where it lies in the store.
    pub fn key(&self) -> String {
        format!("{}{}", timeline_prefix(self.timeline()), self)
    }
}

/// The store prefix of one timeline's WAL files.
pub fn timeline_prefix(timeline: Timeline) -> String {
    format!("{WAL_PREFIX}{:08X}/", timeline.0)
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFile::Segment(s) => write!(f, "{s}"),
            WalFile::Partial(s) => write!(f, "{s}.partial"),
            WalFile::Streaming(s) => write!(f, "{s}{STREAMING_SUFFIX}"),
            WalFile::History(t) => write!(f, "{:08X}.history", t.0),
            WalFile::Backup(s, offset) => write!(f, "{s}.{offset:08X}.backup"),
        }
    }
}

impl FromStr for WalFile {
    type Err = WalNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let bad = || WalNameError::FileName(name.to_owned());
        let seg = |s: &str| s.parse::<Segment>().map_err(|_| bad());
        match name.split_once('.') {
            None => Ok(WalFile::Segment(seg(name)?)),
            Some((s, "partial")) => Ok(WalFile::Partial(seg(s)?)),
            Some((s, "stream")) => Ok(WalFile::Streaming(seg(s)?)),
            Some((tli, "history")) if tli.len() == 8 && is_hex(tli) => {
                Ok(WalFile::History(Timeline(u32::from_str_radix(tli, 16).map_err(|_| bad())?)))
            }
            Some((s, rest)) => {
                let offset = rest.strip_suffix(".backup").filter(|o| o.len() == 8 && is_hex(o)).ok_or_else(bad)?;
                Ok(WalFile::Backup(seg(s)?, u32::from_str_radix(offset, 16).map_err(|_| bad())?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns() {
        for (text, value) in [("0/0", 0), ("16/B374D848", 0x16_B374_D848), ("FFFFFFFF/FFFFFFFF", u64::MAX)] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        for bad in ["", "0", "/0", "0/", "x/1", "1/2/3", "123456789/0", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(serde_json::to_string(&Lsn(0x1_0000_0028)).unwrap(), "\"1/28\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"1/28\"").unwrap(), Lsn(0x1_0000_0028));
        assert!(serde_json::from_str::<Lsn>("\"bogus\"").is_err());
        assert_eq!(Timeline::from_server(0), None);
        assert_eq!(Timeline::from_server(-1), None);
        assert_eq!(Timeline::from_server(3), Some(Timeline(3)));
    }

    #[test]
    fn segments() {
        let mb16 = 16 << 20;
        let s: Segment = "0000000100000000000000FF".parse().unwrap();
        assert_eq!(s.next(mb16).unwrap().to_string(), "000000010000000100000000");
        let s: Segment = "000000010000000000000003".parse().unwrap();
        assert_eq!(s.next(mb16).unwrap().to_string(), "000000010000000000000004");
        for name in ["0000000100000000000000FF", "000000020000000A00000003"] {
            let s: Segment = name.parse().unwrap();
            assert_eq!(Segment::holding(s.timeline, Lsn(s.start(mb16).0 + 5), mb16).to_string(), name);
        }
        assert_eq!(s.next(0), None);
    }

    #[test]
    fn file_names_and_keys() {
        let key = |n: &str| n.parse::<WalFile>().map(|f| f.key());
        assert_eq!(key("000000010000000000000003").unwrap(), "wal/00000001/000000010000000000000003");
        assert_eq!(key("00000002.history").unwrap(), "wal/00000002/00000002.history");
        for good in [
            "000000010000000000000003.partial",
            "000000010000000000000003.stream",
            "000000010000000000000002.00000028.backup",
        ] {
            assert_eq!(good.parse::<WalFile>().unwrap().to_string(), good);
        }
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000003",
            "0000000100000000000000zz",
            "0000000100000000000000ff",
            "00000002.history.x",
            "000000010000000000000002.28.backup",
            "000000010000000000000003.partial/..",
        ] {
            assert!(bad.parse::<WalFile>().is_err(), "{bad:?} accepted");
        }
    }
}
