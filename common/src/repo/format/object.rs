//! Sealed single objects (indexes, snapshots, prune plans, WAL files): one
//! encrypted, optionally compressed payload behind a small clear header.
//!
//! Layout: `magic(8) | data key id(8) | salt(32) | AES-256-GCM(flag(1) | raw length(8) | payload) | tag(16)`.
//! The associated data binds what the object is: in format 2 its kind and
//! its name (the store key), so an object copied over another's name fails
//! authentication; format 1 (repositories written before) bound the kind
//! only, and is read only until `lifeboat repo migrate` re-seals its objects.

use crate::crypto::{KeyId, Keyring, ObjectCipher, SALT_LEN, random_fill};

use crate::repo::error::RepoError;
use crate::repo::format::compress::{compress, decompress};

const MAGIC_V1: &[u8; 8] = b"LBOBJ\x00\x01\x00";
const MAGIC_V2: &[u8; 8] = b"LBOBJ\x00\x02\x00";
const HEADER_LEN: usize = 8 + 8 + SALT_LEN;

/// The associated data of a format-2 object: kind, a separator no kind
/// holds, and name.
fn bound(kind: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(kind.len() + 1 + name.len());
    aad.extend_from_slice(kind.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Seals `payload` as the object of `kind` stored under `name`, with the
/// keyring's current data key and object format.
pub fn seal(keyring: &Keyring, kind: &str, name: &str, payload: Vec<u8>, level: i32) -> Result<Vec<u8>, RepoError> {
    let (magic, aad) = match keyring.object_format {
        1 => (MAGIC_V1, kind.as_bytes().to_vec()),
        _ => (MAGIC_V2, bound(kind, name)),
    };
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
    cipher.seal(0, &aad, &mut body)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&key.id.0);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens the object of `kind` stored under `name`. A format-1 object is
/// accepted only while the keyring's object format is 1.
pub fn open(keyring: &Keyring, kind: &str, name: &str, bytes: &[u8]) -> Result<Vec<u8>, RepoError> {
    open_as(keyring, kind, name, bytes, keyring.object_format < 2).map(|(plain, _)| plain)
}

/// Opens an object of either format (`repo migrate` reads format 1 to
/// re-seal it); also says which format it was.
pub fn open_any(keyring: &Keyring, kind: &str, name: &str, bytes: &[u8]) -> Result<(Vec<u8>, u32), RepoError> {
    open_as(keyring, kind, name, bytes, true)
}

fn open_as(keyring: &Keyring, kind: &str, name: &str, bytes: &[u8], v1: bool) -> Result<(Vec<u8>, u32), RepoError> {
    if bytes.len() < HEADER_LEN + 1 + 8 + crate::crypto::TAG_LEN {
        return Err(RepoError::corrupt(name, "not a Lifeboat object (truncated)"));
    }
    let (format, aad) = match &bytes[..8] {
        m if m == MAGIC_V2 => (2, bound(kind, name)),
        m if m == MAGIC_V1 && v1 => (1, kind.as_bytes().to_vec()),
        m if m == MAGIC_V1 => {
            return Err(RepoError::corrupt(
                name,
                "sealed in format 1 (not bound to its name) in a repository whose objects are all bound to their names: not trusted",
            ));
        }
        _ => return Err(RepoError::corrupt(name, "not a Lifeboat object (bad header)")),
    };
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&bytes[8..16]);
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&bytes[16..HEADER_LEN]);
    let key = keyring.data_key(KeyId(key_id)).map_err(|e| RepoError::corrupt(name, e))?;
    let cipher = ObjectCipher::derive(&key.key, &salt)?;
    let mut body = bytes[HEADER_LEN..].to_vec();
    let plain = cipher.open(0, &aad, &mut body).map_err(|_| {
        RepoError::corrupt(name, "authentication failed (altered, truncated, or another object stored under this name)")
    })?;
    if plain.len() < 9 {
        return Err(RepoError::corrupt(name, "sealed payload shorter than its own header"));
    }
    let compressed = plain[0] == 1;
    let mut len = [0u8; 8];
    len.copy_from_slice(&plain[1..9]);
    let raw_len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| RepoError::corrupt(name, "length"))?;
    let payload = if compressed {
        decompress(&plain[9..], raw_len).map_err(|e| RepoError::corrupt(name, e))?
    } else {
        plain[9..].to_vec()
    };
    Ok((payload, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_kind_and_name_binding() {
        let ring = Keyring::generate().unwrap();
        let payload = b"{\"hello\": \"world\"}".repeat(100);
        let sealed = seal(&ring, "index", "index/x", payload.clone(), 3).unwrap();
        assert_eq!(open(&ring, "index", "index/x", &sealed).unwrap(), payload);
        let err = open(&ring, "snapshot", "index/x", &sealed).unwrap_err();
        assert!(err.to_string().contains("index/x"), "{err}");
        let err = open(&ring, "index", "index/y", &sealed).unwrap_err();
        assert!(err.to_string().contains("index/y") && err.to_string().contains("another object"), "{err}");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 0x40;
        assert!(open(&ring, "index", "index/x", &flipped).is_err());
        assert!(open(&ring, "index", "index/x", &sealed[..30]).is_err());
    }

    #[test]
    fn format_one_is_read_until_the_keyring_moves_on() {
        let mut ring = Keyring::generate().unwrap();
        ring.object_format = 1;
        let old = seal(&ring, "snapshot", "snapshots/a", b"old".to_vec(), 3).unwrap();
        // Format 1 does not bind the name: that is what the migration ends.
        assert_eq!(open(&ring, "snapshot", "snapshots/b", &old).unwrap(), b"old");
        ring.object_format = 2;
        let err = open(&ring, "snapshot", "snapshots/a", &old).unwrap_err();
        assert!(err.to_string().contains("format 1"), "{err}");
        assert_eq!(open_any(&ring, "snapshot", "snapshots/a", &old).unwrap(), (b"old".to_vec(), 1));
    }
}
