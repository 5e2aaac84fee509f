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

/// A server configuration from PEM files, offering `alpn` (`h2` for gRPC, `http/1.1` for HTTP).
/// Errors name the file and what is wrong with it.
pub fn server_config(files: &TlsFiles<'_>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|e| {
        format!(
            "{}: no usable private key ({e}); expected a PEM PRIVATE KEY (PKCS#8, PKCS#1 or SEC1)",
            files.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{}: cannot verify clients with it: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} and {}: the certificate and key do not make a server identity: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}
