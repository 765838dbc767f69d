//! `--repo`, `--key-file` and the replication flags, shared by the
//! `lifeboat` CLI and the `lifeboat-agent` binary, and the `--config` file
//! that can hold them (PostgreSQL runs archive_command with a bare
//! environment: one file path is easier to get right than four flags).

use std::path::PathBuf;

use crate::crypto::MasterKey;
use crate::repo::Repository;
use crate::repo::engine::open::{OpenError, RepoSpec};
use crate::store::{OpenedStore, WritePolicy};
use clap::Args;

/// Where the repository is and which key opens it. The flags are global:
/// given before the subcommand (`lifeboat -r DIR snapshots`, restic's
/// habit) they reach it as if given after.
#[derive(Args, Debug, Clone, Default)]
pub struct RepoArgs {
    /// Repository location: a directory, file:///path, s3://bucket/prefix or
    /// azure://account/container/prefix. Repeat it (or separate with commas
    /// in LIFEBOAT_REPO) for a repository replicated across stores: reads
    /// fall back in order; the first is the primary.
    #[arg(short = 'r', long, env = "LIFEBOAT_REPO", value_delimiter = ',', global = true)]
    pub repo: Vec<String>,
    /// Master key file (see `lifeboat key generate`).
    #[arg(long, env = "LIFEBOAT_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// For a replicated repository: acknowledge writes when every store has
    /// them (`all`), or when the primary has them and the copies for the
    /// others are in the local outbox (`primary`), copied in the background.
    #[arg(long, env = "LIFEBOAT_WRITE_POLICY", value_parser = parse_policy, global = true)]
    pub write_policy: Option<WritePolicy>,
    /// Outbox directory for policy `primary` (default: under
    /// $LIFEBOAT_STATE_DIR, $XDG_STATE_HOME/lifeboat or ~/.local/state/lifeboat).
    #[arg(long, env = "LIFEBOAT_OUTBOX", global = true)]
    pub outbox: Option<PathBuf>,
    /// Do not keep a local cache of a remote repository's metadata (indexes,
    /// snapshots, trees; under $LIFEBOAT_CACHE_DIR, else ~/.cache/lifeboat).
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Refuse a key file its group or others may read (otherwise a warning).
    #[arg(long, env = "LIFEBOAT_STRICT_PERMISSIONS", global = true)]
    pub strict_permissions: bool,
    /// A TOML file with any of `repo` (a location or a list), `key_file`,
    /// `write_policy`, `outbox`, `no_cache` and `strict_permissions`, for
    /// what the flags and the environment leave unset.
    #[arg(long, env = "LIFEBOAT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// The repository settings of a `--config` file (and of the agent
/// daemon's `[repository]` table).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// A location, or several (the first is the primary).
    pub repo: Option<Locations>,
    /// The master key file.
    pub key_file: Option<PathBuf>,
    /// `all` or `primary`.
    pub write_policy: Option<String>,
    /// The outbox directory.
    pub outbox: Option<PathBuf>,
    /// No local metadata cache.
    pub no_cache: Option<bool>,
    /// Refuse a key file its group or others may read.
    pub strict_permissions: Option<bool>,
}

/// One location or several.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum Locations {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

type ConfigFile = RepoSettings;

impl ConfigFile {
    fn load(path: &std::path::Path) -> Result<Self, OpenError> {
        let bad = |reason: String| OpenError::Config { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        toml::from_str(&text).map_err(|e| bad(e.to_string()))
    }
}

fn parse_policy(s: &str) -> Result<WritePolicy, crate::invalid::Invalid> {
    s.parse()
}

impl RepoArgs {
    /// What the flags (then the environment, then the `--config` file) name.
    pub fn spec(&self) -> Result<RepoSpec, OpenError> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        self.spec_with(file, self.config.as_deref().unwrap_or(std::path::Path::new("")))
    }

    /// What the flags name, then `file` (read from `origin`, named in errors).
    pub fn spec_with(&self, file: RepoSettings, origin: &std::path::Path) -> Result<RepoSpec, OpenError> {
        let write_policy = match (self.write_policy, &file.write_policy) {
            (Some(p), _) => p,
            (None, Some(text)) => text.parse().map_err(|reason| OpenError::Config {
                path: origin.to_owned(),
                reason: format!("write_policy: {reason}"),
            })?,
            (None, None) => WritePolicy::All,
        };
        let locations = match (self.repo.is_empty(), file.repo) {
            (false, _) | (true, None) => self.repo.clone(),
            (true, Some(Locations::One(l))) => vec![l],
            (true, Some(Locations::Many(l))) => l,
        };
        Ok(RepoSpec {
            locations,
            key_file: self.key_file.clone().or(file.key_file),
            write_policy,
            outbox: self.outbox.clone().or(file.outbox),
            no_cache: self.no_cache || file.no_cache.unwrap_or(false),
            strict_permissions: self.strict_permissions || file.strict_permissions.unwrap_or(false),
        })
    }

    /// The store (or stores), from `--repo`.
    pub async fn stores(&self) -> Result<OpenedStore, OpenError> {
        self.spec()?.stores().await
    }

    /// The master key, from `--key-file`.
    pub fn master_key(&self) -> Result<MasterKey, OpenError> {
        self.spec()?.master_key()
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository, OpenError> {
        Ok(self.spec()?.open().await?.0)
    }

    /// Opens the repository, keeping hold of its stores.
    pub async fn open_with_stores(&self) -> Result<(Repository, OpenedStore), OpenError> {
        self.spec()?.open().await
    }
}
