//! A repository replicated across S3 and Azure Blob (the emulators from
//! `deploy/services.sh`): every write lands in both, a restore with the
//! primary down reads everything from the secondary, and a backup whose
//! store is unreachable fails cleanly.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lifeboat_integration_tests::services::{
    AZURITE_ACCOUNT, azure_container, azure_endpoint, azurite_connection_string, create_bucket, s3_endpoint,
    s3_test_credentials, unique_bucket,
};
use support::{Env, assert_same_tree, make_tree};

#[test]
fn replicated_s3_and_azure() {
    let (s3, azure) = (s3_endpoint(), azure_endpoint());
    s3_test_credentials();
    let bucket = unique_bucket("rep");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_bucket(&s3, &bucket));
    let container = rt.block_on(azure_container(&azure, "rep"));
    // SAFETY: set once, before any thread of this test reads the environment.
    unsafe { std::env::set_var("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(&azure)) };

    let primary = format!("s3://{bucket}/repo?endpoint={s3}");
    let secondary = format!("azure://{AZURITE_ACCOUNT}/{container}/repo");
    let env = Env::new_at(&format!("{primary},{secondary}"));
    let src = env.path("src");
    make_tree(&src);
    let id = env.backup(&[&src]);

    // Each store on its own holds the whole repository.
    for alone in [&primary, &secondary] {
        let out = env.cmd().args(["verify", "--read-data"]).env("LIFEBOAT_REPO", alone).output().unwrap();
        assert!(out.status.success(), "{alone}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // The primary is down (nothing listens on port 9): restore reads the secondary.
    let dead_primary = format!("s3://{bucket}/repo?endpoint=http://127.0.0.1:9");
    let target = env.path("out");
    let out = env
        .cmd()
        .args(["restore", &id, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()])
        .env("LIFEBOAT_REPO", format!("{dead_primary},{secondary}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_same_tree(&src, &target);

    // With every copy required, a backup cannot succeed while the primary is down.
    let before = env.ok(&["snapshots", "--json"]);
    let out = env
        .cmd()
        .args(["backup", "files", src.to_str().unwrap(), "--force"])
        .env("LIFEBOAT_REPO", format!("{dead_primary},{secondary}"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("127.0.0.1:9"), "{err}");
    assert_eq!(before, env.ok(&["snapshots", "--json"]), "a failed backup left a snapshot");
    env.ok(&["verify"]);
}
