//! Azure Blob Storage, through the official `azure_storage_blob` 1.x crate.
//!
//! That crate has no shared-key authentication, so an account key is used
//! to sign an account SAS (HMAC-SHA256, as the service specifies) and every
//! request carries the SAS; a SAS token or a connection string works
//! directly. Secrets come from the environment, never from the location,
//! and are never logged.

use crate::invalid::Invalid;
use std::num::NonZero;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::hmac;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions};
use azure_identity::{
    AzureCliCredential, ClientSecretCredential, ManagedIdentityCredential, WorkloadIdentityCredential,
};
use azure_storage_blob::models::{
    AccessTier, BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders, BlobContainerClientListBlobsOptions,
    BlockBlobClientUploadOptions, HttpRange,
};
use azure_storage_blob::{BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::TryStreamExt;
use url::Url;

use super::lifecycle::{Lifecycle, LifecycleOutcome, StorageTier, TIERED_PREFIXES, is_tiered};
use super::{ObjectMeta, ObjectStore, StoreError, check_key};

/// Attempts beyond the first before a request fails.
const MAX_RETRIES: u32 = 3;
/// Objects up to this size (every pack) go up in one Put Blob and come
/// down in one Get Blob; larger ones are staged in blocks of this size in
/// parallel and committed, or read in ranges of it.
const BLOCK_SIZE: u64 = 32 << 20;
/// Service version the signed SAS names.
const SAS_VERSION: &str = "2022-11-02";

/// Where an Azure repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureLocation {
    /// Storage account name.
    pub account: String,
    /// Container name.
    pub container: String,
    /// Blob name prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Blob endpoint (`BlobEndpoint` of a connection string), e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1` for Azurite.
    pub endpoint: Option<String>,
    /// Access tier data blobs are written in (default: the account's, Hot);
    /// metadata is always Hot.
    pub data_tier: Option<StorageTier>,
}

/// Azure's access tier for a tier.
fn azure_tier(tier: StorageTier) -> AccessTier {
    match tier {
        StorageTier::Hot => AccessTier::Hot,
        StorageTier::Warm => AccessTier::Cool,
        StorageTier::Cold => AccessTier::Cold,
        StorageTier::Archive => AccessTier::Archive,
    }
}

/// Which tier an Azure access tier is (unknown tiers count as hot, so they are never skipped).
fn tier_of(tier: &AccessTier) -> StorageTier {
    match tier {
        AccessTier::Cool => StorageTier::Warm,
        AccessTier::Cold => StorageTier::Cold,
        AccessTier::Archive => StorageTier::Archive,
        _ => StorageTier::Hot,
    }
}

/// How requests are authorised.
#[derive(Clone)]
pub enum AzureCredential {
    /// A shared access signature (query string, without the leading `?`).
    Sas(String),
    /// The account key, used to sign an account SAS.
    AccountKey(String),
    /// An Entra ID token credential (service principal, workload identity,
    /// managed identity, Azure CLI); the service requires https for these.
    Entra(Arc<dyn TokenCredential>),
}

impl std::fmt::Debug for AzureCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AzureCredential::Sas(_) => "Sas(..)",
            AzureCredential::AccountKey(_) => "AccountKey(..)",
            AzureCredential::Entra(_) => "Entra(..)",
        })
    }
}

/// An Entra ID credential from the environment, the way Azure's own tools
/// look for one: a service principal secret (`AZURE_TENANT_ID`,
/// `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`), a workload identity
/// (`AZURE_FEDERATED_TOKEN_FILE`), or, when `AZURE_STORAGE_AUTH` says so,
/// the machine's managed identity (`managed-identity`) or the Azure CLI's
/// login (`azure-cli`). None when the environment names none. `env` reads
/// one variable.
fn entra_from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Arc<dyn TokenCredential>>, String> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let credential: Arc<dyn TokenCredential> =
        match (var("AZURE_TENANT_ID"), var("AZURE_CLIENT_ID"), var("AZURE_CLIENT_SECRET")) {
            (Some(tenant), Some(client), Some(secret)) => {
                ClientSecretCredential::new(&tenant, client, secret.into(), None).map_err(|e| e.to_string())?
            }
            _ if var("AZURE_FEDERATED_TOKEN_FILE").is_some() => {
                WorkloadIdentityCredential::new(None).map_err(|e| e.to_string())?
            }
            _ => match var("AZURE_STORAGE_AUTH").as_deref() {
                Some("managed-identity") => ManagedIdentityCredential::new(None).map_err(|e| e.to_string())?,
                Some("azure-cli") => AzureCliCredential::new(None).map_err(|e| e.to_string())?,
                Some(other) => {
                    return Err(format!("AZURE_STORAGE_AUTH={other:?} is not one of managed-identity, azure-cli"));
                }
                None => return Ok(None),
            },
        };
    Ok(Some(credential))
}

/// A secret from variable `name`, or from the file `name_FILE` names (the
/// convention of container secrets), trimmed.
fn secret_from_env(name: &str) -> Result<Option<String>, String> {
    if let Ok(v) = std::env::var(name) {
        return Ok(Some(v));
    }
    let Ok(path) = std::env::var(format!("{name}_FILE")) else { return Ok(None) };
    std::fs::read_to_string(&path)
        .map(|s| Some(s.trim().to_owned()))
        .map_err(|e| format!("reading {name}_FILE {path}: {e}"))
}

impl AzureCredential {
    /// From the environment: `AZURE_STORAGE_CONNECTION_STRING`, else
    /// `AZURE_STORAGE_SAS_TOKEN`, else `AZURE_STORAGE_KEY` (each also from
    /// the file a `…_FILE` variable names), else an Entra ID identity. Also
    /// returns the connection string's blob endpoint, if it names one.
    pub fn from_env(account: &str) -> Result<(Self, Option<String>), StoreError> {
        let missing = |what: String| StoreError::Remote {
            store: format!("azure account {account}"),
            op: "authenticating to",
            key: String::new(),
            status: None,
            message: what,
        };
        let secret = |name: &str| secret_from_env(name).map_err(missing);
        if let Some(cs) = secret("AZURE_STORAGE_CONNECTION_STRING")? {
            let field = |name: &str| {
                cs.split(';')
                    .find_map(|part| part.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_owned()))
            };
            let endpoint = field("BlobEndpoint");
            if let Some(sas) = field("SharedAccessSignature") {
                return Ok((AzureCredential::Sas(sas.trim_start_matches('?').to_owned()), endpoint));
            }
            // An account key may itself end in '=' padding: take the rest of the field.
            let key = cs.split(';').find_map(|part| part.strip_prefix("AccountKey=").map(str::to_owned));
            if let Some(key) = key {
                return Ok((AzureCredential::AccountKey(key), endpoint));
            }
            return Err(missing(
                "AZURE_STORAGE_CONNECTION_STRING has neither AccountKey nor SharedAccessSignature".into(),
            ));
        }
        if let Some(sas) = secret("AZURE_STORAGE_SAS_TOKEN")? {
            return Ok((AzureCredential::Sas(sas.trim_start_matches('?').to_owned()), None));
        }
        if let Some(key) = secret("AZURE_STORAGE_KEY")? {
            return Ok((AzureCredential::AccountKey(key), None));
        }
        if let Some(token) = entra_from_env(|name| std::env::var(name).ok()).map_err(missing)? {
            return Ok((AzureCredential::Entra(token), None));
        }
        Err(missing(
            "no credentials: set AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or an Entra ID identity (AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, AZURE_FEDERATED_TOKEN_FILE, or AZURE_STORAGE_AUTH=managed-identity|azure-cli)".into(),
        ))
    }
}

/// Signs an account SAS for the blob service (read, write, delete, list,
/// add, create on service, container and object), valid for `hours`.
pub fn account_sas(account: &str, key_base64: &str, hours: i64) -> Result<String, Invalid> {
    let key = BASE64.decode(key_base64.trim()).map_err(|_| "the account key is not base64".to_owned())?;
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(hours)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (permissions, services, resource_types, protocols) = ("rwdlac", "b", "sco", "https,http");
    // The string-to-sign of an account SAS, version 2020-12-06 and later:
    // account, permissions, services, resource types, start, expiry, IP,
    // protocols, version, encryption scope, each followed by a newline.
    let to_sign =
        format!("{account}\n{permissions}\n{services}\n{resource_types}\n\n{expiry}\n\n{protocols}\n{SAS_VERSION}\n\n");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), to_sign.as_bytes());
    let sig = BASE64.encode(tag.as_ref());
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("se", &expiry)
        .append_pair("spr", protocols)
        .append_pair("sig", &sig);
    Ok(query.finish())
}

/// An object store in an Azure Blob container.
pub struct AzureStore {
    container: BlobContainerClient,
    /// Container URL (with the SAS, if that is the credential), for building blob URLs.
    container_url: Url,
    /// The Entra ID credential, if that is how requests are authorised.
    token: Option<Arc<dyn TokenCredential>>,
    location: AzureLocation,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The container URL carries the SAS: never print it.
        f.debug_struct("AzureStore").field("location", &self.location).finish_non_exhaustive()
    }
}

fn client_options() -> ClientOptions {
    ClientOptions {
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            max_retries: MAX_RETRIES,
            max_total_elapsed: azure_core::time::Duration::seconds(30),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl AzureStore {
    /// A store for `location` authorised by `credential`; no request is made yet.
    pub fn connect(location: AzureLocation, credential: AzureCredential) -> Result<Self, StoreError> {
        let invalid = |message: String| StoreError::Remote {
            store: format!("azure://{}/{}", location.account, location.container),
            op: "connecting to",
            key: String::new(),
            status: None,
            message,
        };
        let endpoint =
            location.endpoint.clone().unwrap_or_else(|| format!("https://{}.blob.core.windows.net", location.account));
        let (sas, token) = match credential {
            AzureCredential::Sas(s) => (Some(s), None),
            AzureCredential::AccountKey(k) => {
                (Some(account_sas(&location.account, &k, 24 * 7).map_err(|e| invalid(e.0))?), None)
            }
            AzureCredential::Entra(t) => (None, Some(t)),
        };
        let mut url = Url::parse(&endpoint).map_err(|e| invalid(format!("endpoint {endpoint:?}: {e}")))?;
        if token.is_some() && url.scheme() != "https" {
            return Err(invalid(format!("Entra ID credentials need an https endpoint, not {endpoint:?}")));
        }
        url.path_segments_mut()
            .map_err(|_| invalid(format!("endpoint {endpoint:?} cannot hold a path")))?
            .pop_if_empty()
            .push(&location.container);
        url.set_query(sas.as_deref());
        let options = BlobContainerClientOptions { client_options: client_options(), ..Default::default() };
        let container =
            BlobContainerClient::new(url.clone(), token.clone(), Some(options)).map_err(|e| invalid(e.to_string()))?;
        Ok(AzureStore { container, container_url: url, token, location })
    }

    /// Moves a blob to another access tier (Hot, Cool, Cold, Archive).
    pub async fn set_access_tier(&self, key: &str, tier: AccessTier) -> Result<(), StoreError> {
        let blob = self.blob(key)?;
        blob.set_tier(tier, None).await.map_err(|e| self.error("changing the tier of", key, e))?;
        Ok(())
    }

    fn blob_name(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(if self.location.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.location.prefix) })
    }

    /// A client for one blob; `/` in names stays a path separator.
    fn blob(&self, key: &str) -> Result<BlobClient, StoreError> {
        let name = self.blob_name(key)?;
        let mut url = self.container_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(name.split('/'));
        }
        let options = BlobClientOptions { client_options: client_options(), ..Default::default() };
        BlobClient::new(url, self.token.clone(), Some(options)).map_err(|e| self.error("addressing", key, e))
    }

    fn error(&self, op: &'static str, key: &str, err: azure_core::Error) -> StoreError {
        let status = err.http_status().map(u16::from);
        let code = match err.kind() {
            ErrorKind::HttpResponse { error_code, .. } => error_code.clone(),
            _ => None,
        };
        let store = self.describe();
        let key = key.to_owned();
        match (status, code.as_deref()) {
            (_, Some("BlobAlreadyExists")) => StoreError::AlreadyExists { store, key },
            (_, Some("BlobArchived")) => StoreError::Archived { store, key },
            (_, Some("ContainerNotFound")) => StoreError::Remote {
                store,
                op,
                key,
                status,
                message: format!("container {:?} does not exist", self.location.container),
            },
            (Some(404), _) => StoreError::NotFound { store, key },
            (_, Some("AuthenticationFailed")) | (Some(403), _) => StoreError::Remote {
                store,
                op,
                key,
                status,
                message: "authentication failed: check the account key, SAS or Entra ID identity (and its role on the container)".into(),
            },
            _ => StoreError::Remote {
                store,
                op,
                key,
                status,
                message: match &code {
                    Some(c) => format!("{c}: {err}"),
                    None => format!("{err} (after {MAX_RETRIES} retries)"),
                },
            },
        }
    }

    async fn upload(&self, key: &str, data: Bytes, if_absent: bool) -> Result<(), StoreError> {
        let blob = self.blob(key)?;
        let options = BlockBlobClientUploadOptions {
            if_none_match: if_absent.then(|| "*".into()),
            partition_size: NonZero::new(BLOCK_SIZE),
            parallel: NonZero::new(4),
            tier: self.location.data_tier.filter(|_| is_tiered(key)).map(azure_tier),
            ..Default::default()
        };
        blob.upload(data.into(), Some(options)).await.map_err(|e| self.error("writing", key, e))?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for AzureStore {
    fn describe(&self) -> String {
        let mut s = format!("azure://{}/{}/{}", self.location.account, self.location.container, self.location.prefix);
        if let Some(e) = &self.location.endpoint {
            s.push_str(&format!(" at {e}"));
        }
        s
    }

    async fn create_container(&self) -> Result<(), StoreError> {
        match self.container.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::HttpResponse { error_code: Some(c), .. } if c == "ContainerAlreadyExists") => {
                Ok(())
            }
            Err(e) => Err(self.error("creating container", &self.location.container, e)),
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.upload(key, data, false).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.upload(key, data, true).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let blob = self.blob(key)?;
        let options =
            BlobClientDownloadOptions { partition_size: NonZero::new(BLOCK_SIZE as usize), ..Default::default() };
        let r = blob.download(Some(options)).await.map_err(|e| self.error("reading", key, e))?;
        r.body.collect().await.map_err(|e| self.error("reading", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let blob = self.blob(key)?;
        let options = BlobClientDownloadOptions {
            range: Some(HttpRange::new(range.start, range.end - range.start)),
            partition_size: NonZero::new(BLOCK_SIZE as usize),
            ..Default::default()
        };
        let body = match blob.download(Some(options)).await {
            Ok(r) => r.body.collect().await.map_err(|e| self.error("reading", key, e))?,
            Err(e) if e.http_status().map(u16::from) == Some(416) => Bytes::new(),
            Err(e) => return Err(self.error("reading", key, e)),
        };
        if (body.len() as u64) < range.end - range.start {
            let size = self.head(key).await?;
            return Err(StoreError::Truncated { store: self.describe(), key: key.to_owned(), size, wanted: range.end });
        }
        Ok(body)
    }

    async fn head(&self, key: &str) -> Result<u64, StoreError> {
        let blob = self.blob(key)?;
        let props = blob.get_properties(None).await.map_err(|e| self.error("reading size of", key, e))?;
        let len = props.content_length().map_err(|e| self.error("reading size of", key, e))?;
        Ok(len.unwrap_or(0))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let base = if self.location.prefix.is_empty() { String::new() } else { format!("{}/", self.location.prefix) };
        let options =
            BlobContainerClientListBlobsOptions { prefix: Some(format!("{base}{prefix}")), ..Default::default() };
        let mut items = self.container.list_blobs(Some(options)).map_err(|e| self.error("listing", prefix, e))?;
        let mut out = Vec::new();
        while let Some(item) = items.try_next().await.map_err(|e| self.error("listing", prefix, e))? {
            let Some(name) = item.name else { continue };
            let Some(key) = name.strip_prefix(&base) else { continue };
            let size = item.properties.as_ref().and_then(|p| p.content_length).unwrap_or(0);
            let modified = item
                .properties
                .and_then(|p| p.last_modified)
                .and_then(|t| chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()));
            out.push(ObjectMeta { key: key.to_owned(), size, modified });
        }
        Ok(out)
    }

    async fn start_rehydrate(&self, key: &str) -> Result<(), StoreError> {
        self.set_access_tier(key, AccessTier::Hot).await
    }

    /// Azure's lifecycle management is an account-level (management-plane)
    /// policy, so the tiers are applied here: each data blob older than a
    /// transition moves to that tier. Blobs only ever move colder.
    async fn apply_lifecycle(&self, lifecycle: &Lifecycle) -> Result<Vec<LifecycleOutcome>, StoreError> {
        let base = if self.location.prefix.is_empty() { String::new() } else { format!("{}/", self.location.prefix) };
        let now = azure_core::time::OffsetDateTime::now_utc();
        let mut moved: std::collections::BTreeMap<StorageTier, u64> = Default::default();
        let mut examined = 0u64;
        for prefix in TIERED_PREFIXES {
            let options =
                BlobContainerClientListBlobsOptions { prefix: Some(format!("{base}{prefix}")), ..Default::default() };
            let mut items = self.container.list_blobs(Some(options)).map_err(|e| self.error("listing", prefix, e))?;
            while let Some(item) = items.try_next().await.map_err(|e| self.error("listing", prefix, e))? {
                let Some(key) = item.name.as_ref().and_then(|n| n.strip_prefix(&base)).map(str::to_owned) else {
                    continue;
                };
                examined += 1;
                let props = item.properties.unwrap_or_default();
                let age = props.last_modified.map_or(0, |t| (now - t).whole_days().max(0) as u32);
                let current = props.access_tier.as_ref().map_or(StorageTier::Hot, tier_of);
                let wanted = lifecycle.tier_for_age(age);
                if wanted > current {
                    self.set_access_tier(&key, azure_tier(wanted)).await?;
                    *moved.entry(wanted).or_default() += 1;
                }
            }
        }
        let moves: Vec<String> = moved.iter().map(|(t, n)| format!("{n} to {}", azure_tier(*t))).collect();
        Ok(vec![LifecycleOutcome {
            store: self.describe(),
            summary: format!(
                "{examined} data blobs examined, {}; metadata stays Hot",
                if moves.is_empty() { "none moved".into() } else { format!("moved {}", moves.join(", ")) }
            ),
            adjustments: Vec::new(),
        }])
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let blob = self.blob(key)?;
        match blob.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) => match self.error("deleting", key, e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_sas_has_the_fields_the_service_checks() {
        let sas = account_sas("devstoreaccount1", &BASE64.encode(b"secret key"), 1).unwrap();
        for field in ["sv=2022-11-02", "ss=b", "srt=sco", "sp=rwdlac", "spr=https%2Chttp", "se=", "sig="] {
            assert!(sas.contains(field), "{field} missing from {sas}");
        }
        assert!(account_sas("a", "not base64!", 1).is_err());
    }

    #[test]
    fn entra_credentials_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert!(entra_from_env(env(&[])).unwrap().is_none());
        let principal = env(&[
            ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("AZURE_CLIENT_ID", "app"),
            ("AZURE_CLIENT_SECRET", "s3cret"),
        ]);
        let token = entra_from_env(principal).unwrap().expect("a service principal credential");
        assert!(entra_from_env(env(&[("AZURE_STORAGE_AUTH", "telepathy")])).is_err());

        // Bearer tokens never travel over plain http.
        let location = AzureLocation {
            account: "acct".into(),
            container: "c".into(),
            prefix: String::new(),
            endpoint: Some("http://127.0.0.1:10000/acct".into()),
            data_tier: None,
        };
        let err = AzureStore::connect(location.clone(), AzureCredential::Entra(token.clone())).unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        let https = AzureLocation { endpoint: None, ..location };
        let store = AzureStore::connect(https, AzureCredential::Entra(token)).unwrap();
        assert!(!format!("{store:?}").contains("s3cret"));
    }
}
