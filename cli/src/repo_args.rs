//! `--repo` and `--key-file`, shared by every repository command.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lifeboat_common::crypto::MasterKey;
use lifeboat_common::repo::Repository;
use lifeboat_common::store::{ObjectStore, open_locations};

/// Where the repository is and which key opens it.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// Repository location: a directory, file:///path, s3://bucket/prefix or
    /// azure://account/container/prefix. Repeat it (or separate with commas
    /// in LIFEBOAT_REPO) for a repository replicated across stores: writes
    /// go to all, reads fall back in order; the first is the primary.
    #[arg(long, env = "LIFEBOAT_REPO", value_delimiter = ',')]
    pub repo: Vec<String>,
    /// Master key file (see `lifeboat key generate`).
    #[arg(long, env = "LIFEBOAT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

impl RepoArgs {
    /// The store, from `--repo`.
    pub async fn store(&self) -> Result<std::sync::Arc<dyn ObjectStore>> {
        Ok(open_locations(&self.repo).await?)
    }

    /// The master key, from `--key-file`.
    pub fn master_key(&self) -> Result<MasterKey> {
        let path = self.key_file.as_ref().context("no key file given: pass --key-file or set LIFEBOAT_KEY_FILE")?;
        Ok(MasterKey::load(path)?)
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository> {
        let store = self.store().await?;
        let key = self.master_key()?;
        let described = store.describe();
        Repository::open(store, &key).await.with_context(|| format!("opening repository in {described}"))
    }
}
