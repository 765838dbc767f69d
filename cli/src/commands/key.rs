//! `lifeboat key …`: master key files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lifeboat_common::crypto::MasterKey;

use crate::RepoArgs;

/// Master key commands.
#[derive(Args)]
pub struct KeyCommand {
    #[command(subcommand)]
    command: KeySub,
}

#[derive(Subcommand)]
enum KeySub {
    /// Write a new random master key to a file (never overwrites).
    Generate {
        /// File to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-wrap the repository's keys under a new master key; no data is rewritten.
    Rotate {
        #[command(flatten)]
        repo: RepoArgs,
        /// The new master key file (from `key generate`).
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

impl KeyCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        match self.command {
            KeySub::Generate { out } => {
                let key = MasterKey::generate()?;
                key.save_new(&out)?;
                eprintln!("wrote master key {} to {}; keep a copy away from the repository", key.id, out.display());
                Ok(0)
            }
            KeySub::Rotate { repo, new_key_file } => {
                let old = repo.master_key()?;
                let new = MasterKey::load(&new_key_file)?;
                let (opened, stores) = repo.open_with_stores().await?;
                opened
                    .rotate_master_key(&old, &new)
                    .await
                    .with_context(|| format!("rotating to master key {}", new.id))?;
                eprintln!("repository keys are now wrapped by master key {} (was {})", new.id, old.id);
                crate::repo_args::settle(&stores).await?;
                Ok(0)
            }
        }
    }
}
