//! The agent daemon's configuration file (TOML).

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_common::policy::{human_duration, optional_human_duration};
use lifeboat_common::tls::TlsFiles;
use lifeboat_proto::v1;
use serde::Deserialize;

use super::DaemonError;
use crate::postgres::connect::ConnectArgs;
use crate::repo_args::{Locations, RepoSettings};

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// File trees.
    Files,
    /// A PostgreSQL cluster.
    Postgres,
}

/// WAL streaming for a PostgreSQL source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalStreamConfig {
    /// The physical replication slot (created if absent).
    pub slot: String,
    /// Commits wait for the repository (list the application name in
    /// `synchronous_standby_names`).
    #[serde(default)]
    pub synchronous: bool,
    /// How often the segment being written is stored (not synchronous).
    #[serde(default = "default_interval", deserialize_with = "human_duration")]
    pub interval: Duration,
    /// The name the server sees.
    #[serde(default = "default_application_name")]
    pub application_name: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_application_name() -> String {
    "lifeboat".into()
}

/// One thing this agent backs up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique on this host.
    pub id: String,
    /// What it is.
    pub kind: SourceKind,
    /// Files: the roots.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Files: globs left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// PostgreSQL: the data directory.
    pub pgdata: Option<PathBuf>,
    /// PostgreSQL: server host or socket directory.
    pub pg_host: Option<String>,
    /// PostgreSQL: port.
    pub pg_port: Option<u16>,
    /// PostgreSQL: user.
    pub pg_user: Option<String>,
    /// PostgreSQL: database.
    pub pg_dbname: Option<String>,
    /// The policy's schedules (`group.name`) that apply to it.
    #[serde(default)]
    pub schedules: Vec<String>,
    /// Its recovery point objective.
    #[serde(default, deserialize_with = "optional_human_duration")]
    pub rpo: Option<Duration>,
    /// Watch the paths and report changes (for an on-change schedule).
    #[serde(default)]
    pub watch: bool,
    /// Stream WAL continuously, whether or not a coordinator is reachable.
    pub wal_stream: Option<WalStreamConfig>,
}

impl SourceConfig {
    /// PostgreSQL connection settings (unset ones fall back to PG* and defaults).
    pub fn connect(&self) -> ConnectArgs {
        ConnectArgs {
            host: self.pg_host.clone(),
            port: self.pg_port,
            user: self.pg_user.clone(),
            dbname: self.pg_dbname.clone(),
        }
    }

    /// The source on the wire.
    pub fn to_proto(&self) -> v1::Source {
        let (kind, paths) = match self.kind {
            SourceKind::Files => (v1::SourceKind::Files, self.paths.iter().map(|p| p.display().to_string()).collect()),
            SourceKind::Postgres => {
                (v1::SourceKind::Postgres, self.pgdata.iter().map(|p| p.display().to_string()).collect())
            }
        };
        v1::Source {
            id: self.id.clone(),
            kind: kind.into(),
            paths,
            schedules: self.schedules.clone(),
            version: String::new(),
            rpo_seconds: self.rpo.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        }
    }

    /// The tag its snapshots carry.
    pub fn tag(&self) -> String {
        format!("{}{}", lifeboat_common::repo::retention::SOURCE_TAG, self.id)
    }
}

/// `lifeboat-agent run --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This host's name (its certificate's).
    pub host: String,
    /// Its region.
    #[serde(default)]
    pub region: String,
    /// Coordinators to try, in order; a follower points to the leader.
    pub coordinators: Vec<String>,
    /// Jobs run at once.
    #[serde(default = "one")]
    pub max_jobs: u32,
    /// Mutual TLS.
    pub tls: TlsFiles,
    /// The repository (as in a `lifeboat --config` file).
    pub repository: RepoSettings,
    /// What it backs up.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
}

fn one() -> u32 {
    1
}

impl AgentConfig {
    /// Reads and checks the file; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<Self, DaemonError> {
        let invalid = |reason: String| DaemonError::Config { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let mut config: AgentConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if config.coordinators.is_empty() {
            return Err(invalid("name at least one coordinator".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for source in &config.sources {
            if !ids.insert(source.id.as_str()) {
                return Err(invalid(format!("source {:?} is defined twice", source.id)));
            }
            match source.kind {
                SourceKind::Files if source.paths.is_empty() => {
                    return Err(invalid(format!("source {:?}: a files source needs paths", source.id)));
                }
                SourceKind::Postgres if source.pgdata.is_none() => {
                    return Err(invalid(format!("source {:?}: a postgres source needs pgdata", source.id)));
                }
                _ => {}
            }
        }
        let base = path.parent().unwrap_or(Path::new("")).to_owned();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        config.tls.resolve(&base);
        if let Some(k) = config.repository.key_file.as_mut() {
            resolve(k);
        }
        if let Some(o) = config.repository.outbox.as_mut() {
            resolve(o);
        }
        let local = |l: &mut String| {
            if !l.contains("://") && Path::new(l.as_str()).is_relative() {
                *l = base.join(&*l).display().to_string();
            }
        };
        match config.repository.repo.as_mut() {
            Some(Locations::One(l)) => local(l),
            Some(Locations::Many(ls)) => ls.iter_mut().for_each(local),
            None => return Err(invalid("[repository] needs repo".into())),
        }
        for source in &mut config.sources {
            source.paths.iter_mut().for_each(resolve);
            if let Some(p) = source.pgdata.as_mut() {
                resolve(p);
            }
        }
        Ok(config)
    }
}
