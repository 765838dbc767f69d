//! `lifeboat repo …`: creating a repository, archive rehydration, and the
//! stores of a replicated repository.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::HumanBytes;
use lifeboat_agent::progress::Progress;
use lifeboat_common::crypto::MasterKey;
use lifeboat_common::policy::storage_lifecycle_from_yaml;
use lifeboat_common::repo::Repository;
use lifeboat_common::repo::format::config::FORMAT_VERSION;
use lifeboat_common::repo::ops::init::init;
use lifeboat_common::repo::ops::migrate::migrate;
use lifeboat_common::repo::ops::rehydrate::rehydrate;
use lifeboat_common::repo::ops::replicas::{ReconcileOptions, ReconcileReport, reconcile};
use lifeboat_common::store::OpenedStore;
use lifeboat_common::store::lifecycle::Lifecycle;

use crate::RepoArgs;
use crate::progress::ProgressView;
use crate::repo_args::settle;

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
    /// Move data objects to colder storage tiers as they age (S3 bucket
    /// lifecycle rules; Azure tier changes of the blobs old enough). Metadata
    /// stays hot. Without --policy or days, the seed's lifecycle: warm after
    /// 8 days, cold after 31, archive after 91.
    Lifecycle {
        #[command(flatten)]
        repo: RepoArgs,
        /// A policy file with a `storage_lifecycle` block shaped like the seed's.
        #[arg(long, conflicts_with_all = ["warm_after", "cold_after", "archive_after"])]
        policy: Option<PathBuf>,
        /// Days before the warm tier (S3 Standard-IA, Azure Cool).
        #[arg(long)]
        warm_after: Option<u32>,
        /// Days before the cold tier (S3 Glacier, Azure Cold).
        #[arg(long)]
        cold_after: Option<u32>,
        /// Days before the archive tier (S3 Glacier Deep Archive, Azure Archive).
        #[arg(long)]
        archive_after: Option<u32>,
    },
    /// Show the stores, the write policy and the copy lag (what waits in
    /// the outbox for each secondary), without copying anything.
    Status {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Bring the stores of a replicated repository into agreement: drain
    /// the outbox, then copy every missing or damaged object from a good
    /// copy. Never deletes unless asked.
    Sync {
        #[command(flatten)]
        repo: RepoArgs,
        /// Read every copy of every pack (finds same-size damage; otherwise
        /// packs are compared by size).
        #[arg(long)]
        read_data: bool,
        /// Delete packs that the primary lacks and no index in any store
        /// refers to (left by interrupted backups), instead of copying them
        /// to the primary. Do not run during a backup.
        #[arg(long)]
        delete_extra: bool,
    },
    /// Bring a repository written by an earlier release to the current
    /// format: every index, snapshot and WAL object sealed again bound to
    /// its name, then the keyring and the config moved on. Stop writers of
    /// the earlier release first; running it again is safe.
    Migrate {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

impl RepoCommand {
    /// Runs the command.
    pub async fn run(self) -> Result<u8> {
        match self.command {
            RepoSub::Init { repo } => {
                let stores = repo.stores().await?;
                let store = stores.store();
                let key = repo.master_key()?;
                let described = store.describe();
                let created =
                    init(store, &key).await.with_context(|| format!("initialising repository in {described}"))?;
                eprintln!(
                    "created repository {} in {described}, keys wrapped by master key {}",
                    &created.config().id[..16],
                    key.id
                );
                settle(&stores).await?;
                Ok(0)
            }
            RepoSub::Rehydrate { repo } => {
                let opened = repo.open().await?;
                let described = opened.store().describe();
                let packs =
                    rehydrate(&opened).await.with_context(|| format!("starting the rehydration of {described}"))?;
                eprintln!("rehydration started for {packs} packs in {described}");
                Ok(0)
            }
            RepoSub::Lifecycle { repo, policy, warm_after, cold_after, archive_after } => {
                let lifecycle = match policy {
                    Some(path) => {
                        let text = std::fs::read_to_string(&path)
                            .with_context(|| format!("reading policy {}", path.display()))?;
                        storage_lifecycle_from_yaml(&text).with_context(|| format!("policy {}", path.display()))?
                    }
                    None => {
                        let seed = Lifecycle::default();
                        Lifecycle {
                            warm_after: warm_after.or(seed.warm_after),
                            cold_after: cold_after.or(seed.cold_after),
                            archive_after: archive_after.or(seed.archive_after),
                        }
                    }
                };
                lifecycle.validate()?;
                let opened = repo.open().await?;
                let outcomes =
                    opened.store().apply_lifecycle(&lifecycle).await.context("applying the storage lifecycle")?;
                for o in outcomes {
                    eprintln!("{}: {}", o.store, o.summary);
                    for a in o.adjustments {
                        eprintln!("  note: {a}");
                    }
                }
                Ok(0)
            }
            RepoSub::Status { repo } => {
                let stores = repo.stores().await?;
                for (i, store) in stores.members().iter().enumerate() {
                    println!("{} {}", if i == 0 { "primary  " } else { "secondary" }, store.describe());
                }
                let OpenedStore::Replicated(r) = &stores else { return Ok(0) };
                println!("write policy {:?}, outbox {}", r.policy(), r.outbox().root().display());
                for lag in r.outbox().lag().await.context("reading the outbox")? {
                    let age = lag.oldest_age();
                    println!(
                        "copy lag to {}: {} objects, {}, oldest {}",
                        lag.store,
                        lag.objects,
                        HumanBytes(lag.bytes),
                        age.map_or("-".into(), |a| format!("{}s", a.as_secs()))
                    );
                }
                Ok(0)
            }
            RepoSub::Migrate { repo } => {
                let (opened, stores) = repo.open_with_stores().await?;
                let described = opened.store().describe();
                let report = migrate(&opened, &repo.master_key()?)
                    .await
                    .with_context(|| format!("migrating the repository in {described}"))?;
                settle(&stores).await?;
                if report.upgraded {
                    eprintln!(
                        "migrated {described} from format {} to {FORMAT_VERSION}: {} objects sealed again bound to their names ({} already were)",
                        report.from, report.resealed, report.already
                    );
                } else {
                    eprintln!(
                        "{described} is already of format {FORMAT_VERSION}: {} objects sealed again, {} already bound to their names",
                        report.resealed, report.already
                    );
                }
                Ok(0)
            }
            RepoSub::Sync { repo, read_data, delete_extra } => {
                let (opened, stores) = repo.open_with_stores().await?;
                if matches!(stores, OpenedStore::Single(_)) {
                    bail!("repo sync needs a replicated repository: give --repo more than once");
                }
                settle(&stores).await?;
                let opts = ReconcileOptions { read_data, repair: true, delete_extra };
                let report = run_reconcile(&opened, &repo.master_key()?, &stores, opts).await?;
                eprintln!(
                    "copied {} objects ({}), deleted {}",
                    report.copied,
                    HumanBytes(report.bytes_copied),
                    report.deleted
                );
                if !report.unrepaired.is_empty() {
                    for p in &report.unrepaired {
                        eprintln!("lifeboat: problem: {p}");
                    }
                    bail!("{} problems could not be mended (listed above)", report.unrepaired.len());
                }
                eprintln!("the stores agree");
                Ok(0)
            }
        }
    }
}

/// Compares (and with `opts.repair` mends) the member stores, with a
/// progress bar, and prints what differed.
pub async fn run_reconcile(
    repo: &Repository,
    master: &MasterKey,
    stores: &OpenedStore,
    opts: ReconcileOptions,
) -> Result<ReconcileReport> {
    let progress = Arc::new(Progress::default());
    let view = ProgressView::start("comparing stores", progress.clone());
    let p = progress.clone();
    let report = reconcile(repo, Some(master), &stores.members(), opts, Arc::new(move |n| p.bytes(n))).await?;
    drop(view);
    eprintln!(
        "compared {} objects across {} stores ({} read)",
        report.objects,
        report.stores.len(),
        HumanBytes(report.bytes_read)
    );
    for p in &report.problems {
        eprintln!("lifeboat: {}: {p}", if opts.repair { "mending" } else { "problem" });
    }
    Ok(report)
}
