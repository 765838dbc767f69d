//! `verify --stores` and `repo sync` on a repository replicated across two
//! local directories: every copy is judged on its own, a damaged copy is
//! replaced from the good one whichever store holds it, what cannot be
//! judged is never overwritten, and `--delete-extra` removes only packs
//! that no index anywhere needs.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::{Env, make_tree};

/// Every file under `dir`, recursively, as paths relative to it.
fn objects(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(prefix)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// Changes one hex digit in the middle of a file: still the same size and
/// still parseable, but no longer what was written.
fn alter_hex_digit(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let at = (bytes.len() / 2..bytes.len()).find(|&i| bytes[i].is_ascii_hexdigit()).unwrap();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    fs::write(path, bytes).unwrap();
}

#[test]
fn stores_are_judged_copy_by_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let env = Env::new_at(&format!("{},{}", a.display(), b.display()));
    let src = env.path("src");
    make_tree(&src);
    env.backup(&[&src]);
    env.ok(&["verify", "--stores", "--read-data"]);

    // The primary's keyring copy is altered but still parses: it no longer
    // unwraps, so the secondary's copy wins.
    let keyring = objects(&a, "keys").pop().unwrap();
    alter_hex_digit(&a.join(&keyring));
    let err = env.fails(&["verify", "--stores"]);
    let named = format!("{} in local directory {} is damaged", keyring.display(), a.display());
    assert!(err.contains(&named), "{err}");
    env.ok(&["repo", "sync"]);

    // The primary loses a whole backup's index and packs: sync, even with
    // --delete-extra, copies them back instead of deleting the last copies.
    for p in objects(&a, "index").into_iter().chain(objects(&a, "data")).chain(objects(&a, "tree")) {
        fs::remove_file(a.join(p)).unwrap();
    }
    let out = env.run(&["repo", "sync", "--delete-extra"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deleted 0"));
    assert_eq!(objects(&a, "data"), objects(&b, "data"));
    let alone = env.cmd().args(["verify", "--read-data"]).env("LIFEBOAT_REPO", &a).output().unwrap();
    assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));

    // A pack no index refers to, only in the secondary (an interrupted
    // backup's leftover): --delete-extra removes it; plain sync would copy it.
    let junk = b"left by an interrupted backup";
    let hex = blake3::hash(junk).to_hex().to_string();
    let leftover = b.join(format!("data/{}/{hex}", &hex[..2]));
    fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    fs::write(&leftover, junk).unwrap();
    let out = env.run(&["repo", "sync", "--delete-extra"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("deleted 1"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!leftover.exists());

    // An object nobody can judge, different in each store: reported, and
    // neither copy is overwritten.
    for (store, text) in [(&a, "one"), (&b, "two")] {
        fs::create_dir_all(store.join("notes")).unwrap();
        fs::write(store.join("notes/x"), text).unwrap();
    }
    let err = env.fails(&["repo", "sync"]);
    assert!(err.contains("notes/x") && err.contains("none can be proven right"), "{err}");
    assert_eq!(fs::read(a.join("notes/x")).unwrap(), b"one");
    assert_eq!(fs::read(b.join("notes/x")).unwrap(), b"two");
}

#[test]
fn restore_reads_a_good_copy_when_the_primary_one_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let env = Env::new_at(&format!("{},{}", a.display(), b.display()));
    let src = env.path("src");
    make_tree(&src);
    let id = env.backup(&[&src]);
    // Flip a byte in every data pack of the primary.
    for pack in objects(&a, "data") {
        let mut bytes = fs::read(a.join(&pack)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        fs::write(a.join(&pack), bytes).unwrap();
    }
    let target = env.path("out");
    env.ok(&["restore", &id, "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    support::assert_same_tree(&src, &target);
    // The primary alone cannot do it: the damage is real.
    let out = env
        .cmd()
        .args(["restore", &id, "--target", env.path("alone").to_str().unwrap(), "--path", src.to_str().unwrap()])
        .env("LIFEBOAT_REPO", &a)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
