//! The durable ledger: events appended to SQLite by one writer thread, many
//! calls' events per transaction (group commit), each row hash-chained.

use crate::chain::{GENESIS, kind_names, row_format, row_hash};
use crate::open::OpenSet;
use crate::state::{Kept, SUMS_STORED_EVERY_ROWS};
use rusqlite::{Connection, params};
use rustc_hash::FxHashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tollgate_license::ledger::{EventKind, Ledger, LedgerError, SyncFuture, UsageEvent};

/// Most events in one transaction before the writer commits unasked.
const MAX_BATCH: usize = 4096;
/// Events nobody waits for are committed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Rows waiting for their commit past which new calls are refused (they
/// fail closed with `ledger-unavailable`); rows of calls already running
/// still go in, so a seat's return never waits for room.
pub const MAX_QUEUED_ROWS: usize = 100_000;
/// After a failed commit the writer tries again after this long, doubling
/// up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a failing commit.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// The longest a commit that callers wait for is held back for calls still
/// running, whose rows are queued, to ask for theirs too (group commit).
const GROUP_WAIT_MAX: Duration = Duration::from_millis(1);

/// An invocation whose rows are not all committed yet.
#[derive(Clone, Copy)]
struct Uncommitted {
    /// The sequence number of its last row recorded (0: none yet).
    last: u64,
    /// Whether it asked for its rows' commit since its last row (or was
    /// abandoned).
    asked: bool,
    /// Whether the call announced itself ([`Ledger::call_started`]): it is
    /// then kept, as running, until it asks, even with its rows committed.
    announced: bool,
}

struct Pending {
    queue: Vec<UsageEvent>,
    /// The highest sequence number some caller waits to see committed.
    wanted: u64,
    next_seq: u64,
    committed_seq: u64,
    /// Rows up to here are committed or in the commit under way.
    taken: u64,
    /// Why the last commit failed, while commits fail; cleared by the next
    /// commit that succeeds.
    failed: Option<Arc<rusqlite::Error>>,
    shutdown: bool,
    /// Each invocation whose rows are not all committed yet.
    uncommitted: FxHashMap<u64, Uncommitted>,
    /// How many of `uncommitted` have not asked for their commit: calls
    /// still running, which will ask once they end.
    unasked: usize,
    /// When the first caller still waiting asked for a commit.
    first_ask: Option<Instant>,
    /// A caller asked for every row (a host-wide sync): commit at once.
    urgent: bool,
    /// The most the writer holds a commit back for running calls to join
    /// it: the recent commits' wall time, averaged (at most
    /// [`GROUP_WAIT_MAX`]).
    group_wait: Duration,
}

impl Pending {
    /// Nothing queued, rows up to `seq` committed.
    fn after(seq: u64) -> Self {
        Self {
            queue: Vec::new(),
            wanted: seq,
            next_seq: seq + 1,
            committed_seq: seq,
            taken: seq,
            failed: None,
            shutdown: false,
            uncommitted: FxHashMap::default(),
            unasked: 0,
            first_ask: None,
            urgent: false,
            group_wait: Duration::ZERO,
        }
    }

    /// Whether the writer should commit now: a caller waits and no call
    /// still running is worth waiting for (none is, the wait is over, or
    /// the caller asked for everything).
    fn commit_due(&self, now: Instant) -> bool {
        if self.wanted <= self.committed_seq {
            return false;
        }
        self.urgent
            || self.unasked == 0
            || self
                .first_ask
                .is_none_or(|t| now.saturating_duration_since(t) >= self.group_wait)
    }

    /// Takes the next sequence number for a row of `invocation`, which
    /// then counts as running until it asks for its commit.
    fn note_row(&mut self, invocation: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.running(invocation, false).last = seq;
        seq
    }

    /// The entry of `invocation`, which counts as running from now until it
    /// asks for its commit.
    fn running(&mut self, invocation: u64, announced: bool) -> &mut Uncommitted {
        let mut fresh = true;
        let u = self
            .uncommitted
            .entry(invocation)
            .and_modify(|u| fresh = std::mem::replace(&mut u.asked, false))
            .or_insert(Uncommitted {
                last: 0,
                asked: false,
                announced,
            });
        u.announced |= announced;
        if fresh {
            self.unasked += 1;
        }
        u
    }

    /// A call has started that will record rows and ask for their commit.
    fn call_started(&mut self, invocation: u64) {
        self.running(invocation, true);
    }

    /// `invocation` asks for its commit, or will not ask after all; returns
    /// the sequence number of its last row not yet committed, if any.
    fn done_running(&mut self, invocation: u64) -> Option<u64> {
        let committed = self.committed_seq;
        let u = self.uncommitted.get_mut(&invocation)?;
        if !std::mem::replace(&mut u.asked, true) {
            self.unasked -= 1;
        }
        let last = u.last;
        if last <= committed {
            self.uncommitted.remove(&invocation);
            return None;
        }
        Some(last)
    }

    /// Whether a group waits only for the writer to notice that no call
    /// runs any more.
    fn group_complete(&self) -> bool {
        self.wanted > self.committed_seq && self.unasked == 0
    }

    /// The call `invocation` will not ask for its commit (its answer
    /// reaches no one); returns whether the writer needs waking.
    fn call_abandoned(&mut self, invocation: u64) -> bool {
        self.done_running(invocation);
        self.group_complete()
    }

    /// Asks, at `now`, for the commit of the rows of `invocation` (every
    /// row, when `None`); returns the sequence number to wait for and
    /// whether the writer needs waking: to start a group, to end one that
    /// every running call has joined, or for a host-wide sync (otherwise
    /// its group's deadline wakes it).
    fn ask(&mut self, invocation: Option<u64>, now: Instant) -> (u64, bool) {
        let target = match invocation {
            // Rows of an invocation not in the map are all committed.
            Some(invocation) => self.done_running(invocation).unwrap_or(self.committed_seq),
            None => self.next_seq - 1,
        };
        if target <= self.committed_seq {
            return (target, self.group_complete());
        }
        if invocation.is_none() {
            self.urgent = true;
        }
        // The first ask beyond the commit under way starts the next group.
        let first = target > self.taken && self.wanted <= self.taken;
        if first {
            self.first_ask = Some(now);
        }
        self.wanted = self.wanted.max(target);
        (target, first || self.unasked == 0 || self.urgent)
    }

    /// The writer takes the rows up to `last` for a commit: the next ask
    /// beyond them starts the next group.
    fn take(&mut self, last: u64) {
        self.taken = last;
        self.first_ask = None;
        self.urgent = false;
    }

    /// Forgets the invocations whose rows are all committed up to `last`,
    /// but for announced calls still running.
    fn committed_up_to(&mut self, last: u64) {
        self.committed_seq = last;
        let mut unasked = self.unasked;
        self.uncommitted.retain(|_, u| {
            let keep = u.last > last || (u.announced && !u.asked);
            if !keep && !u.asked {
                unasked -= 1;
            }
            keep
        });
        self.unasked = unasked;
    }
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
    pub writer_cpu: Option<Duration>,
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
    conn.busy_timeout(Duration::from_secs(5))?;
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

/// The stored chain head: the last row committed, its hash, where open
/// seats start and the last lease id (row 0, the genesis hash, 0 and 0
/// before the first commit).
pub(crate) struct Head {
    /// The last row's sequence number.
    pub(crate) seq: u64,
    /// The last row's hash, as stored.
    pub(crate) hash: Vec<u8>,
    /// Every seat checked out before this row is returned.
    pub(crate) open_from: u64,
    /// The largest lease id in the rows.
    pub(crate) last_lease: u64,
}

/// Reads the stored chain head.
pub(crate) fn read_head(conn: &Connection) -> rusqlite::Result<Head> {
    conn.query_row(
        "SELECT seq, hash, open_from, last_lease FROM chain_head WHERE id = 1",
        [],
        |r| {
            Ok(Head {
                seq: r.get(0)?,
                hash: r.get(1)?,
                open_from: r.get(2)?,
                last_lease: r.get(3)?,
            })
        },
    )
    .or_else(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(Head {
            seq: 0,
            hash: GENESIS.to_vec(),
            open_from: 0,
            last_lease: 0,
        }),
        e => Err(e),
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
        let mut conn = connect(path).map_err(err)?;
        // The usage sums up to the last row, folding what the last writer
        // left unstored (after a crash, at most a store interval's rows).
        let sums = Kept::load(&mut conn).map_err(err)?;
        let Head {
            seq,
            hash,
            open_from,
            last_lease,
        } = read_head(&conn).map_err(err)?;
        let head: [u8; 32] = hash.try_into().map_err(|bytes: Vec<u8>| {
            LedgerError::store(
                format!("open {}", path.display()),
                ChainHeadError(bytes.len()),
            )
        })?;
        // The seats open now, walked from the point the last commit kept,
        // so each commit can keep where open seats start.
        let open =
            crate::open::walk(&conn, open_from, OpenSet::after_lease(last_lease)).map_err(err)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::after(seq)),
            work: Condvar::new(),
            committed: Condvar::new(),
            committed_async: tokio::sync::Notify::new(),
            commits: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            size_limit: AtomicU64::new(0),
            writer_tid: AtomicU64::new(0),
        });
        let writer_shared = shared.clone();
        let (started, has_started) = std::sync::mpsc::sync_channel(1);
        let writer = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || {
                writer_shared
                    .writer_tid
                    .store(own_tid().unwrap_or(0), Ordering::Release);
                let _ = started.send(());
                let stored = sums.upto;
                let chain = Chain {
                    head,
                    open,
                    sums,
                    stored,
                };
                write_loop(conn, chain, &writer_shared);
            })
            .map_err(|e| LedgerError::store("start its writer thread", e))?;
        // Its thread id is known before the first `stats`.
        let _ = has_started.recv();
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
fn thread_cpu(tid: u64) -> Option<Duration> {
    let dir = format!("/proc/self/task/{tid}");
    if let Ok(text) = std::fs::read_to_string(format!("{dir}/schedstat"))
        && let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse().ok())
    {
        return Some(Duration::from_nanos(ns));
    }
    // stat: fields 14 and 15 (user and system time, in ticks of 1/100 s
    // on every Linux configuration tollgate runs on), after the
    // parenthesized name.
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((user + system) * 10))
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

/// What the writer carries from one commit to the next.
struct Chain {
    /// The hash of the last row committed.
    head: [u8; 32],
    /// The seats open after the last row queued for commit.
    open: OpenSet,
    /// The usage sums of every row committed.
    sums: Kept,
    /// The row up to which the sums were last stored.
    stored: u64,
}

/// Stores the usage sums if rows were committed since they last were (when
/// the writer stops), so the next start folds nothing.
fn store_sums(conn: &mut Connection, chain: &mut Chain) {
    if chain.sums.upto == chain.stored {
        return;
    }
    let stored = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .and_then(|tx| {
            chain.sums.store(&tx)?;
            tx.commit()
        });
    match stored {
        Ok(()) => chain.stored = chain.sums.upto,
        Err(e) => tracing::warn!(
            "the usage sums were not stored ({e}); the next start adds up the rows since they last were"
        ),
    }
}

fn write_loop(mut conn: Connection, mut chain: Chain, shared: &Shared) {
    let mut retry = RETRY_FIRST;
    let mut applied_limit = 0;
    loop {
        let (batch, last) = {
            let mut p = shared.lock();
            // Commit when callers wait for durability (once the calls still
            // running have joined them, or the group's wait is over), on
            // shutdown, when the queue is large, or after FLUSH_EVERY:
            // events recorded in the meantime ride along.
            loop {
                let now = Instant::now();
                if p.shutdown || p.queue.len() >= MAX_BATCH || p.commit_due(now) {
                    break;
                }
                let wait = match p.first_ask {
                    Some(t) if p.wanted > p.committed_seq => p
                        .group_wait
                        .saturating_sub(now.saturating_duration_since(t)),
                    _ => FLUSH_EVERY,
                };
                let (next, timeout) = shared
                    .work
                    .wait_timeout(p, wait)
                    .unwrap_or_else(PoisonError::into_inner);
                p = next;
                if timeout.timed_out() && wait == FLUSH_EVERY && !p.queue.is_empty() {
                    break;
                }
            }
            if p.queue.is_empty() {
                if p.shutdown {
                    drop(p);
                    store_sums(&mut conn, &mut chain);
                    return;
                }
                continue;
            }
            let n = p.queue.len().min(MAX_BATCH);
            let batch = p.queue.drain(..n).collect::<Vec<_>>();
            let last = batch.last().map_or(p.taken, |e| e.seq);
            p.take(last);
            (batch, last)
        };
        let limit = shared.size_limit.load(Ordering::SeqCst);
        if limit != applied_limit {
            if let Err(e) = apply_size_limit(&conn, limit) {
                tracing::warn!("cannot apply the ledger size cap: {e}");
            }
            applied_limit = limit;
        }
        let started = Instant::now();
        match append(&mut conn, &mut chain, &batch) {
            Ok(()) => {
                retry = RETRY_FIRST;
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                let took = started.elapsed();
                let mut p = shared.lock();
                p.committed_up_to(last);
                // Half the last wait plus half this commit's time: one slow
                // commit does not hold the next groups back for long.
                p.group_wait = ((p.group_wait + took) / 2).min(GROUP_WAIT_MAX);
                if p.failed.take().is_some() {
                    tracing::warn!("usage ledger commits again");
                }
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
                p.taken = p.committed_seq;
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

fn append(conn: &mut Connection, chain: &mut Chain, batch: &[UsageEvent]) -> rusqlite::Result<()> {
    // The sums of the rows committed before this batch ride along every
    // SUMS_STORED_EVERY_ROWS rows: a restart then folds only the rows since.
    let store = chain.sums.upto >= chain.stored + SUMS_STORED_EVERY_ROWS;
    // Every statement of a commit is prepared once per connection: parsing
    // them anew was a sixth of the writer's time under load.
    conn.prepare_cached("BEGIN")?.execute([])?;
    let committed = append_rows(conn, chain, batch).and_then(|hash| {
        if store {
            chain.sums.store(conn)?;
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(hash)
    });
    match committed {
        Ok(hash) => {
            chain.head = hash;
            if store {
                chain.stored = chain.sums.upto;
            }
            for e in batch {
                chain.sums.apply(e);
            }
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Inserts `batch` and moves the stored chain head, inside a transaction;
/// returns the new head. The open seats move past the batch even if the
/// transaction then fails: the batch is tried again, and applying the same
/// rows again in the same order leaves the same set.
fn append_rows(
    conn: &Connection,
    chain: &mut Chain,
    batch: &[UsageEvent],
) -> rusqlite::Result<[u8; 32]> {
    let mut hash = chain.head;
    let mut insert = conn.prepare_cached(
        "INSERT INTO ledger (seq, at_ms, kind, reason, license_id, plugin, digest, lease_id, invocation_id, hash,
                             format, seat_id, grant_id, count, token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    for e in batch {
        hash = row_hash(&hash, e);
        chain.open.apply(e);
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
    // Every seat checked out before `open_from` is returned: recovery walks
    // the rows from there on, not the whole ledger.
    let open_from = chain.open.oldest().unwrap_or(last + 1);
    conn.prepare_cached(
        "INSERT INTO chain_head (id, seq, hash, open_from, last_lease) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
             open_from = excluded.open_from, last_lease = excluded.last_lease",
    )?
    .execute(params![last, &hash[..], open_from, chain.open.last_lease()])?;
    Ok(hash)
}

impl Ledger for SqliteLedger {
    fn record(&self, mut event: UsageEvent) {
        let mut p = self.shared.lock();
        event.seq = p.note_row(event.invocation_id);
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

    fn call_started(&self, invocation: u64) {
        self.shared.lock().call_started(invocation);
    }

    fn call_abandoned(&self, invocation: u64) {
        if self.shared.lock().call_abandoned(invocation) {
            self.shared.work.notify_one();
        }
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
        let (target, wake) = p.ask(invocation, Instant::now());
        if wake {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_waits_for_running_calls_only_up_to_the_group_wait() {
        let mut p = Pending::after(10);
        p.group_wait = Duration::from_micros(300);
        let t0 = Instant::now();
        // Calls 1 and 2 are running: each has recorded a row.
        assert_eq!(p.note_row(1), 11);
        assert_eq!(p.note_row(2), 12);
        assert!(!p.commit_due(t0), "nobody waits yet");
        // Call 1 ends and asks: the writer wakes to start a group, but
        // holds the commit back while call 2 still runs.
        assert_eq!(p.ask(Some(1), t0), (11, true));
        assert!(!p.commit_due(t0));
        assert!(!p.commit_due(t0 + Duration::from_micros(299)));
        // ... at most the group's wait.
        assert!(p.commit_due(t0 + Duration::from_micros(300)));
        // Call 2 asks before then: the group is whole, commit at once.
        assert_eq!(p.ask(Some(2), t0 + Duration::from_micros(10)), (12, true));
        assert!(p.commit_due(t0 + Duration::from_micros(10)));
        // Committed: nothing is due, and asking again is answered at once.
        p.committed_up_to(12);
        assert_eq!(p.unasked, 0);
        assert!(p.uncommitted.is_empty());
        assert!(!p.commit_due(t0 + Duration::from_secs(1)));
        assert_eq!(p.ask(Some(1), t0), (12, false));
    }

    #[test]
    fn a_call_that_records_after_asking_runs_again_and_a_host_wide_sync_does_not_wait() {
        let mut p = Pending::after(0);
        p.group_wait = Duration::from_secs(3600);
        let t0 = Instant::now();
        p.note_row(1);
        p.note_row(2);
        assert_eq!(p.ask(Some(1), t0), (1, true));
        // Call 1 records another row after asking: it runs again, and the
        // next ask (not the first of the group, with call 2 running) does
        // not wake the writer.
        assert_eq!(p.note_row(1), 3);
        assert_eq!(p.unasked, 2);
        assert_eq!(p.ask(Some(1), t0), (3, false));
        assert!(!p.commit_due(t0 + Duration::from_secs(1)));
        // A host-wide sync wants every row now, running calls or not.
        assert_eq!(p.ask(None, t0), (3, true));
        assert!(p.commit_due(t0));
        // Committed: call 2 never announced itself, so with its rows
        // committed it no longer counts as running.
        p.take(3);
        p.committed_up_to(3);
        assert!(p.uncommitted.is_empty());
        assert_eq!(p.unasked, 0);
    }

    #[test]
    fn announced_calls_count_as_running_until_they_ask_and_asks_during_a_commit_start_the_next_group()
     {
        let mut p = Pending::after(0);
        p.group_wait = Duration::from_micros(500);
        let t0 = Instant::now();
        // Call 1 has started but recorded nothing yet; call 2 ends.
        p.call_started(1);
        p.note_row(2);
        assert_eq!(p.ask(Some(2), t0), (1, true));
        assert!(!p.commit_due(t0), "call 1 is running");
        // The writer commits at the deadline; the commit leaves call 1
        // running, rows or not.
        let t1 = t0 + Duration::from_micros(500);
        assert!(p.commit_due(t1));
        p.take(1);
        // Call 1 records and asks while that commit is under way: its ask
        // starts the next group, from its own time.
        p.call_started(3);
        p.note_row(1);
        let t2 = t1 + Duration::from_micros(100);
        assert_eq!(p.ask(Some(1), t2), (2, true));
        p.committed_up_to(1);
        assert_eq!(p.unasked, 1, "call 3 runs");
        assert!(!p.commit_due(t2 + Duration::from_micros(499)));
        assert!(p.commit_due(t2 + Duration::from_micros(500)));
        // Call 3 is abandoned: the group is whole, and the writer is woken.
        assert!(p.call_abandoned(3));
        assert!(p.commit_due(t2));
        p.take(2);
        p.committed_up_to(2);
        assert!(p.uncommitted.is_empty());
        // A call that recorded nothing and asks is answered at once.
        p.call_started(4);
        assert_eq!(p.ask(Some(4), t2), (2, false));
        assert!(p.uncommitted.is_empty());
        assert_eq!(p.unasked, 0);
    }
}
