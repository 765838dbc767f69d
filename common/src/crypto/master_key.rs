//! The master key file: one per environment, kept by the operator.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CryptoError, KeyId, Secret32};

const FORMAT: &str = "lifeboat-master-key-v1";

/// A master key: it wraps the repository keyring and nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterKey {
    format: String,
    /// Public id, recorded beside each keyring it wraps.
    pub id: KeyId,
    /// The secret itself.
    pub key: Secret32,
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(MasterKey { format: FORMAT.into(), id: KeyId::random()?, key: Secret32::random()? })
    }

    /// Reads a key file written by [`MasterKey::save_new`].
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let text = std::fs::read_to_string(path).map_err(|cause| CryptoError::Io {
            op: "reading",
            path: path.display().to_string(),
            cause,
        })?;
        let key: MasterKey = toml::from_str(&text)
            .map_err(|e| CryptoError::Malformed(format!("key file {}: {}", path.display(), e.message())))?;
        if key.format != FORMAT {
            return Err(CryptoError::Malformed(format!(
                "key file {}: format {:?} is not {FORMAT:?}",
                path.display(),
                key.format
            )));
        }
        Ok(key)
    }

    /// Refuses a key file that its group or others may read (as ssh does
    /// for a private key): [`CryptoError::LoosePermissions`].
    pub fn check_permissions(path: &Path) -> Result<(), CryptoError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|cause| CryptoError::Io {
            op: "reading",
            path: path.display().to_string(),
            cause,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::LoosePermissions { path: path.display().to_string(), mode });
        }
        Ok(())
    }

    /// Writes the key to a new file readable only by its owner; refuses to
    /// overwrite an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), CryptoError> {
        let io = |op, cause| CryptoError::Io { op, path: path.display().to_string(), cause };
        let body = toml::to_string(self).map_err(|e| CryptoError::Malformed(e.to_string()))?;
        let text = format!(
            "# Lifeboat master key. Whoever holds this file can read every backup it protects;\n\
             # without it, none can be restored. Keep a copy somewhere other than the repository.\n{body}"
        );
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(|e| io("creating", e))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| io("writing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let k = MasterKey::generate().unwrap();
        k.save_new(&path).unwrap();
        let back = MasterKey::load(&path).unwrap();
        assert_eq!(back.id, k.id);
        assert_eq!(back.key, k.key);
        let err = k.save_new(&path).unwrap_err();
        assert!(err.to_string().contains("creating key file"), "{err}");
        MasterKey::check_permissions(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let loose = MasterKey::check_permissions(&path).unwrap_err();
        assert!(loose.to_string().contains("mode 0640"), "{loose}");
        std::fs::write(&path, "id = 3").unwrap();
        assert!(matches!(MasterKey::load(&path), Err(CryptoError::Malformed(_))));
    }
}
