//! TLS for `tollgate serve`: a certificate chain and its private key from
//! PEM files (`tls_cert`, `tls_key`), served with rustls.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The rustls server configuration for the certificate chain in `cert`
/// and the private key in `key` (PEM), speaking HTTP/1.1; or what is wrong
/// with them, naming the file and what to do.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| {
            format!(
                "cannot read certificates from {}: {e}; give a PEM file with the server's certificate first, then its intermediates",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (a PEM block starting with -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "cannot read a private key from {}: {e}; give a PEM file with one PKCS#8, PKCS#1 or SEC1 private key",
            key.display()
        )
    })?;
    // ring, as for the shared store's connections (no C toolchain beyond
    // `cc`); it lacks post-quantum key exchange, which rustls marks by
    // deprecating its provider.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "the key in the tls_key file does not go with the certificate in {} ({e})",
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
