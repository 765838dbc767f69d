//! Restoring a base backup into a data directory that PostgreSQL recovers
//! from the archived WAL: the files, `backup_label` and `tablespace_map`,
//! `recovery.signal`, and the recovery settings (restore command, target).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_common::repo::engine::open::RepoSpec;
use lifeboat_common::repo::format::snapshot::{PostgresBackup, Snapshot, Tablespace};
use lifeboat_common::repo::format::wal::Lsn;
use lifeboat_common::repo::{Repository, SnapshotId};

use super::relfile::RelationFiles;
use super::{PgError, wal};
use crate::progress::Progress;
use crate::sources::RecoveryPoint;
use crate::sources::files::{FixedChunks, RestoreOptions, RestoreReport, restore_files};
use crate::sources::owner::give_to_owner_of;

/// A word as one shell argument.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `restore_command` that fetches WAL with `agent` (default: this
/// binary) from the repository `spec` opens: its locations and key file
/// named explicitly, as PostgreSQL runs the command with its own environment.
pub fn wal_fetch_command(agent: Option<&Path>, spec: &RepoSpec) -> Result<String, PgError> {
    let agent = match agent {
        Some(a) => a.to_owned(),
        None => std::env::current_exe().map_err(PgError::io("locating", Path::new("lifeboat-agent")))?,
    };
    let mut command = vec![sh_quote(&agent.display().to_string()), "wal-fetch".to_owned()];
    for location in &spec.locations {
        command.push(format!("--repo={}", sh_quote(location)));
    }
    if let Some(key) = &spec.key_file {
        let key = std::path::absolute(key).map_err(PgError::io("resolving", key))?;
        command.push(format!("--key-file={}", sh_quote(&key.display().to_string())));
    }
    Ok(command.join(" "))
}

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct PgRestoreOptions {
    /// The new data directory (must be empty or absent).
    pub target_dir: PathBuf,
    /// A backup id or prefix; default: the newest that can reach the target.
    pub from_backup: Option<String>,
    /// Where recovery stops.
    pub target: RecoveryPoint,
    /// `lifeboat-agent wal-fetch` with its repository options, as a shell
    /// command: the segment size, `%f` and `%p` are added here.
    pub restore_command: String,
    /// Reuse the files already in the target where their content matches
    /// (checked by hash) and remove what the backup does not have; without
    /// it the target must be empty.
    pub delta: bool,
    /// Where to put tablespaces, by OID or name (default: where they were).
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Worker threads (0: automatic).
    pub threads: usize,
    /// Paths a `delta` restore (which removes what the backup lacks) must
    /// never remove: the repository, the master key. A target holding one is refused.
    pub protect: Vec<PathBuf>,
}

/// What a restore did.
#[derive(Debug)]
pub struct PgRestoreOutcome {
    /// The base backup used.
    pub backup: SnapshotId,
    /// Its manifest.
    pub postgres: PostgresBackup,
    /// The file restore.
    pub files: RestoreReport,
}

/// `X/Y` as one number, for ordering.
pub fn parse_lsn(lsn: &str) -> Option<u64> {
    lsn.parse::<Lsn>().ok().map(|l| l.0)
}

/// The base backup to start from: the one named, or the newest that ended
/// before the target.
async fn choose(repo: &Repository, opts: &PgRestoreOptions) -> Result<(SnapshotId, Snapshot, PostgresBackup), PgError> {
    if let Some(spec) = &opts.from_backup {
        let (id, snap) = repo.find_snapshot(spec).await?;
        let pg = snap.postgres.clone();
        let pg = pg.ok_or_else(|| PgError::Usage(format!("snapshot {} is not a PostgreSQL backup", id.short())))?;
        return Ok((id, snap, pg));
    }
    let backups: Vec<(SnapshotId, Snapshot)> =
        repo.snapshots().await?.into_iter().filter(|(_, s)| s.postgres.is_some()).collect();
    let usable = backups.into_iter().rev().find_map(|(id, s)| {
        let pg = s.postgres.clone()?;
        let fits = match &opts.target {
            RecoveryPoint::Latest => true,
            RecoveryPoint::Time(t) => pg.stop_time <= *t,
            RecoveryPoint::Lsn(l) => parse_lsn(l).is_some_and(|l| pg.stop_lsn.0 <= l),
        };
        fits.then_some((id, s, pg))
    });
    usable.ok_or_else(|| {
        PgError::Usage(format!("no PostgreSQL base backup in the repository ends before {:?}", opts.target))
    })
}

/// Where each tablespace of the backup goes: as mapped (by OID or name),
/// else where it was.
fn tablespace_targets(pg: &PostgresBackup, map: &[(String, PathBuf)]) -> Result<Vec<(Tablespace, PathBuf)>, PgError> {
    for (key, _) in map {
        if !pg.tablespaces.iter().any(|t| t.oid.to_string() == *key || t.name == *key) {
            let known: Vec<String> = pg.tablespaces.iter().map(|t| format!("{} ({})", t.name, t.oid)).collect();
            return Err(PgError::Usage(format!(
                "the backup has no tablespace {key:?} to map (it has: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )));
        }
    }
    pg.tablespaces
        .iter()
        .map(|t| {
            let mapped = map.iter().find(|(k, _)| t.oid.to_string() == *k || t.name == *k).map(|(_, d)| d.clone());
            let dir = mapped.unwrap_or_else(|| PathBuf::from(&t.location));
            let dir = std::path::absolute(&dir).map_err(PgError::io("resolving", &dir))?;
            Ok((t.clone(), dir))
        })
        .collect()
}

/// The lines that make a server fetch WAL with `restore_command` (the
/// `wal-fetch` command) and follow the newest timeline.
pub fn recovery_settings(restore_command: &str, segment_size: u64) -> String {
    format!(
        "restore_command = {}\nrecovery_target_timeline = 'latest'\n",
        conf_literal(&format!("{restore_command} --segment-size={segment_size} %f %p"))
    )
}

/// A value as a quoted string literal of postgresql.conf.
pub(crate) fn conf_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Restores a base backup into `opts.target_dir`, ready for PostgreSQL to
/// start and recover to the target.
#[tracing::instrument(skip_all, fields(target = %opts.target_dir.display()))]
pub async fn restore_postgres(
    repo: &Repository,
    opts: PgRestoreOptions,
    progress: Arc<Progress>,
) -> Result<PgRestoreOutcome, PgError> {
    let (id, snapshot, pg) = choose(repo, &opts).await?;
    // Before restoring anything: is the WAL there to make it consistent and
    // to reach the target?
    let archived = wal::archived_segments(repo, pg.timeline.0).await?;
    let (last, gap) =
        wal::check_chain(&archived, &pg.start_wal.to_string(), &pg.stop_wal.to_string(), pg.wal_segment_size)?;
    if let Some(missing) = gap {
        let message = format!(
            "WAL segment {missing} is missing from the repository while later segments exist: recovery would stop at the end of {last}"
        );
        let blocks = match &opts.target {
            RecoveryPoint::Latest => true,
            RecoveryPoint::Lsn(l) => {
                parse_lsn(l).zip(wal::segment_start(&missing, pg.wal_segment_size)).is_some_and(|(l, s)| l >= s)
            }
            RecoveryPoint::Time(_) => false,
        };
        if blocks {
            return Err(PgError::Usage(message));
        }
        tracing::warn!("{message}");
    }
    let target = &opts.target_dir;
    if opts.delta && target.join("postmaster.pid").exists() {
        return Err(PgError::Usage(format!(
            "{} has a postmaster.pid: stop the server using it first (or remove the file if it crashed)",
            target.display()
        )));
    }
    let tablespaces = tablespace_targets(&pg, &opts.tablespace_map)?;
    let roots = std::iter::once((pg.pgdata.clone(), target.clone()))
        .chain(tablespaces.iter().map(|(t, dir)| (t.location.clone(), dir.clone())));
    let roots: Vec<(String, PathBuf)> = roots.collect();
    if !opts.delta {
        for (_, dir) in &roots {
            if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                return Err(PgError::Usage(format!(
                    "{} is not empty: restore into new directories (--tablespace-map moves tablespaces), or give --delta to reuse what matches",
                    dir.display()
                )));
            }
        }
    }
    // The target's relation files as the backup cut them, for --delta.
    let relations: Arc<dyn FixedChunks> =
        Arc::new(RelationFiles::new(target.clone(), tablespaces.iter().map(|(t, dir)| (t.oid, dir.clone())).collect()));
    let mut files = RestoreReport::default();
    for (sub_path, dir) in roots {
        let restored = restore_files(
            repo,
            &snapshot,
            RestoreOptions {
                target: dir,
                sub_path: Some(sub_path),
                // A delta restore leaves nothing of the old cluster behind
                // (stale WAL in pg_wal would confuse recovery).
                delete: opts.delta,
                delta: opts.delta,
                fixed_chunks: Some(relations.clone()),
                threads: opts.threads,
                protect: opts.protect.clone(),
                ..Default::default()
            },
            progress.clone(),
        )
        .await?;
        files.absorb(restored);
    }

    let write = |name: &str, content: &str| -> Result<(), PgError> {
        let path = target.join(name);
        std::fs::write(&path, content).map_err(PgError::io("writing", &path))?;
        // The server (not root) must be able to read it.
        give_to_owner_of(target, &path).map_err(PgError::io("changing owner of", &path))
    };
    write("backup_label", &pg.backup_label)?;
    // PostgreSQL makes pg_tblspc's links from this file when it starts.
    if !tablespaces.is_empty() {
        let map: String = tablespaces.iter().map(|(t, dir)| format!("{} {}\n", t.oid, dir.display())).collect();
        write("tablespace_map", &map)?;
    } else if !pg.tablespace_map.is_empty() {
        write("tablespace_map", &pg.tablespace_map)?;
    }
    write("recovery.signal", "")?;
    let mut settings = format!(
        "\n# Added by lifeboat restore postgres from backup {}\n{}",
        id.short(),
        recovery_settings(&opts.restore_command, pg.wal_segment_size)
    );
    match &opts.target {
        RecoveryPoint::Latest => {}
        RecoveryPoint::Time(t) => {
            settings.push_str(&format!(
                "recovery_target_time = {}\n",
                conf_literal(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
            ));
        }
        RecoveryPoint::Lsn(l) => settings.push_str(&format!("recovery_target_lsn = {}\n", conf_literal(l))),
    }
    if opts.target != RecoveryPoint::Latest {
        settings.push_str("recovery_target_action = 'promote'\n");
    }
    let auto = target.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&settings);
    write("postgresql.auto.conf", &conf)?;
    Ok(PgRestoreOutcome { backup: id, postgres: pg, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_literals() {
        assert!(parse_lsn("0/3000028") < parse_lsn("1/0"));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert!(parse_lsn("nonsense").is_none());
        assert_eq!(conf_literal("a 'b' c"), "'a ''b'' c'");
    }
}
