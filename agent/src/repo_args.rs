//! `--repo`, `--key-file` and the replication flags, shared by the
//! `lifeboat` CLI and the `lifeboat-agent` binary.

use std::path::PathBuf;

use clap::Args;
use lifeboat_common::crypto::MasterKey;
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::open::{OpenError, RepoSpec};
use lifeboat_common::store::{OpenedStore, WritePolicy};

/// Where the repository is and which key opens it.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// Repository location: a directory, file:///path, s3://bucket/prefix or
    /// azure://account/container/prefix. Repeat it (or separate with commas
    /// in LIFEBOAT_REPO) for a repository replicated across stores: reads
    /// fall back in order; the first is the primary.
    #[arg(long, env = "LIFEBOAT_REPO", value_delimiter = ',')]
    pub repo: Vec<String>,
    /// Master key file (see `lifeboat key generate`).
    #[arg(long, env = "LIFEBOAT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// For a replicated repository: acknowledge writes when every store has
    /// them (`all`), or when the primary has them and the copies for the
    /// others are in the local outbox (`primary`), copied in the background.
    #[arg(long, env = "LIFEBOAT_WRITE_POLICY", default_value = "all", value_parser = parse_policy)]
    pub write_policy: WritePolicy,
    /// Outbox directory for policy `primary` (default: under
    /// $LIFEBOAT_STATE_DIR, $XDG_STATE_HOME/lifeboat or ~/.local/state/lifeboat).
    #[arg(long, env = "LIFEBOAT_OUTBOX")]
    pub outbox: Option<PathBuf>,
    /// Do not keep a local cache of a remote repository's metadata (indexes,
    /// snapshots, trees; under $LIFEBOAT_CACHE_DIR, else ~/.cache/lifeboat).
    #[arg(long)]
    pub no_cache: bool,
}

fn parse_policy(s: &str) -> Result<WritePolicy, String> {
    s.parse()
}

impl RepoArgs {
    /// What the flags name.
    pub fn spec(&self) -> RepoSpec {
        RepoSpec {
            locations: self.repo.clone(),
            key_file: self.key_file.clone(),
            write_policy: self.write_policy,
            outbox: self.outbox.clone(),
            no_cache: self.no_cache,
        }
    }

    /// The store (or stores), from `--repo`.
    pub async fn stores(&self) -> Result<OpenedStore, OpenError> {
        self.spec().stores().await
    }

    /// The master key, from `--key-file`.
    pub fn master_key(&self) -> Result<MasterKey, OpenError> {
        self.spec().master_key()
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository, OpenError> {
        Ok(self.spec().open().await?.0)
    }

    /// Opens the repository, keeping hold of its stores.
    pub async fn open_with_stores(&self) -> Result<(Repository, OpenedStore), OpenError> {
        self.spec().open().await
    }
}
