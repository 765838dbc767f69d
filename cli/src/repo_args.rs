//! `--repo`, `--key-file` and the replication flags, shared by every
//! repository command.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::HumanBytes;
use lifeboat_common::crypto::MasterKey;
use lifeboat_common::dirs::cache_dir;
use lifeboat_common::repo::Repository;
use lifeboat_common::store::{OpenedStore, Replication, WritePolicy, open_locations};

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
    /// The store (or stores), from `--repo`.
    pub async fn stores(&self) -> Result<OpenedStore> {
        let replication = Replication { policy: self.write_policy, outbox: self.outbox.clone() };
        Ok(open_locations(&self.repo, &replication).await?)
    }

    /// The master key, from `--key-file`.
    pub fn master_key(&self) -> Result<MasterKey> {
        let path = self.key_file.as_ref().context("no key file given: pass --key-file or set LIFEBOAT_KEY_FILE")?;
        Ok(MasterKey::load(path)?)
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository> {
        Ok(self.open_with_stores().await?.0)
    }

    /// Opens the repository, keeping hold of its stores.
    pub async fn open_with_stores(&self) -> Result<(Repository, OpenedStore)> {
        let stores = self.stores().await?;
        let key = self.master_key()?;
        let store = stores.store();
        let described = store.describe();
        let cache = (!self.no_cache && !store.is_local()).then(cache_dir);
        let repo = Repository::open_cached(store, &key, cache.as_deref())
            .await
            .with_context(|| format!("opening repository in {described}"))?;
        Ok((repo, stores))
    }
}

/// After writing to a replicated repository: copies what the outbox holds
/// to every secondary that answers, and says what is still waiting.
pub async fn settle(stores: &OpenedStore) -> Result<()> {
    let OpenedStore::Replicated(r) = stores else { return Ok(()) };
    let lag = r.settle().await.context("copying the outbox to the secondary stores")?;
    for l in lag.iter().filter(|l| l.objects > 0) {
        let age = l.oldest.and_then(|t| SystemTime::now().duration_since(t).ok()).map_or(0, |d| d.as_secs());
        eprintln!(
            "copy lag: {} objects ({}) wait in the outbox {} for {}, the oldest for {age}s; the next command that reaches it (or `lifeboat repo sync`) copies them",
            l.objects,
            HumanBytes(l.bytes),
            r.outbox().root().display(),
            l.store
        );
    }
    Ok(())
}
