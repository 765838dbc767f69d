//! Finding the server to capture in a set Sentinel manages: the master
//! the sentinels name (`SENTINEL get-master-addr-by-name`), confirmed by
//! its own `ROLE` (a sentinel that missed a failover names a demoted
//! server), or with `prefer = "replica"` a replica whose link to that
//! master is up, so that the fork and the transfer stay off the master.
//! Each capture asks afresh: after a failover the next capture follows the
//! new topology.

use std::collections::HashMap;

use super::RedisError;
use super::endpoint::{Access, HostPort, Prefer, Target, Url};
use super::server::{Role, Server};

/// The server to capture for `url`, connected, and what its own `ROLE`
/// says it is.
pub async fn locate(url: &Url, access: &Access, prefer: Prefer) -> Result<(Server, Role), RedisError> {
    let (sentinels, name) = match &url.target {
        Target::Server(addr) => {
            let mut server = Server::open(addr, access).await?;
            let role = server.role().await?;
            return Ok((server, role));
        }
        Target::Sentinels { sentinels, master } => (sentinels, master),
    };
    let mut why = Vec::new();
    for sentinel in sentinels {
        match ask(sentinel, name, access, prefer).await {
            Ok(server) => return Ok(server),
            Err(e) => {
                tracing::warn!(%sentinel, master = name, error = %e, "this sentinel did not lead to a server; asking the next");
                why.push(format!("{sentinel}: {e}"));
            }
        }
    }
    Err(RedisError::Topology(format!("no sentinel of {url} led to a server to capture: {}", why.join("; "))))
}

/// Asks one sentinel.
async fn ask(sentinel: &HostPort, name: &str, access: &Access, prefer: Prefer) -> Result<(Server, Role), RedisError> {
    let mut s = Server::open(sentinel, &Access::default()).await?;
    let named: Option<(String, u16)> = s
        .query(redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(name), "SENTINEL get-master-addr-by-name")
        .await?;
    let (host, port) = named.ok_or_else(|| RedisError::Topology(format!("it watches no master named {name:?}")))?;
    let master = HostPort { host, port };
    let mut master_server = Server::open(&master, access).await?;
    match master_server.role().await? {
        Role::Master => {}
        other => {
            return Err(RedisError::Topology(format!(
                "{master}, which it names master of {name}, is not a master ({other:?}): a failover is under way"
            )));
        }
    }
    if prefer == Prefer::Master {
        return Ok((master_server, Role::Master));
    }
    let replicas: Vec<HashMap<String, String>> =
        s.query(redis::cmd("SENTINEL").arg("replicas").arg(name), "SENTINEL replicas").await?;
    for replica in replicas.iter().filter(|r| healthy(r)) {
        let (Some(host), Some(port)) = (replica.get("ip"), replica.get("port").and_then(|p| p.parse().ok())) else {
            continue;
        };
        let candidate = HostPort { host: host.clone(), port };
        // Its own word on its link, not the sentinel's last look at it.
        match Server::open(&candidate, access).await {
            Ok(mut server) => match server.role().await {
                Ok(Role::Replica { master: of, connected: true }) if same_server(&of, &master).await => {
                    return Ok((server, Role::Replica { master: of, connected: true }));
                }
                Ok(role) => {
                    tracing::info!(replica = %candidate, ?role, "passed over: not a synchronised replica of the master")
                }
                Err(e) => tracing::info!(replica = %candidate, error = %e, "passed over"),
            },
            Err(e) => tracing::info!(replica = %candidate, error = %e, "passed over"),
        }
    }
    tracing::warn!(%master, "no healthy replica of {name}: capturing the master");
    Ok((master_server, Role::Master))
}

/// Whether two addresses name one server: the same port, and the same
/// host or a resolved address in common (a replica may know its master by
/// name where the sentinels report its address).
async fn same_server(a: &HostPort, b: &HostPort) -> bool {
    if a.port != b.port {
        return false;
    }
    if a.host == b.host {
        return true;
    }
    let (Ok(x), Ok(y)) = (
        tokio::net::lookup_host((a.host.as_str(), a.port)).await,
        tokio::net::lookup_host((b.host.as_str(), b.port)).await,
    ) else {
        return false;
    };
    let x: Vec<_> = x.collect();
    y.into_iter().any(|addr| x.contains(&addr))
}

/// A replica the sentinel sees up, with its link to the master up.
fn healthy(replica: &HashMap<String, String>) -> bool {
    let flags = replica.get("flags").map(String::as_str).unwrap_or_default();
    let down = flags.split(',').any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
    !down && replica.get("master-link-status").map(String::as_str) == Some("ok")
}
