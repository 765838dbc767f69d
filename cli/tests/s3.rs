//! The whole file backup/restore of the CLI against S3 (the emulator from
//! `deploy/services.sh`): every command works unchanged with an s3:// repository.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lifeboat_integration_tests::services::{s3_client, s3_test_bucket};
use support::{Env, assert_same_tree, make_tree, settle_times};

#[test]
fn files_round_trip_through_s3() {
    let (endpoint, bucket) = s3_test_bucket(&tokio::runtime::Runtime::new().unwrap(), "cli");
    let repo = format!("s3://{bucket}/prod/files?endpoint={endpoint}");
    let env = Env::new_at(&repo);

    let src = env.path("src");
    make_tree(&src);
    settle_times();
    let id = env.backup(&[&src]);
    let second = env.cmd().args(["backup", "files", src.to_str().unwrap()]).output().unwrap();
    assert!(String::from_utf8_lossy(&second.stderr).contains("read 0 files"));
    env.ok(&["verify", "--read-data"]);
    let listed = env.ok(&["snapshots"]);
    assert!(listed.contains(&id[..8]), "{listed}");

    let target = env.path("out");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &target);

    let err = env.fails(&["repo", "init"]);
    assert!(err.contains("already exists"), "{err}");

    // Packs moved to Glacier: a restore says they must be rehydrated, and
    // `repo rehydrate` brings them back (the emulator restores at once).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = s3_client(&endpoint).await;
        let listed = client.list_objects_v2().bucket(&bucket).prefix("prod/files/data/").send().await.unwrap();
        for obj in listed.contents() {
            let key = obj.key().unwrap();
            client
                .copy_object()
                .bucket(&bucket)
                .key(key)
                .copy_source(format!("{bucket}/{key}"))
                .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
                .send()
                .await
                .unwrap();
        }
    });
    let cold = env.path("cold");
    let err = env.fails(&["restore", &id, "--target", cold.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert!(err.contains("rehydrate"), "{err}");
    env.ok(&["repo", "rehydrate"]);
    env.ok(&["restore", &id, "--target", cold.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &cold);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn metadata_cache_serves_reads_and_a_damaged_entry_is_fetched_again() {
    let (endpoint, bucket) = s3_test_bucket(&tokio::runtime::Runtime::new().unwrap(), "cache");
    let env = Env::new_at(&format!("s3://{bucket}/repo?endpoint={endpoint}"));
    let src = env.path("src");
    make_tree(&src);
    settle_times();
    let id = env.backup(&[&src]);

    // Indexes, the snapshot and the tree packs were kept while writing.
    let cache = env.path("cache");
    let cached = files_under(&cache);
    for kind in ["/index/", "/snapshots/", "/tree/"] {
        assert!(cached.iter().any(|p| p.to_string_lossy().contains(kind)), "no {kind} in the cache: {cached:?}");
    }

    // Damage every cached object: each is detected, dropped and fetched again.
    for path in &cached {
        let mut bytes = std::fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(path, &bytes).unwrap();
    }
    assert!(env.ok(&["snapshots"]).contains(&id[..8]));
    let target = env.path("out");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &target);
    let second = env.run(&["backup", "files", src.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&second.stderr).contains("read 0 files"), "the parent's trees were not usable");
    env.ok(&["verify"]);

    // Without the cache, the same answers straight from the store.
    std::fs::remove_dir_all(&cache).unwrap();
    assert!(env.ok(&["snapshots", "--no-cache"]).contains(&id[..8]));
    assert!(!cache.exists(), "--no-cache wrote a cache");
}
