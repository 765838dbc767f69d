//! A development CA and its certificates (`lifeboat certs init`), so the
//! quickstart runs without outside tools. Production deployments bring
//! their own CA; the files have the same shape.
//!
//! In the directory: `ca.pem` / `ca.key` (made once, reused after), and
//! `<kind>-<name>.pem` / `.key` per identity. Keys are written mode 0600
//! and never replaced.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::{Identity, IdentityKind, TlsError};

/// Which certificates to issue.
#[derive(Debug, Clone)]
pub struct DevCaRequest {
    /// Coordinators by name; each certificate also names `hosts`.
    pub coordinators: Vec<String>,
    /// DNS names and IP addresses coordinators are reached at.
    pub hosts: Vec<String>,
    /// Agents, by host.
    pub agents: Vec<String>,
    /// Operators, by login.
    pub admins: Vec<String>,
    /// How long the certificates are valid.
    pub days: u32,
}

fn issue_error(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Issue { what: what.to_owned(), reason: e.to_string() }
}

/// Writes `content` to a new file (never replacing one), `mode` permissions.
fn write_new(path: &Path, content: &str, mode: u32) -> Result<(), TlsError> {
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|cause| {
        if cause.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists(path.to_owned())
        } else {
            TlsError::Io { op: "creating", path: path.to_owned(), cause }
        }
    })?;
    f.write_all(content.as_bytes()).map_err(|cause| TlsError::Io { op: "writing", path: path.to_owned(), cause })
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind this one.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// The CA's certificate fields. What a signature names of its issuer (the
/// subject, and the key identifier derived from the key) follows from these
/// and the key alone, so a CA made earlier signs again from its key file.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "Lifeboat development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The CA in `dir`, made if absent.
fn ca(dir: &Path, days: u32) -> Result<(Issuer<'static, KeyPair>, bool), TlsError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if key_path.exists() {
        let text = std::fs::read_to_string(&key_path).map_err(|cause| TlsError::Io {
            op: "reading",
            path: key_path.clone(),
            cause,
        })?;
        let key =
            KeyPair::from_pem(&text).map_err(|e| TlsError::Pem { path: key_path.clone(), reason: e.to_string() })?;
        return Ok((Issuer::new(ca_params(), key), false));
    }
    let key = KeyPair::generate().map_err(issue_error("the CA"))?;
    let mut params = ca_params();
    // The CA outlives what it signs.
    validity(&mut params, days.saturating_mul(2));
    let cert = params.self_signed(&key).map_err(issue_error("the CA"))?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok((Issuer::new(params, key), true))
}

fn leaf(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    identity: &Identity,
    hosts: &[String],
    days: u32,
) -> Result<PathBuf, TlsError> {
    let what = identity.to_string();
    let stem = identity.to_string().replace(':', "-");
    let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    if cert_path.exists() {
        return Err(TlsError::Exists(cert_path));
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(issue_error(&what))?;
    params.distinguished_name.push(DnType::CommonName, identity.to_string());
    let uri = identity.uri().try_into().map_err(issue_error(&what))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(issue_error(&what))?),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match identity.kind {
        // Coordinators also call each other.
        IdentityKind::Coordinator => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        IdentityKind::Agent | IdentityKind::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(issue_error(&what))?;
    let cert = params.signed_by(&key, issuer).map_err(issue_error(&what))?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&cert_path, &cert.pem(), 0o644)?;
    Ok(cert_path)
}

/// Makes the CA in `dir` if it is not there, and issues the requested
/// certificates; returns the files written.
pub fn issue_dev_certs(dir: &Path, request: &DevCaRequest) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|cause| TlsError::Io { op: "creating", path: dir.to_owned(), cause })?;
    let (issuer, made) = ca(dir, request.days)?;
    let mut written = Vec::new();
    if made {
        written.push(dir.join("ca.pem"));
    }
    let named = |kind, name: &String| {
        Identity::new(kind, name).ok_or_else(|| TlsError::Issue {
            what: name.clone(),
            reason: "names are letters, digits, '-', '.' and '_'".into(),
        })
    };
    for name in &request.coordinators {
        written.push(leaf(dir, &issuer, &named(IdentityKind::Coordinator, name)?, &request.hosts, request.days)?);
    }
    for name in &request.agents {
        written.push(leaf(dir, &issuer, &named(IdentityKind::Agent, name)?, &[], request.days)?);
    }
    for name in &request.admins {
        written.push(leaf(dir, &issuer, &named(IdentityKind::Admin, name)?, &[], request.days)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    use super::super::{client_config, server_config};
    use super::*;

    /// Runs a TLS handshake between the two in memory; the error of the
    /// side that refused, if one did.
    fn handshake(client: rustls::ClientConfig, server: rustls::ServerConfig) -> Result<(), String> {
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
        let mut s = rustls::ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            s.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
            s.process_new_packets().map_err(|e| format!("server: {e}"))?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
            c.read_tls(&mut &buf[..]).map_err(|e| e.to_string())?;
            c.process_new_packets().map_err(|e| format!("client: {e}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                assert_eq!(s.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
                return Ok(());
            }
        }
        Err("handshake did not finish".into())
    }

    #[test]
    fn issued_certificates_authenticate_both_ways_and_a_stranger_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let request = DevCaRequest {
            coordinators: vec!["c1".into()],
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            agents: vec!["db-1".into()],
            admins: vec!["alice".into()],
            days: 30,
        };
        let written = issue_dev_certs(dir.path(), &request).unwrap();
        assert_eq!(written.len(), 4, "{written:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let p = |n: &str| dir.path().join(n);
        let server = || server_config(&p("ca.pem"), &p("coordinator-c1.pem"), &p("coordinator-c1.key")).unwrap();
        handshake(client_config(&p("ca.pem"), &p("agent-db-1.pem"), &p("agent-db-1.key")).unwrap(), server()).unwrap();

        // Issuing more reuses the CA; nothing is replaced.
        let more =
            DevCaRequest { agents: vec!["db-2".into()], coordinators: vec![], admins: vec![], ..request.clone() };
        assert_eq!(issue_dev_certs(dir.path(), &more).unwrap(), vec![p("agent-db-2.pem")]);
        handshake(client_config(&p("ca.pem"), &p("agent-db-2.pem"), &p("agent-db-2.key")).unwrap(), server()).unwrap();
        assert!(matches!(issue_dev_certs(dir.path(), &more), Err(TlsError::Exists(_))));

        // A certificate from another CA is refused by the server.
        let other = tempfile::tempdir().unwrap();
        issue_dev_certs(other.path(), &DevCaRequest { agents: vec!["db-1".into()], ..more.clone() }).unwrap();
        let o = |n: &str| other.path().join(n);
        // (It trusts our CA, so it gets as far as showing its certificate.)
        let stranger = client_config(&p("ca.pem"), &o("agent-db-1.pem"), &o("agent-db-1.key")).unwrap();
        let err = handshake(stranger, server()).unwrap_err();
        assert!(err.starts_with("server:"), "{err}");
    }
}
