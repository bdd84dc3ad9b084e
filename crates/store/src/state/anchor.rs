//! What anchors the state database from outside itself: signed checkpoints
//! of the ledger's hash chain and the host key that signs them, grants
//! checked again against their signed license text whenever they are
//! loaded, and issuer keys pinned in the config.
//!
//! The database alone cannot vouch for itself: whoever can write it can
//! truncate the ledger and move the chain head, recompute the whole chain,
//! edit a grant's columns or trust a key of their own. A checkpoint kept
//! elsewhere, the issuers' signatures and a pin list in the config can.

use super::{Grant, State, StateError};
use crate::chain::GENESIS;
use crate::files;
use crate::ledger::read_head;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hex::FromHex as _;
use rusqlite::OptionalExtension;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};
use tollgate_license::issuer::{IssuerPublicKey, SignedLicense, format_time};

/// The host key's file inside the state directory.
pub const HOST_KEY_FILE: &str = "host.key";
/// First line of a host key file.
const HOST_KEY_HEADER: &str = "tollgate-host-key v1";
/// First line of every checkpoint.
pub const CHECKPOINT_HEADER: &str = "tollgate-checkpoint v1";
/// Domain separation for checkpoint signatures.
const CHECKPOINT_CONTEXT: &[u8] = b"tollgate checkpoint signature v1\n";
/// Largest checkpoint file read.
const MAX_CHECKPOINT_BYTES: u64 = 4096;

/// Something in the state directory does not match what anchors it.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// A grant's stored license text does not verify, or its columns
    /// disagree with that signed text.
    #[error(
        "grant {grant} of license {license} is refused: {reason}. The state database {} was changed outside tollgate; restore it from a backup, or remove this grant (`sqlite3 {} \"DELETE FROM grants WHERE grant_id = '{grant}'\"`) and install its license file again",
        .db.display(), .db.display()
    )]
    GrantRefused {
        /// The grant id.
        grant: String,
        /// Its license id.
        license: String,
        /// What does not match.
        reason: String,
        /// The database file.
        db: PathBuf,
    },
    /// The database trusts other issuer keys than the config pins.
    #[error(
        "the state database {} trusts other issuer keys than `trusted_issuers` in the config pins: {}. If you changed the trusted issuers on purpose, make `trusted_issuers` list exactly the keys `tollgate trust list` shows; if not, the database was changed by someone else: restore it from a backup",
        .db.display(), describe_difference(.extra, .missing)
    )]
    TrustNotPinned {
        /// The database file.
        db: PathBuf,
        /// Trusted in the database, not pinned: key id and name.
        extra: Vec<String>,
        /// Pinned, not trusted in the database.
        missing: Vec<String>,
    },
    /// The host key could not be read or created.
    #[error(
        "host key {}: {message}; it signs the ledger checkpoints of this state directory (mode 0600); restore it from a backup, or move it aside to make a new one (checkpoints signed by the old key then report another host key)",
        .path.display()
    )]
    HostKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A checkpoint file could not be read or is malformed.
    #[error(
        "checkpoint {}: {message}; pass a file written by `tollgate audit checkpoint`",
        .path.display()
    )]
    Checkpoint {
        /// The file (or `-`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The ledger's hash chain does not verify, so no checkpoint is made.
    #[error(
        "the ledger's hash chain does not verify, so no checkpoint was made: {}; run `tollgate audit verify` for the full report",
        .0.join("; ")
    )]
    ChainBroken(Vec<String>),
}

fn describe_difference(extra: &[String], missing: &[String]) -> String {
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(format!(
            "trusted in the database but not pinned: {}",
            extra.join(", ")
        ));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "pinned but not trusted in the database: {}",
            missing.join(", ")
        ));
    }
    parts.join("; ")
}

/// A short id of an Ed25519 public key: the first 16 hex digits of its
/// sha256 (the same scheme as issuer key ids).
fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The Ed25519 key a host signs its ledger checkpoints with, kept in the
/// state directory as `host.key` (mode 0600), created on first use.
pub struct HostKey {
    key: SigningKey,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostKey({})", self.key_id())
    }
}

impl HostKey {
    /// The host key of the state directory `dir`, created if it has none.
    pub fn open_or_create(dir: &Path) -> Result<Self, IntegrityError> {
        let path = dir.join(HOST_KEY_FILE);
        let bytes = files::read_or_create(&path, || {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| std::io::Error::other(format!("no randomness from the OS: {e}")))?;
            Ok(format!("{HOST_KEY_HEADER}\nsecret: {}\n", B64.encode(secret)).into_bytes())
        })
        .map_err(|e| IntegrityError::HostKey {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&path, &bytes)
    }

    /// The host key of the state directory `dir`, if it has one.
    pub fn open(dir: &Path) -> Result<Option<Self>, IntegrityError> {
        let path = dir.join(HOST_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IntegrityError::HostKey {
                path,
                message: e.to_string(),
            }),
        }
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Self, IntegrityError> {
        let bad = |message: &str| IntegrityError::HostKey {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(HOST_KEY_HEADER) {
            return Err(bad(&format!("it does not start with `{HOST_KEY_HEADER}`")));
        }
        let secret = lines
            .find_map(|l| l.strip_prefix("secret:"))
            .ok_or_else(|| bad("it has no `secret:` line"))?;
        let secret: [u8; 32] = B64
            .decode(secret.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("`secret` is not 32 bytes of base64"))?;
        Ok(Self {
            key: SigningKey::from_bytes(&secret),
        })
    }

    /// The key's short id.
    pub fn key_id(&self) -> String {
        key_id(&self.key.verifying_key())
    }
}

/// A signed statement that the ledger's row `seq` had hash `hash` at `time`.
///
/// Its text is a header line, `key: value` lines in a fixed order, and a
/// `signature:` line (see README, "Checkpoints"):
///
/// ```text
/// tollgate-checkpoint v1
/// seq: 1042
/// hash: 5f0c…(64 hex digits)
/// time: 2026-11-29T14:03:11Z
/// host-key: (base64 of the 32-byte Ed25519 public key)
/// signature: (base64 of the 64-byte Ed25519 signature)
/// ```
///
/// The signature covers a context string, the header and the four lines
/// before it, as [`Checkpoint::to_text`] writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The ledger row it vouches for (0: the empty ledger).
    pub seq: u64,
    /// That row's hash (all zeros for row 0).
    pub hash: [u8; 32],
    /// When it was made, unix seconds.
    pub time: u64,
    host_key: VerifyingKey,
    signature: [u8; 64],
}

impl Checkpoint {
    fn body(seq: u64, hash: &[u8; 32], time: u64, host_key: &VerifyingKey) -> String {
        format!(
            "{CHECKPOINT_HEADER}\nseq: {seq}\nhash: {}\ntime: {}\nhost-key: {}\n",
            hex::encode(hash),
            format_time(time),
            B64.encode(host_key.as_bytes())
        )
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = CHECKPOINT_CONTEXT.to_vec();
        out.extend_from_slice(
            Self::body(self.seq, &self.hash, self.time, &self.host_key).as_bytes(),
        );
        out
    }

    fn sign(key: &HostKey, seq: u64, hash: [u8; 32], time: u64) -> Self {
        let mut cp = Self {
            seq,
            hash,
            time,
            host_key: key.key.verifying_key(),
            signature: [0; 64],
        };
        cp.signature = key.key.sign(&cp.signed_bytes()).to_bytes();
        cp
    }

    /// The checkpoint's text, as `audit checkpoint` prints it.
    pub fn to_text(&self) -> String {
        format!(
            "{}signature: {}\n",
            Self::body(self.seq, &self.hash, self.time, &self.host_key),
            B64.encode(self.signature)
        )
    }

    /// The id of the host key that signed it.
    pub fn host_key_id(&self) -> String {
        key_id(&self.host_key)
    }

    /// The row hash, hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// Whether the signature matches the contents under the key it names.
    pub fn signature_ok(&self) -> bool {
        self.host_key
            .verify_strict(
                &self.signed_bytes(),
                &Signature::from_bytes(&self.signature),
            )
            .is_ok()
    }

    /// Reads a checkpoint file (does not check its signature).
    pub fn read(path: &Path) -> Result<Self, IntegrityError> {
        let bad = |message: String| IntegrityError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot read it: {e}")))?
            .len();
        if size > MAX_CHECKPOINT_BYTES {
            return Err(bad(format!(
                "it is {size} bytes, larger than any checkpoint ({MAX_CHECKPOINT_BYTES})"
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read it as text: {e}")))?;
        Self::parse(&text).map_err(bad)
    }

    /// Parses a checkpoint's text (does not check its signature).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(CHECKPOINT_HEADER) {
            return Err(format!("it does not start with `{CHECKPOINT_HEADER}`"));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines
                .next()
                .ok_or_else(|| format!("the `{name}:` line is missing"))?;
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("expected a `{name}:` line, found {line:?}"))
        };
        let seq = field("seq")?;
        let seq: u64 = seq
            .parse()
            .map_err(|_| format!("`seq` {seq:?} is not a row number"))?;
        let hash = field("hash")?;
        let hash = <[u8; 32]>::from_hex(&hash)
            .map_err(|e| format!("`hash` {hash:?} is not 64 hex digits ({e})"))?;
        let time = field("time")?;
        let time = humantime::parse_rfc3339(&time)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .as_ref()
            .map(Duration::as_secs)
            .ok_or_else(|| format!("`time` {time:?} is not an RFC 3339 time"))?;
        let host_key = field("host-key")?;
        let host_key = B64
            .decode(&host_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| "`host-key` is not a base64 Ed25519 public key".to_string())?;
        let signature = field("signature")?;
        let signature: [u8; 64] = B64
            .decode(&signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "`signature` is not 64 bytes of base64".to_string())?;
        if let Some(extra) = lines.next() {
            return Err(format!("unexpected line {extra:?} after the signature"));
        }
        Ok(Self {
            seq,
            hash,
            time,
            host_key,
            signature,
        })
    }
}

/// What `audit verify --checkpoint` found about one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointReport {
    /// The row the checkpoint vouches for.
    pub seq: u64,
    /// Its hash, hex.
    pub hash: String,
    /// When it was made, RFC 3339.
    pub time: String,
    /// The key id that signed it.
    pub host_key: String,
    /// Each problem found; empty when the ledger extends the checkpoint.
    pub problems: Vec<String>,
}

impl CheckpointReport {
    /// Whether the ledger still extends the checkpoint, signed by this host.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl State {
    /// Checks the whole hash chain and, if it verifies, signs a checkpoint of
    /// its last row with the host key (created in the state directory on
    /// first use).
    pub fn checkpoint(&self, now: u64) -> Result<Checkpoint, StateError> {
        let report = self.audit()?;
        if !report.ok() {
            return Err(IntegrityError::ChainBroken(report.problems).into());
        }
        let key = HostKey::open_or_create(self.dir())?;
        let seq = report.head_seq;
        let hash = self.chain_hash_at(seq)?;
        Ok(Checkpoint::sign(&key, seq, hash, now))
    }

    /// The stored hash of ledger row `seq` (the genesis hash for 0).
    pub fn chain_hash_at(&self, seq: u64) -> Result<[u8; 32], StateError> {
        if seq == 0 {
            return Ok(GENESIS);
        }
        let stored: Vec<u8> = self
            .conn()
            .query_row("SELECT hash FROM ledger WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        Ok(stored.try_into().map_err(|_| {
            IntegrityError::ChainBroken(vec![format!("row {seq} has no 32-byte hash")])
        })?)
    }

    /// Whether the ledger still extends `checkpoint`: its row is there with
    /// the same hash and the chain head is not behind it; and whether this
    /// state directory's host key signed it.
    pub fn verify_checkpoint(
        &self,
        checkpoint: &Checkpoint,
    ) -> Result<CheckpointReport, StateError> {
        let mut report = checkpoint_report(checkpoint);
        if !report.ok() {
            return Ok(report);
        }
        let key_path = self.dir().join(HOST_KEY_FILE);
        match HostKey::open(self.dir())? {
            None => report.problems.push(format!(
                "the checkpoint was signed by host key {}, but this state directory has no host key ({}): the checkpoint comes from another host, or the key was removed",
                report.host_key,
                key_path.display()
            )),
            Some(own) if own.key_id() != report.host_key => report.problems.push(format!(
                "the checkpoint was signed by another host key ({}) than this state directory's ({}, in {}): it comes from another host, or this host's key was replaced",
                report.host_key,
                own.key_id(),
                key_path.display()
            )),
            Some(_) => {}
        }
        let seq = checkpoint.seq;
        if seq == 0 {
            return Ok(report);
        }
        let (head, row) = {
            let mut conn = self.conn();
            let tx = conn.transaction().map_err(|e| self.err(e))?;
            let head = read_head(&tx).map_err(|e| self.err(e))?.seq;
            let row: Option<Vec<u8>> = tx
                .query_row("SELECT hash FROM ledger WHERE seq = ?1", [seq], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))?;
            (head, row)
        };
        judge_checkpoint(&mut report, checkpoint, head, row);
        Ok(report)
    }
}

/// A report on `checkpoint` with its fields filled in, and the one problem
/// found without a ledger: a signature that does not match.
pub(crate) fn checkpoint_report(checkpoint: &Checkpoint) -> CheckpointReport {
    let mut report = CheckpointReport {
        seq: checkpoint.seq,
        hash: checkpoint.hash_hex(),
        time: format_time(checkpoint.time),
        host_key: checkpoint.host_key_id(),
        problems: Vec::new(),
    };
    if !checkpoint.signature_ok() {
        report.problems.push(
            "the checkpoint's signature does not match its contents: the checkpoint file was altered; use an unaltered copy".to_string(),
        );
    }
    report
}

/// Adds to `report` what is wrong with a ledger whose chain head is `head`
/// and whose row at the checkpoint's place has hash `row` (`None`: no such
/// row): a head behind the checkpoint (rows cut off), a missing row, or
/// another hash (rewritten). Shared by the state directory and the shared
/// store, which judge their own chains the same way.
pub(crate) fn judge_checkpoint(
    report: &mut CheckpointReport,
    checkpoint: &Checkpoint,
    head: u64,
    row: Option<Vec<u8>>,
) {
    let seq = checkpoint.seq;
    let made = &report.time;
    if head < seq {
        report.problems.push(format!(
            "the ledger's chain head is at row {head}, behind the checkpoint's row {seq} made {made}: rows the checkpoint vouches for were removed and the chain head moved back"
        ));
    }
    match row {
        None => report.problems.push(format!(
            "row {seq}, which the checkpoint made {made} vouches for, is missing from the ledger"
        )),
        Some(stored) if stored.as_slice() != checkpoint.hash => report.problems.push(format!(
            "row {seq} has hash {}, not the {} the checkpoint made {made} records: the ledger up to row {seq} was rewritten since",
            hex::encode(stored),
            report.hash
        )),
        Some(_) => {}
    }
}

/// A trusted issuer key pinned in the config: by key id, or by public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerPin {
    /// A key id, 16 hex digits (as `tollgate trust list` shows).
    KeyId(String),
    /// The whole public key (the base64 after `key:` in `issuer.pub`).
    Key(IssuerPublicKey),
}

impl IssuerPin {
    /// Parses a key id (16 hex digits) or a base64 Ed25519 public key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Self::KeyId(t.to_ascii_lowercase()));
        }
        B64.decode(t)
            .ok()
            .and_then(|b| IssuerPublicKey::from_bytes(&b).ok())
            .map(Self::Key)
            .ok_or_else(|| {
                format!(
                    "{t:?} is neither an issuer key id (16 hex digits, as `tollgate trust list` shows) nor an issuer public key (the base64 text after `key:` in issuer.pub)"
                )
            })
    }

    /// The key id this pin names.
    pub fn key_id(&self) -> String {
        match self {
            Self::KeyId(id) => id.clone(),
            Self::Key(key) => key.key_id(),
        }
    }

    fn matches(&self, key: &IssuerPublicKey) -> bool {
        match self {
            Self::KeyId(id) => *id == key.key_id(),
            Self::Key(pinned) => pinned == key,
        }
    }
}

impl State {
    /// Refuses a database whose trusted issuer keys are not exactly `pins`,
    /// naming each extra and each missing key.
    pub fn check_pinned_issuers(&self, pins: &[IssuerPin]) -> Result<(), StateError> {
        let rows: Vec<(Vec<u8>, Option<String>)> = self.query(
            "SELECT public_key, name FROM trusted_issuers ORDER BY key_id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut trusted = Vec::new();
        for (bytes, name) in rows {
            trusted.push((IssuerPublicKey::from_bytes(&bytes)?, name));
        }
        let extra: Vec<String> = trusted
            .iter()
            .filter(|(key, _)| !pins.iter().any(|p| p.matches(key)))
            .map(|(key, name)| match name {
                Some(n) if *n != key.key_id() => format!("{} (named {n:?})", key.key_id()),
                _ => key.key_id(),
            })
            .collect();
        let missing: Vec<String> = pins
            .iter()
            .filter(|p| !trusted.iter().any(|(key, _)| p.matches(key)))
            .map(IssuerPin::key_id)
            .collect();
        if extra.is_empty() && missing.is_empty() {
            return Ok(());
        }
        Err(IntegrityError::TrustNotPinned {
            db: self.db_path().to_path_buf(),
            extra,
            missing,
        }
        .into())
    }
}

/// Checks a grant read from the database against the license text stored
/// with it: the signature must verify under a trusted issuer key, and every
/// column must say what the signed text says.
pub(super) fn check_stored_grant(
    db: &Path,
    grant: &Grant,
    issued_at: u64,
    file: &str,
    trusted: &[IssuerPublicKey],
) -> Result<(), StateError> {
    stored_grant_problem(grant, issued_at, file, trusted).map_err(|reason| {
        IntegrityError::GrantRefused {
            grant: grant.grant_id.clone(),
            license: grant.license_id.clone(),
            reason,
            db: db.to_path_buf(),
        }
        .into()
    })
}

/// What is wrong with a stored grant, checked against the license text
/// stored with it (see [`check_stored_grant`]); any store uses it.
pub(crate) fn stored_grant_problem(
    grant: &Grant,
    issued_at: u64,
    file: &str,
    trusted: &[IssuerPublicKey],
) -> Result<(), String> {
    let refuse = |reason: String| reason;
    let license = SignedLicense::parse(file)
        .map_err(|e| refuse(format!("its stored license text does not parse ({e})")))?;
    license
        .verify_signature(trusted)
        .map_err(|e| refuse(format!("its stored license text does not verify ({e})")))?;
    let t = &license.terms;
    let show = |v: Option<u64>| v.map_or_else(|| "none".to_string(), format_time);
    let seats = |v: Option<u32>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    let mut differs = Vec::new();
    let mut check = |column: &str, stored: String, signed: String| {
        if stored != signed {
            differs.push(format!(
                "column `{column}` says {stored}, the signed license says {signed}"
            ));
        }
    };
    check("grant_id", grant.grant_id.clone(), t.grant.clone());
    check("license_id", grant.license_id.clone(), t.license_id.clone());
    check("issuer", grant.issuer.clone(), t.issuer.clone());
    check("seats", seats(grant.seats), seats(t.seats.limit()));
    check("not_before", show(grant.not_before), show(t.not_before));
    check("expires_at", show(grant.expires_at), show(t.expires_at));
    check(
        "plugins",
        format!("{:?}", grant.plugins),
        format!("{:?}", t.plugins),
    );
    check(
        "customer",
        format!("{:?}", grant.customer),
        format!("{:?}", t.customer),
    );
    check(
        "issued_at",
        format_time(issued_at),
        format_time(t.issued_at),
    );
    if differs.is_empty() {
        Ok(())
    } else {
        Err(refuse(differs.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::SqliteLedger;
    use tollgate_license::Seats;
    use tollgate_license::issuer::{IssuerKey, LicenseTerms};
    use tollgate_license::ledger::{EventKind, Ledger, UsageEvent};

    const NOW: u64 = 1_800_000_000;

    /// A state in a scratch directory (removed when dropped, so it comes
    /// first: dropped last) with a license installed, and its issuer key.
    fn installed(tag: &str, seats: Seats) -> (tempfile::TempDir, State, IssuerKey) {
        let dir = super::super::tests::temp_dir(tag);
        let state = State::open(dir.path()).expect("opens");
        let key = IssuerKey::generate().expect("key");
        state
            .trust(&key.public(), Some("acme"), NOW)
            .expect("trust");
        let mut terms = LicenseTerms::new("a", seats);
        terms.plugins = vec!["hello".into()];
        terms.expires_at = Some(NOW + 86_400);
        let text = key.sign(terms, NOW).expect("signs").to_file_text();
        state.install_text(&text, NOW).expect("installs");
        (dir, state, key)
    }

    fn refused(state: &State) -> String {
        match state.grants() {
            Err(e @ StateError::Integrity(IntegrityError::GrantRefused { .. })) => e.to_string(),
            other => panic!("expected the grant to be refused, got {other:?}"),
        }
    }

    #[test]
    fn grants_whose_columns_disagree_with_their_signed_text_are_refused() {
        let edits = [
            (
                "UPDATE grants SET seats = NULL",
                "column `seats` says unlimited, the signed license says 2",
            ),
            ("UPDATE grants SET seats = 200", "column `seats` says 200"),
            (
                "UPDATE grants SET expires_at = NULL",
                "column `expires_at` says none",
            ),
            ("UPDATE grants SET plugins = ''", "column `plugins` says []"),
            (
                "UPDATE grants SET license_id = 'b'",
                "column `license_id` says b",
            ),
        ];
        for (i, (sql, says)) in edits.iter().enumerate() {
            let (_dir, state, _) = installed(&format!("tamper{i}"), Seats::Counted(2));
            assert_eq!(state.grants().expect("untouched grants load").len(), 1);
            state.conn().execute_batch(sql).expect("tamper");
            let message = refused(&state);
            assert!(message.contains(says), "{sql}: {message}");
            assert!(
                message.contains("was changed outside tollgate"),
                "{message}"
            );
            assert!(
                message.contains("DELETE FROM grants WHERE grant_id"),
                "{message}"
            );
            // Everything that reads grants refuses: the enforced terms too.
            assert!(state.seat_grants().is_err(), "{sql}");
        }
    }

    #[test]
    fn a_stored_license_text_swapped_or_signed_by_a_key_no_longer_trusted_is_refused() {
        let (_swap, state, key) = installed("swap", Seats::Counted(2));
        // A validly signed text of another grant put in place of this one's.
        let other = key
            .sign(LicenseTerms::new("a", Seats::Unlimited), NOW)
            .expect("signs")
            .to_file_text();
        state
            .conn()
            .execute("UPDATE grants SET file = ?1", [&other])
            .expect("swap");
        let message = refused(&state);
        assert!(message.contains("column `grant_id`"), "{message}");
        let (_untrusted, state, _) = installed("untrusted", Seats::Counted(2));
        state
            .conn()
            .execute_batch("DELETE FROM trusted_issuers")
            .expect("untrust");
        assert!(refused(&state).contains("does not trust"));
    }

    #[test]
    fn pinned_issuers_name_the_extra_and_the_missing_keys() {
        let (_dir, state, key) = installed("pins", Seats::Counted(1));
        let id = key.public().key_id();
        let by_key = B64.encode(key.public().to_bytes());
        for pin in [id.as_str(), by_key.as_str(), &id.to_uppercase()] {
            let pins = vec![IssuerPin::parse(pin).expect("pin")];
            state.check_pinned_issuers(&pins).expect("matches");
        }
        let other = IssuerKey::generate().expect("key");
        state
            .trust(&other.public(), Some("intruder"), NOW)
            .expect("trust");
        let third = IssuerKey::generate().expect("key").public();
        let pins = vec![
            IssuerPin::parse(&id).expect("pin"),
            IssuerPin::Key(third.clone()),
        ];
        let message = state
            .check_pinned_issuers(&pins)
            .expect_err("differs")
            .to_string();
        let extra = format!(
            "trusted in the database but not pinned: {} (named \"intruder\")",
            other.public().key_id()
        );
        let missing = format!("pinned but not trusted in the database: {}", third.key_id());
        assert!(message.contains(&extra), "{message}");
        assert!(message.contains(&missing), "{message}");
        assert!(IssuerPin::parse("not-a-key").is_err());
        assert!(IssuerPin::parse(&B64.encode([7u8; 31])).is_err());
    }

    #[test]
    fn checkpoint_text_round_trips_and_any_change_breaks_its_signature() {
        let dir = super::super::tests::temp_dir("cp-text");
        let state = State::open(dir.path()).expect("opens");
        let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
        for i in 0..3 {
            ledger.record(UsageEvent {
                lease_id: Some(i),
                ..UsageEvent::new(
                    EventKind::Checkout,
                    NOW * 1000 + i,
                    "a".into(),
                    "p".into(),
                    "d".into(),
                    i,
                )
            });
        }
        ledger.sync().expect("sync");
        drop(ledger);
        let cp = state.checkpoint(NOW).expect("checkpoint");
        assert_eq!(cp.seq, 3);
        let text = cp.to_text();
        assert!(
            text.starts_with("tollgate-checkpoint v1\nseq: 3\nhash: "),
            "{text}"
        );
        let parsed = Checkpoint::parse(&text).expect("parses");
        assert_eq!(parsed, cp);
        assert!(parsed.signature_ok());
        assert!(state.verify_checkpoint(&parsed).expect("verify").ok());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(HOST_KEY_FILE))
                .expect("key")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let earlier = Checkpoint::parse(&text.replace("seq: 3", "seq: 2")).expect("parses");
        assert!(!earlier.signature_ok());
        let report = state.verify_checkpoint(&earlier).expect("verify");
        assert!(
            report.problems[0].contains("checkpoint file was altered"),
            "{report:?}"
        );
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    /// A fixed host key and checkpoint: a change of the checkpoint encoding,
    /// of what its signature covers, or of the key id scheme fails here.
    #[test]
    fn checkpoint_encoding_is_stable() {
        let text = format!("{HOST_KEY_HEADER}\nsecret: {}\n", B64.encode([7u8; 32]));
        let key = HostKey::parse(Path::new("golden"), text.as_bytes()).expect("key");
        let cp = Checkpoint::sign(&key, 1042, [0xab; 32], 1_800_000_000);
        assert_eq!(cp.to_text(), GOLDEN, "{}", cp.to_text());
        assert_eq!(cp.host_key_id(), GOLDEN_KEY_ID);
        let parsed = Checkpoint::parse(GOLDEN).expect("parses");
        assert!(parsed.signature_ok());
        assert_eq!(parsed, cp);
    }

    const GOLDEN_KEY_ID: &str = "fe812c12f3ab4ce6";
    /// Checked once against an independent Ed25519 implementation (Python
    /// `cryptography`) over the bytes README documents.
    const GOLDEN: &str = "tollgate-checkpoint v1
seq: 1042
hash: abababababababababababababababababababababababababababababababab
time: 2027-01-15T08:00:00Z
host-key: 6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=
signature: IAiBiSJLeG/DiyJ/07iDfl/XGELRC7kWnIACsiuvRCppcEdxauU3lNKPGzRQhKmi05KGZHHtaN2s+eo+rYZgCg==
";
}
