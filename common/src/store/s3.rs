//! Amazon S3 and S3-compatible services, through `aws-sdk-s3` (rustls only).
//!
//! Credentials come from the SDK's standard chain (environment, profile,
//! instance role), never from the location. Retries are the SDK's standard
//! mode (exponential backoff with jitter on throttling and 5xx), bounded so
//! an unreachable endpoint fails in seconds instead of retrying forever.

use crate::error_chain::error_chain;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLocationConstraint, CompletedMultipartUpload,
    CompletedPart, CreateBucketConfiguration, Delete, ExpirationStatus, GlacierJobParameters, LifecycleRule,
    LifecycleRuleFilter, ObjectIdentifier, RestoreRequest, StorageClass, Tier, Transition, TransitionStorageClass,
};
use bytes::Bytes;

use super::lifecycle::{Lifecycle, LifecycleOutcome, StorageTier, TIERED_PREFIXES, is_tiered};
use super::{ObjectMeta, ObjectStore, StoreError, check_key};

/// Objects larger than this go up as a multipart upload with parallel parts.
const MULTIPART_MIN: usize = 32 << 20;
/// Size of each part of a multipart upload.
const PART_SIZE: usize = 8 << 20;
/// Attempts per request, the first included.
const MAX_ATTEMPTS: u32 = 4;

/// Where an S3 repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Region (default: the SDK's resolution, else `us-east-1`).
    pub region: Option<String>,
    /// Custom endpoint for S3-compatible services; implies path-style addressing.
    pub endpoint: Option<String>,
    /// Storage class data objects are written in (default STANDARD);
    /// metadata is always STANDARD.
    pub data_class: Option<StorageTier>,
}

/// S3's storage class for a tier.
fn s3_class(tier: StorageTier) -> StorageClass {
    match tier {
        StorageTier::Hot => StorageClass::Standard,
        StorageTier::Warm => StorageClass::StandardIa,
        StorageTier::Cold => StorageClass::Glacier,
        StorageTier::Archive => StorageClass::DeepArchive,
    }
}

/// The lifecycle as S3 transitions, moved later where S3 insists: objects
/// reach Standard-IA no sooner than 30 days after creation, and spend at
/// least 30 days there before a colder class.
fn s3_transitions(lifecycle: &Lifecycle) -> (Vec<(TransitionStorageClass, i32)>, Vec<String>) {
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    let mut earliest = 0u32;
    for (tier, days) in lifecycle.transitions() {
        let (class, min_here, gap_after) = match tier {
            StorageTier::Hot => continue,
            StorageTier::Warm => (TransitionStorageClass::StandardIa, 30, 30),
            StorageTier::Cold => (TransitionStorageClass::Glacier, 0, 1),
            StorageTier::Archive => (TransitionStorageClass::DeepArchive, 0, 1),
        };
        let at = days.max(min_here).max(earliest);
        if at != days {
            notes.push(format!("{tier:?} tier ({class}) moved from day {days} to day {at}: S3's minimum"));
        }
        out.push((class, i32::try_from(at).unwrap_or(i32::MAX)));
        earliest = at.saturating_add(gap_after);
    }
    (out, notes)
}

/// An object store in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    location: S3Location,
}

impl S3Store {
    /// Connects (lazily: no request is made) to the bucket at `location`.
    pub async fn connect(location: S3Location) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &location.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if shared.region().is_none() {
            conf = conf.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &location.endpoint {
            conf = conf.endpoint_url(endpoint).force_path_style(true);
        }
        S3Store { client: Client::from_conf(conf.build()), location }
    }

    /// The storage class to write `key` in (None: the bucket's default, STANDARD).
    fn class_for(&self, key: &str) -> Option<StorageClass> {
        self.location.data_class.filter(|_| is_tiered(key)).map(s3_class)
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        Ok(if self.location.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.location.prefix) })
    }

    /// A failure with no HTTP status (client-side, or a body that broke off).
    fn failed(&self, op: &'static str, key: &str, message: impl std::fmt::Display) -> StoreError {
        StoreError::Remote {
            store: self.describe(),
            op,
            key: key.to_owned(),
            status: None,
            message: message.to_string(),
        }
    }

    fn remote<E>(&self, op: &'static str, key: &str, err: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = match &err {
            SdkError::ServiceError(s) => s.err().code().map(str::to_owned),
            _ => None,
        };
        if code.as_deref() == Some("InvalidObjectState") {
            return StoreError::Archived { store: self.describe(), key: key.to_owned() };
        }
        if code.as_deref() == Some("NoSuchBucket") {
            let message = format!("bucket {:?} does not exist", self.location.bucket);
            return StoreError::Remote { store: self.describe(), op, key: key.to_owned(), status, message };
        }
        if status == Some(404) {
            return StoreError::NotFound { store: self.describe(), key: key.to_owned() };
        }
        let message = match &err {
            SdkError::ServiceError(s) => {
                let e = s.err();
                format!("{} ({})", e.message().unwrap_or("no message"), e.code().unwrap_or("no code"))
            }
            SdkError::DispatchFailure(d) => {
                let kind = if d.is_timeout() {
                    "timed out"
                } else if d.is_io() {
                    "connection failed"
                } else {
                    "request failed"
                };
                format!("{kind} after {MAX_ATTEMPTS} attempts: {}", error_chain(&err))
            }
            SdkError::TimeoutError(_) => format!("timed out after {MAX_ATTEMPTS} attempts"),
            _ => error_chain(&err),
        };
        StoreError::Remote { store: self.describe(), op, key: key.to_owned(), status, message }
    }

    async fn put_multipart(&self, key: &str, full: &str, data: Bytes) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.location.bucket)
            .key(full)
            .set_storage_class(self.class_for(key))
            .send()
            .await
            .map_err(|e| self.remote("starting upload of", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let mut parts = tokio::task::JoinSet::new();
        for (i, start) in (0..data.len()).step_by(PART_SIZE).enumerate() {
            let body = data.slice(start..(start + PART_SIZE).min(data.len()));
            let (client, bucket, full, upload_id) =
                (self.client.clone(), self.location.bucket.clone(), full.to_owned(), upload_id.clone());
            let number = i as i32 + 1;
            parts.spawn(async move {
                let r = client
                    .upload_part()
                    .bucket(bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body))
                    .send()
                    .await;
                (number, r)
            });
        }
        let mut done = Vec::new();
        let mut failure = None;
        while let Some(joined) = parts.join_next().await {
            match joined {
                Ok((number, Ok(out))) => done.push(
                    CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned)).build(),
                ),
                Ok((_, Err(e))) => failure = Some(self.remote("uploading part of", key, e)),
                Err(e) => failure = Some(self.failed("uploading part of", key, e)),
            }
        }
        if let Some(err) = failure {
            // Leave no billable orphan parts behind.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.location.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
            return Err(err);
        }
        done.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.location.bucket)
            .key(full)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
            .send()
            .await
            .map_err(|e| self.remote("completing upload of", key, e))?;
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        let mut s = format!("s3://{}/{}", self.location.bucket, self.location.prefix);
        if let Some(e) = &self.location.endpoint {
            s.push_str(&format!(" at {e}"));
        }
        s
    }

    async fn create_container(&self) -> Result<(), StoreError> {
        let bucket = &self.location.bucket;
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {}
            Err(e) => return Err(self.remote("checking bucket", bucket, e)),
        }
        let region = self.client.config().region().map(|r| r.as_ref().to_owned());
        let mut create = self.client.create_bucket().bucket(bucket);
        // us-east-1 is the one region that refuses an explicit constraint.
        if let Some(region) = region.filter(|r| r != "us-east-1") {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) => Err(self.remote("creating bucket", bucket, e)),
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        if data.len() > MULTIPART_MIN {
            return self.put_multipart(key, &full, data).await;
        }
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&full)
            .set_storage_class(self.class_for(key))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.remote("writing", key, e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        // S3 conditional writes: the service refuses (412) if the key exists,
        // atomically, so two writers cannot both create it.
        let r = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&full)
            .set_storage_class(self.class_for(key))
            .if_none_match("*")
            .body(ByteStream::from(data))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) => {
                Err(StoreError::AlreadyExists { store: self.describe(), key: key.to_owned() })
            }
            Err(e) => Err(self.remote("creating", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.remote("reading", key, e))?;
        let body = out.body.collect().await.map_err(|e| self.failed("reading", key, error_chain(&e)))?;
        Ok(body.into_bytes())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let full = self.full_key(key)?;
        let r = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        let out = match r {
            Ok(out) => out,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                let size = self.head(key).await?;
                return Err(StoreError::Truncated {
                    store: self.describe(),
                    key: key.to_owned(),
                    size,
                    wanted: range.end,
                });
            }
            Err(e) => return Err(self.remote("reading", key, e)),
        };
        let body = out.body.collect().await.map_err(|e| self.failed("reading", key, error_chain(&e)))?.into_bytes();
        // A range past the end comes back short rather than refused.
        if (body.len() as u64) < range.end - range.start {
            return Err(StoreError::Truncated {
                store: self.describe(),
                key: key.to_owned(),
                size: range.start + body.len() as u64,
                wanted: range.end,
            });
        }
        Ok(body)
    }

    async fn head(&self, key: &str) -> Result<u64, StoreError> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.location.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.remote("reading size of", key, e))?;
        Ok(out.content_length().unwrap_or(0).max(0) as u64)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let base = if self.location.prefix.is_empty() { String::new() } else { format!("{}/", self.location.prefix) };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .prefix(format!("{base}{prefix}"))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.remote("listing", prefix, e))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| k.strip_prefix(&base)) else { continue };
                let modified =
                    obj.last_modified().and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
                out.push(ObjectMeta { key: key.to_owned(), size: obj.size().unwrap_or(0).max(0) as u64, modified });
            }
        }
        Ok(out)
    }

    /// Aborts multipart uploads of this repository a killed writer left
    /// unfinished (their parts are billed until then).
    async fn reclaim_temporaries(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let base = if self.location.prefix.is_empty() { String::new() } else { format!("{}/", self.location.prefix) };
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        let mut aborted = 0;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.location.bucket)
                .prefix(&base)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.remote("listing unfinished uploads in", &base, e))?;
            for upload in page.uploads() {
                let started =
                    upload.initiated().and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else { continue };
                if started.is_some_and(|s| s < before) {
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.location.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await
                        .map_err(|e| self.remote("aborting the unfinished upload of", key, e))?;
                    aborted += 1;
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
    }

    /// Bucket lifecycle rules, one per data prefix of this repository,
    /// replacing earlier Lifeboat rules for the same prefix and keeping
    /// every other rule of the bucket.
    async fn apply_lifecycle(&self, lifecycle: &Lifecycle) -> Result<Vec<LifecycleOutcome>, StoreError> {
        let bucket = &self.location.bucket;
        let base = if self.location.prefix.is_empty() { String::new() } else { format!("{}/", self.location.prefix) };
        let rule_id = |prefix: &str| format!("lifeboat:{base}{prefix}");
        let ours: Vec<String> = TIERED_PREFIXES.iter().map(|p| rule_id(p)).collect();
        let existing = match self.client.get_bucket_lifecycle_configuration().bucket(bucket).send().await {
            Ok(out) => out.rules.unwrap_or_default(),
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("NoSuchLifecycleConfiguration") => Vec::new(),
            Err(e) => return Err(self.remote("reading the lifecycle of", bucket, e)),
        };
        let mut rules: Vec<LifecycleRule> =
            existing.into_iter().filter(|r| !r.id().is_some_and(|id| ours.iter().any(|o| o == id))).collect();
        let (transitions, adjustments) = s3_transitions(lifecycle);
        let invalid = |e: aws_sdk_s3::error::BuildError| self.failed("building the lifecycle of", bucket, e);
        for prefix in TIERED_PREFIXES {
            let mut rule = LifecycleRule::builder()
                .id(rule_id(prefix))
                .filter(LifecycleRuleFilter::builder().prefix(format!("{base}{prefix}")).build())
                .status(ExpirationStatus::Enabled)
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder().days_after_initiation(7).build(),
                );
            for (class, days) in &transitions {
                rule = rule.transitions(Transition::builder().storage_class(class.clone()).days(*days).build());
            }
            rules.push(rule.build().map_err(invalid)?);
        }
        let config = BucketLifecycleConfiguration::builder().set_rules(Some(rules)).build().map_err(invalid)?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(config)
            .send()
            .await
            .map_err(|e| self.remote("setting the lifecycle of", bucket, e))?;
        let steps: Vec<String> = transitions.iter().map(|(c, d)| format!("{c} after {d} days")).collect();
        Ok(vec![LifecycleOutcome {
            store: self.describe(),
            summary: format!(
                "bucket lifecycle rules for {} set: {}; metadata stays STANDARD",
                TIERED_PREFIXES.iter().map(|p| format!("{base}{p}")).collect::<Vec<_>>().join(", "),
                if steps.is_empty() { "no transitions".into() } else { steps.join(", ") }
            ),
            adjustments,
        }])
    }

    async fn start_rehydrate(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let request = RestoreRequest::builder().days(7).glacier_job_parameters(
            GlacierJobParameters::builder()
                .tier(Tier::Standard)
                .build()
                .map_err(|e| self.failed("rehydrating", key, e))?,
        );
        match self
            .client
            .restore_object()
            .bucket(&self.location.bucket)
            .key(&full)
            .restore_request(request.build())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already being restored: nothing more to start.
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("RestoreAlreadyInProgress") => Ok(()),
            Err(e) => Err(self.remote("rehydrating", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.remote("deleting", key, e))?;
        Ok(())
    }
}

impl S3Store {
    /// Deletes many objects with batched requests (1,000 keys each).
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        for batch in keys.chunks(1000) {
            let ids = batch
                .iter()
                .map(|k| {
                    let full = self.full_key(k)?;
                    ObjectIdentifier::builder().key(full).build().map_err(|e| self.failed("deleting", k, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| self.failed("deleting", &batch[0], e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.location.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.remote("deleting", &batch[0], e))?;
            if let Some(err) = out.errors().first() {
                return Err(self.failed("deleting", err.key().unwrap_or_default(), err.message().unwrap_or("refused")));
            }
        }
        Ok(())
    }
}
