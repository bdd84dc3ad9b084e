//! The shared store on PostgreSQL: several hosts, one seat pool.
//!
//! Every host connects to one database. Schema migrations are embedded and
//! run at connect, under an advisory lock so that hosts starting together
//! migrate once; a database whose schema is newer than this build knows is
//! refused. Seats are shared through *batches* ([`seats`]): a host leases
//! some seats of a grant for a while and hands them out without a round
//! trip per call.

pub mod batches;
pub mod clock;
pub mod grants;
pub mod ledger;
pub mod migrate;
pub mod passfile;
pub mod rules;
pub mod seats;
pub mod tls;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The migrations, in order: migration `i` takes the schema from version
/// `i` to `i + 1`. Append only; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: trust, issuer scopes, grants (with their signed text), revocations,
    // and the seat batches of hosts.
    "CREATE TABLE trusted_issuers (
         key_id TEXT PRIMARY KEY,
         public_key BYTEA NOT NULL,
         name TEXT NOT NULL,
         added_at BIGINT NOT NULL
     );
     CREATE TABLE issuer_scopes (name TEXT PRIMARY KEY, patterns TEXT NOT NULL);
     CREATE TABLE grants (
         grant_id TEXT PRIMARY KEY,
         license_id TEXT NOT NULL,
         issuer TEXT NOT NULL,
         seats INTEGER CHECK (seats >= 0),
         not_before BIGINT,
         expires_at BIGINT,
         plugins TEXT NOT NULL,
         customer TEXT,
         issued_at BIGINT NOT NULL,
         installed_at BIGINT NOT NULL,
         file TEXT NOT NULL
     );
     CREATE INDEX grants_license ON grants (license_id);
     CREATE TABLE revocations (license_id TEXT PRIMARY KEY, revoked_at BIGINT NOT NULL);
     CREATE TABLE grant_revocations (
         grant_id TEXT PRIMARY KEY,
         license_id TEXT NOT NULL,
         revoked_at BIGINT NOT NULL
     );
     CREATE SEQUENCE fencing_tokens;
     CREATE TABLE seat_batches (
         grant_id TEXT NOT NULL REFERENCES grants ON DELETE CASCADE,
         host_id TEXT NOT NULL,
         seats INTEGER NOT NULL CHECK (seats >= 0),
         wanted INTEGER NOT NULL CHECK (wanted >= 0),
         token BIGINT NOT NULL,
         expires_at TIMESTAMPTZ NOT NULL,
         PRIMARY KEY (grant_id, host_id)
     );
     CREATE TABLE seat_batch_log (
         token BIGINT PRIMARY KEY,
         grant_id TEXT NOT NULL,
         host_id TEXT NOT NULL,
         seats INTEGER NOT NULL,
         granted_at TIMESTAMPTZ NOT NULL,
         expires_at TIMESTAMPTZ NOT NULL
     );
     CREATE INDEX seat_batch_log_grant ON seat_batch_log (grant_id, granted_at);",
    // 2: every host's ledger rows, shipped from its spool: one hash chain
    // per host.
    "CREATE TABLE ledger (
         host_id TEXT NOT NULL,
         seq BIGINT NOT NULL,
         at_ms BIGINT NOT NULL,
         kind TEXT NOT NULL,
         reason TEXT,
         license_id TEXT NOT NULL,
         plugin TEXT NOT NULL,
         digest TEXT NOT NULL,
         lease_id BIGINT,
         invocation_id BIGINT NOT NULL,
         hash BYTEA NOT NULL,
         format SMALLINT NOT NULL,
         seat_id BIGINT,
         grant_id TEXT,
         count BIGINT NOT NULL,
         token BIGINT,
         PRIMARY KEY (host_id, seq)
     );
     CREATE INDEX ledger_license ON ledger (license_id, at_ms);",
    // 3: the license rules every host runs with (one row: all of them), and
    // what each host's calls hold and wait for at its last lease.
    "CREATE TABLE license_rules (
         one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
         rules TEXT NOT NULL,
         set_at BIGINT NOT NULL,
         set_by TEXT NOT NULL
     );
     ALTER TABLE seat_batches
         ADD COLUMN in_use INTEGER NOT NULL DEFAULT 0,
         ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0;",
    // 4: the ledger's time index as a BRIN range index. Rows arrive in
    // about time order, so a block range summary serves `usage` by time;
    // the B-tree on (license, time) cost a third more per shipped row.
    "DROP INDEX ledger_license;
     CREATE INDEX ledger_time ON ledger USING brin (at_ms);",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// How long the server lets one of our sessions sit idle inside a
/// transaction before it ends the session (and its locks with it): ours
/// never pause there for more than a round trip.
pub const SESSION_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// How long one of our statements waits for a lock before it fails.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long the server keeps sending to one of our sessions that
/// acknowledges nothing before it ends the session.
pub const UNACKNOWLEDGED: Duration = Duration::from_secs(20);

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465; // "tollgate"

/// What went wrong with the shared store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The store URL does not parse.
    #[error(
        "the store URL is not a PostgreSQL connection string: {}; write postgres://USER@HOST:PORT/DB (a password belongs in a password file, not the URL)",
        causes(source)
    )]
    Url {
        /// What the parser said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No connection could be had from the pool.
    #[error("cannot connect to the shared store: {}", causes(source))]
    Connect {
        /// Why.
        #[source]
        source: deadpool_postgres::PoolError,
    },
    /// A statement failed.
    #[error("the shared store failed to {action}: {}", causes(source))]
    Query {
        /// What was being done.
        action: &'static str,
        /// What PostgreSQL said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database's schema is newer than this build.
    #[error(
        "the shared store's schema is version {found}, newer than this tollgate knows ({known}); upgrade tollgate on this host"
    )]
    SchemaTooNew {
        /// The database's version.
        found: i32,
        /// This build's version.
        known: i32,
    },
    /// The pool could not be built.
    #[error("cannot set up the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    /// Work on a blocking thread stopped before it was done.
    #[error("{0} stopped before it was done")]
    Interrupted(&'static str),
    /// The store did not answer in time.
    #[error("the shared store did not answer within {0:?}")]
    TimedOut(Duration),
    /// The host's local spool could not be read.
    #[error("cannot read the ledger spool {path}: {source}")]
    Spool {
        /// The spool's database file.
        path: std::path::PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The store holds a different row at a place this host's spool has
    /// one: two hosts use one host id, or a row was altered.
    #[error(
        "the shared ledger's row {seq} of host {host} differs from the host's spool; two hosts may share the host id {host}, or a row was altered: run `tollgate audit verify --store URL`"
    )]
    Diverged {
        /// The host id.
        host: String,
        /// The first row that differs.
        seq: u64,
    },
    /// A value is beyond what the store's columns hold.
    #[error("the shared store cannot hold {what} {value}")]
    OutOfRange {
        /// What it is.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A license, trust or scope operation was refused (the same checks as
    /// on a single host's state directory).
    #[error(transparent)]
    Refused(#[from] crate::StateError),
    /// A stored grant does not match its signed text, or no longer verifies.
    #[error(
        "grant {grant} of license {license} in the shared store is refused: {reason}. The database was changed outside tollgate, or its issuer is no longer trusted: reinstall the license file, or revoke the grant"
    )]
    GrantRefused {
        /// The grant id.
        grant: String,
        /// Its license id.
        license: String,
        /// What does not match.
        reason: String,
    },
    /// The store URL's TLS settings are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The grants read could not be put in force.
    #[error(transparent)]
    License(#[from] tollgate_license::LicenseError),
    /// A grant the operation names is not in the store.
    #[error("grant {0} is not in the shared store")]
    UnknownGrant(String),
    /// This host's license rules are not the ones every host shares.
    #[error(
        "this host's license rules differ from the shared store's: {}. Make this host's [license.*] tables match, or set the shared rules from this config with `tollgate license rules --store URL --config FILE` (every host then runs with them)",
        .0.join("; ")
    )]
    RulesDiffer(Vec<String>),
    /// The shared rules could not be read or written as JSON.
    #[error(
        "the shared store's license rules are unreadable: {0}; set them again with `tollgate license rules --store URL --config FILE`"
    )]
    RulesUnreadable(String),
}

/// `error` and what caused it, each cause not already said: the client
/// library's errors say what failed ("db error", "error performing TLS
/// handshake") and leave why to their causes.
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut said = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
        }
        next = cause.source();
    }
    said
}

impl PgError {
    /// Wraps a statement's error with what was being done.
    pub(crate) fn query(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { action, source }
    }
}

/// A count or a time as the store's BIGINT (saturating).
pub(crate) fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A BIGINT read back as a count or a time (a negative one as 0).
pub(crate) fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Checks a shared store's URL: `postgres://` (or `postgresql://`), and a
/// connection string PostgreSQL's client accepts; the reason if not.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!(
            "{url:?} is not a PostgreSQL URL; write postgres://USER@HOST:PORT/DB"
        ));
    }
    let (rest, _) = tls::split_url(url, |_| None).map_err(|e| format!("{url:?}: {e}"))?;
    rest.parse::<tokio_postgres::Config>()
        .map(drop)
        .map_err(|e| format!("{url:?} is not a PostgreSQL connection string: {e}"))
}

/// A connection pool to the shared store, its schema migrated.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// How to open a connection of its own (to listen for notifications).
    config: std::sync::Arc<tokio_postgres::Config>,
    /// The TLS connector its connections use (as `sslmode` says).
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` with up to `max_connections`
    /// connections, and migrates its schema. TLS is set up from the URL's
    /// `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (else PostgreSQL's
    /// `PGSSL…` environment variables), as [`tls`] says.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, PgError> {
        let (url, settings) = tls::split_url(url, |var| std::env::var(var).ok())?;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|source| PgError::Url { source })?;
        config.ssl_mode(settings.client_mode());
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let tls = settings.connector(home.as_deref())?;
        if config.get_password().is_none()
            && let Some(password) = passfile::password_for(&config)
        {
            config.password(password);
        }
        config.connect_timeout(Duration::from_secs(5));
        config.application_name("tollgate");
        // A host cut off in the middle of a transaction must not keep the
        // rows it locked (a grant's row, while leasing) from every other
        // host until TCP gives up on it, which takes minutes: the server
        // ends such a session after SESSION_IDLE_IN_TRANSACTION, or once
        // what it sent goes unacknowledged for UNACKNOWLEDGED
        // (tcp_user_timeout; TCP connections only), and a statement waits
        // for a lock at most LOCK_WAIT (the caller tries again). Options the
        // URL gives come first; these are added after them.
        let ours = format!(
            "-c idle_in_transaction_session_timeout={} -c lock_timeout={} -c tcp_user_timeout={}",
            SESSION_IDLE_IN_TRANSACTION.as_millis(),
            LOCK_WAIT.as_millis(),
            UNACKNOWLEDGED.as_millis()
        );
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {ours}"),
            _ => ours,
        };
        config.options(options);
        let listen_config = std::sync::Arc::new(config.clone());
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                // A connection whose request was abandoned (a timeout) is
                // checked before it serves again.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()?;
        let store = Self {
            pool,
            config: listen_config,
            tls,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Listens on `channels` on a connection of its own: the channel and
    /// payload of each notification, until the connection ends.
    pub async fn listen(&self, channels: &[&str]) -> Result<Listener, PgError> {
        let (client, mut connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(PgError::query("connect to listen for notifications"))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        let heard = (n.channel().to_string(), n.payload().to_string());
                        if tx.send(heard).is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        });
        for channel in channels {
            client
                .batch_execute(&format!("LISTEN {channel}"))
                .await
                .map_err(PgError::query("listen for notifications"))?;
        }
        Ok(Listener {
            _client: client,
            rx,
            task,
        })
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool
            .get()
            .await
            .map_err(|source| PgError::Connect { source })
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i32, PgError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT max(version) FROM tollgate_schema", &[])
            .await
            .map_err(PgError::query("read the schema version"))?;
        Ok(row.get::<_, Option<i32>>(0).unwrap_or(0))
    }

    /// Runs the migrations the database lacks, one transaction in all,
    /// under an advisory lock.
    async fn migrate(&self) -> Result<(), PgError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("begin the migration"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(PgError::query("lock the schema for migration"))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS tollgate_schema (version INTEGER NOT NULL)")
            .await
            .map_err(PgError::query("create the schema table"))?;
        let found: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM tollgate_schema", &[])
            .await
            .map_err(PgError::query("read the schema version"))?
            .get(0);
        if found > SCHEMA_VERSION {
            return Err(PgError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            tx.batch_execute(sql)
                .await
                .map_err(PgError::query("migrate the schema"))?;
            let to = i32::try_from(from + 1).unwrap_or(i32::MAX);
            tx.execute("INSERT INTO tollgate_schema (version) VALUES ($1)", &[&to])
                .await
                .map_err(PgError::query("record the schema version"))?;
        }
        tx.commit()
            .await
            .map_err(PgError::query("commit the migration"))
    }
}

/// Notifications from the shared store, on a connection of their own.
pub struct Listener {
    _client: tokio_postgres::Client,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

impl Listener {
    /// The next notification's channel and payload; `None` once the
    /// connection ended (notifications sent meanwhile are lost: listen
    /// again and poll).
    pub async fn recv(&mut self) -> Option<(String, String)> {
        self.rx.recv().await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests;
