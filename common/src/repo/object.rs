//! Sealed single objects (indexes, snapshots): one encrypted, optionally
//! compressed payload behind a small clear header.
//!
//! Layout: `magic(8) | data key id(8) | salt(32) | AES-256-GCM(flag(1) | payload) | tag(16)`.
//! The object kind is the associated data, so one kind of object cannot be
//! passed off as another.

use crate::crypto::{KeyId, Keyring, ObjectCipher, SALT_LEN, random_fill};

use super::compress::{compress, decompress};
use super::error::RepoError;

const MAGIC: &[u8; 8] = b"LBOBJ\x00\x01\x00";
const HEADER_LEN: usize = 8 + 8 + SALT_LEN;

/// Seals `payload` as an object of `kind` with the keyring's current data key.
pub fn seal(keyring: &Keyring, kind: &str, payload: Vec<u8>, level: i32) -> Result<Vec<u8>, RepoError> {
    let key = keyring.current_key()?;
    let mut salt = [0u8; SALT_LEN];
    random_fill(&mut salt)?;
    let cipher = ObjectCipher::derive(&key.key, &salt)?;
    let raw_len = payload.len() as u64;
    let c = compress(&payload, level);
    let mut body = Vec::with_capacity(c.data.len() + 32);
    body.push(u8::from(c.compressed));
    body.extend_from_slice(&raw_len.to_le_bytes());
    body.extend_from_slice(&c.data);
    cipher.seal(0, kind.as_bytes(), &mut body)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.id.0);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens an object of `kind` named `name` (for error messages).
pub fn open(keyring: &Keyring, kind: &str, name: &str, bytes: &[u8]) -> Result<Vec<u8>, RepoError> {
    if bytes.len() < HEADER_LEN + 1 + 8 + crate::crypto::TAG_LEN || &bytes[..8] != MAGIC {
        return Err(RepoError::corrupt(name, "not a Lifeboat object (bad header or truncated)"));
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&bytes[8..16]);
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&bytes[16..HEADER_LEN]);
    let key = keyring.data_key(KeyId(key_id))?;
    let cipher = ObjectCipher::derive(&key.key, &salt)?;
    let mut body = bytes[HEADER_LEN..].to_vec();
    let plain = cipher
        .open(0, kind.as_bytes(), &mut body)
        .map_err(|_| RepoError::corrupt(name, "authentication failed (altered or truncated)"))?;
    let compressed = plain[0] == 1;
    let mut len = [0u8; 8];
    len.copy_from_slice(&plain[1..9]);
    let raw_len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| RepoError::corrupt(name, "length"))?;
    if compressed {
        decompress(&plain[9..], raw_len).map_err(|e| RepoError::corrupt(name, e))
    } else {
        Ok(plain[9..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_kind_binding() {
        let ring = Keyring::generate().unwrap();
        let payload = b"{\"hello\": \"world\"}".repeat(100);
        let sealed = seal(&ring, "index", payload.clone(), 3).unwrap();
        assert_eq!(open(&ring, "index", "index/x", &sealed).unwrap(), payload);
        let err = open(&ring, "snapshot", "index/x", &sealed).unwrap_err();
        assert!(err.to_string().contains("index/x"), "{err}");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 0x40;
        assert!(open(&ring, "index", "index/x", &flipped).is_err());
        assert!(open(&ring, "index", "index/x", &sealed[..30]).is_err());
    }
}
