//! HTTPS and WSS for the host server: `[server] tls_cert_path` and
//! `tls_key_path` (PEM files) turn on rustls for every route and socket.
//!
//! Why rustls with the ring provider: no OpenSSL to find on the host and
//! no cmake to build aws-lc; the same stack the Rust replica uses as a
//! client. Both paths empty (the default) serve plain HTTP, for loopback
//! or a server behind a TLS-terminating proxy.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up; the server does not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("server.{key}: {path}: {message}")]
    Pem {
        /// `tls_cert_path` or `tls_key_path`.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate and key (e.g. a key that does not
    /// match the certificate).
    #[error("server.tls_cert_path / server.tls_key_path: rustls refused them: {0}")]
    Refused(String),
}

/// The rustls configuration of `[server] tls_cert_path` / `tls_key_path`,
/// or `None` when both are empty. Reads the files (blocking; at start).
// ring: see the module comment (rustls deprecates it for lacking
// post-quantum key exchange).
#[allow(deprecated)]
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Option<rustls::ServerConfig>, TlsError> {
    if cert_path.as_os_str().is_empty() && key_path.as_os_str().is_empty() {
        return Ok(None);
    }
    let pem_error = |key: &'static str, path: &Path, message: String| TlsError::Pem {
        key,
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| pem_error("tls_cert_path", cert_path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("tls_cert_path", cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error(
            "tls_cert_path",
            cert_path,
            "no CERTIFICATE block".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| pem_error("tls_key_path", key_path, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Refused(e.to_string()))?;
    Ok(Some(config))
}
