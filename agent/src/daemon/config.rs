//! The agent daemon's configuration file (TOML).

use std::path::{Path, PathBuf};

use lifeboat_common::tls::TlsFiles;
use serde::Deserialize;

use super::DaemonError;
use crate::sources::SourceConfig;
use lifeboat_common::repo::engine::settings::{Locations, RepoSettings};

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
    /// Where `/metrics` is served, over plain HTTP (absent: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where traces go over OTLP/gRPC (absent: `OTEL_EXPORTER_OTLP_ENDPOINT`, else off).
    pub otlp_endpoint: Option<String>,
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
            let section = source.section();
            if !ids.insert(section.common().id.as_str()) {
                return Err(invalid(format!("source {:?} is defined twice", section.common().id)));
            }
            section.check().map_err(invalid)?;
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
            source.section_mut().resolve(&base);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "host = \"db1\"\ncoordinators = [\"https://c:7443\"]\n\
        [tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n\
        [repository]\nrepo = \"repo\"\nkey_file = \"k\"\n";

    fn load(sources: &str) -> Result<AgentConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, format!("{HEAD}{sources}")).unwrap();
        AgentConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_has_its_own_fields() {
        let config = load(
            "[[source]]\nid = \"etc\"\nkind = \"files\"\npaths = [\"etc\"]\nwatch = true\nschedules = [\"a.b\"]\nrpo = \"1h\"\n\
             [[source]]\nid = \"pg\"\nkind = \"postgres\"\npgdata = \"/pg\"\npg_port = 5433\n\
             [source.wal_stream]\nslot = \"s\"\n",
        )
        .unwrap();
        let files = config.sources[0].section();
        assert_eq!(files.common().id, "etc");
        assert_eq!(files.common().rpo, Some(std::time::Duration::from_secs(3600)));
        let described = files.build().describe();
        assert!(described.paths[0].ends_with("/etc") && described.paths[0].starts_with('/'), "{described:?}");
        assert_eq!(config.sources[1].section().build().describe().paths, vec!["/pg".to_owned()]);

        // A field of another kind, a misspelt one, an unknown kind: each
        // an error naming the line.
        let err =
            load("[[source]]\nid = \"etc\"\nkind = \"files\"\npaths = [\"/etc\"]\npgdata = \"/pg\"\n").unwrap_err();
        assert!(err.contains("pgdata") && err.contains("line 10"), "{err}");
        let err = load("[[source]]\nid = \"pg\"\nkind = \"postgres\"\npgdata = \"/pg\"\nwatch = true\n").unwrap_err();
        assert!(err.contains("watch") && err.contains("line 10"), "{err}");
        let err = load("[[source]]\nid = \"pg\"\nkind = \"postgres\"\npgdta = \"/pg\"\n").unwrap_err();
        assert!(err.contains("pgdta") && err.contains("line 10"), "{err}");
        let err = load("[[source]]\nid = \"r\"\nkind = \"tape\"\n").unwrap_err();
        assert!(
            err.contains("tape") && err.contains("line 12") && err.contains("`files`, `postgres`, `redis`"),
            "{err}"
        );
        let err = load("[[source]]\nid = \"etc\"\nkind = \"files\"\n").unwrap_err();
        assert!(err.contains("paths"), "{err}");
        let err = load("[[source]]\nid = \"a\"\nkind = \"files\"\npaths = [\"/a\"]\n[[source]]\nid = \"a\"\nkind = \"files\"\npaths = [\"/b\"]\n")
            .unwrap_err();
        assert!(err.contains("defined twice"), "{err}");
    }

    #[test]
    fn redis_sources_are_checked_as_they_load() {
        let config = load(
            "[[source]]\nid = \"sessions\"\nkind = \"redis\"\nurl = \"sentinel://s1:26379,s2/cache\"\n\
             prefer = \"replica\"\nuser = \"backup\"\npassword_file = \"redis.pw\"\nschedules = [\"database.redis\"]\n",
        )
        .unwrap();
        let described = config.sources[0].section().build().describe();
        assert_eq!(described.kind, i32::from(lifeboat_proto::v1::SourceKind::Redis));
        assert_eq!(described.paths, vec!["sentinel://s1:26379,s2:26379/cache".to_owned()]);
        let err =
            load("[[source]]\nid = \"r\"\nkind = \"redis\"\nurl = \"redis://h\"\npasword_file = \"p\"\n").unwrap_err();
        assert!(err.contains("pasword_file"), "{err}");
        let err = load("[[source]]\nid = \"r\"\nkind = \"redis\"\n").unwrap_err();
        assert!(err.contains("needs url"), "{err}");
        let err = load("[[source]]\nid = \"r\"\nkind = \"redis\"\nurl = \"redis://u:secret@h\"\n").unwrap_err();
        assert!(err.contains("password_file") && !err.contains("secret"), "{err}");
        let err =
            load("[[source]]\nid = \"r\"\nkind = \"redis\"\nurl = \"redis://h\"\nprefer = \"any\"\n").unwrap_err();
        assert!(err.contains("any"), "{err}");
    }
}
