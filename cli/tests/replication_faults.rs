//! Faults in a replicated S3 + Azure repository, against real emulators: a
//! store server killed mid-backup, a secondary that is down while backups
//! run with write policy `primary` (and a backup killed meanwhile), and a
//! copy damaged in one store.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_common::store::{AzureCredential, AzureLocation, AzureStore, ObjectStore, open_location};
use lifeboat_integration_tests::services::{
    AZURITE_ACCOUNT, AZURITE_KEY, AZURITE_SAVE_INTERVAL, OwnAzurite, azure_container, azure_endpoint,
    azurite_connection_string, s3_test_bucket, unique_bucket,
};
use lifeboat_integration_tests::tree_gen::{TreeSpec, generate_tree};
use support::{Env, assert_same_tree, make_tree};

fn azure_store(endpoint: &str, container: &str) -> AzureStore {
    let location = AzureLocation {
        account: AZURITE_ACCOUNT.into(),
        container: container.into(),
        prefix: "repo".into(),
        endpoint: Some(endpoint.into()),
        data_tier: None,
    };
    AzureStore::connect(location, AzureCredential::AccountKey(AZURITE_KEY.into())).unwrap()
}

/// Entries waiting in the outbox under `state`.
fn outbox_entries(state: &Path) -> usize {
    fn walk(dir: &Path, in_put: bool) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() {
                    walk(&path, in_put || e.file_name() == "put" || e.file_name() == "delete")
                } else {
                    usize::from(in_put && !e.file_name().to_string_lossy().starts_with(".tmp-"))
                }
            })
            .sum()
    }
    walk(&state.join("outbox"), false)
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn primary_killed_mid_backup_fails_cleanly_and_a_rerun_succeeds() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s3, bucket) = s3_test_bucket(&rt, "kill");
    let data = tempfile::tempdir().unwrap();
    let mut azurite = OwnAzurite::new(data.path());
    azurite.start();
    let container = rt.block_on(azure_container(&azurite.endpoint(), "kill"));
    let primary = format!("azure://{AZURITE_ACCOUNT}/{container}/repo?endpoint={}", azurite.endpoint());
    let secondary = format!("s3://{bucket}/repo?endpoint={s3}");
    let cs = azurite_connection_string(&azurite.endpoint());
    let env = Env::new_with(&format!("{primary},{secondary}"), &[("AZURE_STORAGE_CONNECTION_STRING", &cs)]);
    let src = env.path("src");
    generate_tree(&src, &TreeSpec { media_files: 10, media_size: 16 << 20, ..TreeSpec::small() }).unwrap();
    // The repository's config and keys must outlive the kill.
    std::thread::sleep(AZURITE_SAVE_INTERVAL);

    let mut cmd = env.cmd();
    cmd.args(["backup", "files", src.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let probe = azure_store(&azurite.endpoint(), &container);
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(probe.list("data/")).map_or(0, |l| l.len()) < 2 {
        assert!(Instant::now() < deadline, "the backup wrote no packs in a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
    azurite.kill();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = stderr_of(&out);
    println!("backup with its primary killed: {err}");
    assert!(!out.status.success(), "the backup survived its primary's death: nothing was tested\n{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "no bounded failure: {:?}", started.elapsed());
    assert!(err.contains(&format!("127.0.0.1:{}", azurite.port())), "the dead store is named:\n{err}");
    assert_eq!(err.lines().filter(|l| l.contains("error:")).count(), 1, "one clear error line:\n{err}");
    // No snapshot appeared (the secondary answers for the dead primary).
    let listed = env.ok(&["snapshots", "--json"]);
    assert_eq!(listed.trim(), "[]", "a failed backup left a snapshot");

    azurite.start();
    let id = env.backup(&[&src]);
    for alone in [&primary, &secondary] {
        let out = env.cmd().args(["verify", "--read-data"]).env("LIFEBOAT_REPO", alone).output().unwrap();
        assert!(out.status.success(), "{alone}: {}", stderr_of(&out));
    }
    // The killed run left packs in the secondary that the primary lost or
    // never got; sync makes the stores agree.
    env.ok(&["repo", "sync"]);
    env.ok(&["verify", "--stores"]);
    let target = env.path("out");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &target);
}

#[test]
fn policy_primary_outlives_a_dead_secondary_and_a_killed_agent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s3, bucket) = s3_test_bucket(&rt, "outbox");
    let data = tempfile::tempdir().unwrap();
    // The secondary is down from the start: nothing listens on its port yet.
    let mut azurite = OwnAzurite::new(data.path());
    let container = unique_bucket("outbox");
    let primary = format!("s3://{bucket}/repo?endpoint={s3}");
    let secondary = format!("azure://{AZURITE_ACCOUNT}/{container}/repo?endpoint={}", azurite.endpoint());
    let cs = azurite_connection_string(&azurite.endpoint());
    let env = Env::new_with(
        &format!("{primary},{secondary}"),
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs), ("LIFEBOAT_WRITE_POLICY", "primary")],
    );
    let state = env.path("state");

    let src = env.path("src");
    make_tree(&src);
    let out = env.run(&["backup", "files", src.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("copy lag") && err.contains(&container), "the lag is reported:\n{err}");
    let first = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let waiting = outbox_entries(&state);
    assert!(waiting > 0, "nothing in the outbox");
    let status = env.ok(&["repo", "status"]);
    assert!(status.contains(&format!("{waiting} objects")) && status.contains(&container), "{status}");

    // A second backup is killed mid-way (the agent dies too).
    let big = env.path("big");
    generate_tree(&big, &TreeSpec { media_files: 12, media_size: 16 << 20, ..TreeSpec::small() }).unwrap();
    let mut cmd = env.cmd();
    cmd.args(["backup", "files", big.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_entries(&state) < waiting + 3 {
        assert!(Instant::now() < deadline, "the second backup spooled nothing in a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    assert!(outbox_entries(&state) > waiting);

    // The secondary comes back; the next run drains the outbox.
    azurite.start();
    rt.block_on(azure_store(&azurite.endpoint(), &container).create_container()).unwrap();
    let out = env.run(&["backup", "files", src.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(out.status.success() && !err.contains("copy lag"), "{err}");
    assert_eq!(outbox_entries(&state), 0, "the outbox did not drain");
    assert!(env.ok(&["repo", "status"]).contains(": 0 objects"));

    // The secondary alone holds every snapshot, readable.
    let alone = |args: &[&str]| env.cmd().args(args).env("LIFEBOAT_REPO", &secondary).output().unwrap();
    let out = alone(&["verify", "--read-data"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listed = String::from_utf8(alone(&["snapshots", "--json"]).stdout).unwrap();
    assert!(listed.contains(&first), "{listed}");
    let target = env.path("out");
    let out = alone(&["restore", &first, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_same_tree(&src, &target);

    env.ok(&["repo", "sync"]);
    env.ok(&["verify", "--stores"]);
}

#[test]
fn a_copy_damaged_in_one_store_is_named_and_mended() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s3, bucket) = s3_test_bucket(&rt, "mend");
    let azure = azure_endpoint();
    let container = rt.block_on(azure_container(&azure, "mend"));
    let primary = format!("s3://{bucket}/repo?endpoint={s3}");
    let secondary = format!("azure://{AZURITE_ACCOUNT}/{container}/repo");
    let cs = azurite_connection_string(&azure);
    let env = Env::new_with(&format!("{primary},{secondary}"), &[("AZURE_STORAGE_CONNECTION_STRING", &cs)]);
    let src = env.path("src");
    make_tree(&src);
    env.backup(&[&src]);
    env.ok(&["verify", "--stores", "--read-data"]);

    // Flip one byte of a pack in Azure and of an index object in S3 (same sizes).
    let s3_store = rt.block_on(open_location(&primary)).unwrap();
    let az_store: Arc<dyn ObjectStore> = Arc::new(azure_store(&azure, &container));
    let damage = |store: &Arc<dyn ObjectStore>, prefix: &str| {
        let key = rt.block_on(store.list(prefix)).unwrap().into_iter().next().unwrap().key;
        let mut bytes = rt.block_on(store.get(&key)).unwrap().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        rt.block_on(store.put(&key, Bytes::from(bytes))).unwrap();
        key
    };
    let pack = damage(&az_store, "data/");
    let index = damage(&s3_store, "index/");

    // Without --read-data packs are compared by size; small objects are always read.
    let err = env.fails(&["verify", "--stores"]);
    assert!(err.contains(&index) && err.contains("damaged") && !err.contains(&pack), "{err}");
    let err = env.fails(&["verify", "--stores", "--read-data"]);
    assert!(err.contains(&index) && err.contains(&pack), "{err}");
    assert!(err.contains(&format!("{pack} in azure://")), "the store holding the bad copy is named:\n{err}");

    let out = env.run(&["repo", "sync", "--read-data"]);
    let err = stderr_of(&out);
    assert!(out.status.success() && err.contains("copied 2 objects"), "{err}");
    env.ok(&["verify", "--stores", "--read-data"]);
    for alone in [&primary, &secondary] {
        let out = env.cmd().args(["verify", "--read-data"]).env("LIFEBOAT_REPO", alone).output().unwrap();
        assert!(out.status.success(), "{alone}: {}", stderr_of(&out));
    }
}
