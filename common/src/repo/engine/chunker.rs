//! Content-defined chunking (FastCDC 2020) with a keyed gear table.
//!
//! The chunker owns one read buffer and hands out chunks as slices of it, so
//! a worker chunks any number of files without allocating per chunk; the cut
//! points themselves come from the `fastcdc` crate.

use std::borrow::Cow;
use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

/// Minimum, average and maximum chunk sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No chunk is smaller, except a file's last.
    pub min: u32,
    /// The size chunk boundaries aim for.
    pub avg: u32,
    /// No chunk is larger.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        // 1 MiB on average: small enough that an edit inside a large file
        // costs about a MiB, large enough that a GiB is only ~1,000 index entries.
        ChunkerParams { min: 256 * 1024, avg: 1024 * 1024, max: 4 * 1024 * 1024 }
    }
}

/// Splits streams into content-defined chunks, reusing one buffer.
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
    buf: Vec<u8>,
}

impl Chunker {
    /// A chunker for `params`; `seed` comes from the keyring so boundaries
    /// reveal nothing about content to someone without the key.
    pub fn new(params: ChunkerParams, seed: u64) -> Self {
        let (mask_s, mask_l) = select_masks(params.avg as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunker {
            min: params.min as usize,
            avg: params.avg as usize,
            max: params.max as usize,
            mask_s,
            mask_l,
            gear,
            gear_ls,
            buf: Vec::new(),
        }
    }

    /// Reads `source` to its end and calls `each` with every chunk in order.
    pub fn chunk_reader<R: Read, E: From<io::Error>>(
        &mut self,
        mut source: R,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        // Keep at least `max` bytes ahead of the cursor until end of input, so
        // every cut is the one FastCDC would make over the whole stream; a
        // buffer of 4×max keeps the tail copied on each refill small.
        let cap = self.max * 4;
        if self.buf.len() != cap {
            self.buf = vec![0u8; cap];
        }
        let (mut start, mut end, mut eof) = (0usize, 0usize, false);
        loop {
            if end - start < self.max && !eof {
                self.buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                while end < cap {
                    match source.read(&mut self.buf[end..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => end += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if start == end {
                return Ok(());
            }
            let (_, len) = cut_gear(
                &self.buf[start..end],
                self.min,
                self.avg,
                self.max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
                &self.gear,
                &self.gear_ls,
            );
            each(&self.buf[start..start + len])?;
            start += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], params: ChunkerParams, seed: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        Chunker::new(params, seed)
            .chunk_reader(data, |c| {
                out.push(c.to_vec());
                Ok::<_, io::Error>(())
            })
            .unwrap();
        out
    }

    const SMALL: ChunkerParams = ChunkerParams { min: 4096, avg: 16384, max: 65536 };

    #[test]
    fn same_cuts_as_fastcdc_over_the_whole_input() {
        let data = pseudo_random(1 << 20, 9);
        let ours: Vec<usize> = chunks(&data, SMALL, 5).iter().map(Vec::len).collect();
        let reference: Vec<usize> =
            fastcdc::v2020::FastCDC::with_level_and_seed(&data, 4096, 16384, 65536, Normalization::Level1, 5)
                .map(|c| c.length)
                .collect();
        assert_eq!(ours, reference);
    }

    #[test]
    fn boundaries_survive_an_insertion() {
        let data = pseudo_random(1 << 20, 42);
        let before = chunks(&data, SMALL, 7);
        assert_eq!(before.concat(), data);
        assert!(before.len() > 16);

        let mut edited = data.clone();
        edited.splice(500_000..500_000, b"inserted bytes".iter().copied());
        let after = chunks(&edited, SMALL, 7);
        let shared = after.iter().filter(|c| before.contains(c)).count();
        // All but the one or two chunks around the edit are found again.
        assert!(shared + 3 >= before.len(), "only {shared} of {} chunks shared", before.len());
    }

    #[test]
    fn seed_changes_boundaries_and_empty_input_has_no_chunks() {
        let data = pseudo_random(1 << 20, 1);
        assert_ne!(chunks(&data, SMALL, 1), chunks(&data, SMALL, 2));
        assert!(chunks(&[], SMALL, 1).is_empty());
    }
}
