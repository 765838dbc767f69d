//! What a capture checks of the RDB as it streams past: the `REDIS<nnnn>`
//! header, the `0xFF` end opcode, and the CRC64 trailer over everything
//! before it (zero when the server runs with `rdbchecksum no`).

use crc::{CRC_64_REDIS, Crc, Digest, Table};

/// The checksum Redis writes: CRC-64/Jones, reflected, as `crc64()` in its
/// source computes it.
static CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_REDIS);

/// Bytes of the trailer: the CRC64, little-endian.
const TRAILER: usize = 8;
/// `REDIS` and four digits of version.
const HEADER: usize = 9;
/// The opcode that ends the data.
const EOF_OPCODE: u8 = 0xFF;

/// What the checks found in a whole RDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdbFacts {
    /// The format version.
    pub version: u16,
    /// Its length.
    pub bytes: u64,
    /// The trailer's checksum, verified; `None` when the server wrote none.
    pub checksum: Option<u64>,
}

/// Follows an RDB piece by piece; the last [`TRAILER`] bytes seen are held
/// out of the checksum until more arrive.
pub struct RdbCheck {
    digest: Digest<'static, u64, Table<16>>,
    header: Vec<u8>,
    held: Vec<u8>,
    last_digested: Option<u8>,
    bytes: u64,
}

impl Default for RdbCheck {
    fn default() -> Self {
        RdbCheck { digest: CRC64.digest(), header: Vec::new(), held: Vec::new(), last_digested: None, bytes: 0 }
    }
}

impl RdbCheck {
    /// Takes the next bytes of the RDB.
    pub fn update(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.header.len() < HEADER {
            let take = (HEADER - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..take]);
        }
        if data.len() >= TRAILER {
            let (body, tail) = data.split_at(data.len() - TRAILER);
            self.digest_held_and(body);
            self.held.clear();
            self.held.extend_from_slice(tail);
        } else {
            self.held.extend_from_slice(data);
            let over = self.held.len().saturating_sub(TRAILER);
            if over > 0 {
                let spill: Vec<u8> = self.held.drain(..over).collect();
                self.digest(&spill);
            }
        }
    }

    fn digest_held_and(&mut self, body: &[u8]) {
        let held = std::mem::take(&mut self.held);
        self.digest(&held);
        self.digest(body);
        self.held = held;
    }

    fn digest(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.digest.update(bytes);
            self.last_digested = Some(last);
        }
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The RDB's version, once its header has arrived.
    pub fn version(&self) -> Result<u16, String> {
        let head = &self.header;
        if head.len() < HEADER {
            return Err(format!("is {} bytes long, shorter than its header", head.len()));
        }
        let digits = head.strip_prefix(b"REDIS").and_then(|d| std::str::from_utf8(d).ok());
        digits.and_then(|d| d.parse().ok()).ok_or_else(|| {
            format!("does not start with REDIS and a version (it starts {:?})", String::from_utf8_lossy(head))
        })
    }

    /// Checks the whole RDB once its last byte has arrived.
    pub fn finish(self) -> Result<RdbFacts, String> {
        let version = self.version()?;
        let trailer: [u8; TRAILER] =
            self.held.as_slice().try_into().map_err(|_| "ends before its checksum".to_owned())?;
        if self.last_digested != Some(EOF_OPCODE) {
            return Err("does not end with its end-of-file opcode (0xFF) before the checksum".into());
        }
        let stored = u64::from_le_bytes(trailer);
        let checksum = match stored {
            // `rdbchecksum no`: the server wrote zeros.
            0 => None,
            _ => {
                let computed = self.digest.finalize();
                if computed != stored {
                    return Err(format!(
                        "fails its checksum: the trailer says {stored:016x}, the content has {computed:016x}"
                    ));
                }
                Some(stored)
            }
        };
        Ok(RdbFacts { version, bytes: self.bytes, checksum })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rdb(body: &[u8]) -> Vec<u8> {
        let mut v = b"REDIS0010".to_vec();
        v.extend_from_slice(body);
        v.push(EOF_OPCODE);
        let crc = CRC64.checksum(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    fn check_in_pieces(data: &[u8], piece: usize) -> Result<RdbFacts, String> {
        let mut c = RdbCheck::default();
        for p in data.chunks(piece) {
            c.update(p);
        }
        c.finish()
    }

    #[test]
    fn the_redis_check_value() {
        // The value Redis's own crc64 test expects for "123456789".
        assert_eq!(CRC64.checksum(b"123456789"), 0xe9c6d914c4b8d9ca);
    }

    #[test]
    fn whole_rdbs_pass_in_pieces_of_any_size() {
        let data = rdb(&(0..5000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<_>>());
        for piece in [1, 3, 7, 8, 9, 64, 4096, data.len()] {
            let facts = check_in_pieces(&data, piece).unwrap();
            assert_eq!(facts.version, 10);
            assert_eq!(facts.bytes, data.len() as u64);
            assert!(facts.checksum.is_some());
        }
    }

    #[test]
    fn damage_and_truncation_are_named() {
        let data = rdb(b"some keys and values");
        let mut flipped = data.clone();
        flipped[12] ^= 1;
        assert!(check_in_pieces(&flipped, 5).unwrap_err().contains("fails its checksum"));
        let cut = &data[..data.len() - 3];
        assert!(check_in_pieces(cut, 4).is_err());
        assert!(check_in_pieces(b"REDI", 2).unwrap_err().contains("shorter than its header"));
        assert!(check_in_pieces(b"HELLO0010xxxxxxxxxxxx", 3).unwrap_err().contains("does not start with REDIS"));
    }

    #[test]
    fn no_checksum_is_accepted_as_none() {
        let mut data = b"REDIS0010body".to_vec();
        data.push(EOF_OPCODE);
        data.extend_from_slice(&[0; 8]);
        assert_eq!(check_in_pieces(&data, 4).unwrap().checksum, None);
    }
}
