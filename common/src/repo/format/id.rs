//! Typed 32-byte ids, so a pack id cannot be passed where a blob id is wanted.

use std::fmt;
use std::str::FromStr;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        // Hex in human-readable formats (JSON), raw bytes in binary ones.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() { s.serialize_str(&self.to_hex()) } else { self.0.serialize(s) }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(serde::de::Error::custom)
                } else {
                    <[u8; 32]>::deserialize(d).map($name)
                }
            }
        }

        impl $name {
            /// Lower-case hex, 64 digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, for display.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                let mut b = [0u8; 32];
                hex::decode_to_slice(s, &mut b).map_err(|_| InvalidId(s.to_owned()))?;
                Ok($name(b))
            }
        }
    };
}

/// A string that is not a 64-digit hex id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a 64-digit hex id")]
pub struct InvalidId(pub String);

id_type!(
    /// Names a blob (a file chunk or a tree): the keyed BLAKE3 hash of its plaintext.
    BlobId
);
id_type!(
    /// Names a pack object: the BLAKE3 hash of its stored bytes.
    PackId
);
id_type!(
    /// Names a snapshot manifest (random).
    SnapshotId
);
id_type!(
    /// Names an index object (random).
    IndexId
);

/// A fresh random 32-byte value for ids that are not content hashes.
pub(crate) fn random_id_bytes() -> Result<[u8; 32], crate::crypto::CryptoError> {
    let mut b = [0u8; 32];
    crate::crypto::random_fill(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip() {
        let id = BlobId([0xab; 32]);
        assert_eq!(id.to_hex().parse::<BlobId>().unwrap(), id);
        assert_eq!(id.short(), "abababab");
        assert!("xyz".parse::<PackId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
        let bin = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bin.len(), 32);
        assert_eq!(postcard::from_bytes::<BlobId>(&bin).unwrap(), id);
    }
}
