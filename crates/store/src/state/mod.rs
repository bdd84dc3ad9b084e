//! The host's state directory: an SQLite database (WAL) holding trusted
//! issuers, installed license grants, revocations and the usage ledger.

mod alerts;
mod anchor;
mod export;
mod ids;

mod reports;
mod scopes;
mod sums;
pub use alerts::OutboxEntry;
pub use export::{
    CloudEvent, CursorError, EventData, ExportCursor, ExportPage, MAX_EXPORT_PAGE, event_type,
};
pub(crate) use sums::Kept;
pub use sums::SUMS_STORED_EVERY_ROWS;

#[cfg(feature = "postgres")]
pub(crate) use anchor::stored_grant_problem;
pub use anchor::{
    CHECKPOINT_HEADER, Checkpoint, CheckpointReport, HOST_KEY_FILE, HostKey, IntegrityError,
    IssuerPin,
};
#[cfg(feature = "postgres")]
pub(crate) use anchor::{checkpoint_report, judge_checkpoint};
pub use reports::{AuditReport, GrantReport, LicenseReport, UsageFilter, UsageRow};
pub use scopes::{
    DEFAULT_PATTERN, IssuerScope, ProblemKind, ScopeError, ScopeProblem, glob_matches,
    validate_pattern,
};
#[cfg(feature = "postgres")]
pub(crate) use scopes::{Scopes, clean as clean_scope, scope_to_store};

use crate::ledger::{connect, read_head};
use crate::open::OpenSet;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tollgate_license::issuer::{IssuerError, IssuerPublicKey, SignedLicense, read_small_text};
use tollgate_license::ledger::EventKind;
use tollgate_license::{Counters, Grant as SeatGrant, ReclaimReason, Seats, Terms};

/// The database file inside a state directory.
pub const DB_FILE: &str = "tollgate.db";
/// The lock file a running host holds.
const LOCK_FILE: &str = "host.lock";
/// The schema version this build writes: 2 added the seat, grant, count and
/// row format of ledger rows, and revocations of single grants; 3 added
/// issuer id scopes (and a name for every trusted key); 4 keeps in the
/// chain head where open seats start and the last lease id, instead of
/// indexing every ledger row by lease and seat.
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS trusted_issuers (
    key_id TEXT PRIMARY KEY, public_key BLOB NOT NULL, name TEXT, added_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY, license_id TEXT NOT NULL, issuer TEXT NOT NULL,
    seats INTEGER, not_before INTEGER, expires_at INTEGER, plugins TEXT NOT NULL,
    customer TEXT, issued_at INTEGER NOT NULL, installed_at INTEGER NOT NULL, file TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS grants_license ON grants(license_id);
CREATE TABLE IF NOT EXISTS revocations (license_id TEXT PRIMARY KEY, revoked_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS grant_revocations (
    grant_id TEXT PRIMARY KEY, license_id TEXT NOT NULL, revoked_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, reason TEXT,
    license_id TEXT NOT NULL, plugin TEXT NOT NULL, digest TEXT NOT NULL,
    lease_id INTEGER, invocation_id INTEGER NOT NULL, hash BLOB NOT NULL,
    format INTEGER NOT NULL DEFAULT 1, seat_id INTEGER, grant_id TEXT,
    count INTEGER NOT NULL DEFAULT 1, token INTEGER);
CREATE TABLE IF NOT EXISTS chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL,
    open_from INTEGER NOT NULL DEFAULT 0, last_lease INTEGER NOT NULL DEFAULT 0);
";

/// How long a host waits for the state directory's lock before it says
/// another host is running there.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors opening or using the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory could not be created or used.
    #[error(
        "cannot use state directory {path}; pass --state DIR (or set TOLLGATE_STATE) to a directory you can write"
    )]
    Dir {
        /// The directory (or the file in it that failed).
        path: PathBuf,
        /// What the file system or SQLite said.
        #[source]
        source: Cause,
    },
    /// The database is damaged or not a database.
    #[error(
        "the state database {path} is damaged or not a tollgate database; move it aside and restore it from a backup"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Another process holds the database locked.
    #[error("the state database {path} is locked by another process; try again when it is done")]
    Locked {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// Written by a newer tollgate.
    #[error(
        "the state database {path} has schema version {found}, newer than this tollgate understands ({SCHEMA_VERSION}); upgrade tollgate"
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// Written by an older tollgate and not upgraded yet (only a read-only
    /// open says so; [`State::open`] upgrades it).
    #[error(
        "the state database {path} has schema version {found}, older than this tollgate's ({SCHEMA_VERSION}); open it once with this tollgate to upgrade it (for example `tollgate status --state DIR`), then try again"
    )]
    OlderSchema {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// The directory holds no state database.
    #[error(
        "{0} is not a tollgate state directory: it has no {DB_FILE}; name the directory the host ran with (its --state, or `state` in its tollgate.toml)"
    )]
    NotAStateDir(PathBuf),
    /// Another host is running on this state directory.
    #[error(
        "another tollgate host is running with state directory {0}; stop it first or use another --state"
    )]
    HostRunning(PathBuf),
    /// Any other database error.
    #[error("the state database {path} failed")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// A license or key was rejected.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// No grant with this id is installed.
    #[error("no grant {0:?} is installed; `tollgate status` lists each license's grants")]
    UnknownGrant(String),
    /// No grant of this license is installed.
    #[error("no license {0:?} is installed; `tollgate license list` shows what is")]
    UnknownLicense(String),
    /// The database does not match what anchors it (signed text, pins, checkpoints).
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// An issuer scope was refused, or a grant is outside the scopes.
    #[error(transparent)]
    Scope(Box<ScopeError>),
}

/// What failed under [`StateError::Dir`]: the file system or SQLite.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A file-system error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An SQLite error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

impl From<ScopeError> for StateError {
    fn from(e: ScopeError) -> Self {
        Self::Scope(Box::new(e))
    }
}

/// The grants a host enforces, worked out from one load of the grants.
pub(crate) struct EnforcedGrants {
    /// Per license id, each grant as the seat pool enforces it.
    pub(crate) by_license: BTreeMap<String, Vec<SeatGrant>>,
    /// Why the scopes left grants out.
    pub(crate) problems: Vec<ScopeProblem>,
    /// Every installed grant, verified against its signed text.
    pub(crate) grants: Vec<Grant>,
    /// Grant ids revoked one by one.
    pub(crate) revoked: BTreeSet<String>,
}

use tollgate_license::store::{GrantStore, StoreError};
pub use tollgate_license::store::{LedgerCounters, OpenSeat};

/// A trusted issuer key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TrustedIssuer {
    /// The key id.
    pub key_id: String,
    /// Its issuer's name (`trust add --name`, else the key id).
    pub name: Option<String>,
    /// When it was added, unix seconds.
    pub added_at: u64,
    /// The license id patterns its issuer (by name) may grant.
    pub scope: Vec<String>,
}

/// One installed grant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Grant {
    /// The grant id.
    pub grant_id: String,
    /// The license id.
    pub license_id: String,
    /// The issuer key id.
    pub issuer: String,
    /// Seats; `None`: unlimited.
    pub seats: Option<u32>,
    /// Validity start.
    pub not_before: Option<u64>,
    /// Validity end.
    pub expires_at: Option<u64>,
    /// Plugin rules.
    pub plugins: Vec<String>,
    /// Customer.
    pub customer: Option<String>,
    /// When installed, unix seconds.
    pub installed_at: u64,
}

impl Grant {
    /// Whether unix second `now` lies inside its window.
    pub fn valid_at(&self, now: u64) -> bool {
        tollgate_license::within_window(self.not_before, self.expires_at, now)
    }

    /// Its seats, window and plugins, as the seat pool enforces them.
    pub fn terms(&self) -> Terms {
        Terms {
            seats: self.seats.map_or(Seats::Unlimited, Seats::Counted),
            not_before: self.not_before,
            expires_at: self.expires_at,
            plugins: self.plugins.clone(),
        }
    }
}

/// What `install` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The verified grant.
    pub grant: Grant,
    /// False when this exact grant was already installed (nothing added).
    pub new: bool,
    /// True when the license id is revoked: the grant is installed but gives
    /// no seat until `license unrevoke`.
    pub revoked: bool,
}

/// Held by a running host: one host per state directory.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

/// An open state directory.
#[derive(Debug)]
pub struct State {
    dir: PathBuf,
    db: PathBuf,
    conn: Mutex<Connection>,
    /// Scope problems already logged, so a reload every few seconds does
    /// not log them again.
    reported: Mutex<BTreeSet<String>>,
}

impl State {
    /// `$TOLLGATE_STATE`, else `$XDG_STATE_HOME/tollgate`, else `~/.local/state/tollgate`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("TOLLGATE_STATE").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("tollgate");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".local/state/tollgate"),
            None => PathBuf::from(".tollgate-state"),
        }
    }

    /// Opens (creating if needed) the state directory and its database.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let dir_err = |e: std::io::Error| StateError::Dir {
            path: dir.to_path_buf(),
            source: e.into(),
        };
        crate::files::create_dir(dir).map_err(dir_err)?;
        let db = dir.join(DB_FILE);
        // Probe writability with a clear error before SQLite gives a vague one.
        let probe = dir.join(".write-probe");
        let _ = std::fs::remove_file(&probe);
        crate::files::create_new(&probe).map_err(dir_err)?;
        let _ = std::fs::remove_file(&probe);
        // Created 0600 here, whatever the umask: SQLite gives its -wal and
        // -shm files the database file's mode. An existing one is left as it is.
        match crate::files::create_new(&db) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(dir_err(e)),
            _ => {}
        }
        let conn = connect(&db).map_err(|e| db_error(&db, e))?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| db_error(&db, e))?;
        if found > SCHEMA_VERSION {
            return Err(StateError::NewerSchema { path: db, found });
        }
        conn.execute_batch(SCHEMA).map_err(|e| db_error(&db, e))?;
        conn.execute_batch(sums::SCHEMA)
            .map_err(|e| db_error(&db, e))?;
        conn.execute_batch(alerts::SCHEMA)
            .map_err(|e| db_error(&db, e))?;
        upgrade(&conn).map_err(|e| db_error(&db, e))?;
        scopes::upgrade(&conn).map_err(|e| db_error(&db, e))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| db_error(&db, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            conn: Mutex::new(conn),
            reported: Mutex::new(BTreeSet::new()),
        })
    }

    /// Opens the database of an existing state directory read-only: nothing
    /// in it is created, upgraded or written through this handle, so only
    /// its reads work (a database of an older schema is refused).
    pub fn open_read_only(dir: &Path) -> Result<Self, StateError> {
        use rusqlite::OpenFlags;
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(StateError::NotAStateDir(dir.to_path_buf()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&db, flags).map_err(|e| db_error(&db, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| db_error(&db, e))?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| db_error(&db, e))?;
        if found > SCHEMA_VERSION {
            return Err(StateError::NewerSchema { path: db, found });
        }
        if found < SCHEMA_VERSION {
            return Err(StateError::OlderSchema { path: db, found });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            conn: Mutex::new(conn),
            reported: Mutex::new(BTreeSet::new()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> StateError {
        db_error(&self.db, e)
    }

    /// Runs `sql` and maps every row with `row`.
    pub(crate) fn query<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).map_err(|e| self.err(e))?;
        stmt.query_map(params, row)
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e))
    }

    /// Takes the host lock, or says another host runs here.
    pub fn lock_host(&self) -> Result<HostLock, StateError> {
        let path = self.dir.join(LOCK_FILE);
        let file = crate::files::open_or_create(&path).map_err(|e| StateError::Dir {
            path: path.clone(),
            source: e.into(),
        })?;
        // A child this process forks shares the lock until it execs; a
        // host just dropped here may so hold it for a moment longer. A
        // running host holds it for good: a short grace tells them apart.
        let deadline = std::time::Instant::now() + LOCK_GRACE;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(HostLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StateError::HostRunning(self.dir.clone()));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StateError::Dir {
                        path,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Trusts an issuer key under issuer `name` (its key id when `None`),
    /// with the name's scope, or the default scope for a new name; false if
    /// it was trusted already.
    pub fn trust(
        &self,
        key: &IssuerPublicKey,
        name: Option<&str>,
        now: u64,
    ) -> Result<bool, StateError> {
        self.trust_scoped(key, name, None, now)
    }

    /// Trusts an issuer key under issuer `name` (its key id when `None`).
    /// With `ids`, the issuer's scope is those patterns (refused when the
    /// name already has another scope: a rotated key keeps its issuer's
    /// scope); without, a new name gets the default scope `*`. False if the
    /// key was trusted already (it keeps the name it has).
    pub fn trust_scoped(
        &self,
        key: &IssuerPublicKey,
        name: Option<&str>,
        ids: Option<&[String]>,
        now: u64,
    ) -> Result<bool, StateError> {
        let key_id = key.key_id();
        let known: Option<String> = self
            .conn()
            .query_row(
                "SELECT coalesce(nullif(name, ''), key_id) FROM trusted_issuers WHERE key_id = ?1",
                params![key_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let name = issuer_name(known.as_deref(), name, &key_id);
        self.scope_for_new_key(&name, ids)?;
        if known.is_some() {
            return Ok(false);
        }
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO trusted_issuers (key_id, public_key, name, added_at) VALUES (?1, ?2, ?3, ?4)",
                params![key_id, &key.to_bytes()[..], name, now],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// The trusted issuers, each with its issuer's scope.
    pub fn trusted(&self) -> Result<Vec<TrustedIssuer>, StateError> {
        let scopes = self.scopes()?;
        let mut issuers = self.query(
            "SELECT key_id, coalesce(nullif(name, ''), key_id), added_at FROM trusted_issuers ORDER BY added_at, key_id",
            [],
            |r| {
                Ok(TrustedIssuer {
                    key_id: r.get(0)?,
                    name: r.get(1)?,
                    added_at: r.get(2)?,
                    scope: Vec::new(),
                })
            },
        )?;
        for i in &mut issuers {
            i.scope = scopes.patterns(&scopes.name_of(&i.key_id));
        }
        Ok(issuers)
    }

    /// The public key of every trusted issuer.
    pub(crate) fn trusted_keys(&self) -> Result<Vec<IssuerPublicKey>, StateError> {
        let blobs: Vec<Vec<u8>> =
            self.query("SELECT public_key FROM trusted_issuers", [], |r| r.get(0))?;
        blobs
            .iter()
            .map(|b| IssuerPublicKey::from_bytes(b).map_err(StateError::from))
            .collect()
    }

    /// Verifies a license file and records its grant.
    pub fn install_file(&self, path: &Path, now: u64) -> Result<Installed, StateError> {
        self.install_text(&read_small_text(path)?, now)
    }

    /// Verifies license text and records its grant. Installing the same grant
    /// twice adds nothing; a grant whose window starts later (a renewal) is
    /// accepted and in force only inside its window; a new grant never
    /// lifts a revocation. A grant outside its issuer's id scope, or of an
    /// id another issuer granted (unless both scopes name it explicitly),
    /// is refused.
    pub fn install_text(&self, text: &str, now: u64) -> Result<Installed, StateError> {
        let (grant, issued_at) = verified_grant(text, &self.trusted_keys()?, now)?;
        self.check_scope(&grant)?;
        let conn = self.conn();
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO grants (grant_id, license_id, issuer, seats, not_before, expires_at, plugins, customer, issued_at, installed_at, file)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    grant.grant_id, grant.license_id, grant.issuer, grant.seats, grant.not_before, grant.expires_at,
                    grant.plugins.join("\n"), grant.customer, issued_at, now, text
                ],
            )
            .map_err(|e| db_error(&self.db, e))?;
        let revoked: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM revocations WHERE license_id = ?1)",
                params![grant.license_id],
                |r| r.get(0),
            )
            .map_err(|e| db_error(&self.db, e))?;
        Ok(Installed {
            grant,
            new: n == 1,
            revoked,
        })
    }

    /// Every installed grant, by license id then install time. Each is
    /// checked against its stored signed license text first: a grant whose
    /// text does not verify, or whose columns disagree with it, is refused.
    pub fn grants(&self) -> Result<Vec<Grant>, StateError> {
        Ok(self
            .grants_with_text()?
            .into_iter()
            .map(|(grant, _)| grant)
            .collect())
    }

    /// [`State::grants`], each with the signed license text it was checked
    /// against.
    pub(crate) fn grants_with_text(&self) -> Result<Vec<(Grant, String)>, StateError> {
        let rows: Vec<(Grant, u64, String)> = self.query(
            "SELECT grant_id, license_id, issuer, seats, not_before, expires_at, plugins, customer, installed_at, issued_at, file
             FROM grants ORDER BY license_id, installed_at, grant_id",
            [],
            |r| {
                let plugins: String = r.get(6)?;
                let grant = Grant {
                    grant_id: r.get(0)?,
                    license_id: r.get(1)?,
                    issuer: r.get(2)?,
                    seats: r.get(3)?,
                    not_before: r.get(4)?,
                    expires_at: r.get(5)?,
                    plugins: plugins.lines().map(str::to_string).collect(),
                    customer: r.get(7)?,
                    installed_at: r.get(8)?,
                };
                Ok((grant, r.get(9)?, r.get(10)?))
            },
        )?;
        let trusted = self.trusted_keys()?;
        rows.into_iter()
            .map(|(grant, issued_at, file)| {
                anchor::check_stored_grant(&self.db, &grant, issued_at, &file, &trusted)?;
                Ok((grant, file))
            })
            .collect()
    }

    /// Revokes a license id: every grant of it, including grants installed
    /// later, until [`State::unrevoke`].
    pub fn revoke(&self, license_id: &str, now: u64) -> Result<(), StateError> {
        self.known_license(license_id)?;
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO revocations (license_id, revoked_at) VALUES (?1, ?2)",
                params![license_id, now],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Lifts the revocation of a license id; false if it was not revoked.
    /// Grants revoked one by one stay revoked.
    pub fn unrevoke(&self, license_id: &str) -> Result<bool, StateError> {
        self.known_license(license_id)?;
        let n = self
            .conn()
            .execute(
                "DELETE FROM revocations WHERE license_id = ?1",
                params![license_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Revokes one grant for good; returns its license id.
    pub fn revoke_grant(&self, grant_id: &str, now: u64) -> Result<String, StateError> {
        let conn = self.conn();
        let license: Option<String> = conn
            .query_row(
                "SELECT license_id FROM grants WHERE grant_id = ?1",
                params![grant_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let license = license.ok_or_else(|| StateError::UnknownGrant(grant_id.to_string()))?;
        conn.execute(
            "INSERT OR IGNORE INTO grant_revocations (grant_id, license_id, revoked_at) VALUES (?1, ?2, ?3)",
            params![grant_id, license, now],
        )
        .map_err(|e| self.err(e))?;
        Ok(license)
    }

    fn known_license(&self, license_id: &str) -> Result<(), StateError> {
        let known: Option<String> = self
            .conn()
            .query_row(
                "SELECT license_id FROM grants WHERE license_id = ?1 LIMIT 1",
                params![license_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match known {
            Some(_) => Ok(()),
            None => Err(StateError::UnknownLicense(license_id.to_string())),
        }
    }

    /// Revoked license ids with the time of revocation.
    pub fn revocations(&self) -> Result<BTreeMap<String, u64>, StateError> {
        let rows: Vec<(String, u64)> =
            self.query("SELECT license_id, revoked_at FROM revocations", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(rows.into_iter().collect())
    }

    /// Grants revoked one by one, with the time of revocation.
    pub fn grant_revocations(&self) -> Result<BTreeMap<String, u64>, StateError> {
        let rows: Vec<(String, u64)> = self.query(
            "SELECT grant_id, revoked_at FROM grant_revocations",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    /// The grants a host enforces, per license id: every installed grant
    /// with its own seats, window and plugins, and whether it was revoked
    /// alone. The pool judges each window at every request, so a grant
    /// that expires stops giving seats without a restart. Grants the
    /// issuers' scopes leave out are given as revoked (no seat) and logged
    /// once as warnings.
    pub fn seat_grants(&self) -> Result<BTreeMap<String, Vec<SeatGrant>>, StateError> {
        let enforced = self.enforced_grants()?;
        self.warn_scope_problems(&enforced.problems);
        Ok(enforced.by_license)
    }

    /// [`State::seat_grants`] without logging, with what it was worked out
    /// from, so a report needs no second load (and check) of the grants.
    pub(crate) fn enforced_grants(&self) -> Result<EnforcedGrants, StateError> {
        let revoked: BTreeSet<String> = self.grant_revocations()?.into_keys().collect();
        let grants = self.grants()?;
        let problems = self.scopes()?.problems(&grants, &revoked);
        let left_out: BTreeSet<&str> = problems
            .iter()
            .flat_map(|p| p.grants.iter().map(String::as_str))
            .collect();
        let out = seat_grants_of(&grants, &revoked, &left_out);
        Ok(EnforcedGrants {
            by_license: out,
            problems,
            grants,
            revoked,
        })
    }

    /// Logs each scope problem not logged before by this process.
    fn warn_scope_problems(&self, problems: &[ScopeProblem]) {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        reported.retain(|d| problems.iter().any(|p| p.decide == *d));
        for p in problems {
            if reported.insert(p.decide.clone()) {
                tracing::warn!(license = %p.license_id, "{}", p.decide);
            }
        }
    }

    /// Seats taken and never returned, with the lease still open on each:
    /// the rows from the point the chain head keeps (the oldest seat open
    /// at the last commit) are walked, not the whole ledger.
    pub fn open_seats(&self) -> Result<Vec<OpenSeat>, StateError> {
        let conn = self.conn();
        let from = read_head(&conn).map_err(|e| self.err(e))?.open_from;
        let set = crate::open::walk(&conn, from, OpenSet::default()).map_err(|e| self.err(e))?;
        Ok(set.seats())
    }

    /// The largest lease id in the ledger and the largest invocation id.
    pub fn last_ids(&self) -> Result<(u64, u64), StateError> {
        let invocation = self
            .conn()
            .query_row(
                "SELECT coalesce(max(invocation_id), 0) FROM ledger",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok((self.last_lease_id()?, invocation))
    }

    /// The largest lease id in the ledger, as the chain head keeps it.
    pub fn last_lease_id(&self) -> Result<u64, StateError> {
        read_head(&self.conn())
            .map(|head| head.last_lease)
            .map_err(|e| self.err(e))
    }
}

/// Brings a schema-1 database up to this build's schema in place: old
/// ledger rows keep format 1 and verify as before.
impl From<StateError> for StoreError {
    fn from(e: StateError) -> Self {
        StoreError::new(e)
    }
}

/// The state directory is the store of a single host.
impl GrantStore for State {
    fn seat_grants(&self) -> Result<BTreeMap<String, Vec<SeatGrant>>, StoreError> {
        Ok(State::seat_grants(self)?)
    }

    fn revocations(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(State::revocations(self)?)
    }

    fn open_seats(&self) -> Result<Vec<OpenSeat>, StoreError> {
        Ok(State::open_seats(self)?)
    }

    fn last_lease_id(&self) -> Result<u64, StoreError> {
        Ok(State::last_lease_id(self)?)
    }

    fn ledger_counters(&self) -> Result<LedgerCounters, StoreError> {
        Ok(State::ledger_counters(self)?)
    }

    fn first_free_invocation_id(&self) -> Result<u64, StoreError> {
        Ok(State::first_free_invocation_id(self)?)
    }

    fn reserve_invocation_ids(&self, below: u64) -> Result<u64, StoreError> {
        Ok(State::reserve_invocation_ids(self, below)?)
    }

    fn revoke(&self, license_id: &str, now: u64) -> Result<(), StoreError> {
        Ok(State::revoke(self, license_id, now)?)
    }

    fn unrevoke(&self, license_id: &str) -> Result<bool, StoreError> {
        Ok(State::unrevoke(self, license_id)?)
    }

    fn revoke_grant(&self, grant_id: &str, now: u64) -> Result<String, StoreError> {
        Ok(State::revoke_grant(self, grant_id, now)?)
    }
}

/// The issuer name a key being trusted goes under: the name it is known by
/// already (a key keeps its name), else the `given` one, else its key id.
pub(crate) fn issuer_name(known: Option<&str>, given: Option<&str>, key_id: &str) -> String {
    known
        .or(given.map(str::trim).filter(|n| !n.is_empty()))
        .unwrap_or(key_id)
        .to_string()
}

/// Parses license `text` and verifies it for installing at `now` under the
/// `trusted` keys: its grant, to be installed at `now`, and when it was
/// issued. Any store installs through it.
pub(crate) fn verified_grant(
    text: &str,
    trusted: &[IssuerPublicKey],
    now: u64,
) -> Result<(Grant, u64), StateError> {
    let license = SignedLicense::parse(text)?;
    license.verify_for_install(trusted, now)?;
    let t = &license.terms;
    let grant = Grant {
        grant_id: t.grant.clone(),
        license_id: t.license_id.clone(),
        issuer: t.issuer.clone(),
        seats: t.seats.limit(),
        not_before: t.not_before,
        expires_at: t.expires_at,
        plugins: t.plugins.clone(),
        customer: t.customer.clone(),
        installed_at: now,
    };
    Ok((grant, t.issued_at))
}

/// The grants a host enforces, per license id: each with its own terms,
/// given as revoked when revoked alone (`revoked`) or left out by the
/// issuers' scopes (`left_out`): no seat, and held seats end.
pub(crate) fn seat_grants_of(
    grants: &[Grant],
    revoked: &BTreeSet<String>,
    left_out: &BTreeSet<&str>,
) -> BTreeMap<String, Vec<SeatGrant>> {
    let mut out: BTreeMap<String, Vec<SeatGrant>> = BTreeMap::new();
    for g in grants {
        let grant = SeatGrant {
            revoked: revoked.contains(&g.grant_id) || left_out.contains(g.grant_id.as_str()),
            id: g.grant_id.clone(),
            terms: g.terms(),
        };
        out.entry(g.license_id.clone()).or_default().push(grant);
    }
    out
}

fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('ledger')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, decl) in [
        ("format", "INTEGER NOT NULL DEFAULT 1"),
        ("seat_id", "INTEGER"),
        ("grant_id", "TEXT"),
        ("count", "INTEGER NOT NULL DEFAULT 1"),
        ("token", "INTEGER"),
    ] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE ledger ADD COLUMN {column} {decl}"))?;
        }
    }
    // Schema 4: the chain head keeps where open seats start (0 until the
    // next commit: every row is walked once) and the last lease id, taken
    // here from the lease index before it goes.
    let head: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('chain_head')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !head.iter().any(|c| c == "last_lease") {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(
            "ALTER TABLE chain_head ADD COLUMN open_from INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE chain_head ADD COLUMN last_lease INTEGER NOT NULL DEFAULT 0;
             UPDATE chain_head SET last_lease = (SELECT coalesce(max(lease_id), 0) FROM ledger);
             DROP INDEX IF EXISTS ledger_lease;
             DROP INDEX IF EXISTS ledger_seat;",
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn clamp(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// How a ledger row moves the seats in use, as an SQL expression: a seat is
/// taken by a checkout and returned by a return row (or, in format 1, by the
/// release or reclaim of its only lease).
pub(crate) const SEAT_MOVE: &str = "CASE WHEN kind = 'checkout' THEN 1 WHEN kind = 'return' THEN -1 \
     WHEN kind IN ('release', 'reclaim') AND format = 1 THEN -1 ELSE 0 END";

fn add(c: &mut Counters, kind: EventKind, format: i64, n: u64) {
    match kind {
        EventKind::Checkout => c.checkouts += n,
        EventKind::Retake => {
            c.checkouts += n;
            c.retakes += n;
        }
        EventKind::Release => {
            c.releases += n;
            if format == 1 {
                c.returns.add(ReclaimReason::InvocationEnded, n);
            }
        }
        EventKind::Reclaim(r) => {
            c.reclaims.add(r, n);
            if format == 1 {
                c.returns.add(r, n);
            }
        }
        EventKind::Return(r) => c.returns.add(r, n),
        EventKind::Denial(d) => c.denials.add(d, n),
        EventKind::Withheld => c.withheld += n,
    }
    let taken = c.checkouts.saturating_sub(c.retakes);
    c.in_use = clamp(i64::try_from(taken.saturating_sub(c.returns.total())).unwrap_or(i64::MAX));
}

fn db_error(path: &Path, e: rusqlite::Error) -> StateError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StateError::Corrupt { path, source: e }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StateError::Locked { path, source: e }
        }
        Some(ErrorCode::PermissionDenied | ErrorCode::ReadOnly | ErrorCode::CannotOpen) => {
            StateError::Dir {
                path,
                source: e.into(),
            }
        }
        _ => StateError::Database { path, source: e },
    }
}

#[cfg(test)]
mod tests;
