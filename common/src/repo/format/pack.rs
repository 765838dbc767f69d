//! Pack objects: many sealed blobs in one object, so a backup of millions of
//! small files is thousands of requests, not millions.
//!
//! Layout: `magic(8) | data key id(8) | salt(32) | blob… | sealed header | header length (u32 LE)`.
//! Each blob is `AES-256-GCM(payload) | tag` under the pack's derived key with
//! its byte offset as the nonce counter (offsets never repeat inside a pack),
//! and the blob's id, kind and compression flag as associated data. The header
//! lists the blobs and is sealed under counter `u64::MAX`.

use serde::{Deserialize, Serialize};

use crate::crypto::{KeyId, Keyring, ObjectCipher, SALT_LEN, TAG_LEN, random_fill};

use crate::repo::error::RepoError;
use crate::repo::format::compress::{Compressed, decompress};
use crate::repo::format::id::{BlobId, PackId};

const MAGIC: &[u8; 8] = b"LBPACK\x00\x01";
/// Bytes before the first blob.
pub const PACK_PREFIX_LEN: usize = 8 + 8 + SALT_LEN;
const HEADER_COUNTER: u64 = u64::MAX;
const HEADER_AAD: &[u8] = b"pack header";

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobKind {
    /// A chunk of file (or database) content.
    Data,
    /// A directory listing.
    Tree,
}

/// Where one blob sits inside its pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackBlob {
    /// The blob's id (keyed hash of its plaintext).
    pub id: BlobId,
    /// Data or tree.
    pub kind: BlobKind,
    /// Byte offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length, tag included.
    pub length: u32,
    /// Plaintext length before compression.
    pub raw_len: u32,
    /// Whether the payload is zstd-compressed.
    pub compressed: bool,
}

impl PackBlob {
    /// Byte range of the sealed blob in its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        u64::from(self.offset)..u64::from(self.offset) + u64::from(self.length)
    }
}

/// The clear part of a pack's header: which key sealed it and the salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSeal {
    /// Data key that sealed the pack.
    pub key_id: KeyId,
    /// Salt of the pack's key derivation.
    pub salt: [u8; SALT_LEN],
}

impl PackSeal {
    /// The pack's cipher; `name` names the pack if its key is unknown.
    fn cipher(&self, keyring: &Keyring, name: &str) -> Result<ObjectCipher, RepoError> {
        let key = keyring.data_key(self.key_id).map_err(|e| RepoError::corrupt(name, e))?;
        Ok(ObjectCipher::derive(&key.key, &self.salt)?)
    }
}

fn blob_aad(id: &BlobId, kind: BlobKind, compressed: bool) -> [u8; 34] {
    let mut aad = [0u8; 34];
    aad[..32].copy_from_slice(&id.0);
    aad[32] = kind as u8;
    aad[33] = u8::from(compressed);
    aad
}

/// Keyed BLAKE3 id of a blob's plaintext.
pub fn blob_id(keyring: &Keyring, plaintext: &[u8]) -> BlobId {
    BlobId(*blake3::keyed_hash(&keyring.chunk_id_key.0, plaintext).as_bytes())
}

/// Builds one pack in memory.
pub struct PackBuilder {
    seal: PackSeal,
    cipher: ObjectCipher,
    buf: Vec<u8>,
    blobs: Vec<PackBlob>,
}

/// A finished pack, ready to store.
pub struct FinishedPack {
    /// Its id (hash of `bytes`).
    pub id: PackId,
    /// The object's bytes.
    pub bytes: Vec<u8>,
    /// Its blobs, for the index.
    pub blobs: Vec<PackBlob>,
    /// Key id and salt, for the index.
    pub seal: PackSeal,
}

impl PackBuilder {
    /// An empty pack sealed with the keyring's current data key.
    /// Built in `buf`, which is cleared first: pass a recycled buffer to avoid allocating.
    pub fn new(keyring: &Keyring, mut buf: Vec<u8>) -> Result<Self, RepoError> {
        let key = keyring.current_key()?;
        let mut salt = [0u8; SALT_LEN];
        random_fill(&mut salt)?;
        let seal = PackSeal { key_id: key.id, salt };
        let cipher = ObjectCipher::derive(&key.key, &salt)?;
        buf.clear();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&key.id.0);
        buf.extend_from_slice(&salt);
        Ok(PackBuilder { seal, cipher, buf, blobs: Vec::new() })
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Seals and appends a blob whose plaintext was `raw_len` bytes.
    pub fn add(
        &mut self,
        id: BlobId,
        kind: BlobKind,
        payload: Compressed<'_>,
        raw_len: usize,
    ) -> Result<u32, RepoError> {
        let offset = u32::try_from(self.buf.len())
            .map_err(|_| RepoError::Encode { what: "pack", reason: "pack larger than 4 GiB".into() })?;
        let aad = blob_aad(&id, kind, payload.compressed);
        self.cipher.seal_append(u64::from(offset), &aad, &payload.data, &mut self.buf)?;
        let length = self.buf.len() as u32 - offset;
        self.blobs.push(PackBlob { id, kind, offset, length, raw_len: raw_len as u32, compressed: payload.compressed });
        Ok(length)
    }

    /// Appends the sealed header and returns the finished pack.
    pub fn finish(mut self) -> Result<FinishedPack, RepoError> {
        let mut header = postcard::to_allocvec(&self.blobs)
            .map_err(|e| RepoError::Encode { what: "pack header", reason: e.to_string() })?;
        self.cipher.seal(HEADER_COUNTER, HEADER_AAD, &mut header)?;
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
        let id = PackId(*blake3::hash(&self.buf).as_bytes());
        Ok(FinishedPack { id, bytes: self.buf, blobs: self.blobs, seal: self.seal })
    }
}

/// Parses a whole pack: its seal and its authenticated header.
pub fn read_header(keyring: &Keyring, name: &str, bytes: &[u8]) -> Result<(PackSeal, Vec<PackBlob>), RepoError> {
    if bytes.len() < PACK_PREFIX_LEN + 4 + TAG_LEN {
        return Err(RepoError::corrupt(name, format!("truncated: {} bytes", bytes.len())));
    }
    let header_len = header_len(&bytes[bytes.len() - 4..]);
    let start = bytes.len().saturating_sub(4 + header_len).max(PACK_PREFIX_LEN);
    parse_header(keyring, name, &bytes[..PACK_PREFIX_LEN], &bytes[start..], bytes.len() as u64)
}

/// The sealed header's length, from a pack's last four bytes.
pub fn header_len(last4: &[u8]) -> usize {
    let mut len = [0u8; 4];
    len.copy_from_slice(&last4[last4.len().saturating_sub(4)..]);
    u32::from_le_bytes(len) as usize
}

/// Parses a pack's seal and authenticated header from its first
/// [`PACK_PREFIX_LEN`] bytes and its `tail` (sealed header and length),
/// for a pack `total` bytes long: read with two ranged requests.
pub fn parse_header(
    keyring: &Keyring,
    name: &str,
    prefix: &[u8],
    tail: &[u8],
    total: u64,
) -> Result<(PackSeal, Vec<PackBlob>), RepoError> {
    let too_short = || RepoError::corrupt(name, format!("truncated: {total} bytes"));
    if prefix.len() < PACK_PREFIX_LEN || tail.len() < 4 + TAG_LEN {
        return Err(too_short());
    }
    if &prefix[..8] != MAGIC {
        return Err(RepoError::corrupt(name, "not a Lifeboat pack (bad magic)"));
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&prefix[8..16]);
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&prefix[16..PACK_PREFIX_LEN]);
    let seal = PackSeal { key_id: KeyId(key_id), salt };
    let header_len = header_len(tail);
    if header_len + 4 != tail.len() || (header_len + 4 + PACK_PREFIX_LEN) as u64 > total {
        return Err(too_short());
    }
    let start = total - 4 - header_len as u64;
    let mut header = tail[..header_len].to_vec();
    let plain = seal
        .cipher(keyring, name)?
        .open(HEADER_COUNTER, HEADER_AAD, &mut header)
        .map_err(|_| RepoError::corrupt(name, "pack header failed authentication"))?;
    let blobs: Vec<PackBlob> =
        postcard::from_bytes(plain).map_err(|e| RepoError::corrupt(name, format!("pack header: {e}")))?;
    if blobs.iter().any(|b| b.range().end > start || u64::from(b.offset) < PACK_PREFIX_LEN as u64) {
        return Err(RepoError::corrupt(name, "pack header points outside the blob area"));
    }
    Ok((seal, blobs))
}

/// Opens one sealed blob: authenticates, decompresses and checks its id.
/// `sealed` is exactly the blob's bytes; `name` names the pack for errors.
pub fn open_blob(
    keyring: &Keyring,
    seal: &PackSeal,
    blob: &PackBlob,
    sealed: &[u8],
    name: &str,
) -> Result<Vec<u8>, RepoError> {
    let what = || format!("{name} (blob {} at offset {})", blob.id.short(), blob.offset);
    if sealed.len() != blob.length as usize {
        return Err(RepoError::corrupt(what(), format!("{} bytes read, {} expected", sealed.len(), blob.length)));
    }
    let mut buf = sealed.to_vec();
    let plain = seal
        .cipher(keyring, &what())?
        .open(u64::from(blob.offset), &blob_aad(&blob.id, blob.kind, blob.compressed), &mut buf)
        .map_err(|_| RepoError::corrupt(what(), "authentication failed"))?;
    let data = if blob.compressed {
        decompress(plain, blob.raw_len as usize).map_err(|e| RepoError::corrupt(what(), e))?
    } else {
        let n = plain.len();
        buf.truncate(n);
        buf
    };
    if blob_id(keyring, &data) != blob.id {
        return Err(RepoError::corrupt(what(), "content does not match its id"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::compress::compress;

    #[test]
    fn build_parse_open() {
        let ring = Keyring::generate().unwrap();
        let mut pb = PackBuilder::new(&ring, Vec::new()).unwrap();
        let a = b"alpha ".repeat(1000);
        let b = b"beta".to_vec();
        for d in [&a, &b] {
            pb.add(blob_id(&ring, d), BlobKind::Data, compress(d, 3), d.len()).unwrap();
        }
        let pack = pb.finish().unwrap();
        let (seal, blobs) = read_header(&ring, "p", &pack.bytes).unwrap();
        assert_eq!(blobs, pack.blobs);
        assert_eq!(seal, pack.seal);
        for (blob, want) in blobs.iter().zip([&a, &b]) {
            let r = blob.range();
            let got = open_blob(&ring, &seal, blob, &pack.bytes[r.start as usize..r.end as usize], "p").unwrap();
            assert_eq!(&got, want);
        }
        // A flipped byte inside the first blob is detected and named.
        let mut bad = pack.bytes.clone();
        bad[blobs[0].offset as usize + 3] ^= 1;
        let r = blobs[0].range();
        let err = open_blob(&ring, &seal, &blobs[0], &bad[r.start as usize..r.end as usize], "data/p").unwrap_err();
        assert!(err.to_string().contains("data/p"), "{err}");
        // Truncation is an error, not a panic.
        for cut in [0, 10, 60, pack.bytes.len() - 1] {
            assert!(read_header(&ring, "p", &pack.bytes[..cut]).is_err());
        }
    }
}
