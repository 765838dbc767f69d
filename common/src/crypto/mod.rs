//! Keys and authenticated encryption.
//!
//! Envelope scheme: a master key (one per environment, a file the operator
//! keeps) wraps the repository's keyring; the keyring holds the data keys
//! that seal objects, the key for chunk ids and the chunker's seed. Rotating
//! the master key re-wraps only the keyring.
//!
//! Nonce safety: no object is sealed directly with a data key. Each object
//! (and each pack) draws a random 256-bit salt and derives its own AES-256-GCM
//! key from the data key with HKDF-SHA256; inside one object, nonces are a
//! counter. A key is therefore never used with a repeated nonce, and the
//! chance of two objects sharing a derived key is 2⁻²⁵⁶-small whatever the
//! number of objects.

mod keyring;
mod master_key;
mod seal;

pub use keyring::{DataKey, Keyring, OBJECT_FORMAT, WrappedKeyring};
pub use master_key::MasterKey;
pub use seal::{ObjectCipher, SALT_LEN, TAG_LEN};

use std::fmt;

/// Errors from key handling and decryption.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: the bytes were altered or sealed with another key.
    #[error("authentication failed: the data was altered or sealed with another key")]
    Authentication,
    /// The master key cannot unwrap this keyring.
    #[error("wrong key: master key {have} cannot open this repository (its keyring is wrapped by {wanted})")]
    WrongKey {
        /// The id of the master key given.
        have: KeyId,
        /// The ids of the master keys the keyring is wrapped by.
        wanted: String,
    },
    /// The object names a data key the keyring does not hold.
    #[error("unknown data key {0}: the keyring does not hold it")]
    UnknownDataKey(KeyId),
    /// A key file or wrapped key is malformed.
    #[error("malformed key material: {0}")]
    Malformed(String),
    /// Reading or writing a key file failed.
    #[error("{op} key file {path}: {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        // Part of the message rather than a `source`, so a chained display
        // does not print it twice.
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The system random generator failed.
    #[error("random number generator failed")]
    Random,
    /// A key file others than its owner may read.
    #[error(
        "key file {path} is readable by group or others (mode {mode:04o}): whoever can read it can read every backup; chmod 600 it"
    )]
    LoosePermissions {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

/// The id of a master key or data key: 8 random bytes, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// A fresh random id.
    pub fn random() -> Result<Self, CryptoError> {
        let mut b = [0u8; 8];
        random_fill(&mut b)?;
        Ok(KeyId(b))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl TryFrom<String> for KeyId {
    type Error = CryptoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let mut b = [0u8; 8];
        hex::decode_to_slice(&s, &mut b)
            .map_err(|_| CryptoError::Malformed(format!("key id {s:?} is not 16 hex digits")))?;
        Ok(KeyId(b))
    }
}

impl From<KeyId> for String {
    fn from(k: KeyId) -> String {
        k.to_string()
    }
}

/// Fills `buf` from the operating system's CSPRNG (`getrandom(2)`).
pub fn random_fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|_| CryptoError::Random)
}

/// A 32-byte secret that is zeroed when dropped and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret32(pub [u8; 32]);

impl Secret32 {
    /// A fresh random secret.
    pub fn random() -> Result<Self, CryptoError> {
        let mut b = [0u8; 32];
        random_fill(&mut b)?;
        Ok(Secret32(b))
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(..)")
    }
}

impl Drop for Secret32 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl serde::Serialize for Secret32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Secret32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut b = [0u8; 32];
        hex::decode_to_slice(&s, &mut b).map_err(|_| serde::de::Error::custom("a key must be 64 hex digits"))?;
        Ok(Secret32(b))
    }
}
