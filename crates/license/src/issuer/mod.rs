//! The issuer: Ed25519 keys, and signed license files.
//!
//! A license file is readable text: a version line, one `key: value` line per
//! term, and a `signature:` line. The signature covers a canonical encoding of
//! the terms (see [`LicenseTerms::canonical`]), so a changed term, a changed or
//! truncated signature, or another key all fail verification.

use crate::Seats;
use crate::names::{InvalidLicenseId, InvalidPluginName, LicenseId, PluginName};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// First line of every license file this version reads and writes.
pub const LICENSE_HEADER: &str = "tollgate-license v1";
/// First line of a secret issuer key file.
pub const SECRET_KEY_HEADER: &str = "tollgate-issuer-secret-key v1";
/// First line of a public issuer key file.
pub const PUBLIC_KEY_HEADER: &str = "tollgate-issuer-public-key v1";
/// Largest license file accepted, in bytes.
pub const MAX_LICENSE_BYTES: u64 = 64 * 1024;
/// Longest customer name.
const MAX_CUSTOMER: usize = 256;
/// Most plugin rules in one license.
const MAX_PLUGIN_RULES: usize = 256;
/// Domain separation for signatures.
const SIGNING_CONTEXT: &[u8] = b"tollgate license signature v1\n";

/// Errors reading keys and license files.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IssuerError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The file is larger than any license.
    #[error(
        "{path} is {size} bytes, larger than any license file (at most {MAX_LICENSE_BYTES}); is this the right file?"
    )]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The file does not start like a license or key file.
    #[error("this is not a {expected}: it does not start with `{header}`")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
        /// The header expected.
        header: &'static str,
    },
    /// A license of a format version this host does not read.
    #[error(
        "license format `{0}` is not supported by this host (it reads `{LICENSE_HEADER}`); upgrade tollgate or ask the issuer for a v1 license"
    )]
    UnknownVersion(String),
    /// A line could not be understood.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The `license-id` is not a valid license id.
    #[error(transparent)]
    LicenseId(#[from] InvalidLicenseId),
    /// A `plugin` rule is neither a component digest nor a valid plugin name.
    #[error("plugin rule {rule:?} is not sha256:<64 lowercase hex>, nor a plugin name: {source}")]
    PluginRule {
        /// The rule as written.
        rule: String,
        /// Why it is not a plugin name.
        source: InvalidPluginName,
    },
    /// A required field is missing.
    #[error("the license has no `{0}:` line")]
    Missing(&'static str),
    /// The signature does not match the terms.
    #[error(
        "the signature does not match the license terms: the file was changed after it was signed, or the signature is damaged; ask the issuer for a fresh copy"
    )]
    BadSignature,
    /// Signed by a key this host does not trust.
    #[error(
        "the license was signed by issuer key {0}, which this host does not trust; run `tollgate trust add ISSUER.pub` with the issuer's public key if you trust it"
    )]
    Untrusted(String),
    /// Past its expiry.
    #[error("the license expired at {0}; ask the issuer for a renewed license")]
    Expired(String),
    /// Before its start.
    #[error("the license is not valid before {0}; install it from then on")]
    NotYetValid(String),
    /// A key file holds a malformed key.
    #[error("malformed key: {0}")]
    BadKey(String),
}

/// Formats unix seconds as RFC 3339 UTC.
pub fn format_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds
/// (`2027-01-31T00:00:00.000Z`).
pub fn format_time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses RFC 3339 (`2027-01-31T00:00:00Z`), a date (`2027-01-31`), or unix seconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs);
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    humantime::parse_rfc3339(&full)
        .map_err(|e| format!("{s:?} is not a time ({e}); use RFC 3339 like 2027-01-31T00:00:00Z, a date like 2027-01-31, or unix seconds"))?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| format!("{s:?} is before 1970"))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], IssuerError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf)
        .map_err(|e| IssuerError::BadKey(format!("no randomness from the OS: {e}")))?;
    Ok(buf)
}

/// Reads a small text file, refusing anything over [`MAX_LICENSE_BYTES`].
pub fn read_small_text(path: &Path) -> Result<String, IssuerError> {
    let shown = path.display().to_string();
    let read_err = |e: std::io::Error| IssuerError::Read {
        path: shown.clone(),
        message: e.to_string(),
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_LICENSE_BYTES {
        return Err(IssuerError::TooLarge { path: shown, size });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    String::from_utf8(bytes).map_err(|_| IssuerError::Syntax {
        line: 0,
        message: "the file is not UTF-8 text".into(),
    })
}

/// An issuer's secret signing key.
pub struct IssuerKey {
    key: SigningKey,
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuerKey({})", self.public().key_id())
    }
}

impl IssuerKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, IssuerError> {
        Ok(Self {
            key: SigningKey::from_bytes(&random_bytes::<32>()?),
        })
    }

    /// The matching public key.
    pub fn public(&self) -> IssuerPublicKey {
        IssuerPublicKey {
            key: self.key.verifying_key(),
        }
    }

    /// The secret key file's text.
    pub fn to_file_text(&self) -> String {
        format!(
            "{SECRET_KEY_HEADER}\nsecret: {}\n",
            B64.encode(self.key.to_bytes())
        )
    }

    /// Parses a secret key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, IssuerError> {
        let bytes = key_body(text, SECRET_KEY_HEADER, "secret", "issuer secret key file")?;
        Ok(Self {
            key: SigningKey::from_bytes(&bytes),
        })
    }

    /// Signs `terms`, filling in the issuer key id, a fresh grant id and the
    /// issue time if unset.
    pub fn sign(&self, mut terms: LicenseTerms, now: u64) -> Result<SignedLicense, IssuerError> {
        terms.issuer = self.public().key_id();
        if terms.grant.is_empty() {
            terms.grant = hex::encode(random_bytes::<16>()?);
        }
        if terms.issued_at == 0 {
            terms.issued_at = now;
        }
        terms.check()?;
        let signature = self.key.sign(&terms.canonical());
        Ok(SignedLicense {
            terms,
            signature: signature.to_bytes(),
        })
    }
}

/// An issuer's public key, which a host trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerPublicKey {
    key: VerifyingKey,
}

impl IssuerPublicKey {
    /// A short id: the first 16 hex digits of the key's sha256.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.key.as_bytes())[..8])
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IssuerError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IssuerError::BadKey("a public key is 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&arr)
            .map_err(|e| IssuerError::BadKey(format!("not an Ed25519 public key: {e}")))?;
        Ok(Self { key })
    }

    /// The public key file's text.
    pub fn to_file_text(&self) -> String {
        format!(
            "{PUBLIC_KEY_HEADER}\nkey: {}\n",
            B64.encode(self.key.to_bytes())
        )
    }

    /// Parses a public key file's text.
    pub fn from_file_text(text: &str) -> Result<Self, IssuerError> {
        Self::from_bytes(&key_body(
            text,
            PUBLIC_KEY_HEADER,
            "key",
            "issuer public key file",
        )?)
    }
}

fn key_body(
    text: &str,
    header: &'static str,
    field: &str,
    kind: &'static str,
) -> Result<[u8; 32], IssuerError> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(header) {
        return Err(IssuerError::WrongKind {
            expected: kind,
            header,
        });
    }
    let value = lines
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .ok_or_else(|| IssuerError::BadKey(format!("no `{field}:` line")))?;
    let bytes = B64
        .decode(value.trim())
        .map_err(|e| IssuerError::BadKey(format!("`{field}` is not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| IssuerError::BadKey(format!("`{field}` must be 32 bytes")))
}

/// What a license grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenseTerms {
    /// Unique id of this grant (hex); installing it twice adds nothing.
    pub grant: String,
    /// The license id plugins ask for.
    pub license_id: String,
    /// Seats granted.
    pub seats: Seats,
    /// Not valid before this unix second.
    pub not_before: Option<u64>,
    /// Not valid after this unix second.
    pub expires_at: Option<u64>,
    /// Plugins entitled, by name or `sha256:HEX`; empty: any plugin.
    pub plugins: Vec<String>,
    /// Who the license was issued to.
    pub customer: Option<String>,
    /// When it was signed, unix seconds.
    pub issued_at: u64,
    /// Key id of the signing issuer.
    pub issuer: String,
}

impl LicenseTerms {
    /// Terms for `seats` of `license_id`, with everything else unset.
    pub fn new(license_id: impl Into<String>, seats: Seats) -> Self {
        Self {
            grant: String::new(),
            license_id: license_id.into(),
            seats,
            not_before: None,
            expires_at: None,
            plugins: Vec::new(),
            customer: None,
            issued_at: 0,
            issuer: String::new(),
        }
    }

    fn check(&self) -> Result<(), IssuerError> {
        let bad = |message: String| IssuerError::Syntax { line: 0, message };
        LicenseId::try_from(self.license_id.as_str())?;
        if self.grant.len() != 32 || !self.grant.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("grant must be 32 hex digits".into()));
        }
        if let (Some(a), Some(b)) = (self.not_before, self.expires_at)
            && a > b
        {
            return Err(bad("not-before is after expires".into()));
        }
        if self.plugins.len() > MAX_PLUGIN_RULES {
            return Err(bad(format!("more than {MAX_PLUGIN_RULES} plugin rules")));
        }
        for p in &self.plugins {
            match p.strip_prefix("sha256:") {
                Some(d) => {
                    if d.len() != 64
                        || !d
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                    {
                        return Err(bad(format!(
                            "plugin rule {p:?} is neither a plugin name nor sha256:<64 lowercase hex>"
                        )));
                    }
                }
                None => {
                    PluginName::try_from(p.as_str()).map_err(|source| IssuerError::PluginRule {
                        rule: p.clone(),
                        source,
                    })?;
                }
            }
        }
        if let Some(c) = &self.customer
            && (c.len() > MAX_CUSTOMER
                || c.chars().any(char::is_control)
                || c.trim() != c
                || c.is_empty())
        {
            return Err(bad(format!(
                "customer must be 1-{MAX_CUSTOMER} printable characters without surrounding spaces"
            )));
        }
        Ok(())
    }

    /// The term lines, in their fixed order, as they appear in the file.
    fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "grant: {}", self.grant);
        let _ = writeln!(s, "license-id: {}", self.license_id);
        match self.seats {
            Seats::Counted(n) => {
                let _ = writeln!(s, "seats: {n}");
            }
            Seats::Unlimited => s.push_str("seats: unlimited\n"),
        }
        if let Some(t) = self.not_before {
            let _ = writeln!(s, "not-before: {}", format_time(t));
        }
        if let Some(t) = self.expires_at {
            let _ = writeln!(s, "expires: {}", format_time(t));
        }
        for p in &self.plugins {
            let _ = writeln!(s, "plugin: {p}");
        }
        if let Some(c) = &self.customer {
            let _ = writeln!(s, "customer: {c}");
        }
        let _ = writeln!(s, "issued-at: {}", format_time(self.issued_at));
        let _ = writeln!(s, "issuer: {}", self.issuer);
        s
    }

    /// The bytes the signature covers: a context string, the header, and the
    /// term lines in fixed order.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = SIGNING_CONTEXT.to_vec();
        out.extend_from_slice(LICENSE_HEADER.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(self.render().as_bytes());
        out
    }

    /// Whether `plugin` (by name) with component `digest` (hex) is entitled.
    pub fn entitles(&self, plugin: &str, digest: &str) -> bool {
        self.plugins.is_empty()
            || self
                .plugins
                .iter()
                .any(|p| p == plugin || p.strip_prefix("sha256:") == Some(digest))
    }
}

/// A license file: terms plus the issuer's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedLicense {
    /// The terms.
    pub terms: LicenseTerms,
    signature: [u8; 64],
}

impl SignedLicense {
    /// The file's text.
    pub fn to_file_text(&self) -> String {
        format!(
            "{LICENSE_HEADER}\n{}signature: {}\n",
            self.terms.render(),
            B64.encode(self.signature)
        )
    }

    /// Parses a license file's text (does not verify it).
    pub fn parse(text: &str) -> Result<Self, IssuerError> {
        let mut lines = text.lines().enumerate();
        let header = lines.next().map(|(_, l)| l.trim()).unwrap_or("");
        if header != LICENSE_HEADER {
            if header.starts_with("tollgate-license ") {
                return Err(IssuerError::UnknownVersion(header.to_string()));
            }
            return Err(IssuerError::WrongKind {
                expected: "tollgate license file",
                header: LICENSE_HEADER,
            });
        }
        let mut terms = LicenseTerms::new("", Seats::Counted(0));
        let (mut id, mut seats, mut grant, mut issued, mut issuer, mut signature) =
            (None, None, None, None, None, None);
        for (i, raw) in lines {
            let line = i + 1;
            let syntax = |message: String| IssuerError::Syntax { line, message };
            if raw.trim().is_empty() {
                continue;
            }
            let (key, value) = raw
                .split_once(':')
                .ok_or_else(|| syntax(format!("expected `key: value`, found {raw:?}")))?;
            let value = value.trim();
            let once = |slot: &Option<String>| -> Result<(), IssuerError> {
                if slot.is_some() {
                    Err(syntax(format!("`{key}` appears twice")))
                } else {
                    Ok(())
                }
            };
            let time = |v: &str| {
                humantime::parse_rfc3339(v)
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .ok_or_else(|| syntax(format!("`{key}` is not an RFC 3339 time: {v:?}")))
            };
            match key.trim() {
                "grant" => {
                    once(&grant)?;
                    grant = Some(value.to_string());
                }
                "license-id" => {
                    once(&id)?;
                    id = Some(value.to_string());
                }
                "seats" => {
                    once(&seats)?;
                    seats = Some(value.to_string());
                }
                "not-before" => {
                    if terms.not_before.is_some() {
                        return Err(syntax("`not-before` appears twice".into()));
                    }
                    terms.not_before = Some(time(value)?);
                }
                "expires" => {
                    if terms.expires_at.is_some() {
                        return Err(syntax("`expires` appears twice".into()));
                    }
                    terms.expires_at = Some(time(value)?);
                }
                "plugin" => terms.plugins.push(value.to_string()),
                "customer" => {
                    if terms.customer.is_some() {
                        return Err(syntax("`customer` appears twice".into()));
                    }
                    terms.customer = Some(value.to_string());
                }
                "issued-at" => {
                    once(&issued)?;
                    issued = Some(value.to_string());
                    terms.issued_at = time(value)?;
                }
                "issuer" => {
                    once(&issuer)?;
                    issuer = Some(value.to_string());
                }
                "signature" => {
                    once(&signature)?;
                    signature = Some(value.to_string());
                }
                other => return Err(syntax(format!("unknown field `{other}`"))),
            }
        }
        terms.grant = grant.ok_or(IssuerError::Missing("grant"))?;
        terms.license_id = id.ok_or(IssuerError::Missing("license-id"))?;
        let seats = seats.ok_or(IssuerError::Missing("seats"))?;
        terms.seats = match seats.as_str() {
            "unlimited" => Seats::Unlimited,
            n => Seats::Counted(n.parse().map_err(|_| IssuerError::Syntax {
                line: 0,
                message: format!("seats {n:?} is not a whole number or `unlimited`"),
            })?),
        };
        issued.ok_or(IssuerError::Missing("issued-at"))?;
        terms.issuer = issuer.ok_or(IssuerError::Missing("issuer"))?;
        let signature = signature.ok_or(IssuerError::Missing("signature"))?;
        let signature: [u8; 64] = B64
            .decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(IssuerError::BadSignature)?;
        terms.check()?;
        Ok(Self { terms, signature })
    }

    /// Checks the signature against the trusted keys and the validity window at `now`.
    pub fn verify(&self, trusted: &[IssuerPublicKey], now: u64) -> Result<(), IssuerError> {
        self.verify_signature(trusted)?;
        if let Some(t) = self.terms.not_before
            && now < t
        {
            return Err(IssuerError::NotYetValid(format_time(t)));
        }
        self.verify_not_expired(now)
    }

    /// Checks the signature and that the window has not ended by `now`; a
    /// window that starts later is accepted (a renewal installed ahead of
    /// time is in force only inside its window).
    pub fn verify_for_install(
        &self,
        trusted: &[IssuerPublicKey],
        now: u64,
    ) -> Result<(), IssuerError> {
        self.verify_signature(trusted)?;
        self.verify_not_expired(now)
    }

    fn verify_not_expired(&self, now: u64) -> Result<(), IssuerError> {
        if let Some(t) = self.terms.expires_at
            && now > t
        {
            return Err(IssuerError::Expired(format_time(t)));
        }
        Ok(())
    }

    /// Checks only the signature against the trusted keys, whatever the
    /// time: how a grant installed earlier is checked again when loaded.
    pub fn verify_signature(&self, trusted: &[IssuerPublicKey]) -> Result<(), IssuerError> {
        let key = trusted
            .iter()
            .find(|k| k.key_id() == self.terms.issuer)
            .ok_or_else(|| IssuerError::Untrusted(self.terms.issuer.clone()))?;
        key.key
            .verify_strict(
                &self.terms.canonical(),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| IssuerError::BadSignature)
    }
}

#[cfg(test)]
mod tests;
