//! Who may call what. The client certificate's identity is the principal:
//! agents may speak only `AgentControl`, and only for their own host;
//! operators get the role the configuration gives their login (viewer:
//! reads; operator: backups, restores, cancels; admin: everything,
//! including the audit log). A refusal says why, for `PERMISSION_DENIED`
//! and for the audit log.

use lifeboat_common::invalid::Invalid;
use std::collections::HashMap;
use std::fmt;

use lifeboat_common::tls::{Identity, IdentityKind};

/// An operator's role; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads status, agents, jobs and snapshots.
    Viewer,
    /// Also runs backups and restores, and cancels jobs.
    Operator,
    /// Also policy, keys and the audit log.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = Invalid;

    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(Invalid(format!("{other:?} is not a role (viewer, operator or admin)"))),
        }
    }
}

/// The `Admin` service's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCall {
    /// `Status`.
    Status,
    /// `ListAgents`.
    ListAgents,
    /// `ListJobs`.
    ListJobs,
    /// `ListSnapshots`.
    ListSnapshots,
    /// `RunBackup`.
    RunBackup,
    /// `Restore`.
    Restore,
    /// `CancelJob`.
    CancelJob,
    /// `Audit`.
    Audit,
    /// `ListIncidents`.
    ListIncidents,
    /// `AckIncident`.
    AckIncident,
    /// `FailoverStatus`.
    FailoverStatus,
    /// `Promote`.
    Promote,
    /// `Switchover`.
    Switchover,
    /// `PauseFailover`.
    PauseFailover,
    /// `ListDrills`.
    ListDrills,
    /// `ShowDrill`.
    ShowDrill,
    /// `RunDrill`.
    RunDrill,
}

impl AdminCall {
    const ALL: [AdminCall; 17] = [
        AdminCall::Status,
        AdminCall::ListAgents,
        AdminCall::ListJobs,
        AdminCall::ListSnapshots,
        AdminCall::RunBackup,
        AdminCall::Restore,
        AdminCall::CancelJob,
        AdminCall::Audit,
        AdminCall::ListIncidents,
        AdminCall::AckIncident,
        AdminCall::FailoverStatus,
        AdminCall::Promote,
        AdminCall::Switchover,
        AdminCall::PauseFailover,
        AdminCall::ListDrills,
        AdminCall::ShowDrill,
        AdminCall::RunDrill,
    ];

    /// The method's name in the service.
    pub fn name(self) -> &'static str {
        match self {
            AdminCall::Status => "Status",
            AdminCall::ListAgents => "ListAgents",
            AdminCall::ListJobs => "ListJobs",
            AdminCall::ListSnapshots => "ListSnapshots",
            AdminCall::RunBackup => "RunBackup",
            AdminCall::Restore => "Restore",
            AdminCall::CancelJob => "CancelJob",
            AdminCall::Audit => "Audit",
            AdminCall::ListIncidents => "ListIncidents",
            AdminCall::AckIncident => "AckIncident",
            AdminCall::FailoverStatus => "FailoverStatus",
            AdminCall::Promote => "Promote",
            AdminCall::Switchover => "Switchover",
            AdminCall::PauseFailover => "PauseFailover",
            AdminCall::ListDrills => "ListDrills",
            AdminCall::ShowDrill => "ShowDrill",
            AdminCall::RunDrill => "RunDrill",
        }
    }

    /// The least role that may make it.
    pub fn required(self) -> Role {
        match self {
            AdminCall::Status
            | AdminCall::ListAgents
            | AdminCall::ListJobs
            | AdminCall::ListSnapshots
            | AdminCall::ListIncidents
            | AdminCall::FailoverStatus
            | AdminCall::ListDrills
            | AdminCall::ShowDrill => Role::Viewer,
            AdminCall::RunBackup
            | AdminCall::Restore
            | AdminCall::CancelJob
            | AdminCall::AckIncident
            | AdminCall::RunDrill => Role::Operator,
            AdminCall::Audit | AdminCall::Promote | AdminCall::Switchover | AdminCall::PauseFailover => Role::Admin,
        }
    }
}

/// A call, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `AgentControl/Attach`, for the host the agent says it is (known
    /// once its hello arrives).
    Attach {
        /// The host, once known.
        host: Option<String>,
    },
    /// An `Admin` method.
    Admin(AdminCall),
    /// A method of neither service.
    Unknown(String),
}

impl Call {
    /// The call a gRPC path (`/lifeboat.v1.Admin/Restore`) names.
    pub fn from_path(path: &str) -> Call {
        match path.strip_prefix("/lifeboat.v1.").and_then(|p| p.split_once('/')) {
            Some(("AgentControl", "Attach")) => Call::Attach { host: None },
            Some(("Admin", method)) => {
                AdminCall::ALL.into_iter().find(|c| c.name() == method).map_or(Call::Unknown(path.into()), Call::Admin)
            }
            _ => Call::Unknown(path.into()),
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Logins and their roles, from the coordinator's configuration.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    roles: HashMap<String, Role>,
}

impl RoleMap {
    /// A map from `login = role` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, Role)>) -> Self {
        RoleMap { roles: pairs.into_iter().collect() }
    }

    /// Decides whether `who` may make `call`; the role it acts in, if any.
    pub fn authorize(&self, who: &Identity, call: &Call) -> Result<Option<Role>, Denied> {
        match (who.kind, call) {
            (IdentityKind::Agent, Call::Attach { host }) => match host {
                Some(h) if *h != who.name => {
                    Err(Denied(format!("{who} may speak only for host {}, not {h}", who.name)))
                }
                _ => Ok(None),
            },
            (IdentityKind::Agent, _) => Err(Denied(format!("{who} is an agent: it may call only AgentControl"))),
            (IdentityKind::Admin, Call::Admin(c)) => {
                let role = self
                    .roles
                    .get(&who.name)
                    .copied()
                    .ok_or_else(|| Denied(format!("{who} has no role in this deployment")))?;
                if role >= c.required() {
                    Ok(Some(role))
                } else {
                    Err(Denied(format!("{who} has role {role}: {} needs {}", c.name(), c.required())))
                }
            }
            (IdentityKind::Admin, _) => Err(Denied(format!("{who} is an operator: it may not act as an agent"))),
            (IdentityKind::Coordinator, Call::Admin(c)) if c.required() == Role::Viewer => Ok(None),
            (IdentityKind::Coordinator, _) => {
                Err(Denied(format!("{who} is a coordinator: it may only read another coordinator's state")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: IdentityKind, name: &str) -> Identity {
        Identity::new(kind, name).unwrap()
    }

    #[test]
    fn roles_agents_and_paths() {
        let roles = RoleMap::new([("alice".into(), Role::Operator), ("vera".into(), Role::Viewer)]);
        let restore = Call::from_path("/lifeboat.v1.Admin/Restore");
        assert_eq!(restore, Call::Admin(AdminCall::Restore));
        assert_eq!(Call::from_path("/lifeboat.v1.AgentControl/Attach"), Call::Attach { host: None });
        assert!(matches!(Call::from_path("/grpc.health.v1.Health/Check"), Call::Unknown(_)));

        let alice = id(IdentityKind::Admin, "alice");
        assert_eq!(roles.authorize(&alice, &restore), Ok(Some(Role::Operator)));
        let err = roles.authorize(&alice, &Call::Admin(AdminCall::Audit)).unwrap_err();
        assert_eq!(err.0, "admin:alice has role operator: Audit needs admin");
        let err = roles.authorize(&id(IdentityKind::Admin, "vera"), &restore).unwrap_err();
        assert!(err.0.contains("Restore needs operator"), "{err}");
        let err = roles.authorize(&id(IdentityKind::Admin, "eve"), &Call::Admin(AdminCall::Status)).unwrap_err();
        assert!(err.0.contains("no role"), "{err}");

        let agent = id(IdentityKind::Agent, "db-1");
        assert_eq!(roles.authorize(&agent, &Call::Attach { host: Some("db-1".into()) }), Ok(None));
        let err = roles.authorize(&agent, &Call::Attach { host: Some("db-2".into()) }).unwrap_err();
        assert!(err.0.contains("only for host db-1, not db-2"), "{err}");
        let err = roles.authorize(&agent, &Call::Admin(AdminCall::Status)).unwrap_err();
        assert!(err.0.contains("only AgentControl"), "{err}");
        assert!(roles.authorize(&alice, &Call::Attach { host: Some("db-1".into()) }).is_err());
        assert!("root".parse::<Role>().is_err());
    }
}
