//! The way back: a lost or damaged index is rebuilt from the packs (also
//! while a backup runs), and snapshots whose data is gone are found and,
//! when asked, forgotten, after which the repository verifies clean.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::PathBuf;

use support::{Env, assert_same_tree, files_below};

#[test]
fn a_lost_index_is_rebuilt_from_the_packs_even_while_a_backup_runs() {
    let (env, src, first) = Env::with_backup();
    for index in files_below(&env.repo.join("index")) {
        fs::remove_file(index).unwrap();
    }
    let err = env.fails(&["verify"]);
    assert!(err.contains("not in any index"), "{err}");

    // A backup runs while the index is rebuilt: both end whole.
    let other = env.path("other");
    fs::create_dir_all(&other).unwrap();
    for i in 0..16 {
        fs::write(other.join(format!("f{i}")), format!("{i}").repeat(500_000)).unwrap();
    }
    let backup = env
        .cmd()
        .args(["backup", "files", other.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = env.run(&["repair", "index", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["packs_added"].as_u64().unwrap() >= 2, "{report}");
    let backup = backup.wait_with_output().unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    let second = String::from_utf8_lossy(&backup.stdout).trim().to_owned();

    env.ok(&["verify", "--read-data"]);
    let restored = env.path("restored");
    env.ok(&["restore", &first, "--target", restored.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &restored);
    let restored = env.path("restored-other");
    env.ok(&["restore", &second, "--target", restored.to_str().unwrap(), "--path", other.to_str().unwrap()]);
    assert_same_tree(&other, &restored);
}

#[test]
fn a_damaged_index_is_replaced() {
    let (env, src, id) = Env::with_backup();
    let index = files_below(&env.repo.join("index"))[0].clone();
    let full = fs::read(&index).unwrap();
    fs::write(&index, &full[..full.len() / 3]).unwrap();
    env.fails(&["verify"]);
    let stderr = env.ok_stderr(&["repair", "index"]);
    assert!(stderr.contains("wrote 1 index objects"), "{stderr}");
    assert!(!index.exists());
    env.ok(&["verify", "--read-data"]);
    let restored = env.path("restored");
    env.ok(&["restore", &id, "--target", restored.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &restored);
}

#[test]
fn snapshots_whose_data_is_gone_are_listed_and_forgotten() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("gone.bin"), "only in the first backup".repeat(1000)).unwrap();
    let first = env.backup(&[&src]);
    let packs_before: Vec<PathBuf> = files_below(&env.repo.join("data"));
    fs::remove_file(src.join("gone.bin")).unwrap();
    fs::write(src.join("kept.bin"), "in the second backup".repeat(1000)).unwrap();
    let second = env.backup(&[&src]);
    // The pack only the first backup needs is lost; a third snapshot object is truncated.
    for p in &packs_before {
        fs::remove_file(p).unwrap();
    }
    let third = env.backup(&[&src]);
    let third_file = env.repo.join("snapshots").join(&third);
    let bytes = fs::read(&third_file).unwrap();
    fs::write(&third_file, &bytes[..10]).unwrap();

    let err = env.fails(&["repair", "snapshots"]);
    assert!(err.contains(&format!("broken: snapshots/{first}: file /")) && err.contains("gone.bin: chunk"), "{err}");
    assert!(err.contains(&format!("broken: snapshots/{third}")), "{err}");
    assert!(!err.contains(&second), "{err}");
    assert!(err.contains("checked 2 snapshots: 2 broken"), "{err}");

    // The order that mends everything: the index from the packs left, then
    // the snapshots that still lack data.
    env.ok(&["repair", "index"]);
    let stderr = env.ok_stderr(&["repair", "snapshots", "--forget"]);
    assert!(stderr.contains(&format!("forgot: snapshots/{first}")), "{stderr}");
    env.ok(&["verify", "--read-data"]);
    let listed = env.ok(&["snapshots"]);
    assert!(listed.contains(&second[..8]) && !listed.contains(&first[..8]), "{listed}");
    let restored = env.path("restored");
    env.ok(&["restore", &second, "--target", restored.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &restored);
}
