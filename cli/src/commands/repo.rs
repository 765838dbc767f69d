//! `lifeboat repo …`: creating a repository.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lifeboat_common::repo::Repository;

use crate::RepoArgs;

/// Repository commands.
#[derive(Args)]
pub struct RepoCommand {
    #[command(subcommand)]
    command: RepoSub,
}

#[derive(Subcommand)]
enum RepoSub {
    /// Create a repository, its keys wrapped by the master key.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Start bringing every data pack back from an archive tier (S3 Glacier
    /// restore, Azure tier change to Hot); restores can read them once done.
    Rehydrate {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

impl RepoCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        match self.command {
            RepoSub::Init { repo } => {
                let store = repo.store().await?;
                let key = repo.master_key()?;
                let described = store.describe();
                let created = Repository::init(store, &key)
                    .await
                    .with_context(|| format!("initialising repository in {described}"))?;
                eprintln!(
                    "created repository {} in {described}, keys wrapped by master key {}",
                    &created.config().id[..16],
                    key.id
                );
                Ok(0)
            }
            RepoSub::Rehydrate { repo } => {
                let opened = repo.open().await?;
                let store = opened.store();
                let packs = store.list("data/").await.context("listing packs")?;
                for meta in &packs {
                    store.start_rehydrate(&meta.key).await.with_context(|| format!("rehydrating {}", meta.key))?;
                }
                eprintln!("rehydration started for {} packs in {}", packs.len(), store.describe());
                Ok(0)
            }
        }
    }
}
