//! Retention and prune end to end: snapshots past their schedule's
//! retention are forgotten (never a source's newest), data is deleted only
//! after being marked for the grace period, a backup made between the mark
//! and the sweep stores its own copy, and a backup that leaned on data
//! marked while it ran (its writer opened the repository before the mark)
//! notices before it saves its snapshot and stores its own copy.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use lifeboat_agent::progress::Progress;
use lifeboat_agent::sources::files::{BackupOptions, backup_files};
use rand_core::{RngCore, SeedableRng};
use serde_json::Value;
use support::Env;

fn random_file(path: &Path, seed: u64, mib: usize) {
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut buf = vec![0u8; mib << 20];
    rng.fill_bytes(&mut buf);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, buf).unwrap();
}

fn backup(env: &Env, dir: &Path) -> String {
    env.ok(&[
        "backup",
        "files",
        dir.to_str().unwrap(),
        "--host",
        "h",
        "--tag",
        "source:docs",
        "--tag",
        "schedule:files.media",
    ])
    .trim()
    .to_owned()
}

fn prune(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.ok(&all)).unwrap()
}

fn data_bytes(env: &Env) -> u64 {
    walk_size(&env.repo.join("data"))
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| if e.path().is_dir() { walk_size(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
            .sum()
    })
}

#[test]
fn expired_snapshots_are_forgotten_and_their_data_goes_only_after_the_grace_period() {
    let env = Env::new();
    let src = env.path("src");
    // Each in packs of its own: a pack goes only when all of it is unused.
    random_file(&src.join("old.bin"), 1, 8);
    let first = backup(&env, &src);
    std::fs::remove_file(src.join("old.bin")).unwrap();
    random_file(&src.join("kept.bin"), 2, 2);
    let second = backup(&env, &src);
    let policy = env.path("policy.yaml");
    std::fs::write(
        &policy,
        "backup_schedules:\n  files:\n    media:\n      cron: \"0 3 * * *\"\n      retention_days: 7\n",
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    // Retention as it will stand in eight days.
    let later = (chrono::Utc::now() + chrono::Duration::days(8)).to_rfc3339();

    // Dry: says what would go, removes nothing.
    let dry = prune(&env, &["--policy", policy, "--as-of", &later, "--dry-run"]);
    assert_eq!(dry["forgotten"], serde_json::json!([first]));
    assert!(env.ok(&["snapshots"]).contains(&first[..8]));

    // First run: the old snapshot is forgotten (the newest stays, however
    // old); its data is marked, not deleted.
    let before = data_bytes(&env);
    let run = prune(&env, &["--policy", policy, "--as-of", &later, "--grace", "1h"]);
    assert_eq!(run["forgotten"], serde_json::json!([first]));
    assert!(run["prune"]["marked_packs"].as_u64().unwrap() >= 1, "{run}");
    assert_eq!(run["prune"]["deleted_packs"], 0);
    assert_eq!(data_bytes(&env), before);
    let listed = env.ok(&["snapshots"]);
    assert!(!listed.contains(&first[..8]) && listed.contains(&second[..8]), "{listed}");

    // Within the grace period nothing is deleted.
    let run = prune(&env, &["--grace", "1h"]);
    assert_eq!(run["prune"]["deleted_packs"], 0);
    assert!(run["prune"]["waiting_packs"].as_u64().unwrap() >= 1, "{run}");

    // Between the mark and the sweep, the old content comes back: the new
    // backup stores its own copy rather than lean on the marked pack.
    random_file(&src.join("old.bin"), 1, 8);
    let third = backup(&env, &src);

    // After the grace period (0 here): the marked packs go, nothing else.
    let run = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert!(run["prune"]["deleted_packs"].as_u64().unwrap() >= 1, "{run}");
    assert!(run["prune"]["deleted_bytes"].as_u64().unwrap() >= 8 << 20, "{run}");
    env.ok(&["verify", "--read-data"]);
    let out = env.path("restored");
    env.ok(&["restore", &third, "--target", out.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    support::assert_same_tree(&src, &out);
}

#[test]
fn a_backup_that_leaned_on_data_marked_meanwhile_stores_its_own_copy() {
    let env = Env::new();
    let src = env.path("src");
    random_file(&src.join("a.bin"), 3, 4);
    let first = backup(&env, &src);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A writer that opened the repository before the mark (a long backup).
    let stale = env.open_repo(&rt);
    // Forgotten (by hand here: the only snapshot).
    std::fs::remove_file(env.repo.join("snapshots").join(&first)).unwrap();
    let run = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert!(run["prune"]["marked_packs"].as_u64().unwrap() >= 1, "{run}");

    // The stale writer's index does not know of the mark: it leans on the
    // marked blobs, finds the mark before saving, and stores its own copy.
    let opts = BackupOptions {
        paths: vec![src.clone()],
        includes: Vec::new(),
        excludes: Vec::new(),
        tags: vec!["late".into()],
        hostname: "h".into(),
        force: true,
        parent: None,
        threads: 0,
        content_check: None,
        compression_level: None,
        fixed_chunks: None,
        read_timeout: None,
        skip_xattrs: false,
    };
    let outcome = rt.block_on(backup_files(&stale, opts, Arc::new(Progress::default()))).unwrap();
    assert!(outcome.snapshot.summary.bytes_new >= 4 << 20, "the stale writer leaned on marked data");

    // The sweep deletes the marked copy; the new snapshot has its own.
    let run = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert!(run["prune"]["deleted_bytes"].as_u64().unwrap() >= 4 << 20, "{run}");
    env.ok(&["verify", "--read-data"]);
    let restored = env.path("restored");
    env.ok(&[
        "restore",
        &outcome.id.to_string(),
        "--target",
        restored.to_str().unwrap(),
        "--path",
        src.to_str().unwrap(),
    ]);
    support::assert_same_tree(&src, &restored);
}

/// A check that holds the backup at its first bytes until released: the
/// backup has loaded its index and leans on what it found there.
#[derive(Debug)]
struct Hold {
    reached: std::sync::mpsc::SyncSender<()>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    once: std::sync::Once,
}

impl lifeboat_agent::sources::files::ContentCheck for Hold {
    fn for_file(&self, _path: &Path, _offset: u64) -> Option<lifeboat_agent::sources::files::FileChecker> {
        self.once.call_once(|| {
            self.reached.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        });
        None
    }
}

#[test]
fn a_prune_with_no_grace_during_a_backup_that_reuses_forgotten_data_loses_nothing() {
    let env = Env::new();
    let src = env.path("src");
    for i in 0..6 {
        random_file(&src.join(format!("part-{i}.bin")), 100 + i, 4);
    }
    let first = backup(&env, &src);
    // Forgotten: its packs are unreferenced, and the next backup leans on them.
    std::fs::remove_file(env.repo.join("snapshots").join(&first)).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = env.open_repo(&rt);
    let (reached_tx, reached) = std::sync::mpsc::sync_channel(1);
    let (release, release_rx) = std::sync::mpsc::channel();
    let hold = Hold { reached: reached_tx, release: std::sync::Mutex::new(release_rx), once: std::sync::Once::new() };
    let opts = BackupOptions {
        paths: vec![src.clone()],
        hostname: "h".into(),
        force: true,
        threads: 1,
        content_check: Some(Arc::new(hold)),
        ..Default::default()
    };
    let running = rt.spawn(async move { backup_files(&repo, opts, Arc::new(Progress::default())).await });
    reached.recv().unwrap();
    // While it runs: the forgotten packs are marked, then (no grace) swept.
    let mark = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert!(mark["prune"]["marked_bytes"].as_u64().unwrap() >= 24 << 20, "{mark}");
    let sweep = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert_eq!(sweep["prune"]["deleted_packs"], 0, "swept under a running backup: {sweep}");
    assert!(sweep["prune"]["held_for_writers"].as_u64().unwrap() >= 2, "{sweep}");
    release.send(()).unwrap();
    let outcome = rt.block_on(running).unwrap().unwrap();

    // Its snapshot holds data of its own or data kept alive: all there.
    prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    env.ok(&["verify", "--read-data"]);
    let restored = env.path("restored");
    let id = outcome.id.to_string();
    env.ok(&["restore", &id, "--target", restored.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    support::assert_same_tree(&src, &restored);
}

/// Sets a file's times to `age` ago.
fn age(path: &Path, age: std::time::Duration) {
    let when = std::time::SystemTime::now() - age;
    let secs = when.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let ts = rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 };
    let times = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty()).unwrap();
}

#[test]
fn leftovers_of_interrupted_writers_go_once_older_than_the_grace_period() {
    let env = Env::new();
    let src = env.path("src");
    random_file(&src.join("a.bin"), 7, 2);
    backup(&env, &src);
    let pack = support::files_below(&env.repo.join("data"))[0].clone();
    let bytes = std::fs::read(&pack).unwrap();
    let leftover = |name: char| env.repo.join("data").join(format!("{name}{name}/{}", name.to_string().repeat(64)));
    let (old, fresh) = (leftover('a'), leftover('b'));
    for p in [&old, &fresh] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &bytes).unwrap();
    }
    let tmp_old = env.repo.join("data/aa/.tmp-999-1");
    let tmp_fresh = env.repo.join("data/bb/.tmp-999-2");
    std::fs::write(&tmp_old, b"half a pack").unwrap();
    std::fs::write(&tmp_fresh, b"half a pack").unwrap();
    for p in [&old, &tmp_old] {
        age(p, std::time::Duration::from_secs(2 * 86_400));
    }
    let run = prune(&env, &["--grace", "24h"]);
    assert_eq!(run["prune"]["leftover_packs"], 1, "{run}");
    assert_eq!(run["prune"]["temporaries"], 1, "{run}");
    assert!(!old.exists() && !tmp_old.exists());
    assert!(fresh.exists() && tmp_fresh.exists(), "younger than the grace period: kept");
    assert!(pack.exists());
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn a_live_writer_holds_the_sweep_and_a_dead_ones_marker_is_removed() {
    use lifeboat_common::repo::engine::writers::{WriterMarker, WriterSession};
    let env = Env::new();
    let src = env.path("src");
    random_file(&src.join("a.bin"), 9, 4);
    let first = backup(&env, &src);
    std::fs::remove_file(env.repo.join("snapshots").join(&first)).unwrap();
    let run = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert!(run["prune"]["marked_packs"].as_u64().unwrap() >= 1, "{run}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = env.open_repo(&rt);
    // A writer that began before the plan: it may lean on the marked packs.
    let session = rt.block_on(WriterSession::start_holding_sweeps(&repo, "backup files")).unwrap();
    // And the marker of one that died an hour ago.
    let dead = WriterMarker {
        host: "gone".into(),
        pid: 1,
        what: "backup files".into(),
        started: chrono::Utc::now() - chrono::Duration::hours(2),
        refreshed: chrono::Utc::now() - chrono::Duration::hours(1),
        plans_seen: Vec::new(),
    };
    let key = "writers/dead";
    let sealed = lifeboat_common::repo::format::object::seal(
        repo.keyring(),
        "writer",
        key,
        serde_json::to_vec(&dead).unwrap(),
        3,
    )
    .unwrap();
    std::fs::create_dir_all(env.repo.join("writers")).unwrap();
    std::fs::write(env.repo.join(key), sealed).unwrap();

    let before = data_bytes(&env);
    let run = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert_eq!(run["prune"]["stale_writers"], 1, "{run}");
    assert!(run["prune"]["held_for_writers"].as_u64().unwrap() >= 1, "{run}");
    assert_eq!(run["prune"]["deleted_packs"], 0, "{run}");
    assert_eq!(data_bytes(&env), before);
    assert!(!env.repo.join(key).exists());

    rt.block_on(session.finish());
    let run = prune(&env, &["--grace", "0s", "--unsafe-grace"]);
    assert!(run["prune"]["deleted_bytes"].as_u64().unwrap() >= 4 << 20, "{run}");
    env.ok(&["verify", "--read-data"]);
}
