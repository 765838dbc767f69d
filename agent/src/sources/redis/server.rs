//! Connections to Redis servers and sentinels: dialling (TCP, or TLS
//! checked against the source's CA), and a command connection through the
//! `redis` crate for what a capture asks besides the RDB (INFO, ROLE,
//! SENTINEL).

use std::time::Duration;

use lifeboat_common::repo::format::snapshot::RedisKeyspace;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, InfoDict, RedisConnectionInfo, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::RedisError;
use super::endpoint::{Access, HostPort};

/// How long dialling a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a command may wait for its answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to a server, plain or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Dials `server`, through TLS when `access` has it.
pub(crate) async fn dial(server: &HostPort, access: &Access) -> Result<Box<dyn Io>, RedisError> {
    let failed = |what, cause| RedisError::Connect { server: server.to_string(), what, cause };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((server.host.as_str(), server.port)))
        .await
        .map_err(|_| failed("connecting", std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10s")))?
        .map_err(|e| failed("connecting", e))?;
    tcp.set_nodelay(true).map_err(|e| failed("setting TCP_NODELAY", e))?;
    let Some(tls) = &access.tls else { return Ok(Box::new(tcp)) };
    let name = rustls::pki_types::ServerName::try_from(server.host.clone())
        .map_err(|e| RedisError::Config(format!("{server}: {e} (TLS needs a host name or IP address)")))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| failed("TLS handshake", e))?;
    Ok(Box::new(stream))
}

/// A command connection to one server or sentinel.
pub struct Server {
    /// Where it is.
    pub addr: HostPort,
    conn: MultiplexedConnection,
}

/// What `ROLE` says a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A master.
    Master,
    /// A replica of `master`, with its link up or not.
    Replica {
        /// Its master.
        master: HostPort,
        /// `connected`: the link is up and synchronised.
        connected: bool,
    },
    /// A sentinel, or something else.
    Other(String),
}

impl Server {
    /// Connects and logs in with `access` (a sentinel: with no credentials).
    pub async fn open(addr: &HostPort, access: &Access) -> Result<Server, RedisError> {
        let stream = dial(addr, access).await?;
        let mut info = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(user) = &access.user {
            info = info.set_username(user);
        }
        if let Some(password) = &access.password {
            info = info.set_password(password);
        }
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(COMMAND_TIMEOUT));
        let (conn, driver) = MultiplexedConnection::new_with_config(&info, stream, config)
            .await
            .map_err(|e| RedisError::client(&addr.to_string(), "AUTH", e))?;
        tokio::spawn(driver);
        Ok(Server { addr: addr.clone(), conn })
    }

    /// Runs `cmd`, whose name is `name` in errors.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd, name: &str) -> Result<T, RedisError> {
        cmd.query_async(&mut self.conn).await.map_err(|e| RedisError::client(&self.addr.to_string(), name, e))
    }

    /// One section of `INFO`.
    pub async fn info(&mut self, section: &str) -> Result<InfoDict, RedisError> {
        self.query(redis::cmd("INFO").arg(section), "INFO").await
    }

    /// Keys per database, from `INFO keyspace`.
    pub async fn keyspace(&mut self) -> Result<Vec<RedisKeyspace>, RedisError> {
        let info = self.info("keyspace").await?;
        Ok(parse_keyspace(&info))
    }

    /// What the server is, from `ROLE`.
    pub async fn role(&mut self) -> Result<Role, RedisError> {
        let reply: Vec<Value> = self.query(&redis::cmd("ROLE"), "ROLE").await?;
        let text = |v: Option<&Value>| v.and_then(|v| String::from_redis_value(v.clone()).ok()).unwrap_or_default();
        Ok(match text(reply.first()).as_str() {
            "master" => Role::Master,
            "slave" => {
                let port = reply.get(2).and_then(|v| u16::from_redis_value(v.clone()).ok()).unwrap_or_default();
                Role::Replica {
                    master: HostPort { host: text(reply.get(1)), port },
                    connected: text(reply.get(3)) == "connected",
                }
            }
            other => Role::Other(other.to_owned()),
        })
    }
}

/// The `dbN:keys=K,expires=E,…` lines of `INFO keyspace`, by database.
pub fn parse_keyspace(info: &InfoDict) -> Vec<RedisKeyspace> {
    let mut dbs: Vec<RedisKeyspace> = info
        .iter()
        .filter_map(|(name, value)| {
            let db = name.strip_prefix("db")?.parse().ok()?;
            let Value::SimpleString(fields) = value else { return None };
            let field = |key: &str| {
                fields.split(',').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            Some(RedisKeyspace { db, keys: field("keys")?, expires: field("expires").unwrap_or(0) })
        })
        .collect();
    dbs.sort_by_key(|d| d.db);
    dbs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_lines() {
        let info =
            InfoDict::new("# Keyspace\r\ndb0:keys=1000,expires=10,avg_ttl=3599\r\ndb12:keys=3,expires=0,avg_ttl=0\r\n");
        assert_eq!(
            parse_keyspace(&info),
            vec![RedisKeyspace { db: 0, keys: 1000, expires: 10 }, RedisKeyspace { db: 12, keys: 3, expires: 0 }]
        );
    }
}
