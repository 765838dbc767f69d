//! Objects bound to their names: a snapshot or index copied over another's
//! name is refused and named, in a new repository and in one written by the
//! previous release once `repo migrate` has run; that older repository
//! keeps opening, verifying and restoring before and after.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use support::Env;

/// A copy of the format-1 repository in `cli/tests/fixtures/format-1`, and
/// an environment that points at it.
fn format_1_copy() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-1");
    support::copy_tree(&fixture.join("repo"), &dir.path().join("repo"));
    let key = dir.path().join("key");
    fs::copy(fixture.join("master.key"), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let repo = dir.path().join("repo");
    Env { location: repo.display().to_string(), repo, key, dir, vars: Vec::new() }
}

/// The fixture's snapshot ids: the first backup, then the second.
const FIRST: &str = "591f8afa";
const SECOND: &str = "4ff6d428";

fn snapshot_file(env: &Env, prefix: &str) -> PathBuf {
    fs::read_dir(env.repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .unwrap()
}

/// Restores snapshot `id`'s tree and checks the file that differs between them.
fn restores(env: &Env, id: &str, a_txt: &str) {
    let target = env.path(&format!("restored-{id}"));
    let _ = fs::remove_dir_all(&target);
    env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
    let tree = find_dir(&target, "tree");
    assert_eq!(fs::read_to_string(tree.join("docs/a.txt")).unwrap(), a_txt);
    assert_eq!(fs::read(tree.join("big.txt")).unwrap(), vec![b'x'; 300_000]);
    assert_eq!(fs::read_link(tree.join("link")).unwrap(), Path::new("docs/a.txt"));
    assert_eq!(fs::metadata(tree.join("docs/b.txt")).unwrap().permissions().mode() & 0o777, 0o640);
}

fn find_dir(root: &Path, name: &str) -> PathBuf {
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() == name {
                    return p;
                }
                stack.push(p);
            }
        }
    }
    panic!("no {name} below {}", root.display())
}

#[test]
fn a_repository_of_the_previous_release_keeps_working_and_migrates() {
    let env = format_1_copy();
    let listed = env.ok(&["snapshots"]);
    assert!(listed.contains(FIRST) && listed.contains(SECOND), "{listed}");
    let out = env.run(&["verify", "--read-data"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("format 1") && stderr.contains("repo migrate"), "{stderr}");
    restores(&env, FIRST, "the first file\n");
    restores(&env, SECOND, "changed\n");

    let keyring_before = fs::read(env.repo.join("keys/b4877cb62c1c20ab")).unwrap();
    let out = env.run(&["repo", "migrate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Two indexes, two snapshots and one WAL file.
    assert!(stderr.contains("from format 1 to 2: 5 objects sealed again"), "{stderr}");
    let config: serde_json::Value = serde_json::from_slice(&fs::read(env.repo.join("config")).unwrap()).unwrap();
    assert_eq!(config["version"], 2);
    let again = env.ok_stderr(&["repo", "migrate"]);
    assert!(again.contains("already of format 2: 0 objects sealed again, 5 already"), "{again}");

    let out = env.run(&["verify", "--read-data"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("format 1"), "{stderr}");
    restores(&env, FIRST, "the first file\n");
    restores(&env, SECOND, "changed\n");
    // A new backup lands beside the migrated ones.
    let src = env.path("new-src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "after the migration").unwrap();
    env.backup(&[&src]);

    // Putting the old keyring back (to reopen the door to unbound objects)
    // is refused.
    let migrated_keyring = fs::read(env.repo.join("keys/b4877cb62c1c20ab")).unwrap();
    fs::write(env.repo.join("keys/b4877cb62c1c20ab"), &keyring_before).unwrap();
    let err = env.fails(&["snapshots"]);
    assert!(err.contains("object format 1") && err.contains("old copy"), "{err}");
    fs::write(env.repo.join("keys/b4877cb62c1c20ab"), &migrated_keyring).unwrap();

    swapped_snapshot_is_refused_and_named(&env, FIRST, SECOND);
}

#[test]
fn a_snapshot_copied_over_another_is_refused_and_named() {
    let env = Env::new();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), "the first file\n").unwrap();
    let first = env.backup(&[&src]);
    fs::write(src.join("a.txt"), "changed\n").unwrap();
    let second = env.backup(&[&src]);
    swapped_snapshot_is_refused_and_named(&env, &first[..8], &second[..8]);

    // An index object under another's name is named too.
    let mut indexes: Vec<PathBuf> = fs::read_dir(env.repo.join("index")).unwrap().map(|e| e.unwrap().path()).collect();
    indexes.sort();
    assert!(indexes.len() >= 2, "{indexes:?}");
    fs::copy(&indexes[0], &indexes[1]).unwrap();
    let out = env.run(&["verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let (a, b) = (indexes[0].file_name().unwrap().to_str().unwrap(), indexes[1].file_name().unwrap().to_str().unwrap());
    assert!(stderr.contains(&format!("index/{b}: holds the object named index/{a}")), "{stderr}");
}

/// Copies the first snapshot's object over the second's name: reading the
/// second is refused naming it, `verify` says whose copy it is, and the
/// first still restores.
fn swapped_snapshot_is_refused_and_named(env: &Env, first: &str, second: &str) {
    let (a, b) = (snapshot_file(env, first), snapshot_file(env, second));
    fs::copy(&a, &b).unwrap();
    let b_key = format!("snapshots/{}", b.file_name().unwrap().to_str().unwrap());
    let a_key = format!("snapshots/{}", a.file_name().unwrap().to_str().unwrap());

    let err = env.fails(&["restore", second, "--target", env.path("never").to_str().unwrap()]);
    assert!(err.contains(&b_key) && err.contains("another object stored under this name"), "{err}");
    assert!(!env.path("never").exists());

    let out = env.run(&["verify", "--read-data"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("{b_key}: holds the object named {a_key}")), "{stderr}");

    let out = env.run(&["snapshots"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(first) && !stdout.contains(second), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&b_key));
    let target = env.path("first-after-swap");
    env.ok(&["restore", first, "--target", target.to_str().unwrap()]);
}
