//! Store locations as operators write them: a path, `file:///path`,
//! `s3://bucket/prefix?region=…&endpoint=…` or
//! `azure://account/container/prefix?endpoint=…`. Secrets never come from here.

use crate::invalid::Invalid;
use std::path::PathBuf;
use std::sync::Arc;

use super::{
    AzureCredential, AzureLocation, AzureStore, LocalStore, ObjectStore, ReplicatedStore, S3Location, S3Store,
    StoreError, WritePolicy,
};

/// A store location that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// The scheme names a backend this build does not have.
    #[error(
        "unsupported store location {0:?}: use a directory path, file:///path, s3://bucket/prefix or azure://account/container/prefix"
    )]
    Unsupported(String),
    /// The location is malformed.
    #[error("invalid store location {location:?}: {reason}")]
    Invalid {
        /// The location as given.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The store cannot be set up (e.g. no credentials).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing was given.
    #[error("no repository given: pass --repo, set LIFEBOAT_REPO or name repo in the --config file")]
    Empty,
}

fn invalid(location: &str, reason: &str) -> LocationError {
    LocationError::Invalid { location: location.to_owned(), reason: reason.to_owned() }
}

/// Parses a remote location's URL and its host part (`host` names it: bucket
/// or account), refusing credentials in it; `secrets` says where they belong.
fn parse_remote(location: &str, host: &str, secrets: &str) -> Result<(url::Url, String), LocationError> {
    let url = url::Url::parse(location).map_err(|e| invalid(location, &e.to_string()))?;
    let name = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| invalid(location, &format!("no {host}")))?;
    let name = name.to_owned();
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(location, &format!("credentials do not belong in the location; use {secrets}")));
    }
    Ok((url, name))
}

/// Parses an `s3://` location.
pub fn parse_s3(location: &str) -> Result<S3Location, LocationError> {
    let (url, bucket) = parse_remote(location, "bucket", "the AWS environment or profile")?;
    let prefix = url.path().trim_matches('/').to_owned();
    let (mut region, mut endpoint, mut data_class) = (None, None, None);
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "region" => region = Some(v.into_owned()),
            "endpoint" => endpoint = Some(v.into_owned()),
            "data_class" => data_class = Some(v.parse().map_err(|e: Invalid| invalid(location, &e.0))?),
            other => {
                return Err(invalid(location, &format!("unknown parameter {other:?} (region, endpoint, data_class)")));
            }
        }
    }
    Ok(S3Location { bucket, prefix, region, endpoint, data_class })
}

/// Parses an `azure://account/container/prefix` location.
pub fn parse_azure(location: &str) -> Result<AzureLocation, LocationError> {
    let (url, account) = parse_remote(location, "account", "AZURE_STORAGE_* variables")?;
    let path = url.path().trim_matches('/');
    let (container, prefix) = path.split_once('/').unwrap_or((path, ""));
    if container.is_empty() {
        return Err(invalid(location, "no container"));
    }
    let (mut endpoint, mut data_tier) = (None, None);
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "endpoint" => endpoint = Some(v.trim_end_matches('/').to_owned()),
            "data_tier" => data_tier = Some(v.parse().map_err(|e: Invalid| invalid(location, &e.0))?),
            other => return Err(invalid(location, &format!("unknown parameter {other:?} (endpoint, data_tier)"))),
        }
    }
    Ok(AzureLocation {
        account,
        container: container.to_owned(),
        prefix: prefix.trim_matches('/').to_owned(),
        endpoint,
        data_tier,
    })
}

/// How a repository spanning several stores is written.
#[derive(Debug, Clone, Default)]
pub struct Replication {
    /// When a write is acknowledged.
    pub policy: WritePolicy,
    /// The outbox directory (default: under the state directory).
    pub outbox: Option<PathBuf>,
}

/// The store a list of locations names.
#[derive(Debug, Clone)]
pub enum OpenedStore {
    /// One location.
    Single(Arc<dyn ObjectStore>),
    /// Several, replicated (the first is the primary).
    Replicated(Arc<ReplicatedStore>),
}

impl OpenedStore {
    /// The store to hand to the repository.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        match self {
            OpenedStore::Single(s) => s.clone(),
            OpenedStore::Replicated(r) => r.clone(),
        }
    }

    /// Every member store, primary first (one for a single location).
    pub fn members(&self) -> Vec<Arc<dyn ObjectStore>> {
        match self {
            OpenedStore::Single(s) => vec![s.clone()],
            OpenedStore::Replicated(r) => r.stores(),
        }
    }
}

/// Opens one store, or a replicated store over several (the first is the
/// primary), from the locations given. Must run inside a Tokio runtime.
pub async fn open_locations(locations: &[String], replication: &Replication) -> Result<OpenedStore, LocationError> {
    let locations: Vec<&str> = locations.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    match locations.as_slice() {
        [] => Err(LocationError::Empty),
        [one] => Ok(OpenedStore::Single(open_location(one).await?)),
        many => {
            let mut stores = Vec::with_capacity(many.len());
            for l in many {
                stores.push(open_location(l).await?);
            }
            Ok(OpenedStore::Replicated(Arc::new(ReplicatedStore::new(
                stores,
                replication.policy,
                replication.outbox.clone(),
            ))))
        }
    }
}

/// The directory of a local-directory location (a path or `file:///path`),
/// or `None` for a remote or malformed one.
pub fn local_path(location: &str) -> Option<std::path::PathBuf> {
    let location = location.trim();
    match location.strip_prefix("file://") {
        Some(path) => path.starts_with('/').then(|| path.into()),
        None if location.is_empty() || location.contains("://") => None,
        None => Some(location.into()),
    }
}

/// Opens the store a location names. Remote stores connect lazily: a bad
/// endpoint is reported by the first request.
pub async fn open_location(location: &str) -> Result<Arc<dyn ObjectStore>, LocationError> {
    let location = location.trim();
    if location.is_empty() {
        return Err(LocationError::Empty);
    }
    if let Some(path) = local_path(location) {
        return Ok(Arc::new(LocalStore::new(path)));
    }
    if location.starts_with("file://") {
        return Err(LocationError::Unsupported(location.to_owned()));
    }
    if location.starts_with("s3://") {
        return Ok(Arc::new(S3Store::connect(parse_s3(location)?).await));
    }
    if location.starts_with("azure://") {
        let mut parsed = parse_azure(location)?;
        let (credential, endpoint) = AzureCredential::from_env(&parsed.account)?;
        if parsed.endpoint.is_none() {
            parsed.endpoint = endpoint;
        }
        return Ok(Arc::new(AzureStore::connect(parsed, credential)?));
    }
    Err(LocationError::Unsupported(location.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::lifecycle::StorageTier;

    #[tokio::test]
    async fn locations() {
        assert!(open_location("/tmp/repo").await.unwrap().describe().contains("/tmp/repo"));
        assert!(open_location("file:///tmp/repo").await.unwrap().describe().contains("/tmp/repo"));
        assert!(open_location("relative/repo").await.is_ok());
        assert!(matches!(open_location("file://host/x").await, Err(LocationError::Unsupported(_))));
        assert!(matches!(open_location("ftp://x").await, Err(LocationError::Unsupported(_))));
        assert!(matches!(open_location(" ").await, Err(LocationError::Empty)));
    }

    #[test]
    fn s3_locations() {
        let l = parse_s3("s3://backups/prod/db?region=eu-central-1&endpoint=http%3A%2F%2F127.0.0.1%3A9000").unwrap();
        assert_eq!(
            l,
            S3Location {
                bucket: "backups".into(),
                prefix: "prod/db".into(),
                region: Some("eu-central-1".into()),
                endpoint: Some("http://127.0.0.1:9000".into()),
                data_class: None,
            }
        );
        let plain = parse_s3("s3://b?endpoint=http://127.0.0.1:9000").unwrap();
        assert_eq!((plain.prefix.as_str(), plain.endpoint.as_deref()), ("", Some("http://127.0.0.1:9000")));
        assert!(parse_s3("s3://key:secret@b/p").is_err());
        assert!(parse_s3("s3:///p").is_err());
        assert!(parse_s3("s3://b/p?colour=blue").is_err());
        assert_eq!(parse_s3("s3://b/p?data_class=standard_ia").unwrap().data_class, Some(StorageTier::Warm));
        assert!(parse_s3("s3://b/p?data_class=tepid").is_err());
    }

    #[test]
    fn azure_locations() {
        let l = parse_azure(
            "azure://devstoreaccount1/backups/prod/files?endpoint=http://127.0.0.1:10000/devstoreaccount1/",
        )
        .unwrap();
        assert_eq!(
            l,
            AzureLocation {
                account: "devstoreaccount1".into(),
                container: "backups".into(),
                prefix: "prod/files".into(),
                endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
                data_tier: None,
            }
        );
        assert_eq!(parse_azure("azure://acct/c").unwrap().prefix, "");
        assert!(parse_azure("azure://acct").is_err());
        assert!(parse_azure("azure://acct/c?sig=x").is_err());
        assert_eq!(parse_azure("azure://acct/c?data_tier=Cool").unwrap().data_tier, Some(StorageTier::Warm));
    }
}
