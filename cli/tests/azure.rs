//! The whole file backup/restore of the CLI against Azure Blob (Azurite from
//! `deploy/services.sh`), authenticated by a connection string.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lifeboat_integration_tests::services::{
    AZURITE_ACCOUNT, AZURITE_KEY, azure_container, azure_endpoint, azurite_connection_string,
};
use support::{Env, assert_same_tree, make_tree};

#[test]
fn files_round_trip_through_azure() {
    let endpoint = azure_endpoint();
    let container = tokio::runtime::Runtime::new().unwrap().block_on(azure_container(&endpoint, "cli"));
    // SAFETY: set once, before any thread of this test reads the environment.
    unsafe { std::env::set_var("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(&endpoint)) };
    let env = Env::new_at(&format!("azure://{AZURITE_ACCOUNT}/{container}/prod/files"));

    let src = env.path("src");
    make_tree(&src);
    let id = env.backup(&[&src]);
    env.ok(&["verify", "--read-data"]);
    let target = env.path("out");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &target);
    let err = env.fails(&["repo", "init"]);
    assert!(err.contains("already exists"), "{err}");

    // The account key from a file (container-secret style), endpoint in the location.
    let located = format!("azure://{AZURITE_ACCOUNT}/{container}/prod/files?endpoint={endpoint}");
    let key_file = env.path("azure-key");
    std::fs::write(&key_file, format!("{AZURITE_KEY}\n")).unwrap();
    let with_key_file = |key_file: &std::path::Path| {
        env.cmd()
            .args(["snapshots"])
            .env("LIFEBOAT_REPO", &located)
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env("AZURE_STORAGE_KEY_FILE", key_file)
            .output()
            .unwrap()
    };
    let out = with_key_file(&key_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id[..8]));
    // A wrong key is refused with one clear line; a missing file is named.
    std::fs::write(&key_file, "d3Jvbmcga2V5").unwrap();
    let err = String::from_utf8(with_key_file(&key_file).stderr).unwrap();
    assert!(err.contains("authentication failed") && err.lines().count() == 1, "{err}");
    let err = String::from_utf8(with_key_file(&env.path("no-such-file")).stderr).unwrap();
    assert!(err.contains("AZURE_STORAGE_KEY_FILE") && err.contains("no-such-file"), "{err}");
}
