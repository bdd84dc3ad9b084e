//! The `tollgate.toml` config file of `tollgate serve`: parsing, validation,
//! defaults and environment overrides.
//!
//! [`Config::load`] reads a file and reports every problem in it at once, each
//! with its line and column, so an operator fixes a config in one round.
//! `example.toml` in this directory is a complete, commented example.

mod document;
mod network;
mod units;

pub(crate) use network::split_host;
pub use network::{AddressRange, AllowedHost};

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate::PluginSpec;

/// Largest config file accepted, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Fewest characters an admin token may have.
const MIN_TOKEN_CHARS: usize = 16;

/// Default address of the HTTP server.
const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7878,
));

/// A validated `tollgate.toml`: server settings, plugins and license rules.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// The config file read.
    pub path: PathBuf,
    /// Address the HTTP server listens on (`listen`).
    pub listen: SocketAddr,
    /// State directory (`state`); `None`: the server's default.
    pub state: Option<PathBuf>,
    /// Bearer token for the admin API (`admin_token` or `admin_token_file`).
    pub admin_token: Option<String>,
    /// The file the admin token was read from (`admin_token_file`), which
    /// no plugin directory may overlap.
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token that reads the admin API and changes nothing
    /// (`viewer_token_file`).
    pub viewer_token: Option<String>,
    /// The file the viewer token was read from (`viewer_token_file`), which
    /// no plugin directory may overlap.
    pub viewer_token_file: Option<PathBuf>,
    /// The issuer keys the state database must trust, exactly
    /// (`trusted_issuers`); `None`: not pinned.
    pub trusted_issuers: Option<Vec<tollgate_store::state::IssuerPin>>,
    /// How log lines are written (`log_format`).
    pub log_format: LogFormat,
    /// How long shutdown waits for calls in flight (`grace_period`).
    pub grace_period: Duration,
    /// Directory for compiled components (`compile_cache`); `None`: the server's default.
    pub compile_cache: Option<PathBuf>,
    /// Most plugin calls running at once (`max_concurrent_calls`).
    pub max_concurrent_calls: u32,
    /// Longest a client may take to send a request's head, and again its
    /// body (`read_timeout`); also how long an idle connection stays open.
    pub read_timeout: Duration,
    /// Most client connections open at once (`max_connections`); more wait
    /// in the listen backlog.
    pub max_connections: u32,
    /// Most connections open at once from one client address (an IPv4
    /// address, or an IPv6 /64) (`max_connections_per_client`); more are
    /// answered 429 and closed.
    pub max_connections_per_client: u32,
    /// Addresses whose connections are not capped per client, such as a
    /// load balancer's (`trusted_proxies`).
    pub trusted_proxies: Vec<AddressRange>,
    /// Longest the server waits for a client to take any more of its
    /// response before it closes the connection (`write_timeout`).
    pub write_timeout: Duration,
    /// Most bytes of request bodies held at once over all requests
    /// (`max_buffered_request_bytes`); past it, requests get 503.
    pub max_buffered_request_bytes: usize,
    /// Host names a request may name in `Host` (`allowed_hosts`); `None`:
    /// the default for `listen` (see [`Config::allowed_hosts`]).
    pub allowed_hosts: Option<Vec<AllowedHost>>,
    /// The plugins to load, in file order (`[[plugin]]`): each a spec with
    /// its component file resolved against the config file's directory and
    /// [`tollgate::Limits::default`] for every key left out.
    pub plugins: Vec<PluginSpec>,
    /// Rules per license id (`[license.<id>]`).
    pub licenses: BTreeMap<String, LicenseRules>,
    /// The shared store several hosts use (`store`, a `postgres://` URL);
    /// `None`: this host's own state directory.
    pub store: Option<String>,
    /// How long a seat batch leased from the shared store lives unless
    /// renewed (`seat_batch_ttl`).
    pub seat_batch_ttl: Duration,
    /// PEM certificate chain to serve HTTPS with (`tls_cert`, with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (`tls_key`).
    pub tls_key: Option<PathBuf>,
    /// Alert thresholds and where crossings are sent (`[alerts]`).
    pub alerts: AlertsConfig,
}

/// The `[alerts]` section: thresholds per license id, and the webhook each
/// crossing is sent to, signed with HMAC-SHA256.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AlertsConfig {
    /// The `http://` or `https://` URL crossings are POSTed to (`webhook`).
    pub webhook: Option<String>,
    /// The HMAC-SHA256 key the `tollgate-signature` header is made with,
    /// read from `secret_file`.
    pub secret: Option<String>,
    /// The file the secret was read from (`secret_file`), which no plugin
    /// directory may overlap.
    pub secret_file: Option<PathBuf>,
    /// Thresholds per license id (`[alerts.license.<id>]`).
    pub licenses: BTreeMap<String, Thresholds>,
    /// PEM certificates of the only CAs an `https://` webhook's certificate
    /// may chain to (`ca_file`); `None`: the public web roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for AlertsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertsConfig")
            .field("webhook", &self.webhook)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("licenses", &self.licenses)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .finish()
    }
}

/// Reads the webhook's CA file: PEM, with at least one certificate.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read {shown}: {e}; create it or fix the path"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not PEM ({e}); give the CA certificates as PEM"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (a PEM block starting with -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(pem)
}

/// When one license id's alerts fire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    /// Seats in use at or above this percentage of the seats in force
    /// (`in_use_percent`) …
    pub in_use_percent: Option<u32>,
    /// … for at least this long (`in_use_for`, default 0s).
    pub in_use_for: Duration,
    /// Refused requests in the last minute at or above this (`denials_per_minute`).
    pub denials_per_minute: Option<u32>,
    /// Every grant in force ends within this long (`expires_within`).
    pub expires_within: Option<Duration>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("listen", &self.listen)
            .field("state", &self.state)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("admin_token_file", &self.admin_token_file)
            .field("viewer_token_file", &self.viewer_token_file)
            .field(
                "viewer_token",
                &self.viewer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("trusted_issuers", &self.trusted_issuers)
            .field("log_format", &self.log_format)
            .field("grace_period", &self.grace_period)
            .field("compile_cache", &self.compile_cache)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("read_timeout", &self.read_timeout)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("trusted_proxies", &self.trusted_proxies)
            .field("write_timeout", &self.write_timeout)
            .field(
                "max_buffered_request_bytes",
                &self.max_buffered_request_bytes,
            )
            .field("allowed_hosts", &self.allowed_hosts)
            .field("plugins", &self.plugins)
            .field("licenses", &self.licenses)
            .field("store", &self.store)
            .field("seat_batch_ttl", &self.seat_batch_ttl)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("alerts", &self.alerts)
            .finish()
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable text lines (`"human"`, the default).
    #[default]
    Human,
    /// One JSON object per line (`"json"`).
    Json,
}

/// Rules for one license id (`[license.<id>]`): the license manager's own.
pub type LicenseRules = tollgate_license::Rules;

/// One thing wrong with a config, where it is and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line; 0 when the problem is not inside the file.
    pub line: usize,
    /// 1-based column in characters; 0 when the problem is not inside the file.
    pub column: usize,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    /// A problem outside the file's text (unreadable file, environment variable).
    fn outside(message: impl Into<String>) -> Self {
        Self {
            line: 0,
            column: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        }
    }
}

/// Every problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.path, .problems))]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// The problems, ordered by position.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// An error with `problems`, sorted by position and without repeats.
    fn new(path: &Path, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| (p.line, p.column));
        problems.dedup();
        Self {
            path: path.to_path_buf(),
            problems,
        }
    }
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let count = problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    let mut out = format!("{}: {count} {noun}:", path.display());
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

impl Config {
    /// The files holding this config's secrets, each with what it is in
    /// messages: the admin and viewer token files, the TLS key and the
    /// webhook secret file. No plugin directory may overlap one.
    pub fn secret_files(&self) -> Vec<(&Path, &'static str)> {
        [
            (&self.admin_token_file, "the admin token file"),
            (&self.viewer_token_file, "the viewer token file"),
            (&self.tls_key, "the TLS key"),
            (&self.alerts.secret_file, "the webhook secret file"),
        ]
        .into_iter()
        .filter_map(|(file, what)| Some((file.as_deref()?, what)))
        .collect()
    }

    /// The host names requests must name: `allowed_hosts` when set; else,
    /// when `listen` is a loopback address, `localhost`, `127.0.0.1` and
    /// `[::1]` on any port; else any (`None`: the check is off).
    pub fn allowed_hosts(&self) -> Option<Vec<AllowedHost>> {
        let hosts = match &self.allowed_hosts {
            Some(hosts) => hosts.clone(),
            None if self.listen.ip().is_loopback() => network::loopback_hosts(),
            None => return None,
        };
        if hosts.contains(&AllowedHost::Any) {
            None
        } else {
            Some(hosts)
        }
    }

    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = read_limited(path).map_err(|p| ConfigError::new(path, vec![p]))?;
        Self::from_bytes(&bytes, path)
    }

    /// Checks the bytes [`Config::load`] read from `path`: at most 1 MiB of
    /// UTF-8 text, which is then parsed and validated.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigError> {
        let text = config_text(bytes).map_err(|p| ConfigError::new(path, vec![p]))?;
        Self::parse(text, path)
    }

    /// Parses and validates `text`; `path` names it in messages and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let (config, problems) = document::check(text, path);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::new(path, problems)),
        }
    }

    /// Applies `TOLLGATE_*` overrides read through `env`; on any problem nothing changes.
    ///
    /// Variables: `TOLLGATE_LISTEN`, `TOLLGATE_STATE`, `TOLLGATE_STORE`, `TOLLGATE_ADMIN_TOKEN`,
    /// `TOLLGATE_ADMIN_TOKEN_FILE`, `TOLLGATE_LOG_FORMAT`. An empty value counts
    /// as unset. Relative paths are taken as given (relative to the working
    /// directory).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let mut next = self.clone();
        let mut problems = Vec::new();

        if let Some(value) = var("TOLLGATE_LISTEN") {
            match units::socket_addr(&value) {
                Ok(addr) => next.listen = addr,
                Err(why) => problems.push(Problem::outside(format!(
                    "environment variable TOLLGATE_LISTEN: {why}"
                ))),
            }
        }
        if let Some(value) = var("TOLLGATE_STATE") {
            next.state = Some(PathBuf::from(value));
        }
        if let Some(value) = var("TOLLGATE_STORE") {
            match tollgate_store::postgres::check_url(&value) {
                Ok(()) => next.store = Some(value),
                Err(why) => problems.push(Problem::outside(format!(
                    "environment variable TOLLGATE_STORE: {why}"
                ))),
            }
        }
        let token = var("TOLLGATE_ADMIN_TOKEN");
        let token_file = var("TOLLGATE_ADMIN_TOKEN_FILE");
        match (token, token_file) {
            (Some(_), Some(_)) => problems.push(Problem::outside(
                "environment variables TOLLGATE_ADMIN_TOKEN and TOLLGATE_ADMIN_TOKEN_FILE are both set; unset one of them",
            )),
            (Some(token), None) => match check_token(&token, ADMIN_TOKEN) {
                Ok(()) => {
                    next.admin_token = Some(token);
                    next.admin_token_file = None;
                }
                Err(why) => problems.push(Problem::outside(format!(
                    "environment variable TOLLGATE_ADMIN_TOKEN: {why}"
                ))),
            },
            (None, Some(file)) => match read_token_file(Path::new(&file), ADMIN_TOKEN) {
                Ok(token) => {
                    next.admin_token = Some(token);
                    next.admin_token_file = Some(PathBuf::from(file));
                }
                Err(why) => problems.push(Problem::outside(format!(
                    "environment variable TOLLGATE_ADMIN_TOKEN_FILE: {why}"
                ))),
            },
            (None, None) => {}
        }
        if let Some(value) = var("TOLLGATE_LOG_FORMAT") {
            match units::log_format(&value) {
                Ok(format) => next.log_format = format,
                Err(why) => problems.push(Problem::outside(format!(
                    "environment variable TOLLGATE_LOG_FORMAT: {why}"
                ))),
            }
        }

        if problems.is_empty() {
            *self = next;
            Ok(())
        } else {
            Err(ConfigError::new(&self.path, problems))
        }
    }
}

/// Reads at most one byte more than [`MAX_FILE_BYTES`] from `path`.
fn read_limited(path: &Path) -> Result<Vec<u8>, Problem> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        Problem::outside(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "config file not found; check the path, or create it from the example in the README"
                    .to_string()
            }
            _ => format!("cannot open the config file: {e}; check its permissions"),
        })
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            Problem::outside(format!(
                "cannot read the config file: {e}; check that {shown} is a readable file"
            ))
        })?;
    Ok(bytes)
}

/// The config file's bytes as text: UTF-8, at most [`MAX_FILE_BYTES`].
fn config_text(bytes: &[u8]) -> Result<&str, Problem> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Problem::outside(format!(
            "the config file is larger than {} KiB; this is not a tollgate config file, or it should be split up",
            MAX_FILE_BYTES / 1024
        )));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        let text = String::from_utf8_lossy(&bytes[..offset]);
        let (line, column) = document::line_column(&text, offset);
        Problem {
            line,
            column,
            message: "the config file is not valid UTF-8 here; save it as UTF-8".to_string(),
        }
    })
}

/// What a secret read from the config is, for its messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SecretKind {
    /// Its name: "admin token".
    what: &'static str,
    /// The file that holds it: "token file".
    file: &'static str,
    /// It, in a sentence: "the token".
    it: &'static str,
}

/// The admin API's bearer token.
pub(crate) const ADMIN_TOKEN: SecretKind = SecretKind {
    what: "admin token",
    file: "token file",
    it: "the token",
};
/// The read-only token.
pub(crate) const VIEWER_TOKEN: SecretKind = SecretKind {
    what: "viewer token",
    file: "token file",
    it: "the token",
};
/// The key alert webhooks are signed with.
pub(crate) const WEBHOOK_SECRET: SecretKind = SecretKind {
    what: "webhook secret",
    file: "secret file",
    it: "the secret",
};

/// Checks a secret's length; the secret itself never appears in messages.
fn check_token(token: &str, kind: SecretKind) -> Result<(), String> {
    let what = kind.what;
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(format!(
            "the {what} is {chars} characters long; use at least {MIN_TOKEN_CHARS} random characters (for example the output of `openssl rand -hex 32`)"
        ));
    }
    if token.trim() != token {
        return Err(format!(
            "the {what} starts or ends with whitespace; remove it"
        ));
    }
    Ok(())
}

/// Checks a webhook URL: `http://` or `https://`, with a host.
fn check_webhook(url: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| {
        format!("{url:?} is not a URL ({e}); write one like \"https://hooks.example.com/tollgate\"")
    })?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(()),
        _ => Err(format!(
            "{url:?} is not an http:// or https:// URL with a host; write one like \"https://hooks.example.com/tollgate\""
        )),
    }
}

/// Reads a file holding a secret of `kind`: its contents, trimmed, must be
/// a usable secret.
fn read_token_file(path: &Path, kind: SecretKind) -> Result<String, String> {
    let SecretKind { file, it, .. } = kind;
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| format!("cannot read {file} {shown}: {e}; create it or fix the path"))?;
    if !metadata.is_file() {
        return Err(format!(
            "{file} {shown} is not a regular file; point to a file holding {it}"
        ));
    }
    if metadata.len() > 64 * 1024 {
        return Err(format!(
            "{file} {shown} is larger than 64 KiB; it should hold just {it}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("cannot read {file} {shown}: {e}; check its permissions and that it is UTF-8 text")
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "{file} {shown} is empty; write {it} into it (at least {MIN_TOKEN_CHARS} characters)"
        ));
    }
    check_token(token, kind).map_err(|why| format!("{file} {shown}: {why}"))?;
    Ok(token.to_string())
}
