//! The gRPC services: `AgentControl` for agents, `Admin` for operators,
//! and the gate both pass through: the caller's identity from its client
//! certificate, its role, and the audit log.

mod admin;
mod control;
pub mod listener;
mod refusals;

use std::sync::Arc;

use lifeboat_common::audit::{AuditLog, AuditRecord};
use lifeboat_common::tls::Identity;
use tonic::{Request, Status};

pub use admin::AdminService;
pub use control::ControlService;
pub use refusals::REFUSAL_WINDOW;

use crate::authz::{Call, Role, RoleMap};

/// Who may call what, and the log of what was asked.
#[derive(Debug)]
pub struct Gate {
    roles: RoleMap,
    audit: Arc<AuditLog>,
    refusals: refusals::RefusalLog,
}

/// The caller of an admitted call.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its identity.
    pub who: Identity,
    /// The role it acts in.
    pub role: Option<Role>,
}

impl Gate {
    /// A gate with these roles, appending to `audit`.
    pub fn new(roles: RoleMap, audit: Arc<AuditLog>) -> Self {
        Gate { roles, audit, refusals: refusals::RefusalLog::default() }
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// The identity the request's client certificate carries.
    pub fn identity<T>(request: &Request<T>) -> Result<Identity, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate: mutual TLS is required"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        Identity::from_cert_der(leaf)
            .ok_or_else(|| Status::unauthenticated("the client certificate names no lifeboat:// identity"))
    }

    /// Admits `who` to `call`, or refuses with `PERMISSION_DENIED` and the
    /// reason; a refusal is audited.
    pub fn admit(&self, who: &Identity, call: &Call, target: Option<&str>) -> Result<Caller, Status> {
        match self.roles.authorize(who, call) {
            Ok(role) => Ok(Caller { who: who.clone(), role }),
            Err(denied) => {
                self.record(&who.to_string(), None, call, target, &format!("denied: {denied}"));
                Err(Status::permission_denied(denied.0))
            }
        }
    }

    /// Appends an entry; a log that cannot be written is logged loudly
    /// (the call's effect stands: it has happened).
    pub fn record(&self, principal: &str, role: Option<Role>, call: &Call, target: Option<&str>, result: &str) {
        let action = match call {
            Call::Attach { .. } => "AgentControl/Attach".to_owned(),
            Call::Admin(c) => format!("Admin/{}", c.name()),
            Call::Unknown(path) => path.clone(),
        };
        self.append(AuditRecord {
            principal: principal.to_owned(),
            role: role.map(|r| r.to_string()),
            action,
            target: target.map(str::to_owned),
            result: result.to_owned(),
        });
    }

    fn append(&self, record: AuditRecord) {
        if let Err(e) = self.audit.append(record) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }

    /// Audits a connection refused before any call (its certificate): an
    /// address's first refusal in a window at once, the rest counted (see
    /// [`Gate::close_refusal_window`]).
    pub fn refused_connection(&self, peer: std::net::SocketAddr, reason: &str) {
        if let Some(record) = self.refusals.refused(peer, reason) {
            self.append(record);
        }
    }

    /// Writes the counts of the refusals gathered since the last call.
    pub fn close_refusal_window(&self) {
        for record in self.refusals.close_window() {
            self.append(record);
        }
    }
}

/// An admitted call's outcome, for the audit log.
pub fn outcome<T>(result: &Result<T, Status>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(status) => format!("error: {:?}: {}", status.code(), status.message()),
    }
}
