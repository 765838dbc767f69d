//! Every object store backend behaves the same: the local directory, S3
//! and Azure Blob (against the real emulators from `deploy/services.sh`),
//! and a replicated store over them, by either write policy.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_common::store::{
    AzureCredential, AzureLocation, AzureStore, LocalStore, ObjectStore, ReplicatedStore, S3Location, S3Store,
    StoreError, WritePolicy,
};
use lifeboat_integration_tests::services::{
    AZURITE_ACCOUNT, AZURITE_KEY, azure_endpoint, create_bucket, s3_endpoint, s3_test_credentials, unique_bucket,
};

async fn conformance(store: &dyn ObjectStore) {
    let name = store.describe();
    store.put("config", Bytes::from_static(b"cfg")).await.unwrap();
    store.put("data/ab/abcd", Bytes::from_static(b"0123456789")).await.unwrap();
    store.put("data/cd/cdef", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(store.get("config").await.unwrap(), Bytes::from_static(b"cfg"), "{name}");
    assert_eq!(store.get_range("data/ab/abcd", 2..5).await.unwrap(), Bytes::from_static(b"234"), "{name}");
    assert_eq!(store.head("data/ab/abcd").await.unwrap(), 10, "{name}");

    let mut listed = store.list("data/").await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<_> = listed.iter().map(|m| (m.key.as_str(), m.size)).collect();
    assert_eq!(keys, vec![("data/ab/abcd", 10), ("data/cd/cdef", 1)], "{name}");
    assert_eq!(store.list("").await.unwrap().len(), 3, "{name}");

    let err = store.put_if_absent("config", Bytes::from_static(b"other")).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{name}: {err}");
    assert_eq!(store.get("config").await.unwrap(), Bytes::from_static(b"cfg"), "{name}");
    store.put_if_absent("keys/k1", Bytes::from_static(b"k")).await.unwrap();

    let err = store.get_range("data/ab/abcd", 5..20).await.unwrap_err();
    assert!(matches!(err, StoreError::Truncated { .. }), "{name}: {err}");
    let err = store.get("data/none").await.unwrap_err();
    assert!(err.is_not_found(), "{name}: {err}");
    assert!(store.head("data/none").await.unwrap_err().is_not_found(), "{name}");

    // Large objects (packs; multipart on S3) round-trip exactly.
    let big: Vec<u8> = (0..40usize << 20).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
    store.put("data/ff/big", Bytes::from(big.clone())).await.unwrap();
    assert_eq!(store.head("data/ff/big").await.unwrap(), big.len() as u64, "{name}");
    let (a, b) = (12_345u64, 33u64 << 20);
    assert_eq!(store.get_range("data/ff/big", a..b).await.unwrap(), &big[a as usize..b as usize], "{name}");
    assert!(store.get("data/ff/big").await.unwrap() == big, "{name}");

    store.delete("data/ab/abcd").await.unwrap();
    store.delete("data/ab/abcd").await.unwrap();
    assert!(store.get("data/ab/abcd").await.unwrap_err().is_not_found(), "{name}");
}

#[tokio::test]
async fn local_store() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&LocalStore::new(dir.path())).await;
}

#[tokio::test]
async fn s3_store_against_the_emulator() {
    let endpoint = s3_endpoint();
    let bucket = unique_bucket("conf");
    create_bucket(&endpoint, &bucket).await;
    for prefix in ["", "some/prefix"] {
        let store = S3Store::connect(S3Location {
            bucket: bucket.clone(),
            prefix: prefix.into(),
            region: None,
            endpoint: Some(endpoint.clone()),
            data_class: None,
        })
        .await;
        conformance(&store).await;
    }
}

fn azure_store(container: &str, prefix: &str) -> AzureStore {
    AzureStore::connect(
        AzureLocation {
            account: AZURITE_ACCOUNT.into(),
            container: container.into(),
            prefix: prefix.into(),
            endpoint: Some(azure_endpoint()),
            data_tier: None,
        },
        AzureCredential::AccountKey(AZURITE_KEY.into()),
    )
    .unwrap()
}

#[tokio::test]
async fn azure_store_against_azurite() {
    let container = unique_bucket("conf-az");
    for prefix in ["", "repo/one"] {
        let store = azure_store(&container, prefix);
        store.create_container().await.unwrap();
        conformance(&store).await;
    }
}

#[tokio::test]
async fn replicated_store_by_either_write_policy() {
    let dir = tempfile::tempdir().unwrap();
    let container = unique_bucket("conf-rep");
    for (n, policy) in [WritePolicy::All, WritePolicy::Primary].into_iter().enumerate() {
        let primary: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().join(format!("primary-{n}"))));
        let secondary = azure_store(&container, &format!("copy-{n}"));
        secondary.create_container().await.unwrap();
        let secondary: Arc<dyn ObjectStore> = Arc::new(secondary);
        let outbox = dir.path().join(format!("outbox-{n}"));
        let store = ReplicatedStore::new(vec![primary, secondary.clone()], policy, Some(outbox));
        conformance(&store).await;
        // What the replicated store acknowledged reaches the copy too.
        store.settle().await.unwrap();
        assert_eq!(secondary.get("config").await.unwrap(), Bytes::from_static(b"cfg"), "{policy:?}");
        assert!(secondary.get("data/ab/abcd").await.unwrap_err().is_not_found(), "{policy:?}");
    }
}

#[tokio::test]
async fn s3_missing_bucket_and_unreachable_endpoint_fail_clearly_and_quickly() {
    let endpoint = s3_endpoint();
    s3_test_credentials();
    let missing: Arc<dyn ObjectStore> = Arc::new(
        S3Store::connect(S3Location {
            bucket: unique_bucket("missing"),
            prefix: String::new(),
            region: None,
            endpoint: Some(endpoint.clone()),
            data_class: None,
        })
        .await,
    );
    let err = missing.get("config").await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Nothing listens on port 9 of loopback: bounded retries, then one error.
    let dead = S3Store::connect(S3Location {
        bucket: "b".into(),
        prefix: String::new(),
        region: None,
        endpoint: Some("http://127.0.0.1:9".into()),
        data_class: None,
    })
    .await;
    let started = Instant::now();
    let err = dead.get("config").await.unwrap_err();
    assert!(err.to_string().contains("connection failed after"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "retried for {:?}", started.elapsed());
}
