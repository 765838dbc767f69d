//! Where a Redis source is and how to log in: `redis://[user@]host:port`,
//! `rediss://` for TLS checked against a CA file, or
//! `sentinel://host:port[,host:port...]/MASTER` for a set managed by
//! Sentinel. A password never rides in the URL (it would show in `ps`, in
//! shell history and in the snapshot): it comes from a file or a variable.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::RedisError;

/// The port a Redis server listens on unless told otherwise.
pub(crate) const REDIS_PORT: u16 = 6379;
/// The port a sentinel listens on unless told otherwise.
const SENTINEL_PORT: u16 = 26379;

/// A server's address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostPort {
    /// Parses `host[:port]`, `[v6]:port`, with `default` for a missing port.
    pub(crate) fn parse(text: &str, default: u16) -> Result<HostPort, String> {
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => {
                    (host, Some(port.strip_prefix(':').ok_or_else(|| format!("{text:?}: expected :PORT after ]"))?))
                }
                None => return Err(format!("{text:?}: unclosed [")),
            },
            None => match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            },
        };
        if host.is_empty() {
            return Err(format!("{text:?} names no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{text:?}: {p:?} is not a port"))?,
            None => default,
        };
        Ok(HostPort { host: host.to_owned(), port })
    }
}

/// Which server of a Sentinel-managed set to capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// The master.
    #[default]
    Master,
    /// A healthy replica (the master when there is none), keeping the fork
    /// and the transfer off the master.
    Replica,
}

impl std::str::FromStr for Prefer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "master" => Ok(Prefer::Master),
            "replica" => Ok(Prefer::Replica),
            _ => Err(format!("{s:?} is not master or replica")),
        }
    }
}

/// What a Redis source's URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server.
    Server(HostPort),
    /// The master named `master` that these sentinels watch.
    Sentinels {
        /// The sentinels, asked in turn.
        sentinels: Vec<HostPort>,
        /// The master's name in their configuration.
        master: String,
    },
}

/// A parsed URL: what it names, whether the server speaks TLS, and the
/// user, if it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The server or the sentinels.
    pub target: Target,
    /// `rediss://`.
    pub tls: bool,
    /// The ACL user, when not `default`.
    pub user: Option<String>,
}

impl Url {
    /// Parses a source URL; a password in it is refused, saying where it goes.
    pub fn parse(text: &str) -> Result<Url, RedisError> {
        let bad = |why: String| RedisError::Config(format!("redis URL {}: {why}", redact(text)));
        let (scheme, rest) =
            text.split_once("://").ok_or_else(|| bad("expected redis://, rediss:// or sentinel://".into()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let user = match userinfo {
            Some(u) if u.contains(':') => {
                return Err(bad(
                    "a password does not go in the URL (it would show in the process list and the snapshot): put it in a file (password_file, --password-file) or a variable (password_env, --password-env)".into(),
                ));
            }
            Some("") | None => None,
            Some(u) => Some(u.to_owned()),
        };
        let (target, tls) = match scheme {
            "redis" | "rediss" => {
                if !path.is_empty() && path.parse::<u32>().is_err() {
                    return Err(bad(format!("{path:?} is not a database number")));
                }
                (Target::Server(HostPort::parse(hosts, REDIS_PORT).map_err(bad)?), scheme == "rediss")
            }
            "sentinel" => {
                if path.is_empty() {
                    return Err(bad(
                        "name the master after the sentinels: sentinel://HOST:PORT[,HOST:PORT]/MASTER".into()
                    ));
                }
                let sentinels = hosts
                    .split(',')
                    .map(|h| HostPort::parse(h, SENTINEL_PORT))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                (Target::Sentinels { sentinels, master: path.to_owned() }, false)
            }
            other => return Err(bad(format!("{other}:// is not redis://, rediss:// or sentinel://"))),
        };
        Ok(Url { target, tls, user })
    }
}

impl fmt::Display for Url {
    /// The URL as recorded in snapshots: no credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Server(s) => write!(f, "{}://{s}", if self.tls { "rediss" } else { "redis" }),
            Target::Sentinels { sentinels, master } => {
                let hosts: Vec<String> = sentinels.iter().map(ToString::to_string).collect();
                write!(f, "sentinel://{}/{master}", hosts.join(","))
            }
        }
    }
}

/// `text` with anything between `://` and `@` hidden, for error messages.
fn redact(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &text[..s], &text[at + 1..]),
        _ => text.to_owned(),
    }
}

/// How to reach a Redis source and log in.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Connection {
    /// `redis://[user@]host:port`, `rediss://…`, or `sentinel://…/MASTER`
    /// (required: checked after parsing, so that a misspelt field is named
    /// rather than this one reported missing).
    #[serde(default)]
    pub url: String,
    /// The ACL user (instead of one in the URL).
    pub user: Option<String>,
    /// A file holding the password (its first line).
    pub password_file: Option<PathBuf>,
    /// A variable holding the password.
    pub password_env: Option<String>,
    /// The CA that signed the server's certificate (`rediss://`).
    pub ca_file: Option<PathBuf>,
    /// Under Sentinel: capture from the master or a healthy replica.
    #[serde(default)]
    pub prefer: Prefer,
}

impl Connection {
    /// What is wrong with it, before anything is dialled.
    pub fn check(&self) -> Result<Url, RedisError> {
        let url = Url::parse(&self.url)?;
        if url.tls && self.ca_file.is_none() {
            return Err(RedisError::Config(format!(
                "{url}: rediss:// needs the CA that signed the server's certificate (ca_file, --ca-file)"
            )));
        }
        if !url.tls && self.ca_file.is_some() {
            return Err(RedisError::Config(format!(
                "{url}: ca_file applies to rediss:// only (the servers of a sentinel:// set are reached without TLS)"
            )));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(RedisError::Config("give the password in a file or a variable, not both".into()));
        }
        if url.user.is_some() && self.user.is_some() {
            return Err(RedisError::Config(format!("{url}: the user is named both in the URL and apart from it")));
        }
        Ok(url)
    }

    /// Makes a relative password or CA file relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.password_file, &mut self.ca_file].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Reads the credentials and the CA: what every connection needs.
    pub fn access(&self) -> Result<(Url, Access), RedisError> {
        let url = self.check()?;
        let password = match (&self.password_file, &self.password_env) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).map_err(RedisError::io("reading the password file", file))?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            (None, Some(var)) => {
                Some(std::env::var(var).map_err(|_| {
                    RedisError::Config(format!("the password variable {var} is not set (or not UTF-8)"))
                })?)
            }
            (None, None) => None,
        };
        let tls = match (&self.ca_file, url.tls) {
            (Some(ca), true) => Some(client_tls(ca)?),
            _ => None,
        };
        let user = url.user.clone().or_else(|| self.user.clone());
        Ok((url, Access { user, password, tls }))
    }
}

/// Credentials and TLS for the servers of one source.
#[derive(Clone, Default)]
pub struct Access {
    /// The ACL user (`default` when none).
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// TLS to the data servers, checked against the CA file.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A TLS client trusting only `ca`.
fn client_tls(ca: &Path) -> Result<Arc<rustls::ClientConfig>, RedisError> {
    let config =
        lifeboat_common::tls::verifying_client(ca).map_err(|e| RedisError::Config(format!("the CA file: {e}")))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort { host: host.into(), port }
    }

    #[test]
    fn urls_of_each_kind() {
        let u = Url::parse("redis://10.0.0.5:6380").unwrap();
        assert_eq!(u, Url { target: Target::Server(hp("10.0.0.5", 6380)), tls: false, user: None });
        let u = Url::parse("rediss://backup@cache.internal").unwrap();
        assert_eq!(
            u,
            Url { target: Target::Server(hp("cache.internal", 6379)), tls: true, user: Some("backup".into()) }
        );
        assert_eq!(u.to_string(), "rediss://cache.internal:6379");
        let u = Url::parse("sentinel://s1:26380,[::1],s3/mymaster").unwrap();
        assert_eq!(
            u.target,
            Target::Sentinels {
                sentinels: vec![hp("s1", 26380), hp("::1", 26379), hp("s3", 26379)],
                master: "mymaster".into()
            }
        );
        assert_eq!(u.to_string(), "sentinel://s1:26380,[::1]:26379,s3:26379/mymaster");
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_shown() {
        let err = Url::parse("redis://app:s3cret@host:6379").unwrap_err().to_string();
        assert!(err.contains("password_file") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("host:6379", "expected redis://"),
            ("http://host", "is not redis://"),
            ("redis://:6379", "names no host"),
            ("redis://host:port", "is not a port"),
            ("sentinel://s1:26379", "name the master"),
            ("redis://host/zero", "database number"),
        ] {
            let err = Url::parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        let tls = Connection { url: "rediss://h".into(), ..Default::default() }.check().unwrap_err().to_string();
        assert!(tls.contains("ca_file"), "{tls}");
    }
}
