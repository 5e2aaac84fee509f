//! TLS for the OTLP receivers and the admin API: rustls (ring), certificates and keys read from
//! PEM files, and optionally client certificates signed by a given CA (mutual TLS), so only the
//! fleet's collectors can feed the engine.
//!
//! Handshakes run in each connection's task ([`crate::server`]), so a client that connects and
//! stalls holds up no one; one that does not finish within [`HANDSHAKE_TIMEOUT`] is dropped and
//! counted (`stormwatch_tls_handshake_failures_total`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a TLS listener is configured from (paths to PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles<'a> {
    /// The server's certificate chain, leaf first.
    pub cert: &'a Path,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: &'a Path,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<&'a Path>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS listener could not be configured: each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The key file holds no usable private key.
    #[error("{}: no usable private key ({reason}); expected a PEM PRIVATE KEY (PKCS#8, PKCS#1 or SEC1)", path.display())]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What the PEM reader said.
        reason: String,
    },
    /// The crypto provider offers no safe protocol version.
    #[error("TLS protocol versions: {0}")]
    Versions(rustls::Error),
    /// A certificate of the client CA file is not usable as a trust anchor.
    #[error("{}: not a usable CA certificate: {reason}", path.display())]
    Ca {
        /// The CA file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// Clients cannot be verified with the CA file.
    #[error("{}: cannot verify clients with it: {reason}", path.display())]
    Verifier {
        /// The CA file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate and the key do not belong together.
    #[error(
        "{} and {}: the certificate and key do not make a server identity: {source}",
        cert.display(),
        key.display()
    )]
    Identity {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// A certificate file could not be read or is not PEM.
    #[error("{}: {what}: {reason}", path.display())]
    Certificates {
        /// The file.
        path: std::path::PathBuf,
        /// `cannot read certificates` or `not a PEM certificate file`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A certificate file holds no certificate.
    #[error("{}: holds no CERTIFICATE block", path.display())]
    NoCertificate {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// A server configuration from PEM files, offering `alpn` (`h2` for gRPC, `http/1.1` for HTTP).
/// Errors name the file and what is wrong with it.
pub fn server_config(files: &TlsFiles<'_>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key)
        .map_err(|e| TlsError::Key { path: files.key.to_path_buf(), reason: e.to_string() })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Versions)?;
    let builder = match files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError::Ca { path: ca.to_path_buf(), reason: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Verifier { path: ca.to_path_buf(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|source| TlsError::Identity {
        cert: files.cert.to_path_buf(),
        key: files.key.to_path_buf(),
        source,
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |what: &'static str| {
        move |e: rustls_pki_types::pem::Error| TlsError::Certificates {
            path: path.to_path_buf(),
            what,
            reason: e.to_string(),
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(failed("cannot read certificates"))?
        .collect::<Result<_, _>>()
        .map_err(failed("not a PEM certificate file"))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}
