//! The repository keyring: data keys and hashing secrets, wrapped by a master key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CryptoError, KeyId, MasterKey, ObjectCipher, SALT_LEN, Secret32, random_fill};

/// One data key; objects name the id of the key that sealed them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataKey {
    /// Id recorded in every object this key seals.
    pub id: KeyId,
    /// The secret.
    pub key: Secret32,
    /// When it was introduced.
    pub created: DateTime<Utc>,
}

/// Everything secret about a repository except the master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyring {
    /// All data keys, old ones kept for reading.
    pub data_keys: Vec<DataKey>,
    /// The data key new objects are sealed with.
    pub current: KeyId,
    /// Key of the keyed BLAKE3 hash that names chunks.
    pub chunk_id_key: Secret32,
    /// Seed of the content-defined chunker's gear table, so chunk boundaries
    /// reveal nothing about content to someone without the key.
    pub chunker_seed: u64,
    /// How single objects are sealed: 1 binds their kind only, 2 their kind
    /// and name. Kept here, under the master key, so nobody without it can
    /// take a repository back to the weaker format.
    #[serde(default = "first_object_format")]
    pub object_format: u32,
}

/// The object format of keyrings written before it was recorded.
fn first_object_format() -> u32 {
    1
}

/// The object format new repositories use.
pub const OBJECT_FORMAT: u32 = 2;

/// A keyring as stored: sealed under a key derived from the master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrappedKeyring {
    /// Which master key wraps it.
    pub master_key_id: KeyId,
    /// Salt of the wrapping key derivation, hex.
    pub salt: String,
    /// Sealed keyring JSON, hex.
    pub sealed: String,
}

impl Keyring {
    /// A new keyring with one fresh data key.
    pub fn generate() -> Result<Self, CryptoError> {
        let first = DataKey { id: KeyId::random()?, key: Secret32::random()?, created: Utc::now() };
        let mut seed = [0u8; 8];
        random_fill(&mut seed)?;
        Ok(Keyring {
            current: first.id,
            data_keys: vec![first],
            chunk_id_key: Secret32::random()?,
            chunker_seed: u64::from_le_bytes(seed),
            object_format: OBJECT_FORMAT,
        })
    }

    /// The data key with this id.
    pub fn data_key(&self, id: KeyId) -> Result<&DataKey, CryptoError> {
        self.data_keys.iter().find(|k| k.id == id).ok_or(CryptoError::UnknownDataKey(id))
    }

    /// The key new objects are sealed with.
    pub fn current_key(&self) -> Result<&DataKey, CryptoError> {
        self.data_key(self.current)
    }

    /// Adds a fresh data key and makes it current; old keys stay for reading.
    pub fn add_data_key(&mut self) -> Result<KeyId, CryptoError> {
        let k = DataKey { id: KeyId::random()?, key: Secret32::random()?, created: Utc::now() };
        self.current = k.id;
        self.data_keys.push(k);
        Ok(self.current)
    }

    /// Seals the keyring under `master`.
    pub fn wrap(&self, master: &MasterKey) -> Result<WrappedKeyring, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        random_fill(&mut salt)?;
        let cipher = ObjectCipher::derive(&master.key, &salt)?;
        let mut buf = serde_json::to_vec(self).map_err(|e| CryptoError::Malformed(e.to_string()))?;
        cipher.seal(0, master.id.to_string().as_bytes(), &mut buf)?;
        Ok(WrappedKeyring { master_key_id: master.id, salt: hex::encode(salt), sealed: hex::encode(buf) })
    }
}

impl WrappedKeyring {
    /// Opens the keyring with `master`; a different master key is
    /// [`CryptoError::WrongKey`].
    pub fn unwrap_with(&self, master: &MasterKey) -> Result<Keyring, CryptoError> {
        let wrong = || CryptoError::WrongKey { have: master.id, wanted: self.master_key_id.to_string() };
        if self.master_key_id != master.id {
            return Err(wrong());
        }
        let mut salt = [0u8; SALT_LEN];
        hex::decode_to_slice(&self.salt, &mut salt).map_err(|_| CryptoError::Malformed("keyring salt".into()))?;
        let mut buf = hex::decode(&self.sealed).map_err(|_| CryptoError::Malformed("keyring body".into()))?;
        let cipher = ObjectCipher::derive(&master.key, &salt)?;
        // Same id but the secret differs: still the wrong key, not corruption we can name better.
        let plain = cipher.open(0, master.id.to_string().as_bytes(), &mut buf).map_err(|_| wrong())?;
        serde_json::from_slice(plain).map_err(|e| CryptoError::Malformed(format!("keyring: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let master = MasterKey::generate().unwrap();
        let ring = Keyring::generate().unwrap();
        let wrapped = ring.wrap(&master).unwrap();
        let back = wrapped.unwrap_with(&master).unwrap();
        assert_eq!(back.current, ring.current);
        assert_eq!(back.chunk_id_key, ring.chunk_id_key);

        let other = MasterKey::generate().unwrap();
        assert!(matches!(wrapped.unwrap_with(&other), Err(CryptoError::WrongKey { .. })));
        // Same id, different secret (a damaged or forged key file).
        let mut forged = other.clone();
        forged.id = master.id;
        assert!(matches!(wrapped.unwrap_with(&forged), Err(CryptoError::WrongKey { .. })));
    }

    #[test]
    fn old_data_keys_stay_readable() {
        let mut ring = Keyring::generate().unwrap();
        let first = ring.current;
        let second = ring.add_data_key().unwrap();
        assert_ne!(first, second);
        assert_eq!(ring.current_key().unwrap().id, second);
        assert!(ring.data_key(first).is_ok());
    }
}
