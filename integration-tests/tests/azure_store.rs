//! The Azure Blob store against Azurite (from `deploy/services.sh`): clear
//! errors for wrong credentials and a missing container (Azurite checks
//! signatures; moto does not). The store contract itself is checked by
//! `store_conformance.rs`, as for every store.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use lifeboat_common::store::{AzureCredential, AzureLocation, AzureStore, ObjectStore};
use lifeboat_integration_tests::services::{AZURITE_ACCOUNT, AZURITE_KEY, azure_endpoint, unique_bucket};

fn store(endpoint: &str, container: &str, prefix: &str, credential: AzureCredential) -> AzureStore {
    AzureStore::connect(
        AzureLocation {
            account: AZURITE_ACCOUNT.into(),
            container: container.into(),
            prefix: prefix.into(),
            endpoint: Some(endpoint.into()),
            data_tier: None,
        },
        credential,
    )
    .unwrap()
}

#[tokio::test]
async fn wrong_key_and_missing_container_are_clear() {
    let endpoint = azure_endpoint();
    let container = unique_bucket("azw");
    let good = store(&endpoint, &container, "", AzureCredential::AccountKey(AZURITE_KEY.into()));
    good.create_container().await.unwrap();
    // A valid base64 key that is not the account's.
    let wrong = store(&endpoint, &container, "", AzureCredential::AccountKey("d3Jvbmcga2V5IGZvciB0ZXN0cw==".into()));
    let err = wrong.get("config").await.unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
    let missing = store(&endpoint, &unique_bucket("none"), "", AzureCredential::AccountKey(AZURITE_KEY.into()));
    let err = missing.put("config", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
