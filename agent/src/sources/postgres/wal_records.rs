//! Where the WAL in a segment file ends, the way PostgreSQL's own reader
//! would find it: pages whose header names their place in the segment
//! (a recycled segment still holds old WAL past its end), and in them
//! records whose back-link and CRC-32C check (`access/xlog_internal.h`,
//! `access/xlogrecord.h`). Only as much of the layout as that walk needs.

use crc::{CRC_32_ISCSI, Crc};

/// The size of a WAL page (`XLOG_BLCKSZ`).
pub const WAL_PAGE: usize = 8192;
/// `XLogPageHeaderData`, MAXALIGNed.
const SHORT_HEADER: usize = 24;
/// `XLogLongPageHeaderData` (a segment's first page), MAXALIGNed.
const LONG_HEADER: usize = 40;
/// `XLogRecord`.
const RECORD_HEADER: usize = 24;
/// Where `xl_crc` sits in a record header; the CRC covers the header up to it.
const CRC_AT: usize = 20;
/// Where `xl_prev` (the previous record's start) sits in a record header.
const PREV_AT: usize = 8;
/// The page starts with the rest of a record begun before it.
const FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The page has the long header.
const LONG_HEADER_FLAG: u16 = 0x0002;
/// Records start on 8-byte boundaries (`MAXALIGN`).
const ALIGN: usize = 8;
/// The largest a record can be (`XLogRecordMaxSize`, 1 GiB in PostgreSQL 15).
const MAX_RECORD: u64 = 1 << 30;
/// WAL's record checksum.
const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// How far a segment file holds WAL, ordered by how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalEnd {
    /// The byte offset just past the last whole, valid record.
    pub whole: usize,
    /// A record whose header checks starts there and runs through this
    /// segment's pages into the next segment (its CRC cannot be checked
    /// without the rest).
    pub runs_on: bool,
}

/// How far `segment` (the file of the segment starting at `start_lsn`)
/// holds WAL.
pub fn valid_end(segment: &[u8], start_lsn: u64) -> WalEnd {
    let walk = Walk { segment, start_lsn };
    let Some(first) = walk.page(0) else { return WalEnd { whole: 0, runs_on: false } };
    let mut at = first.header;
    // The oldest the first record's back-link may point at: into the
    // segment before, or anywhere up to a whole record's size back when
    // a record begun earlier continues here (a recycled file's old
    // records point further back).
    let mut oldest_prev = start_lsn.saturating_sub(segment.len() as u64);
    if first.info & FIRST_IS_CONTRECORD != 0 {
        // The tail of a record begun in a segment before.
        oldest_prev = start_lsn.saturating_sub(MAX_RECORD);
        match walk.gather(at, first.rem_len as usize) {
            Gathered::Whole(_, next) => at = next,
            Gathered::PastSegment | Gathered::Broken => return WalEnd { whole: at, runs_on: false },
        }
    }
    let mut end = WalEnd { whole: at, runs_on: false };
    let mut prev = None;
    loop {
        at = at.next_multiple_of(ALIGN);
        if at.is_multiple_of(WAL_PAGE) {
            // A record starting on a new page starts after its header.
            match walk.page(at) {
                Some(p) if p.info & FIRST_IS_CONTRECORD == 0 => at += p.header,
                _ => break,
            }
        }
        let Some(len) = segment.get(at..at + 4).map(|b| u32_at(b, 0) as usize) else { break };
        if len < RECORD_HEADER {
            break;
        }
        let here = walk.start_lsn + at as u64;
        let linked = |back: u64| match prev {
            Some(p) => back == p,
            None => back >= oldest_prev && back < here,
        };
        // Checked before following a length that may be stale bytes; a
        // header split across pages is checked once gathered.
        let header_on_page = at % WAL_PAGE + RECORD_HEADER <= WAL_PAGE;
        if header_on_page && !linked(u64_at(segment, at + PREV_AT)) {
            break;
        }
        let (record, next) = match walk.gather(at, len) {
            Gathered::Whole(record, next) => (record, next),
            Gathered::PastSegment => {
                end.runs_on = header_on_page;
                break;
            }
            Gathered::Broken => break,
        };
        let mut crc = CRC32C.digest();
        crc.update(&record[RECORD_HEADER..]);
        crc.update(&record[..CRC_AT]);
        if !linked(u64_at(&record, PREV_AT)) || crc.finalize() != u32_at(&record, CRC_AT) {
            break;
        }
        prev = Some(here);
        end.whole = next;
        at = next;
    }
    end
}

/// A segment file being walked.
struct Walk<'a> {
    segment: &'a [u8],
    start_lsn: u64,
}

/// A page header's fields the walk uses.
struct Page {
    info: u16,
    rem_len: u32,
    header: usize,
}

/// What reading a record's bytes across pages found.
enum Gathered {
    /// All of them, and the offset just past them.
    Whole(Vec<u8>, usize),
    /// They run on into the next segment, through valid pages to its end.
    PastSegment,
    /// A page is missing, stale, or does not continue the record.
    Broken,
}

impl Walk<'_> {
    /// The header of the page at `offset`, if it is this segment's page
    /// there (not one left from the segment this file was recycled from).
    fn page(&self, offset: usize) -> Option<Page> {
        let h = self.segment.get(offset..offset + SHORT_HEADER)?;
        if u64_at(h, 8) != self.start_lsn + offset as u64 {
            return None;
        }
        let info = u16_at(h, 2);
        let header = if info & LONG_HEADER_FLAG != 0 { LONG_HEADER } else { SHORT_HEADER };
        Some(Page { info, rem_len: u32_at(h, 16), header })
    }

    /// The `len` bytes of WAL from `at`, skipping the headers of the pages
    /// they continue on, each of which must say how much is left.
    fn gather(&self, mut at: usize, len: usize) -> Gathered {
        let mut out = Vec::with_capacity(len.min(self.segment.len()));
        while out.len() < len {
            if at.is_multiple_of(WAL_PAGE) {
                if at == self.segment.len() {
                    return Gathered::PastSegment;
                }
                match self.page(at) {
                    Some(p) if p.info & FIRST_IS_CONTRECORD != 0 && p.rem_len as usize == len - out.len() => {
                        at += p.header;
                    }
                    _ => return Gathered::Broken,
                }
            }
            let take = (len - out.len()).min(WAL_PAGE - at % WAL_PAGE);
            let Some(bytes) = self.segment.get(at..at + take) else { return Gathered::Broken };
            out.extend_from_slice(bytes);
            at += take;
        }
        Gathered::Whole(out, at)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SEGMENT: usize = 16 * WAL_PAGE;
    const START: u64 = 3 * SEGMENT as u64;

    /// Writes WAL the way PostgreSQL lays it out: records of the given
    /// lengths, MAXALIGNed, split across pages with continuation headers.
    /// Returns the segment and each record's end offset.
    pub(crate) fn segment_of(lengths: &[usize]) -> (Vec<u8>, Vec<usize>) {
        segment_at(START, lengths)
    }

    /// [`segment_of`] for the segment starting at `start`.
    fn segment_at(start: u64, lengths: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let mut seg = vec![0u8; SEGMENT];
        let mut ends = Vec::new();
        let header = |seg: &mut [u8], page: usize, rem: usize| {
            let o = page * WAL_PAGE;
            let info = if page == 0 { LONG_HEADER_FLAG } else { 0 } | if rem > 0 { FIRST_IS_CONTRECORD } else { 0 };
            seg[o..o + 2].copy_from_slice(&0xD110u16.to_ne_bytes());
            seg[o + 2..o + 4].copy_from_slice(&info.to_ne_bytes());
            seg[o + 4..o + 8].copy_from_slice(&1u32.to_ne_bytes());
            seg[o + 8..o + 16].copy_from_slice(&(start + o as u64).to_ne_bytes());
            seg[o + 16..o + 20].copy_from_slice(&(rem as u32).to_ne_bytes());
            o + if page == 0 { LONG_HEADER } else { SHORT_HEADER }
        };
        let mut at = header(&mut seg, 0, 0);
        // The first record links back into the segment before.
        let mut prev = start - 64;
        for (n, &len) in lengths.iter().enumerate() {
            at = at.next_multiple_of(ALIGN);
            if at.is_multiple_of(WAL_PAGE) {
                at = header(&mut seg, at / WAL_PAGE, 0);
            }
            let begins = start + at as u64;
            let mut record: Vec<u8> = (0..len).map(|i| (i * 7 + n) as u8).collect();
            record[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            record[PREV_AT..PREV_AT + 8].copy_from_slice(&prev.to_ne_bytes());
            let mut crc = CRC32C.digest();
            crc.update(&record[RECORD_HEADER..]);
            crc.update(&record[..CRC_AT]);
            record[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.finalize().to_ne_bytes());
            let mut written = 0;
            while written < len && at < SEGMENT {
                if at.is_multiple_of(WAL_PAGE) {
                    at = header(&mut seg, at / WAL_PAGE, len - written);
                }
                let take = (len - written).min(WAL_PAGE - at % WAL_PAGE);
                seg[at..at + take].copy_from_slice(&record[written..written + take]);
                written += take;
                at += take;
            }
            prev = begins;
            ends.push(at);
        }
        (seg, ends)
    }

    #[test]
    fn the_end_is_past_the_last_whole_record_across_pages() {
        let (seg, ends) = segment_of(&[100, 9000, 57, 30_000, 24, 8000]);
        assert_eq!(valid_end(&seg, START), WalEnd { whole: *ends.last().unwrap(), runs_on: false });
        // Not this segment's WAL at all.
        assert_eq!(valid_end(&seg, START + SEGMENT as u64).whole, 0);
    }

    #[test]
    fn a_torn_or_stale_tail_ends_the_wal_where_the_last_good_record_ends() {
        let (whole, ends) = segment_of(&[100, 9000, 57, 300, 24]);
        // The last record's bytes only in part (a stream cut mid-record).
        let mut torn = whole.clone();
        torn[ends[4] - 10..ends[4]].fill(0);
        assert_eq!(valid_end(&torn, START).whole, ends[3]);
        // A recycled file: after the end, the WAL of the segment it was
        // (whole records with good CRCs, linked back to their own past).
        let (mut recycled, _) = segment_of(&[100, 9000, 57]);
        let (old, _) = segment_at(START - SEGMENT as u64, &[100, 9000, 57, 300, 24, 2000]);
        recycled[ends[2]..].copy_from_slice(&old[ends[2]..]);
        assert_eq!(valid_end(&recycled, START).whole, ends[2]);
        // The same records after the end, but one flipped bit: the CRC fails.
        let mut flipped = whole.clone();
        flipped[ends[4] - 3] ^= 1;
        assert_eq!(valid_end(&flipped, START).whole, ends[3]);
        // A record running into a page that is not this segment's.
        let (spanning, span_ends) = segment_of(&[100, 9000]);
        let mut stale = spanning.clone();
        stale[WAL_PAGE + 8..WAL_PAGE + 16].copy_from_slice(&0u64.to_ne_bytes());
        assert_eq!(valid_end(&stale, START).whole, span_ends[0]);
        assert_eq!(valid_end(&spanning, START).whole, span_ends[1]);
    }

    #[test]
    fn wal_running_into_the_next_segment_is_the_whole_file() {
        let (seg, ends) = segment_of(&[100, SEGMENT]);
        assert_eq!(ends.len(), 2);
        let end = valid_end(&seg, START);
        assert_eq!(end, WalEnd { whole: ends[0], runs_on: true });
        // Ahead of a copy holding the same whole records and no more.
        let (shorter, _) = segment_of(&[100]);
        assert!(end > valid_end(&shorter, START));
        // Stale bytes after the end whose length runs on: not a record.
        let mut stale = shorter.clone();
        let at = ends[0].next_multiple_of(ALIGN);
        stale[at..at + 4].copy_from_slice(&(SEGMENT as u32).to_ne_bytes());
        assert_eq!(valid_end(&stale, START), WalEnd { whole: ends[0], runs_on: false });
    }
}
