//! Back up a real tree and restore it bit-exact, with its metadata.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;

use support::{Env, assert_same_tree, make_tree, settle_times};

#[test]
fn backup_restore_is_bit_exact_with_metadata() {
    let (env, src, id) = Env::with_backup();
    assert_eq!(id.len(), 64, "prints the snapshot id: {id:?}");

    env.ok(&["verify", "--read-data"]);
    let target = env.path("restored");
    env.ok(&["restore", &id[..8], "--target", target.to_str().unwrap()]);
    // The snapshot keeps absolute paths: the tree lands under target/<src path>.
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &restored);

    // --path restores one directory's contents straight into the target.
    let sub = env.path("sub");
    env.ok(&["restore", "latest", "--target", sub.to_str().unwrap(), "--path", src.join("odd").to_str().unwrap()]);
    assert_same_tree(&src.join("odd"), &sub);
}

#[test]
fn unchanged_files_are_not_read_again_and_changes_are_found() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    settle_times();
    env.backup(&[&src]);
    let second = env.cmd().args(["backup", "files", src.to_str().unwrap()]).output().unwrap();
    assert!(second.status.success());
    let summary = String::from_utf8_lossy(&second.stderr);
    assert!(summary.contains("read 0 files"), "unchanged backup re-read files: {summary}");

    fs::write(src.join("logs/app-000.log"), "rotated\n").unwrap();
    fs::write(src.join("new-file"), "new\n").unwrap();
    let third = env.cmd().args(["backup", "files", src.to_str().unwrap()]).output().unwrap();
    let summary = String::from_utf8_lossy(&third.stderr);
    assert!(summary.contains("read 2 files"), "expected exactly the 2 changed files read: {summary}");

    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &target);

    let listed = env.ok(&["snapshots", "--json"]);
    let snaps: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 3);
    assert!(snaps[2]["parent"].is_string(), "third snapshot names its parent");
}

#[test]
fn excludes_and_tags() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let out = env.ok(&[
        "backup",
        "files",
        src.to_str().unwrap(),
        "--exclude",
        "*.log",
        "--exclude",
        &format!("{}/configs", src.display()),
        "--tag",
        "nightly",
    ]);
    let target = env.path("out");
    env.ok(&["restore", out.trim(), "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert!(target.join("media").is_dir());
    assert!(!target.join("configs").exists(), "excluded directory restored");
    assert!(fs::read_dir(target.join("logs")).unwrap().next().is_none(), "excluded logs restored");
    let listed = env.ok(&["snapshots"]);
    assert!(listed.contains("[nightly]"), "{listed}");
}

#[test]
fn restore_never_deletes_without_delete_and_mirrors_with_it() {
    let (env, src, _) = Env::with_backup();
    let target = env.path("target");
    fs::create_dir_all(target.join("media")).unwrap();
    fs::write(target.join("keep-me.txt"), "operator's file").unwrap();
    fs::write(target.join("media/extra.bin"), "extra").unwrap();

    let args = ["restore", "latest", "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()];
    env.ok(&args);
    assert_eq!(fs::read_to_string(target.join("keep-me.txt")).unwrap(), "operator's file");
    assert!(target.join("media/extra.bin").exists());

    let mut with_delete = args.to_vec();
    with_delete.push("--delete");
    env.ok(&with_delete);
    assert!(!target.join("keep-me.txt").exists());
    assert_same_tree(&src, &target);
}

#[test]
fn several_roots_and_a_single_file() {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("one"), "1").unwrap();
    fs::write(b.join("two"), "2").unwrap();
    env.backup(&[&a, &b.join("two")]);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let base = target.join(env.dir.path().strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(base.join("a/one")).unwrap(), "1");
    assert_eq!(fs::read_to_string(base.join("b/two")).unwrap(), "2");
}

#[test]
fn repository_flags_before_the_subcommand_and_a_closed_stdout() {
    let (env, _src, id) = Env::with_backup();
    // restic's habit: -r (and any repository flag) before the subcommand.
    let out = env
        .cmd()
        .env_remove("LIFEBOAT_REPO")
        .env_remove("LIFEBOAT_KEY_FILE")
        .args(["-r", &env.location, "--key-file", env.key.to_str().unwrap(), "snapshots"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id[..8]));
    let out = env.cmd().env_remove("LIFEBOAT_REPO").args(["--repo", &env.location, "snapshots"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `lifeboat snapshots | head -0`: the reader is gone before a line is
    // written; the command ends quietly, with SIGPIPE's status.
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    let out = env.cmd().arg("snapshots").stdout(std::process::Stdio::from(writer)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked") && stderr.trim().is_empty(), "{stderr}");
}
