//! The corruption sweep: for every kind of object in a repository (config,
//! keyring, index, snapshot, tree pack, data pack, WAL file), seeded random
//! bit flips, truncations and swaps with another object. Each damaged
//! repository is opened, verified and restored in-process: every outcome is
//! either an error naming the damaged object or a restore identical to the
//! source; never a panic, never a wrong restore.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_agent::progress::Progress;
use lifeboat_agent::sources::files::{BackupOptions, RestoreOptions, backup_files, restore_files};
use lifeboat_agent::sources::postgres::wal;
use lifeboat_common::crypto::MasterKey;
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::ops::verify::verify;
use lifeboat_common::store::LocalStore;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Rounds of damage per kind of object.
const ROUNDS: usize = 12;

const WAL_NAME: &str = "000000010000000000000001";

struct Pristine {
    dir: tempfile::TempDir,
    key: MasterKey,
    src: PathBuf,
    wal: Vec<u8>,
}

fn random_bytes(rng: &mut Xoshiro256PlusPlus, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A repository with two snapshots of a small tree (a file of several
/// chunks among them) and one WAL file.
fn pristine(rt: &tokio::runtime::Runtime) -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/big.bin"), random_bytes(&mut rng, 3 << 20)).unwrap();
    fs::write(src.join("docs/small.txt"), "a small file\n").unwrap();
    fs::write(src.join("log.txt"), "log line\n".repeat(20_000)).unwrap();
    let key = MasterKey::generate().unwrap();
    let wal = random_bytes(&mut rng, 1 << 20);
    rt.block_on(async {
        let repo = Repository::init(Arc::new(LocalStore::new(dir.path().join("repo"))), &key).await.unwrap();
        for tag in ["first", "second"] {
            let opts = BackupOptions {
                paths: vec![src.clone()],
                hostname: "sweep".into(),
                tags: vec![tag.into()],
                force: true,
                ..Default::default()
            };
            backup_files(&repo, opts, Arc::new(Progress::default())).await.unwrap();
            fs::write(src.join("docs/small.txt"), "changed\n").unwrap();
        }
        wal::push_content(&repo, WAL_NAME, wal.clone()).await.unwrap();
    });
    Pristine { dir, key, src, wal }
}

/// Damages `victim` (a store key) in the repository at `repo` one way,
/// chosen by `rng`; says what it did.
fn damage(rng: &mut Xoshiro256PlusPlus, repo: &Path, victim: &str, others: &[String]) -> String {
    let path = repo.join(victim);
    let mut bytes = fs::read(&path).unwrap();
    match rng.next_u32() % 3 {
        0 if !bytes.is_empty() => {
            let flips = 1 + rng.next_u32() % 8;
            for _ in 0..flips {
                let at = rng.next_u64() as usize % bytes.len();
                bytes[at] ^= 1 << (rng.next_u32() % 8);
            }
            fs::write(&path, &bytes).unwrap();
            format!("{flips} bit flips")
        }
        1 => {
            let len = rng.next_u64() as usize % bytes.len().max(1);
            fs::write(&path, &bytes[..len]).unwrap();
            format!("truncated to {len} bytes")
        }
        _ => {
            let other = &others[rng.next_u32() as usize % others.len()];
            fs::copy(repo.join(other), &path).unwrap();
            format!("replaced by a copy of {other}")
        }
    }
}

/// Opens, verifies and restores the damaged repository: returns every
/// error and problem seen, and whether the restore came back whole and right.
fn exercise(rt: &tokio::runtime::Runtime, p: &Pristine, repo_dir: &Path, scratch: &Path) -> (Vec<String>, bool) {
    rt.block_on(async {
        let mut said = Vec::new();
        let repo = match Repository::open(Arc::new(LocalStore::new(repo_dir)), &p.key).await {
            Ok(r) => r,
            Err(e) => return (vec![e.to_string()], false),
        };
        match verify(&repo, true, Arc::new(|_| {})).await {
            Ok(report) => said.extend(report.problems),
            Err(e) => said.push(e.to_string()),
        }
        match wal::read(&repo, WAL_NAME).await {
            Ok(Some(found)) => assert!(found.content == p.wal, "a WAL file came back different"),
            Ok(None) => said.push("the WAL file is missing".into()),
            Err(e) => said.push(e.to_string()),
        }
        let mut whole = true;
        for spec in ["latest", "first"] {
            let found = match spec {
                "latest" => repo.find_snapshot("latest").await,
                _ => repo.snapshots().await.map(|s| s.into_iter().find(|(_, s)| s.tags == ["first"])).and_then(|f| {
                    f.ok_or_else(|| lifeboat_common::repo::RepoError::SnapshotLookup("first is gone".into()))
                }),
            };
            let (_, snapshot) = match found {
                Ok(f) => f,
                Err(e) => {
                    said.push(e.to_string());
                    whole = false;
                    continue;
                }
            };
            let target = scratch.join(spec);
            let opts = RestoreOptions {
                target: target.clone(),
                sub_path: Some(p.src.display().to_string()),
                ..Default::default()
            };
            match restore_files(&repo, &snapshot, opts, Arc::new(Progress::default())).await {
                Ok(report) if report.failed.is_empty() => {
                    // Whatever came back must be exactly what was saved.
                    let small = if snapshot.tags == ["first"] { "a small file\n" } else { "changed\n" };
                    assert_eq!(fs::read_to_string(target.join("docs/small.txt")).unwrap(), small);
                    assert!(
                        fs::read(target.join("docs/big.bin")).unwrap() == fs::read(p.src.join("docs/big.bin")).unwrap(),
                        "a restore reported whole came back different"
                    );
                    assert_eq!(fs::read(target.join("log.txt")).unwrap(), fs::read(p.src.join("log.txt")).unwrap());
                }
                Ok(report) => {
                    said.extend(report.failed);
                    whole = false;
                }
                Err(e) => {
                    said.push(e.to_string());
                    whole = false;
                }
            }
        }
        (said, whole)
    })
}

#[test]
fn every_kind_of_object_damaged_ends_in_an_error_naming_it_or_a_right_restore() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = pristine(&rt);
    let repo = p.dir.path().join("repo");
    let all: Vec<String> = support::files_below(&repo)
        .iter()
        .map(|p| p.strip_prefix(&repo).unwrap().to_str().unwrap().to_owned())
        .collect();
    // Each kind and the key prefix its objects have.
    let kinds = [
        ("config", "config"),
        ("keyring", "keys/"),
        ("index", "index/"),
        ("snapshot", "snapshots/"),
        ("tree pack", "tree/"),
        ("data pack", "data/"),
        ("WAL file", "wal/"),
    ];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x5eed);
    let mut harmless = 0;
    for (kind, prefix) in &kinds {
        let victims: Vec<&String> = all.iter().filter(|k| k.starts_with(prefix)).collect();
        assert!(!victims.is_empty(), "the pristine repository has no {kind}");
        for round in 0..ROUNDS {
            let victim = victims[round % victims.len()];
            let others: Vec<String> = all.iter().filter(|k| *k != victim).cloned().collect();
            let scratch = tempfile::tempdir().unwrap();
            let damaged = scratch.path().join("repo");
            support::copy_tree(&repo, &damaged);
            let how = damage(&mut rng, &damaged, victim, &others);
            let (said, whole) = exercise(&rt, &p, &damaged, scratch.path());
            if said.is_empty() {
                // Only damage that changes nothing anyone reads may pass
                // unnoticed: in the two objects kept as JSON, a config field
                // no reader uses, or the case of a hex digit.
                assert!(whole, "{kind} {victim}, {how}: nothing said, yet the restore was not whole");
                assert!(["config", "keyring"].contains(kind), "{kind} {victim}, {how}: damage went unnoticed");
                harmless += 1;
                continue;
            }
            let named = said.iter().any(|s| s.contains(victim.as_str()) || (*kind == "config" && s.contains("config")));
            assert!(named, "{kind} {victim}, {how}: no message names it:\n{}", said.join("\n"));
        }
    }
    eprintln!("{} rounds; {harmless} left the repository readable as before", kinds.len() * ROUNDS);
}
