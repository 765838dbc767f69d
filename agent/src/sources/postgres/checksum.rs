//! Data page checksums, verified while a base backup reads each relation
//! file (no second read): a page whose checksum does not match is reported
//! by file and block, and the backup still completes, marked.
//!
//! The checksum is PostgreSQL's (`storage/checksum_impl.h`): 32 interleaved
//! FNV-1a-like lanes over the page with its checksum field zeroed, folded,
//! mixed with the block number, and mapped into 1..=65535. No maintained
//! crate provides it, and it is a fixed on-disk format.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lifeboat_common::repo::format::snapshot::CorruptPage;

use super::relfile::{PAGE_SIZE, RelationFiles, relation_first_block};
use crate::sources::files::{ContentCheck, FileChecker};

const FNV_PRIME: u32 = 16_777_619;
/// Each lane's starting state, part of the format.
const LANE_SEEDS: [u32; 32] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn mix(lane: u32, value: u32) -> u32 {
    let t = lane ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL stores in a page (`pg_checksum_page`).
pub fn page_checksum(page: &[u8; PAGE_SIZE], block: u32) -> u16 {
    let mut lanes = LANE_SEEDS;
    for (i, w) in page.chunks_exact(4).enumerate() {
        let mut word = [w[0], w[1], w[2], w[3]];
        if i == 2 {
            // pd_checksum (bytes 8..10) counts as zero.
            word[0] = 0;
            word[1] = 0;
        }
        let lane = &mut lanes[i % lanes.len()];
        *lane = mix(*lane, u32::from_ne_bytes(word));
    }
    for _ in 0..2 {
        for lane in &mut lanes {
            *lane = mix(*lane, 0);
        }
    }
    let folded = lanes.iter().fold(0u32, |a, l| a ^ l) ^ block;
    // 1..=65535: zero means "no checksum".
    (folded % 65535 + 1) as u16
}

fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_ne_bytes([page[0], page[1], page[2], page[3]]);
    let lo = u32::from_ne_bytes([page[4], page[5], page[6], page[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_ne_bytes([page[8], page[9]])
}

/// A page never initialised (`PageIsNew`: pd_upper is zero) has no checksum.
fn is_new(page: &[u8]) -> bool {
    u16::from_ne_bytes([page[14], page[15]]) == 0
}

/// What the verification found, shared by every file's checker.
#[derive(Debug, Default)]
struct Found {
    verified: u64,
    corrupt: Vec<CorruptPage>,
}

/// Verifies the checksum of every page of every relation file a backup
/// reads, skipping pages written since the backup started (WAL replay
/// rewrites those whole, and a read racing a write may see them torn).
#[derive(Debug)]
pub struct PageChecks {
    files: RelationFiles,
    start_lsn: u64,
    found: Arc<Mutex<Found>>,
}

impl PageChecks {
    /// Checks for a backup of `files` that started at `start_lsn`.
    pub fn new(files: RelationFiles, start_lsn: u64) -> Self {
        PageChecks { files, start_lsn, found: Arc::default() }
    }

    /// Pages verified, and those that failed (sorted by file and block).
    pub fn results(&self) -> (u64, Vec<CorruptPage>) {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        let mut corrupt = std::mem::take(&mut found.corrupt);
        corrupt.sort_by(|a, b| (&a.file, a.block).cmp(&(&b.file, b.block)));
        (found.verified, corrupt)
    }
}

impl ContentCheck for PageChecks {
    fn for_file(&self, path: &Path, offset: u64) -> Option<FileChecker> {
        let relative = self.files.relative(path)?;
        let first_block = relation_first_block(&relative)?;
        if !offset.is_multiple_of(PAGE_SIZE as u64) {
            return None;
        }
        let mut file = FilePages {
            path: path.to_owned(),
            relative: relative.display().to_string(),
            first_block,
            next: offset / PAGE_SIZE as u64,
            partial: Vec::with_capacity(PAGE_SIZE),
            start_lsn: self.start_lsn,
            verified: 0,
            corrupt: Vec::new(),
            found: self.found.clone(),
        };
        Some(Box::new(move |bytes| file.feed(bytes)))
    }
}

/// One file's pages as they stream past.
struct FilePages {
    path: PathBuf,
    relative: String,
    first_block: u64,
    /// Index in this file of the next page to complete.
    next: u64,
    partial: Vec<u8>,
    start_lsn: u64,
    verified: u64,
    corrupt: Vec<CorruptPage>,
    found: Arc<Mutex<Found>>,
}

impl FilePages {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.partial.is_empty() && bytes.len() >= PAGE_SIZE {
                let (page, rest) = bytes.split_at(PAGE_SIZE);
                self.page(page);
                bytes = rest;
                continue;
            }
            let take = (PAGE_SIZE - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == PAGE_SIZE {
                let page = std::mem::take(&mut self.partial);
                self.page(&page);
                self.partial = page;
                self.partial.clear();
            }
        }
    }

    fn page(&mut self, page: &[u8]) {
        let index = self.next;
        self.next += 1;
        if is_new(page) || page_lsn(page) >= self.start_lsn {
            return;
        }
        let block = self.first_block + index;
        let Ok(array) = <&[u8; PAGE_SIZE]>::try_from(page) else { return };
        let expected = page_checksum(array, block as u32);
        if expected == stored_checksum(page) {
            self.verified += 1;
            return;
        }
        // A read that raced a write sees a torn page: read it again before
        // calling it corrupt.
        let mut again = [0u8; PAGE_SIZE];
        if let Ok(f) = std::fs::File::open(&self.path)
            && f.read_exact_at(&mut again, index * PAGE_SIZE as u64).is_ok()
            && (page_lsn(&again) >= self.start_lsn || page_checksum(&again, block as u32) == stored_checksum(&again))
        {
            self.verified += 1;
            return;
        }
        tracing::warn!(file = %self.relative, block, expected, found = stored_checksum(page), "page checksum mismatch");
        self.corrupt.push(CorruptPage { file: self.relative.clone(), block, expected, found: stored_checksum(page) });
    }
}

impl Drop for FilePages {
    fn drop(&mut self) {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found.verified += self.verified;
        found.corrupt.append(&mut self.corrupt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_changes_the_checksum_and_new_pages_are_skipped() {
        let mut page = [0u8; PAGE_SIZE];
        page[14] = 0x20; // pd_upper
        for (i, b) in page.iter_mut().enumerate().skip(24) {
            *b = (i * 7) as u8;
        }
        let sum = page_checksum(&page, 3);
        assert_ne!(sum, 0);
        // The checksum field itself does not count.
        page[8..10].copy_from_slice(&sum.to_ne_bytes());
        assert_eq!(page_checksum(&page, 3), sum);
        assert_ne!(page_checksum(&page, 4), sum, "the block number is mixed in");
        page[4000] ^= 1;
        assert_ne!(page_checksum(&page, 3), sum);
        assert!(is_new(&[0u8; PAGE_SIZE]));
    }
}
