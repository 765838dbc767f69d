//! zstd compression, skipped where it does not pay.

use std::borrow::Cow;
use std::cell::RefCell;

/// A blob's stored payload and whether it is compressed.
pub struct Compressed<'a> {
    /// Bytes to seal.
    pub data: Cow<'a, [u8]>,
    /// True when `data` is zstd-compressed.
    pub compressed: bool,
}

/// Probe size for the incompressibility test.
const PROBE: usize = 64 * 1024;

/// Compresses `raw` unless it does not shrink by at least 1/32. Media and
/// already-compressed files are detected from a cheap probe of the first
/// 64 KiB at level 1, so they cost almost nothing.
pub fn compress(raw: &[u8], level: i32) -> Compressed<'_> {
    let stored = Compressed { data: Cow::Borrowed(raw), compressed: false };
    if raw.len() > PROBE * 2 {
        let probe = with_compressor(1, |c| c.compress(&raw[..PROBE])).map(|p| p.len()).unwrap_or(PROBE);
        if probe >= PROBE - PROBE / 32 {
            return stored;
        }
    }
    match with_compressor(level, |c| c.compress(raw)) {
        Ok(c) if c.len() < raw.len() - raw.len() / 32 => Compressed { data: Cow::Owned(c), compressed: true },
        _ => stored,
    }
}

thread_local! {
    /// One zstd context per thread and level: creating one costs more than
    /// compressing a small chunk.
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(Vec::new()) };
}

fn with_compressor<T>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let pos = match all.iter().position(|(l, _)| *l == level) {
            Some(p) => p,
            None => {
                all.push((level, zstd::bulk::Compressor::new(level)?));
                all.len() - 1
            }
        };
        f(&mut all[pos].1)
    })
}

/// Decompresses a payload whose original length is `raw_len`.
pub fn decompress(data: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    let out = zstd::bulk::decompress(data, raw_len)?;
    if out.len() != raw_len {
        return Err(std::io::Error::other(format!("decompressed to {} bytes, expected {raw_len}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_compresses_noise_does_not() {
        let text = b"2026-11-24 INFO request served in 3ms\n".repeat(10_000);
        let c = compress(&text, 3);
        assert!(c.compressed && c.data.len() < text.len() / 10);
        assert_eq!(decompress(&c.data, text.len()).unwrap(), text);

        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let n = compress(&noise, 3);
        assert!(!n.compressed);
        assert_eq!(&n.data[..], &noise[..]);
    }
}
