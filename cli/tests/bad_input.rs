//! Bad input gets a clear error and loses no data: a wrong key, corrupt,
//! truncated or missing objects, a full disk.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_common::repo::format::tree::NodeKind;
use support::{Env, assert_same_tree_except};

/// The pack (as a path on disk) and byte offset of the first chunk of `file`
/// in the latest snapshot.
fn locate_chunk(env: &Env, file: &Path) -> (PathBuf, String, u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = env.open_repo(&rt);
    rt.block_on(async {
        let (_, snap) = repo.find_snapshot("latest").await.unwrap();
        let mut tree = repo.load_tree(&snap.tree).await.unwrap();
        let parts: Vec<_> = file.iter().skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            let node = tree.find(part.as_encoded_bytes()).unwrap().clone();
            match node.kind {
                NodeKind::Dir { subtree } => tree = repo.load_tree(&subtree).await.unwrap(),
                NodeKind::File { content } if i + 1 == parts.len() => {
                    let index = repo.index();
                    let loc = index.get(&content[0]).unwrap();
                    let key = loc.pack.key();
                    return (env.repo.join(&key), key, u64::from(loc.blob.offset));
                }
                _ => panic!("unexpected node"),
            }
        }
        panic!("{} not found", file.display())
    })
}

#[test]
fn wrong_key_is_refused_and_nothing_is_written() {
    let (env, src, _) = Env::with_backup();
    let before = env.repo_state();
    let stranger = env.path("stranger.key");
    env.ok(&["key", "generate", "--out", stranger.to_str().unwrap()]);
    for args in [vec!["backup", "files", src.to_str().unwrap()], vec!["snapshots"], vec!["verify"]] {
        let out = env.cmd().args(&args).env("LIFEBOAT_KEY_FILE", &stranger).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("wrong key"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    }
    assert_eq!(before, env.repo_state(), "the repository changed");

    // A damaged key file is named too.
    fs::write(&stranger, "not a key").unwrap();
    let out = env.cmd().arg("snapshots").env("LIFEBOAT_KEY_FILE", &stranger).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("stranger.key"));
}

#[test]
fn key_generate_refuses_to_overwrite() {
    let env = Env::new();
    let before = fs::read(&env.key).unwrap();
    let err = env.fails(&["key", "generate", "--out", env.key.to_str().unwrap()]);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(before, fs::read(&env.key).unwrap());
}

#[test]
fn flipped_byte_is_named_by_verify_and_restore_and_other_files_restore() {
    let (env, src, _) = Env::with_backup();
    let victim = src.join("media/video-000.mp4");
    let (pack_path, pack_name, offset) = locate_chunk(&env, &victim);
    let mut bytes = fs::read(&pack_path).unwrap();
    bytes[offset as usize + 100] ^= 0x01;
    fs::write(&pack_path, bytes).unwrap();

    env.ok(&["verify"]); // structure is intact: nothing missing
    let err = env.fails(&["verify", "--read-data"]);
    assert!(err.contains(&pack_name), "verify must name the pack: {err}");

    let target = env.path("out");
    let err = env.fails(&["restore", "latest", "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert!(err.contains("video-000.mp4") && err.contains(&pack_name), "restore must name file and object: {err}");
    assert!(!target.join("media/video-000.mp4").exists(), "a damaged file must not pass for restored");
    // Everything else came back intact.
    assert_same_tree_except(&src, &target, &["media/video-000.mp4"]);
}

#[test]
fn truncated_or_deleted_pack_is_named() {
    let (env, src, _) = Env::with_backup();
    let (pack_path, pack_name, _) = locate_chunk(&env, &src.join("media/video-001.mp4"));

    let full = fs::read(&pack_path).unwrap();
    fs::write(&pack_path, &full[..full.len() / 2]).unwrap();
    let err = env.fails(&["verify"]);
    assert!(err.contains(&pack_name) && err.contains("truncated"), "{err}");
    let target = env.path("out");
    let err = env.fails(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(err.contains(&pack_name), "{err}");

    fs::remove_file(&pack_path).unwrap();
    let err = env.fails(&["verify", "--read-data"]);
    assert!(err.contains(&pack_name) && err.contains("missing"), "{err}");
    let err = env.fails(&["restore", "latest", "--target", env.path("out2").to_str().unwrap()]);
    assert!(err.contains(&pack_name) && err.contains("not found"), "{err}");
}

#[test]
fn truncated_or_deleted_index_is_named() {
    let (env, _, _) = Env::with_backup();
    let index_dir = env.repo.join("index");
    let index = fs::read_dir(&index_dir).unwrap().next().unwrap().unwrap().path();
    let name = format!("index/{}", index.file_name().unwrap().to_str().unwrap());
    let full = fs::read(&index).unwrap();

    fs::write(&index, &full[..full.len() - 7]).unwrap();
    let err = env.fails(&["verify"]);
    assert!(err.contains(&name) && err.contains("corrupt"), "{err}");
    assert!(err.contains("not in any index"), "snapshots' missing data is reported too: {err}");

    fs::remove_file(&index).unwrap();
    let err = env.fails(&["verify"]);
    assert!(err.contains("not in any index"), "{err}");
    let err = env.fails(&["restore", "latest", "--target", env.path("out").to_str().unwrap()]);
    assert!(err.contains("not in any index"), "{err}");
}

/// Mounts a small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("running mount");
        assert!(status.success(), "this test mounts a small tmpfs and must run as root (CI does)");
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_target_disk_is_a_clear_error_and_the_repository_is_untouched() {
    let (env, _, _) = Env::with_backup();
    let before = env.repo_state();
    let disk = SmallDisk::mount(env.path("tiny"), "4m");
    let err = env.fails(&["restore", "latest", "--target", disk.0.join("out").to_str().unwrap()]);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert_eq!(before, env.repo_state(), "the repository changed");
}

#[test]
fn missing_repository_and_bad_patterns_are_clear() {
    let env = Env::new();
    let out = env.cmd().arg("snapshots").env("LIFEBOAT_REPO", env.path("nowhere")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("repo init"), "{err}");
    let err = env.fails(&["backup", "files", env.path("no-such-dir").to_str().unwrap()]);
    assert!(err.contains("no-such-dir"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "the cause is said once: {err}");
    let err = env.fails(&["backup", "files", env.dir.path().to_str().unwrap(), "--exclude", "a[b"]);
    assert!(err.contains("a[b"), "{err}");
    let err = env.fails(&["restore", "deadbeef", "--target", env.path("x").to_str().unwrap()]);
    assert!(err.contains("deadbeef"), "{err}");
}

#[test]
fn a_damaged_snapshot_is_named_and_blocks_nothing_else() {
    let (env, src, first) = Env::with_backup();
    fs::write(src.join("odd/new.txt"), "second").unwrap();
    let second = env.backup(&[&src]);
    let damaged = env.repo.join("snapshots").join(&first);
    let full = fs::read(&damaged).unwrap();
    fs::write(&damaged, &full[..full.len() / 2]).unwrap();
    let name = format!("snapshots/{first}");

    // Listed: the other one, and the damaged one named.
    let out = env.run(&["snapshots"]);
    assert!(out.status.success());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&second[..8]) && stdout.contains("1 that cannot be read"), "{stdout}");
    assert!(stderr.contains(&name), "{stderr}");

    // The other restores; the damaged one is refused by name.
    let out_dir = env.path("out");
    env.ok(&["restore", &second, "--target", out_dir.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    support::assert_same_tree(&src, &out_dir);
    let err = env.fails(&["restore", &first, "--target", env.path("never").to_str().unwrap()]);
    assert!(err.contains(&name), "{err}");

    // A backup goes on (its parent found among the readable snapshots).
    env.backup(&[&src]);

    // Verify checks everything else and lists every problem: the damaged
    // snapshot and a damaged pack elsewhere.
    let victim = src.join("media/video-000.mp4");
    let (pack_path, pack_name, offset) = locate_chunk(&env, &victim);
    let mut bytes = fs::read(&pack_path).unwrap();
    bytes[offset as usize + 100] ^= 0x01;
    fs::write(&pack_path, bytes).unwrap();
    let err = env.fails(&["verify", "--read-data"]);
    assert!(err.contains(&name) && err.contains(&pack_name), "{err}");

    // Prune forgets nothing it cannot know about and deletes nothing.
    let data_before: Vec<_> = fs::read_dir(env.repo.join("data")).unwrap().collect();
    let out = env.run(&["prune", "--grace", "0s", "--unsafe-grace"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&name) && stderr.contains("nothing marked or deleted"), "{stderr}");
    assert_eq!(data_before.len(), fs::read_dir(env.repo.join("data")).unwrap().count());
}

#[test]
fn a_damaged_index_is_named_and_backups_and_prune_go_on() {
    let (env, src, _) = Env::with_backup();
    let index = fs::read_dir(env.repo.join("index")).unwrap().next().unwrap().unwrap().path();
    let name = format!("index/{}", index.file_name().unwrap().to_str().unwrap());
    let full = fs::read(&index).unwrap();
    fs::write(&index, &full[..full.len() - 7]).unwrap();
    // A backup stores what the damaged index hid, and its snapshot restores.
    let id = env.backup(&[&src]);
    let out_dir = env.path("out");
    env.ok(&["restore", &id, "--target", out_dir.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    support::assert_same_tree(&src, &out_dir);
    // Prune runs; the packs only the damaged index lists are not taken for leftovers.
    let packs_before = support::files_below(&env.repo.join("data")).len();
    let out = env.run(&["prune", "--grace", "0s", "--unsafe-grace", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["prune"]["leftover_packs"], 0, "{report}");
    assert_eq!(support::files_below(&env.repo.join("data")).len(), packs_before);
    let err = env.fails(&["verify"]);
    assert!(err.contains(&name), "{err}");
}

#[test]
fn a_key_file_others_can_read_is_warned_about_and_refused_when_strict() {
    let (env, _, _) = Env::with_backup();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&env.key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["snapshots"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("readable by group or others (mode 0644)"), "{stderr}");
    let err = env.fails(&["snapshots", "--strict-permissions"]);
    assert!(err.contains("readable by group or others") && err.contains("chmod 600"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    fs::set_permissions(&env.key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.run(&["snapshots", "--strict-permissions"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
