//! Store locations as operators write them: a path or `file:///path`.

use std::sync::Arc;

use super::{LocalStore, ObjectStore};

/// A store location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// The scheme names a backend this build does not have.
    #[error("unsupported store location {0:?}: use a directory path or file:///path")]
    Unsupported(String),
    /// Nothing was given.
    #[error("no repository given: pass --repo or set LIFEBOAT_REPO")]
    Empty,
}

/// Opens the store a location names.
pub fn open_location(location: &str) -> Result<Arc<dyn ObjectStore>, LocationError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(LocationError::Empty);
    }
    if let Some(path) = location.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(LocationError::Unsupported(location.to_owned()));
        }
        return Ok(Arc::new(LocalStore::new(path)));
    }
    if location.contains("://") {
        return Err(LocationError::Unsupported(location.to_owned()));
    }
    Ok(Arc::new(LocalStore::new(location)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert!(open_location("/tmp/repo").unwrap().describe().contains("/tmp/repo"));
        assert!(open_location("file:///tmp/repo").unwrap().describe().contains("/tmp/repo"));
        assert!(open_location("relative/repo").is_ok());
        assert!(matches!(open_location("file://host/x"), Err(LocationError::Unsupported(_))));
        assert!(matches!(open_location("ftp://x"), Err(LocationError::Unsupported(_))));
        assert!(matches!(open_location(" "), Err(LocationError::Empty)));
    }
}
