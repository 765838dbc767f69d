//! Who a certificate speaks for: `lifeboat://agent/<host>`,
//! `lifeboat://admin/<name>` or `lifeboat://coordinator/<name>` in its
//! subject alternative names.

use std::fmt;

/// The kinds of principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// A coordinator.
    Coordinator,
    /// An agent, named by its host.
    Agent,
    /// An operator, named by login.
    Admin,
}

impl IdentityKind {
    fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Coordinator => "coordinator",
            IdentityKind::Agent => "agent",
            IdentityKind::Admin => "admin",
        }
    }
}

/// A principal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What it is.
    pub kind: IdentityKind,
    /// Its name (host for agents).
    pub name: String,
}

impl Identity {
    /// An identity, if `name` is usable in a URI path segment and a file name.
    pub fn new(kind: IdentityKind, name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !name.starts_with('.');
        ok.then(|| Identity { kind, name: name.to_owned() })
    }

    /// The URI carried in the certificate.
    pub fn uri(&self) -> String {
        format!("lifeboat://{}/{}", self.kind.as_str(), self.name)
    }

    /// The identity a certificate's URI names, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let (kind, name) = uri.strip_prefix("lifeboat://")?.split_once('/')?;
        let kind = match kind {
            "coordinator" => IdentityKind::Coordinator,
            "agent" => IdentityKind::Agent,
            "admin" => IdentityKind::Admin,
            _ => return None,
        };
        Identity::new(kind, name)
    }
}

impl Identity {
    /// The identity a DER certificate carries, if it carries exactly one of ours.
    pub fn from_cert_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut ours = san.value.general_names.iter().filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Identity::from_uri(uri),
            _ => None,
        });
        let first = ours.next()?;
        // A certificate naming two principals names none.
        ours.next().is_none().then_some(first)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_odd_names_are_refused() {
        let a = Identity::new(IdentityKind::Agent, "db-1.eu").unwrap();
        assert_eq!(a.uri(), "lifeboat://agent/db-1.eu");
        assert_eq!(Identity::from_uri(&a.uri()), Some(a.clone()));
        assert_eq!(a.to_string(), "agent:db-1.eu");
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(Identity::new(IdentityKind::Admin, bad).is_none(), "{bad:?}");
        }
        assert!(Identity::from_uri("lifeboat://root/x").is_none());
        assert!(Identity::from_uri("https://agent/x").is_none());
    }
}
