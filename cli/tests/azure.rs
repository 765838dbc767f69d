//! The whole file backup/restore of the CLI against Azure Blob (Azurite from
//! `deploy/services.sh`), authenticated by a connection string.

mod support;

use lifeboat_integration_tests::services::{
    AZURITE_ACCOUNT, azure_container, azure_endpoint, azurite_connection_string,
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
}
