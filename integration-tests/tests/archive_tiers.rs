//! Reading an object in an archive tier says it must be rehydrated (instead
//! of failing obscurely), and rehydration can be started (S3 RestoreObject,
//! Azure tier change); the emulators complete it at once.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use lifeboat_common::store::{
    AccessTier, AzureCredential, AzureLocation, AzureStore, ObjectStore, S3Location, S3Store, StoreError,
};
use lifeboat_integration_tests::services::{
    AZURITE_ACCOUNT, AZURITE_KEY, azure_endpoint, create_bucket, s3_client, s3_endpoint, unique_bucket,
};

#[tokio::test]
async fn s3_glacier_object_is_named_and_rehydrated() {
    let endpoint = s3_endpoint();
    let bucket = unique_bucket("arch");
    create_bucket(&endpoint, &bucket).await;
    let client = s3_client(&endpoint).await;
    client
        .put_object()
        .bucket(&bucket)
        .key("repo/data/ab/pack")
        .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
        .body(Bytes::from_static(b"cold pack").into())
        .send()
        .await
        .unwrap();
    let store = S3Store::connect(S3Location {
        bucket,
        prefix: "repo".into(),
        region: None,
        endpoint: Some(endpoint),
        data_class: None,
    })
    .await;
    let err = store.get("data/ab/pack").await.unwrap_err();
    assert!(matches!(err, StoreError::Archived { .. }), "{err}");
    assert!(err.to_string().contains("rehydrate"), "{err}");
    store.start_rehydrate("data/ab/pack").await.unwrap();
    assert_eq!(store.get("data/ab/pack").await.unwrap(), Bytes::from_static(b"cold pack"));
}

#[tokio::test]
async fn azure_archived_blob_is_named_and_rehydrated() {
    let endpoint = azure_endpoint();
    let store = AzureStore::connect(
        AzureLocation {
            account: AZURITE_ACCOUNT.into(),
            container: unique_bucket("arch"),
            prefix: "repo".into(),
            endpoint: Some(endpoint),
            data_tier: None,
        },
        AzureCredential::AccountKey(AZURITE_KEY.into()),
    )
    .unwrap();
    store.create_container().await.unwrap();
    store.put("data/ab/pack", Bytes::from_static(b"cold pack")).await.unwrap();
    store.set_access_tier("data/ab/pack", AccessTier::Archive).await.unwrap();
    let err = store.get("data/ab/pack").await.unwrap_err();
    assert!(matches!(err, StoreError::Archived { .. }), "{err}");
    store.start_rehydrate("data/ab/pack").await.unwrap();
    assert_eq!(store.get("data/ab/pack").await.unwrap(), Bytes::from_static(b"cold pack"));
}
