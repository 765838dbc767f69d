//! AES-256-GCM with a key derived per object.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};

use super::{CryptoError, Secret32};

/// Length of the per-object salt stored in each object's header.
pub const SALT_LEN: usize = 32;
/// Length of the GCM authentication tag appended to each sealed blob.
pub const TAG_LEN: usize = 16;

const HKDF_INFO: &[u8] = b"lifeboat object key v1";

/// The AES-256-GCM key of one object, derived from a data key and the
/// object's salt. Each blob inside the object is sealed under its own
/// counter nonce, so one derived key never sees a nonce twice.
pub struct ObjectCipher {
    key: LessSafeKey,
}

impl ObjectCipher {
    /// Derives the object key for `salt` from `data_key`.
    pub fn derive(data_key: &Secret32, salt: &[u8; SALT_LEN]) -> Result<Self, CryptoError> {
        let prk = Salt::new(HKDF_SHA256, salt).extract(&data_key.0);
        let okm = prk
            .expand(&[HKDF_INFO], &AES_256_GCM)
            .map_err(|_| CryptoError::Malformed("HKDF expansion failed".into()))?;
        Ok(ObjectCipher { key: LessSafeKey::new(UnboundKey::from(okm)) })
    }

    /// The 96-bit nonce for a counter: four zero bytes, then the counter.
    fn nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `buf` in place and appends the tag; `counter` must be unique
    /// within this object.
    pub fn seal(&self, counter: u64, aad: &[u8], buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.key
            .seal_in_place_append_tag(Self::nonce(counter), Aad::from(aad), buf)
            .map_err(|_| CryptoError::Malformed("sealing failed".into()))
    }

    /// Appends `plaintext` sealed (ciphertext then tag) to `out`, without an
    /// intermediate buffer; `counter` must be unique within this object.
    pub fn seal_append(
        &self,
        counter: u64,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.extend_from_slice(plaintext);
        match self.key.seal_in_place_separate_tag(Self::nonce(counter), Aad::from(aad), &mut out[start..]) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(CryptoError::Malformed("sealing failed".into()))
            }
        }
    }

    /// Decrypts and authenticates `buf` (ciphertext plus tag) in place,
    /// returning the plaintext slice.
    pub fn open<'a>(&self, counter: u64, aad: &[u8], buf: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        if buf.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        self.key.open_in_place(Self::nonce(counter), Aad::from(aad), buf).map_err(|_| CryptoError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let key = Secret32::random().unwrap();
        let salt = [7u8; SALT_LEN];
        let c = ObjectCipher::derive(&key, &salt).unwrap();
        let mut buf = b"secret payload".to_vec();
        c.seal(3, b"aad", &mut buf).unwrap();
        assert_eq!(buf.len(), 14 + TAG_LEN);
        let mut copy = buf.clone();
        assert_eq!(c.open(3, b"aad", &mut copy).unwrap(), b"secret payload");
        let mut appended = b"prefix".to_vec();
        c.seal_append(3, b"aad", b"secret payload", &mut appended).unwrap();
        assert_eq!(&appended[6..], &buf[..]);
        // Wrong counter, wrong aad, a flipped bit, another salt: all refused.
        assert!(c.open(4, b"aad", &mut buf.clone()).is_err());
        assert!(c.open(3, b"xxx", &mut buf.clone()).is_err());
        let mut flipped = buf.clone();
        flipped[0] ^= 1;
        assert!(c.open(3, b"aad", &mut flipped).is_err());
        let other = ObjectCipher::derive(&key, &[8u8; SALT_LEN]).unwrap();
        assert!(other.open(3, b"aad", &mut buf).is_err());
    }
}
