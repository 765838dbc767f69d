//! Helpers for the CLI's end-to-end tests: a scratch repository and key,
//! the `lifeboat` binary, and a tree comparison that checks content and
//! metadata.

#![allow(dead_code)]

pub mod pg;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use lifeboat_common::crypto::MasterKey;
use lifeboat_common::repo::Repository;
use lifeboat_common::store::LocalStore;

/// A temporary directory with a key and an initialised repository.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// The repository's directory (for a local repository).
    pub repo: PathBuf,
    /// `--repo` as given to the CLI.
    pub location: String,
    pub key: PathBuf,
    /// Extra environment for every command.
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A local-directory repository in a temporary directory.
    pub fn new() -> Self {
        Self::init(None, &[])
    }

    /// A repository at `location` (e.g. an s3:// URL), key in a temporary directory.
    pub fn new_at(location: &str) -> Self {
        Self::init(Some(location), &[])
    }

    /// A repository at `location`, every command run with `vars` set.
    pub fn new_with(location: &str, vars: &[(&str, &str)]) -> Self {
        Self::init(Some(location), vars)
    }

    fn init(location: Option<&str>, vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let location = location.map(str::to_owned).unwrap_or_else(|| repo.display().to_string());
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = Env { repo, location, key: dir.path().join("key"), dir, vars };
        env.ok(&["key", "generate", "--out", env.key.to_str().unwrap()]);
        env.ok(&["repo", "init"]);
        env
    }

    /// A repository holding one backup of [`make_tree`]'s tree at `src`:
    /// the environment, the tree's path and the snapshot id.
    pub fn with_backup() -> (Self, PathBuf, String) {
        let env = Env::new();
        let src = env.path("src");
        make_tree(&src);
        let id = env.backup(&[&src]);
        (env, src, id)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
        c.env("LIFEBOAT_REPO", &self.location)
            .env("LIFEBOAT_KEY_FILE", &self.key)
            .env("LIFEBOAT_STATE_DIR", self.path("state"))
            .env("LIFEBOAT_CACHE_DIR", self.path("cache"))
            .env_remove("RUST_LOG");
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "lifeboat {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts success; returns stderr.
    pub fn ok_stderr(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "lifeboat {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "lifeboat {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    /// Backs up `paths` and returns the snapshot id.
    pub fn backup(&self, paths: &[&Path]) -> String {
        let mut args = vec!["backup", "files"];
        args.extend(paths.iter().map(|p| p.to_str().unwrap()));
        self.ok(&args).trim().to_owned()
    }

    /// Opens the repository in-process, for tests that look inside it.
    pub fn open_repo(&self, rt: &tokio::runtime::Runtime) -> Repository {
        let key = MasterKey::load(&self.key).unwrap();
        rt.block_on(Repository::open(Arc::new(LocalStore::new(&self.repo)), &key)).unwrap()
    }

    /// Every file of the repository with its content, to prove it unchanged.
    pub fn repo_state(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.repo.clone()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.insert(e.path(), fs::read(e.path()).unwrap());
                }
            }
        }
        out
    }
}

/// Copies a directory tree of plain files.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every file below `dir` (none if it does not exist), sorted.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// What a tree entry looks like, for comparison.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32, mtime: (i64, i64) },
    File { mode: u32, mtime: (i64, i64), content_hash: [u8; 32], ino_group: usize },
    Symlink { target: PathBuf },
    Fifo { mode: u32 },
}

/// Describes every entry below `root` (relative paths), with hard links
/// numbered by first appearance so equal structure compares equal.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, usize> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    let mut paths = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    paths.sort();
    for p in paths {
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let entry = if ft.is_dir() {
            Entry::Dir { mode: m.permissions().mode(), mtime: (m.mtime(), m.mtime_nsec()) }
        } else if ft.is_symlink() {
            Entry::Symlink { target: fs::read_link(&p).unwrap() }
        } else if ft.is_file() {
            let next = inodes.len();
            let group = if m.nlink() > 1 { *inodes.entry(m.ino()).or_insert(next) } else { usize::MAX };
            Entry::File {
                mode: m.permissions().mode(),
                mtime: (m.mtime(), m.mtime_nsec()),
                content_hash: *blake3::hash(&fs::read(&p).unwrap()).as_bytes(),
                ino_group: group,
            }
        } else {
            Entry::Fifo { mode: m.permissions().mode() }
        };
        out.insert(p.strip_prefix(root).unwrap().to_owned(), entry);
    }
    out
}

/// Asserts two trees are the same, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_same_tree_except(a, b, &[]);
}

/// Asserts two trees are the same but for `missing` (relative paths absent from `b`).
pub fn assert_same_tree_except(a: &Path, b: &Path, missing: &[&str]) {
    let (mut da, db) = (describe(a), describe(b));
    for m in missing {
        assert!(da.remove(Path::new(m)).is_some(), "{m} is not in {}", a.display());
        assert!(!db.contains_key(Path::new(m)), "{m} is in {}", b.display());
    }
    for (path, entry) in &da {
        assert_eq!(Some(entry), db.get(path), "{} differs", path.display());
    }
    assert_eq!(da.len(), db.len(), "{} has extra entries", b.display());
}

/// A small app-node tree plus the metadata edge cases: hard links, an empty
/// directory, odd modes, a non-UTF-8 name, a FIFO.
pub fn make_tree(root: &Path) {
    use lifeboat_integration_tests::tree_gen::{TreeSpec, generate_tree};
    generate_tree(root, &TreeSpec::small()).unwrap();
    let odd = root.join("odd");
    fs::create_dir_all(odd.join("empty")).unwrap();
    fs::write(odd.join("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(odd.join("script.sh"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::write(odd.join("original"), b"linked content".repeat(1000)).unwrap();
    fs::hard_link(odd.join("original"), odd.join("hardlink")).unwrap();
    use std::os::unix::ffi::OsStrExt;
    fs::write(odd.join(std::ffi::OsStr::from_bytes(b"caf\xe9-latin1.txt")), b"bytes").unwrap();
    fs::write(odd.join("empty-file"), b"").unwrap();
    let fifo = std::ffi::CString::new(odd.join("pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::set_permissions(odd.join("empty"), fs::Permissions::from_mode(0o700)).unwrap();
}

/// Waits until files written just now have times a backup trusts to prove
/// them unchanged later (times within a second of a backup's start do not:
/// a write in the same clock tick keeps them).
pub fn settle_times() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}
