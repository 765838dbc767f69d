//! What can go wrong capturing or restoring Redis.

use std::path::PathBuf;

use lifeboat_common::repo::RepoError;

use crate::sources::files::FilesError;

/// A Redis capture or restore failure, naming the server or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL or a setting cannot be used.
    #[error("{0}")]
    Config(String),
    /// A server could not be reached, or the connection broke.
    #[error("redis {server}: {what}: {cause}")]
    Connect {
        /// The server, `host:port`.
        server: String,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        cause: std::io::Error,
    },
    /// The server refused a command: a wrong password, a missing permission.
    #[error("redis {server} refused {command}: {reply}{hint}")]
    Refused {
        /// The server, `host:port`.
        server: String,
        /// The command refused.
        command: String,
        /// The server's reply.
        reply: String,
        /// What to do about it, when it is clear.
        hint: &'static str,
    },
    /// The replication stream is not what the protocol says.
    #[error("redis {server}: {what}")]
    Protocol {
        /// The server, `host:port`.
        server: String,
        /// What was wrong.
        what: String,
    },
    /// The RDB received cannot stand: cut short, or failing its checksum.
    #[error("redis {server}: the RDB {what}; nothing was saved")]
    Rdb {
        /// The server, `host:port`.
        server: String,
        /// What is wrong with it.
        what: String,
    },
    /// The sentinels name no server that can be captured.
    #[error("{0}")]
    Topology(String),
    /// Restoring the RDB's file failed.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A local file operation failed.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        cause: std::io::Error,
    },
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
    /// The restored server does not hold what the capture recorded.
    #[error("{0}")]
    Mismatch(String),
}

impl RedisError {
    /// A local I/O error naming the file.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RedisError {
        let path = path.into();
        move |cause| RedisError::Io { op, path, cause }
    }

    /// A refusal by `server` of `command`, with a hint for the refusals an
    /// operator can act on (credentials, ACL permissions).
    pub(crate) fn refused(server: &str, command: &str, reply: &str) -> RedisError {
        let code = reply.split_whitespace().next().unwrap_or_default();
        let hint = match code {
            "WRONGPASS" => " (check the user and the password file or variable)",
            "NOAUTH" => " (the server wants a password: set password_file or password_env)",
            "NOPERM" => {
                " (the user needs the replication commands: ACL SETUSER <user> +psync +sync +replconf +info +role +ping)"
            }
            _ => "",
        };
        RedisError::Refused { server: server.to_owned(), command: command.to_owned(), reply: reply.to_owned(), hint }
    }

    /// A client library error on `server` while doing `what`: a refusal
    /// keeps the server's words, anything else is a broken connection.
    pub(crate) fn client(server: &str, command: &str, e: redis::RedisError) -> RedisError {
        // The crate turns WRONGPASS at login into a kind of its own.
        if e.kind() == redis::ErrorKind::AuthenticationFailed {
            return RedisError::refused(
                server,
                "AUTH",
                "WRONGPASS the user or its password is wrong, or the user is disabled",
            );
        }
        match e.code() {
            Some(code) => {
                let detail = e.detail().unwrap_or_default();
                RedisError::refused(server, command, format!("{code} {detail}").trim())
            }
            None => RedisError::Protocol { server: server.to_owned(), what: format!("{command}: {e}") },
        }
    }
}
