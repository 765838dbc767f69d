//! Content-defined chunking (FastCDC 2020) with a keyed gear table.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};
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
        ChunkerParams {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

/// Splits a stream into content-defined chunks.
pub struct Chunker<R: Read> {
    inner: StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    /// Chunks `source`; `seed` comes from the keyring so boundaries are secret.
    pub fn new(source: R, params: ChunkerParams, seed: u64) -> Self {
        Chunker {
            inner: StreamCDC::with_level_and_seed(
                source,
                params.min as usize,
                params.avg as usize,
                params.max as usize,
                Normalization::Level1,
                seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|r| {
            r.map(|c| c.data).map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => io,
                other => std::io::Error::other(other.to_string()),
            })
        })
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

    #[test]
    fn boundaries_survive_an_insertion() {
        let params = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let data = pseudo_random(1 << 20, 42);
        let chunks: Vec<Vec<u8>> = Chunker::new(&data[..], params, 7)
            .map(|c| c.unwrap())
            .collect();
        assert_eq!(chunks.concat(), data);
        assert!(chunks.len() > 16);

        let mut edited = data.clone();
        edited.splice(500_000..500_000, b"inserted bytes".iter().copied());
        let after: Vec<Vec<u8>> = Chunker::new(&edited[..], params, 7)
            .map(|c| c.unwrap())
            .collect();
        let shared = after.iter().filter(|c| chunks.contains(c)).count();
        // All but the one or two chunks around the edit are found again.
        assert!(
            shared + 3 >= chunks.len(),
            "only {shared} of {} chunks shared",
            chunks.len()
        );
    }

    #[test]
    fn seed_changes_boundaries() {
        let params = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let data = pseudo_random(1 << 20, 1);
        let a: Vec<usize> = Chunker::new(&data[..], params, 1)
            .map(|c| c.unwrap().len())
            .collect();
        let b: Vec<usize> = Chunker::new(&data[..], params, 2)
            .map(|c| c.unwrap().len())
            .collect();
        assert_ne!(a, b);
    }
}
