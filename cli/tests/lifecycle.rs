//! Storage tiers on the emulators: data written in the class the location
//! asks for, the seed's lifecycle as S3 bucket rules (S3's minimums
//! respected, other rules kept), and Azure blobs moved to the archive tier by
//! age, with metadata left hot so a restore names what must be rehydrated.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
};
use lifeboat_integration_tests::services::{
    AZURITE_ACCOUNT, azure_container, azure_endpoint, azurite_connection_string, s3_client, s3_test_bucket,
};
use support::{Env, assert_same_tree, make_tree};

#[test]
fn s3_storage_classes_and_lifecycle_rules() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (s3, bucket) = s3_test_bucket(&rt, "tiers");
    let client = rt.block_on(s3_client(&s3));
    // A rule of the bucket's owner, which Lifeboat must keep.
    let foreign = LifecycleRule::builder()
        .id("logs-expire")
        .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
        .status(ExpirationStatus::Enabled)
        .expiration(LifecycleExpiration::builder().days(14).build())
        .build()
        .unwrap();
    rt.block_on(
        client
            .put_bucket_lifecycle_configuration()
            .bucket(&bucket)
            .lifecycle_configuration(BucketLifecycleConfiguration::builder().rules(foreign).build().unwrap())
            .send(),
    )
    .unwrap();

    let env = Env::new_at(&format!("s3://{bucket}/repo?endpoint={s3}&data_class=standard_ia"));
    let src = env.path("src");
    make_tree(&src);
    env.backup(&[&src]);
    let class_of = |key: &str| {
        let out = rt.block_on(client.head_object().bucket(&bucket).key(key).send()).unwrap();
        out.storage_class().map(|c| c.as_str().to_owned()).unwrap_or_else(|| "STANDARD".into())
    };
    let listed = rt.block_on(client.list_objects_v2().bucket(&bucket).prefix("repo/").send()).unwrap();
    let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect();
    let pack = keys.iter().find(|k| k.starts_with("repo/data/")).unwrap();
    let index = keys.iter().find(|k| k.starts_with("repo/index/")).unwrap();
    assert_eq!(class_of(pack), "STANDARD_IA");
    for meta in [index.as_str(), "repo/config"] {
        assert_eq!(class_of(meta), "STANDARD", "{meta} must stay in the hot class");
    }

    // Twice (from the example policy, then the built-in seed default): the
    // second run replaces Lifeboat's rules instead of adding more.
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/policy.yaml");
    for args in [&["repo", "lifecycle", "--policy", policy][..], &["repo", "lifecycle"]] {
        let out = env.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("from day 8 to day 30"), "S3's 30-day minimum is explained:\n{err}");
    }
    let rules = rt.block_on(client.get_bucket_lifecycle_configuration().bucket(&bucket).send()).unwrap();
    let rules = rules.rules();
    assert!(rules.iter().any(|r| r.id() == Some("logs-expire")), "the bucket's own rule was dropped");
    assert_eq!(rules.len(), 3, "{rules:?}");
    let data = rules.iter().find(|r| r.id() == Some("lifeboat:repo/data/")).expect("a rule for the packs");
    assert_eq!(data.filter().and_then(|f| f.prefix()), Some("repo/data/"));
    let steps: Vec<(String, i32)> = data
        .transitions()
        .iter()
        .map(|t| (t.storage_class().unwrap().as_str().to_owned(), t.days().unwrap()))
        .collect();
    assert_eq!(steps, [("STANDARD_IA".to_owned(), 30), ("GLACIER".to_owned(), 60), ("DEEP_ARCHIVE".to_owned(), 91)]);
    assert!(!rules.iter().any(|r| r.filter().and_then(|f| f.prefix()).is_some_and(|p| p.starts_with("repo/index"))));

    let bad = env.fails(&["repo", "lifecycle", "--warm-after", "40", "--cold-after", "10"]);
    assert!(bad.contains("cannot come before"), "{bad}");
    // A malformed policy: one line naming the file, the tier and the field; the rules stay.
    let malformed = env.path("bad.yaml");
    std::fs::write(&malformed, "storage_lifecycle:\n  warm:\n    age: 8-30 dayz\n    storage_class: S3 Standard-IA\n")
        .unwrap();
    let bad = env.fails(&["repo", "lifecycle", "--policy", malformed.to_str().unwrap()]);
    assert!(
        bad.contains("bad.yaml") && bad.contains("storage_lifecycle.warm: age") && bad.lines().count() == 1,
        "{bad}"
    );
    let after = rt.block_on(client.get_bucket_lifecycle_configuration().bucket(&bucket).send()).unwrap();
    assert_eq!(after.rules().len(), 3);
}

#[test]
fn azure_blobs_move_to_archive_and_metadata_stays_hot() {
    let azure = azure_endpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let container = rt.block_on(azure_container(&azure, "tiers"));
    let cs = azurite_connection_string(&azure);
    let env = Env::new_with(
        &format!("azure://{AZURITE_ACCOUNT}/{container}/repo?data_tier=cool"),
        &[("AZURE_STORAGE_CONNECTION_STRING", &cs)],
    );
    let src = env.path("src");
    make_tree(&src);
    let id = env.backup(&[&src]);

    // Written Cool; everything old enough (0 days here) goes to Archive.
    let out = env.run(&["repo", "lifecycle", "--warm-after", "0", "--cold-after", "0", "--archive-after", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("to Archive") && err.contains("metadata stays Hot"), "{err}");

    // Metadata and trees are still readable straight from the store (no
    // cache); the restore names a data pack to rehydrate.
    assert!(env.ok(&["snapshots", "--no-cache"]).contains(&id[..8]));
    let target = env.path("out");
    let restore = ["restore", &id, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()];
    let err = env.fails(&[&restore[..], &["--no-cache"]].concat());
    assert!(err.contains("rehydrated") && err.contains("data/") && !err.contains("tree/"), "{err}");

    env.ok(&["repo", "rehydrate"]);
    env.ok(&restore);
    assert_same_tree(&src, &target);
}
