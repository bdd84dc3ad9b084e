//! The durable ledger: events appended to SQLite by one writer thread, many
//! calls' events per transaction (group commit), each row hash-chained.

use crate::chain::{GENESIS, kind_names, row_format, row_hash};
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use tollgate_license::ledger::{EventKind, Ledger, LedgerError, SyncFuture, UsageEvent};

/// Most events in one transaction before the writer commits unasked.
const MAX_BATCH: usize = 4096;
/// Events nobody waits for are committed at least this often.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// Rows waiting for their commit past which new calls are refused (they
/// fail closed with `ledger-unavailable`); rows of calls already running
/// still go in, so a seat's return never waits for room.
pub const MAX_QUEUED_ROWS: usize = 100_000;
/// After a failed commit the writer tries again after this long, doubling
/// up to [`RETRY_MAX`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
/// The longest wait between two tries of a failing commit.
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

struct Pending {
    queue: Vec<UsageEvent>,
    /// The highest sequence number some caller waits to see committed.
    wanted: u64,
    next_seq: u64,
    committed_seq: u64,
    /// Why the last commit failed, while commits fail; cleared by the next
    /// commit that succeeds.
    failed: Option<Arc<rusqlite::Error>>,
    shutdown: bool,
    /// The last sequence number recorded for each invocation whose rows
    /// are not all committed yet.
    uncommitted: HashMap<u64, u64>,
}

struct Shared {
    pending: Mutex<Pending>,
    work: Condvar,
    committed: Condvar,
    /// Wakes async callers of `sync_async` after each commit.
    committed_async: tokio::sync::Notify,
    commits: AtomicU64,
    rows: AtomicU64,
    /// The most bytes the database may grow to (0: no cap), applied by the
    /// writer before its next commit.
    size_limit: AtomicU64,
    /// The writer thread's kernel thread id (0: not known), for its CPU time.
    writer_tid: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Commit statistics of a [`SqliteLedger`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed (each one WAL sync).
    pub commits: u64,
    /// Rows written.
    pub rows: u64,
    /// The sequence number of the last row committed (0: none).
    pub last_seq: u64,
    /// CPU time the writer thread has used so far (hashing, SQLite, the
    /// commits' system calls), where the system reports it (Linux).
    pub writer_cpu: Option<std::time::Duration>,
}

/// A usage ledger in an SQLite database, written by a background thread.
pub struct SqliteLedger {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger").finish_non_exhaustive()
    }
}

/// Opens a connection with the settings every tollgate connection uses.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// The ledger table's columns, in the order [`event_from_row`] reads them.
pub(crate) const LEDGER_COLUMNS: &str = "seq, at_ms, kind, reason, license_id, plugin, digest, \
    lease_id, invocation_id, hash, format, seat_id, grant_id, count, token";

/// The event of a row selected with [`LEDGER_COLUMNS`]; its `kind` the
/// caller parsed from columns 2 and 3 (and decides what an unknown one
/// means).
pub(crate) fn event_from_row(
    r: &rusqlite::Row<'_>,
    kind: EventKind,
) -> rusqlite::Result<UsageEvent> {
    Ok(UsageEvent {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        kind,
        license_id: r.get::<_, String>(4)?.into(),
        plugin: r.get::<_, String>(5)?.into(),
        component_digest: r.get::<_, String>(6)?.into(),
        lease_id: r.get(7)?,
        invocation_id: r.get(8)?,
        seat_id: r.get(11)?,
        grant_id: r.get::<_, Option<String>>(12)?.map(Into::into),
        count: r.get(13)?,
        token: r.get(14)?,
    })
}

/// The stored chain head is not a 32-byte hash.
#[derive(Debug, thiserror::Error)]
#[error("the stored chain head hash has {0} bytes, not 32; the database was altered")]
struct ChainHeadError(usize);

impl SqliteLedger {
    /// Starts the writer on the database at `path` (schema already created),
    /// continuing the chain from its stored head.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let err = |e: rusqlite::Error| LedgerError::store(format!("open {}", path.display()), e);
        let conn = connect(path).map_err(err)?;
        let (seq, hash): (u64, Vec<u8>) = conn
            .query_row("SELECT seq, hash FROM chain_head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_vec())),
                e => Err(e),
            })
            .map_err(err)?;
        let head: [u8; 32] = hash.try_into().map_err(|bytes: Vec<u8>| {
            LedgerError::store(
                format!("open {}", path.display()),
                ChainHeadError(bytes.len()),
            )
        })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                queue: Vec::new(),
                wanted: seq,
                next_seq: seq + 1,
                committed_seq: seq,
                failed: None,
                shutdown: false,
                uncommitted: HashMap::new(),
            }),
            work: Condvar::new(),
            committed: Condvar::new(),
            committed_async: tokio::sync::Notify::new(),
            commits: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            size_limit: AtomicU64::new(0),
            writer_tid: AtomicU64::new(0),
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || write_loop(conn, head, &writer_shared))
            .map_err(|e| LedgerError::store("start its writer thread", e))?;
        Ok(Self {
            shared,
            writer: Some(writer),
        })
    }

    /// Caps the database at `max_bytes` (rounded down to whole pages), or
    /// lifts the cap with `None`. Past the cap commits fail as on a full
    /// disk: new calls are refused with `ledger-unavailable` and waiting
    /// calls fail, no row is lost, and commits resume once the cap is
    /// raised or lifted.
    pub fn limit_size(&self, max_bytes: Option<u64>) {
        self.shared
            .size_limit
            .store(max_bytes.unwrap_or(0), Ordering::SeqCst);
        self.shared.work.notify_one();
    }

    /// How many transactions and rows were committed so far.
    pub fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            rows: self.shared.rows.load(Ordering::Relaxed),
            last_seq: self.shared.lock().committed_seq,
            writer_cpu: match self.shared.writer_tid.load(Ordering::Acquire) {
                0 => None,
                tid => thread_cpu(tid),
            },
        }
    }
}

/// This thread's kernel thread id, where `/proc` tells it.
fn own_tid() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time used so far by thread `tid` of this process: the kernel's
/// scheduler statistics (nanoseconds), else its tick counts.
fn thread_cpu(tid: u64) -> Option<std::time::Duration> {
    let dir = format!("/proc/self/task/{tid}");
    if let Ok(text) = std::fs::read_to_string(format!("{dir}/schedstat"))
        && let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok())
    {
        return Some(std::time::Duration::from_nanos(ns));
    }
    // stat: fields 14 and 15 (user and system time, in ticks of 1/100 s
    // on every Linux configuration tollgate runs on), after the
    // parenthesized name.
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((user + system) * 10))
}

/// Sets SQLite's page cap for `max_bytes` (0: the largest it allows).
fn apply_size_limit(conn: &Connection, max_bytes: u64) -> rusqlite::Result<()> {
    let pages = if max_bytes == 0 {
        u64::from(u32::MAX - 1)
    } else {
        let page: u64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        (max_bytes / page.max(512)).max(1)
    };
    conn.pragma_update(None, "max_page_count", pages)
}

fn write_loop(mut conn: Connection, mut head: [u8; 32], shared: &Shared) {
    shared
        .writer_tid
        .store(own_tid().unwrap_or(0), Ordering::Release);
    let mut retry = RETRY_FIRST;
    let mut applied_limit = 0;
    loop {
        let batch = {
            let mut p = shared.lock();
            // Commit when a caller waits for durability (sync), on shutdown,
            // when the queue is large, or after FLUSH_EVERY: events recorded
            // in the meantime ride along in the same transaction.
            loop {
                if p.shutdown || p.wanted > p.committed_seq || p.queue.len() >= MAX_BATCH {
                    break;
                }
                let (next, timeout) = shared
                    .work
                    .wait_timeout(p, FLUSH_EVERY)
                    .unwrap_or_else(PoisonError::into_inner);
                p = next;
                if timeout.timed_out() && !p.queue.is_empty() {
                    break;
                }
            }
            if p.queue.is_empty() {
                if p.shutdown {
                    return;
                }
                continue;
            }
            let n = p.queue.len().min(MAX_BATCH);
            p.queue.drain(..n).collect::<Vec<_>>()
        };
        let last = batch.last().map_or(0, |e| e.seq);
        let limit = shared.size_limit.load(Ordering::SeqCst);
        if limit != applied_limit {
            if let Err(e) = apply_size_limit(&conn, limit) {
                tracing::warn!("cannot apply the ledger size cap: {e}");
            }
            applied_limit = limit;
        }
        match append(&mut conn, &mut head, &batch) {
            Ok(()) => {
                retry = RETRY_FIRST;
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let mut p = shared.lock();
                p.committed_seq = last;
                if p.failed.take().is_some() {
                    tracing::warn!("usage ledger commits again");
                }
                p.uncommitted.retain(|_, seq| *seq > last);
                drop(p);
                shared.committed.notify_all();
                shared.committed_async.notify_waiters();
            }
            Err(e) => {
                // Nothing of the batch was written (the transaction rolled
                // back): it goes back to the front of the queue and is tried
                // again, so no row is lost, while waiting calls fail.
                let mut p = shared.lock();
                if p.failed.is_none() {
                    tracing::error!(
                        "usage ledger commit failed: {e}; calls fail with ledger-unavailable until a commit succeeds"
                    );
                }
                p.failed = Some(Arc::new(e));
                let later = std::mem::take(&mut p.queue);
                p.queue = batch;
                p.queue.extend(later);
                let giving_up = p.shutdown;
                shared.committed.notify_all();
                shared.committed_async.notify_waiters();
                if giving_up {
                    tracing::error!(
                        "{} usage row(s) not committed at shutdown; their seats are returned as host-restart at the next start",
                        p.queue.len()
                    );
                    return;
                }
                let deadline = std::time::Instant::now() + retry;
                while !p.shutdown {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    p = shared
                        .work
                        .wait_timeout(p, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

fn append(
    conn: &mut Connection,
    head: &mut [u8; 32],
    batch: &[UsageEvent],
) -> rusqlite::Result<()> {
    // Every statement of a commit is prepared once per connection: parsing
    // them anew was a sixth of the writer's time under load.
    conn.prepare_cached("BEGIN")?.execute([])?;
    let committed = append_rows(conn, head, batch).and_then(|hash| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(hash)
    });
    match committed {
        Ok(hash) => {
            *head = hash;
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Inserts `batch` and moves the stored chain head, inside a transaction;
/// returns the new head.
fn append_rows(
    conn: &Connection,
    head: &[u8; 32],
    batch: &[UsageEvent],
) -> rusqlite::Result<[u8; 32]> {
    let mut hash = *head;
    let mut insert = conn.prepare_cached(
        "INSERT INTO ledger (seq, at_ms, kind, reason, license_id, plugin, digest, lease_id, invocation_id, hash,
                             format, seat_id, grant_id, count, token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for e in batch {
        hash = row_hash(&hash, e);
        let (kind, reason) = kind_names(e.kind);
        insert.execute(params![
            e.seq,
            e.at_ms,
            kind,
            reason,
            &*e.license_id,
            &*e.plugin,
            &*e.component_digest,
            e.lease_id,
            e.invocation_id,
            &hash[..],
            row_format(e),
            e.seat_id,
            e.grant_id.as_deref(),
            e.count,
            e.token,
        ])?;
    }
    let last = batch.last().map_or(0, |e| e.seq);
    conn.prepare_cached(
        "INSERT INTO chain_head (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )?
    .execute(params![last, &hash[..]])?;
    Ok(hash)
}

impl Ledger for SqliteLedger {
    fn record(&self, mut event: UsageEvent) {
        let mut p = self.shared.lock();
        event.seq = p.next_seq;
        p.next_seq += 1;
        p.uncommitted.insert(event.invocation_id, event.seq);
        p.queue.push(event);
        let full = p.queue.len() >= MAX_BATCH;
        drop(p);
        if full {
            self.shared.work.notify_one();
        }
    }

    fn sync(&self) -> Result<(), LedgerError> {
        let target = self.ask_for_commit(&mut self.shared.lock(), None);
        self.wait_for(target)
    }

    fn sync_async(&self) -> SyncFuture<'_> {
        let target = self.ask_for_commit(&mut self.shared.lock(), None);
        Box::pin(self.wait_for_async(target))
    }

    fn sync_invocation(&self, invocation: u64) -> Result<(), LedgerError> {
        let target = self.ask_for_commit(&mut self.shared.lock(), Some(invocation));
        self.wait_for(target)
    }

    fn sync_invocation_async(&self, invocation: u64) -> SyncFuture<'_> {
        let target = self.ask_for_commit(&mut self.shared.lock(), Some(invocation));
        Box::pin(self.wait_for_async(target))
    }

    fn ready(&self) -> Result<(), LedgerError> {
        let p = self.shared.lock();
        if let Some(e) = &p.failed {
            return Err(LedgerError::CommitFailing { source: e.clone() });
        }
        if p.queue.len() >= MAX_QUEUED_ROWS {
            return Err(LedgerError::Backlog {
                queued: p.queue.len(),
                limit: MAX_QUEUED_ROWS,
            });
        }
        Ok(())
    }
}

impl SqliteLedger {
    /// Asks the writer to commit the rows recorded so far (of `invocation`
    /// only, when given); returns the sequence number to wait for.
    fn ask_for_commit(&self, p: &mut Pending, invocation: Option<u64>) -> u64 {
        let target = match invocation {
            // Rows of an invocation not in the map are all committed.
            Some(invocation) => p
                .uncommitted
                .get(&invocation)
                .copied()
                .unwrap_or(p.committed_seq),
            None => p.next_seq - 1,
        };
        if target > p.wanted {
            p.wanted = target;
            self.shared.work.notify_one();
        }
        target
    }

    /// Blocks until rows up to `target` are committed.
    fn wait_for(&self, target: u64) -> Result<(), LedgerError> {
        let mut p = self.shared.lock();
        loop {
            if let Some(done) = committed(&p, target) {
                return done;
            }
            p = self
                .shared
                .committed
                .wait(p)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits, without blocking the thread, until rows up to `target` are
    /// committed.
    async fn wait_for_async(&self, target: u64) -> Result<(), LedgerError> {
        loop {
            let next_commit = self.shared.committed_async.notified();
            tokio::pin!(next_commit);
            // Registered before looking, so no commit is missed.
            next_commit.as_mut().enable();
            if let Some(done) = committed(&self.shared.lock(), target) {
                return done;
            }
            next_commit.await;
        }
    }
}

/// `Some` once rows up to `target` are committed, or the last commit failed.
fn committed(p: &Pending, target: u64) -> Option<Result<(), LedgerError>> {
    if p.committed_seq >= target {
        Some(Ok(()))
    } else {
        p.failed.as_ref().map(|e| {
            Err(LedgerError::Store {
                action: "commit".into(),
                source: e.clone(),
            })
        })
    }
}

impl Drop for SqliteLedger {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
