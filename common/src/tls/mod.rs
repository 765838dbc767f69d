//! Mutual TLS for the control plane: certificates from the deployment's own
//! CA (pinned; the system trust store is never used), TLS 1.3 only, and the
//! identity each certificate carries as a `lifeboat://<kind>/<name>` URI.

mod channel;
mod dev_ca;
mod identity;

pub use channel::channel;
pub use dev_ca::{DevCaRequest, issue_dev_certs};
pub use identity::{Identity, IdentityKind};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong with certificates or TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{op} {path}: {cause}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Making a certificate failed.
    #[error("making a certificate for {what}: {reason}")]
    Issue {
        /// Whose certificate.
        what: String,
        /// Why.
        reason: String,
    },
    /// The TLS settings were refused.
    #[error("TLS settings: {0}")]
    Config(String),
    /// A file that must not be replaced exists.
    #[error("{0} exists already: remove it first, or issue under another name")]
    Exists(PathBuf),
}

/// A process's mutual-TLS files, as configuration files name them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The deployment's CA: the only one trusted.
    pub ca: PathBuf,
    /// This process's certificate (it names the principal).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Takes relative paths from `base` (the configuration file's directory).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// A server configuration from these files.
    pub fn server(&self) -> Result<rustls::ServerConfig, TlsError> {
        server_config(&self.ca, &self.cert, &self.key)
    }

    /// A client configuration from these files.
    pub fn client(&self) -> Result<rustls::ClientConfig, TlsError> {
        client_config(&self.ca, &self.cert, &self.key)
    }
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem { path: path.to_owned(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem { path: path.to_owned(), reason: e.to_string() })
}

/// The CA as the only root of trust.
pub fn pinned_roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Pem { path: ca.to_owned(), reason: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server that speaks TLS 1.3 only and requires a client certificate
/// from `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(pinned_roots(ca)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// A client of a server outside Lifeboat (PostgreSQL, Redis): trusts only
/// `ca`, presents no certificate, and speaks TLS 1.2 or 1.3 as such
/// servers may be configured.
pub fn verifying_client(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(pinned_roots(ca)?)
        .with_no_client_auth())
}

/// A client that speaks TLS 1.3 only, trusts only `ca`, and presents `cert`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<rustls::ClientConfig, TlsError> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(pinned_roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))
}
