//! The Azure Blob store against Azurite (from `deploy/services.sh`): the
//! store contract, and clear errors for wrong credentials and a missing
//! container (Azurite checks signatures; moto does not).

use bytes::Bytes;
use lifeboat_common::store::{AzureCredential, AzureLocation, AzureStore, ObjectStore, StoreError};
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
async fn azure_store_round_trip() {
    let endpoint = azure_endpoint();
    let container = unique_bucket("az");
    let s = store(&endpoint, &container, "repo/one", AzureCredential::AccountKey(AZURITE_KEY.into()));
    s.create_container().await.unwrap();
    s.put("config", Bytes::from_static(b"cfg")).await.unwrap();
    s.put("data/ab/abcd", Bytes::from_static(b"0123456789")).await.unwrap();
    assert_eq!(s.get("config").await.unwrap(), Bytes::from_static(b"cfg"));
    assert_eq!(s.get_range("data/ab/abcd", 2..5).await.unwrap(), Bytes::from_static(b"234"));
    assert_eq!(s.head("data/ab/abcd").await.unwrap(), 10);
    let listed = s.list("data/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "data/ab/abcd");
    let err = s.put_if_absent("config", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert!(s.get("nothing").await.unwrap_err().is_not_found());
    let err = s.get_range("data/ab/abcd", 5..20).await.unwrap_err();
    assert!(matches!(err, StoreError::Truncated { .. }), "{err}");
    let big: Vec<u8> = (0..20usize << 20).map(|i| (i.wrapping_mul(2654435761) >> 9) as u8).collect();
    s.put("data/ff/big", Bytes::from(big.clone())).await.unwrap();
    assert!(s.get("data/ff/big").await.unwrap() == big);
    s.delete("data/ab/abcd").await.unwrap();
    s.delete("data/ab/abcd").await.unwrap();
    assert!(s.head("data/ab/abcd").await.unwrap_err().is_not_found());
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
