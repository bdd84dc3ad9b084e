//! TLS to the shared store, set up as PostgreSQL's own clients set it up.
//!
//! The store URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`
//! parameters (else `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`)
//! mean what they mean to `psql`:
//!
//! - `disable`: no TLS;
//! - `prefer` (the default) and `allow`: TLS if the server offers it, else
//!   plain; the certificate is not checked;
//! - `require`: TLS or no connection; the certificate is checked against
//!   the root certificates as `verify-ca` does when a root file is given or
//!   `~/.postgresql/root.crt` exists, else not checked;
//! - `verify-ca`: the server's certificate must chain to a root in
//!   `sslrootcert` (default `~/.postgresql/root.crt`; `system` for the
//!   machine's trusted roots);
//! - `verify-full`: as `verify-ca`, and the certificate must name the host
//!   connected to.
//!
//! A client certificate (`sslcert`, `sslkey`; default
//! `~/.postgresql/postgresql.crt` and `.key` when both exist) is sent to a
//! server that asks for one. Its key file must not be readable by others.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsFailure, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a connection to the store uses TLS: the `sslmode` values of
/// PostgreSQL's clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not
    /// checked (`prefer`, and `allow`, which is taken as `prefer`).
    Prefer,
    /// TLS or no connection; the certificate is checked only when root
    /// certificates are at hand.
    Require,
    /// TLS with a certificate that chains to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// The mode `value` names, as PostgreSQL spells them.
    fn parse(value: &str) -> Result<Self, TlsError> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(TlsError::UnknownMode(other.to_string())),
        })
    }
}

/// What is wrong with the store's TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `sslmode` names no mode.
    #[error(
        "sslmode {0:?} is not a PostgreSQL TLS mode; use disable, allow, prefer, require, verify-ca or verify-full"
    )]
    UnknownMode(String),
    /// A certificate or key file cannot be read.
    #[error("cannot read the {what} {path}: {reason}")]
    Unreadable {
        /// Which file it is.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A verifying mode has no root certificates to verify with.
    #[error(
        "sslmode {mode} needs the root certificates that sign the server's certificate, and {path} does not exist; give sslrootcert=FILE (PEM) in the store URL, sslrootcert=system for this machine's trusted roots, or a weaker sslmode"
    )]
    NoRoots {
        /// The mode asked for.
        mode: &'static str,
        /// The root file looked for.
        path: PathBuf,
    },
    /// The client key file may be read by others.
    #[error(
        "the client key {0} may be read by other users of this machine; make it private (chmod 600)"
    )]
    KeyNotPrivate(PathBuf),
    /// Only one of the client certificate and its key is given.
    #[error(
        "a client certificate needs both sslcert and sslkey; only {0} is given in the store URL or environment"
    )]
    HalfClientCert(&'static str),
    /// rustls refused the settings.
    #[error("cannot set up TLS to the store: {0}")]
    Setup(String),
}

/// The TLS settings read from a store URL and the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system`; `None` for the default file.
    pub root_cert: Option<String>,
    /// `sslcert`: the client certificate (PEM).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: its private key (PEM).
    pub client_key: Option<PathBuf>,
}

/// The TLS parameters taken out of store URLs (the client library is
/// given the rest).
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits `url` into the URL without its TLS parameters and the TLS
/// settings, where `env` answers for PostgreSQL's environment variables
/// (`PGSSLMODE`…) of what the URL does not give.
pub fn split_url(
    url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(String, TlsSettings), TlsError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut given = std::collections::HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_PARAMS.contains(&key) {
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            given.insert(key, value);
        } else {
            kept.push(pair);
        }
    }
    let mut pick = |key: &'static str, var: &str| given.remove(key).or_else(|| env(var));
    let mode = match pick("sslmode", "PGSSLMODE") {
        Some(m) => SslMode::parse(&m)?,
        None => SslMode::Prefer,
    };
    let settings = TlsSettings {
        mode,
        root_cert: pick("sslrootcert", "PGSSLROOTCERT"),
        client_cert: pick("sslcert", "PGSSLCERT").map(PathBuf::from),
        client_key: pick("sslkey", "PGSSLKEY").map(PathBuf::from),
    };
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, settings))
}

impl TlsSettings {
    /// The client library's mode for these settings.
    pub(crate) fn client_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Client;
        match self.mode {
            SslMode::Disable => Client::Disable,
            SslMode::Prefer => Client::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Client::Require,
        }
    }

    /// The connector for these settings; `home` is where `~/.postgresql`
    /// is looked for.
    pub(crate) fn connector(&self, home: Option<&Path>) -> Result<MakeRustlsConnect, TlsError> {
        // ring, not aws-lc-rs: no C toolchain beyond `cc` is needed to build
        // it. It lacks post-quantum key exchange, which rustls marks by
        // deprecating its provider.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let dot = |file: &str| home.map(|h| h.join(".postgresql").join(file));
        let default_root = dot("root.crt");
        let roots = match (&self.root_cert, &default_root) {
            (Some(given), _) => Some(load_roots(given)?),
            (None, Some(path)) if path.exists() => Some(load_roots(&path.to_string_lossy())?),
            (None, _) => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, roots) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
                Arc::new(Unchecked(provider.clone()))
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsError::NoRoots {
                    mode: if self.mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    },
                    path: default_root.unwrap_or_else(|| PathBuf::from("~/.postgresql/root.crt")),
                });
            }
            (mode, Some(roots)) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Setup(e.to_string()))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (Some(_), None) => return Err(TlsError::HalfClientCert("sslcert")),
            (None, Some(_)) => return Err(TlsError::HalfClientCert("sslkey")),
            (None, None) => match (dot("postgresql.crt"), dot("postgresql.key")) {
                (Some(c), Some(k)) if c.exists() && k.exists() => Some((c, k)),
                _ => None,
            },
        };
        let config = match client {
            Some((cert, key)) => {
                let (chain, key) = load_client(&cert, &key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Setup(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The root certificates in the PEM file at `given`, or the machine's
/// trusted roots for `system`.
fn load_roots(given: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if given == "system" {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::Unreadable {
                what: "system's trusted root certificates",
                path: PathBuf::from("system"),
                reason: "none found".into(),
            });
        }
        return Ok(roots);
    }
    let path = PathBuf::from(given);
    let certs = read_certs(&path, "root certificate file")?;
    let (added, refused) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Unreadable {
            what: "root certificate file",
            path,
            reason: format!("it holds no usable certificate ({refused} refused)"),
        });
    }
    Ok(roots)
}

/// The certificates of the PEM file at `path`.
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |reason: String| TlsError::Unreadable {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    if certs.is_empty() {
        return Err(unreadable("it holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The client certificate chain at `cert` and its private key at `key`.
fn load_client(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_certs(cert, "client certificate")?;
    check_private(key)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Unreadable {
        what: "client key",
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((chain, key_der))
}

/// Refuses a key file that others may read (as PostgreSQL's clients do).
fn check_private(key: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(key).map_err(|e| TlsError::Unreadable {
            what: "client key",
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(TlsError::KeyNotPrivate(key.to_path_buf()));
        }
    }
    Ok(())
}

/// Accepts any certificate (`prefer`, and `require` without roots), but
/// still checks that the server holds its key.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsFailure> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain to a trusted root but not the name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsFailure> {
        // The chain is checked before the name: a name error means the
        // chain held.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(TlsFailure::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsFailure> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_tls_parameters_leave_the_url_and_the_rest_stays() {
        let (rest, s) = split_url(
            "postgres://u@db:5432/t?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20file.pem&connect_timeout=3",
            no_env,
        )
        .expect("parses");
        assert_eq!(
            rest,
            "postgres://u@db:5432/t?application_name=x&connect_timeout=3"
        );
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/etc/ca file.pem"));
        assert_eq!((s.client_cert, s.client_key), (None, None));
    }

    #[test]
    fn the_environment_fills_in_what_the_url_does_not_say() {
        let env = |var: &str| match var {
            "PGSSLMODE" => Some("require".to_string()),
            "PGSSLROOTCERT" => Some("/env/root.pem".to_string()),
            _ => None,
        };
        let (rest, s) = split_url("postgres://u@db/t", env).expect("parses");
        assert_eq!(rest, "postgres://u@db/t");
        assert_eq!(s.mode, SslMode::Require);
        assert_eq!(s.root_cert.as_deref(), Some("/env/root.pem"));
        let (_, s) = split_url("postgres://u@db/t?sslmode=disable", env).expect("parses");
        assert_eq!(
            s.mode,
            SslMode::Disable,
            "the URL wins over the environment"
        );
        let (_, s) = split_url("postgres://u@db/t", no_env).expect("parses");
        assert_eq!(s.mode, SslMode::Prefer, "PostgreSQL's default");
    }

    #[test]
    fn an_unknown_mode_is_named() {
        let e = split_url("postgres://u@db/t?sslmode=verify", no_env).expect_err("refused");
        assert!(e.to_string().contains("\"verify\""), "{e}");
        assert!(e.to_string().contains("verify-full"), "{e}");
    }

    #[test]
    fn verifying_without_roots_says_where_they_were_looked_for() {
        let home = tempfile::tempdir().expect("dir");
        let (_, s) = split_url("postgres://u@db/t?sslmode=verify-ca", no_env).expect("parses");
        let e = s.connector(Some(home.path())).err().expect("no roots");
        assert!(e.to_string().contains(".postgresql/root.crt"), "{e}");
        assert!(e.to_string().contains("sslrootcert="), "{e}");
        let (_, s) = split_url("postgres://u@db/t?sslmode=require", no_env).expect("parses");
        s.connector(Some(home.path()))
            .expect("require without roots checks nothing, as libpq does");
    }

    #[test]
    fn a_client_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let made = rcgen::generate_simple_self_signed(vec!["client".to_string()]).expect("cert");
        std::fs::write(&cert, made.cert.pem()).expect("write");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let url = format!(
            "postgres://u@db/t?sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        );
        let (_, s) = split_url(&url, no_env).expect("parses");
        let e = s.connector(None).err().expect("readable key");
        assert!(matches!(e, TlsError::KeyNotPrivate(_)), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        s.connector(None).expect("a private key is taken");
        let (_, half) = split_url(
            &format!("postgres://u@db/t?sslcert={}", cert.display()),
            no_env,
        )
        .expect("parses");
        assert!(matches!(
            half.connector(None),
            Err(TlsError::HalfClientCert("sslcert"))
        ));
    }
}
