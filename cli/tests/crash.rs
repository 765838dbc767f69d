//! A backup killed with SIGKILL at random points leaves nothing corrupt: the
//! next backup and `verify --read-data` succeed, and no snapshot refers to
//! missing data.

// Test code: a failed step stops the test loudly, with the value shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat_integration_tests::tree_gen::{TreeSpec, generate_tree};
use rand_core::{RngCore, SeedableRng};
use support::{Env, assert_same_tree};

#[test]
fn sigkill_mid_backup_leaves_a_consistent_repository() {
    let env = Env::new();
    let src = env.path("src");
    let spec = TreeSpec { media_files: 6, media_size: 12 << 20, images: 400, ..TreeSpec::small() };
    generate_tree(&src, &spec).unwrap();

    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    println!("kill delays drawn with seed {seed}");
    let mut completed_before_kill = 0;
    for run in 0..6 {
        // Fresh content every run, so each one has packs to write when killed.
        let mut fresh = vec![0u8; 24 << 20];
        rng.fill_bytes(&mut fresh);
        std::fs::write(src.join(format!("media/upload-{run}.bin")), &fresh).unwrap();
        let delay = Duration::from_millis(10 + rng.next_u64() % 250);
        let mut child = env
            .cmd()
            .args(["backup", "files", src.to_str().unwrap(), "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if status.success() {
            completed_before_kill += 1;
        }
        println!("run {run}: killed after {delay:?} ({status})");
        // After every kill the repository is consistent.
        env.ok(&["verify"]);
    }
    assert!(completed_before_kill < 6, "every backup finished before the kill: the test proved nothing");

    env.backup(&[&src]);
    env.ok(&["verify", "--read-data"]);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap(), "--path", src.to_str().unwrap()]);
    assert_same_tree(&src, &target);
}
