//! Connecting to PostgreSQL with libpq-style options and environment,
//! over TLS with the server's certificate verified when asked.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use tokio_postgres::{Client, NoTls};

use super::PgError;

/// Whether a connection uses TLS, in libpq's words. Only the mode that
/// verifies both the chain and the name is offered: TLS without them
/// protects against nothing an attacker in the path cannot undo.
#[derive(clap::ValueEnum, serde::Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP or a Unix socket.
    #[default]
    Disable,
    /// TLS; the server's certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

/// libpq-style connection options; unset ones come from `PGHOST`,
/// `PGPORT`, `PGUSER`, `PGDATABASE`, then libpq's defaults.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// Server host, or a Unix socket directory (starts with /).
    #[arg(long, env = "PGHOST")]
    pub host: Option<String>,
    /// Server port.
    #[arg(long, env = "PGPORT")]
    pub port: Option<u16>,
    /// User to connect as (needs the pg_backup_start/stop privileges).
    #[arg(long, env = "PGUSER")]
    pub user: Option<String>,
    /// Database to connect to.
    #[arg(long, env = "PGDATABASE")]
    pub dbname: Option<String>,
    /// TLS: `verify-full` checks the server's certificate against
    /// `--sslrootcert` and the host name.
    #[arg(long, env = "PGSSLMODE", value_enum, default_value_t)]
    pub sslmode: SslMode,
    /// The CA certificates (PEM) the server's certificate must chain to.
    #[arg(long, env = "PGSSLROOTCERT")]
    pub sslrootcert: Option<PathBuf>,
}

impl ConnectArgs {
    /// The driver configuration.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(self.host());
        c.port(self.port());
        let user = self.user_or_default();
        c.dbname(self.dbname.as_deref().unwrap_or(&user));
        c.user(&user);
        if let Some(pw) = self.password() {
            c.password(pw);
        }
        c.application_name("lifeboat");
        c
    }

    /// The TLS client configuration, when TLS is asked for.
    pub(crate) fn tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, PgError> {
        if self.sslmode == SslMode::Disable {
            return Ok(None);
        }
        let Some(ca) = &self.sslrootcert else {
            return Err(PgError::Usage(format!(
                "{}: sslmode verify-full needs sslrootcert (the CA the server's certificate chains to)",
                self.describe()
            )));
        };
        if self.host().starts_with('/') {
            return Err(PgError::Usage(format!(
                "{}: TLS needs a host name or address, not a socket directory",
                self.describe()
            )));
        }
        let config = lifeboat_common::tls::verifying_client(ca)
            .map_err(|e| PgError::Usage(format!("{}: sslrootcert: {e}", self.describe())))?;
        Ok(Some(Arc::new(config)))
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        format!("postgres at {}:{}", self.host(), self.port())
    }

    /// The user, libpq's default (`postgres` here: Lifeboat runs as root
    /// or as a service user, never as the database owner's login) if unset.
    pub(crate) fn user_or_default(&self) -> String {
        self.user.clone().unwrap_or_else(|| "postgres".into())
    }

    /// The password, from `PGPASSWORD` as libpq reads it (never a flag,
    /// which every user of the machine could see).
    pub(crate) fn password(&self) -> Option<String> {
        std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty())
    }

    /// The host or socket directory, libpq's default if unset.
    pub(crate) fn host(&self) -> &str {
        self.host.as_deref().unwrap_or("/var/run/postgresql")
    }

    /// The port, libpq's default if unset.
    pub(crate) fn port(&self) -> u16 {
        self.port.unwrap_or(5432)
    }

    /// Connects; the connection is driven on the current runtime.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let failed = || PgError::db(format!("connecting to {}", self.describe()));
        let ended = |e: tokio_postgres::Error| tracing::warn!(error = %e, "PostgreSQL connection ended");
        let client = match self.tls()? {
            None => {
                let (client, connection) = self.config().connect(NoTls).await.map_err(failed())?;
                tokio::spawn(async move { connection.await.unwrap_or_else(ended) });
                client
            }
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(Arc::unwrap_or_clone(tls));
                let mut config = self.config();
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let (client, connection) = config.connect(tls).await.map_err(failed())?;
                tokio::spawn(async move { connection.await.unwrap_or_else(ended) });
                client
            }
        };
        Ok(client)
    }
}
