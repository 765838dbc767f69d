//! Connecting to PostgreSQL with libpq-style options and environment.

use clap::Args;
use tokio_postgres::{Client, NoTls};

use super::PgError;

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
        let (client, connection) =
            self.config().connect(NoTls).await.map_err(PgError::db(format!("connecting to {}", self.describe())))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}
