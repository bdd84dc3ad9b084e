//! Ships a host's ledger to the shared store.
//!
//! A host commits its ledger rows to its own local spool first (the
//! group-committing SQLite ledger, hash-chained as on a single host) and
//! acknowledges a call after that commit. The [`Shipper`] then copies the
//! spool to the shared `ledger` table in order, a batch per transaction,
//! keyed by (host id, sequence number): a row lands once whatever crashes
//! in between, and a restarted host ships what it had not. Each host keeps
//! its own hash chain, so hosts never contend on one chain head.

use super::{PgError, PgStore, from_db, to_db};
use crate::chain::{kind_from_names, row_hash_in};
use crate::ledger::{LEDGER_COLUMNS, event_from_row};
use crate::state::UsageRow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tollgate_license::ledger::UsageEvent;

/// The head of a host's verified chain in the shared ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Its rows (sequence numbers 1 to `rows`).
    pub rows: u64,
    /// The hash of its last row (the genesis hash when it has none).
    pub hash: [u8; 32],
}

/// Rows shipped per transaction at most.
pub(crate) const BATCH: usize = 2000;

/// The shipping statement: one batch, one array per column.
const INSERT_BATCH: &str =
    "INSERT INTO ledger (host_id, seq, at_ms, kind, reason, license_id, plugin, digest,
         lease_id, invocation_id, hash, format, seat_id, grant_id, count, token)
     SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[],
         $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bytea[],
         $12::smallint[], $13::bigint[], $14::text[], $15::bigint[], $16::bigint[])
     ON CONFLICT (host_id, seq) DO NOTHING
     RETURNING seq";

/// One spooled row: the event, its hash and its format.
#[derive(Clone, Debug)]
struct Spooled {
    event: UsageEvent,
    hash: Vec<u8>,
    format: u8,
}

/// A batch of ledger rows, one array per column, for one `INSERT`.
#[derive(Default)]
struct Columns<'a> {
    seq: Vec<i64>,
    at_ms: Vec<i64>,
    kind: Vec<&'a str>,
    reason: Vec<Option<&'a str>>,
    license_id: Vec<&'a str>,
    plugin: Vec<&'a str>,
    digest: Vec<&'a str>,
    lease_id: Vec<Option<i64>>,
    invocation_id: Vec<i64>,
    hash: Vec<&'a [u8]>,
    format: Vec<i16>,
    seat_id: Vec<Option<i64>>,
    grant_id: Vec<Option<&'a str>>,
    count: Vec<i64>,
    token: Vec<Option<i64>>,
}

/// Copies one host's spool to the shared ledger.
#[derive(Debug)]
pub struct Shipper {
    store: PgStore,
    spool: PathBuf,
    /// The spool's read connection, opened at the first read and kept (its
    /// statement cache with it); dropped after a failed read.
    reader: Arc<std::sync::Mutex<Option<rusqlite::Connection>>>,
    host_id: String,
    /// The last sequence number the store holds for this host.
    shipped: Arc<AtomicU64>,
}

impl Shipper {
    /// A shipper of the spool database at `spool` (a state directory's
    /// `tollgate.db`) for host `host_id`, resuming after what the store
    /// already holds of it.
    pub async fn new(store: PgStore, spool: &Path, host_id: &str) -> Result<Self, PgError> {
        let client = store.client().await?;
        let shipped: i64 = client
            .query_one(
                "SELECT coalesce(max(seq), 0) FROM ledger WHERE host_id = $1",
                &[&host_id],
            )
            .await
            .map_err(PgError::query("read how far a host's ledger was shipped"))?
            .get(0);
        Ok(Self {
            store,
            spool: spool.to_path_buf(),
            reader: Arc::default(),
            host_id: host_id.to_string(),
            shipped: Arc::new(AtomicU64::new(from_db(shipped))),
        })
    }

    /// The last sequence number of this host the store holds.
    pub fn shipped(&self) -> u64 {
        self.shipped.load(Ordering::Acquire)
    }

    /// A handle that reads [`Shipper::shipped`] after the shipper moved
    /// into its task (for the shipping lag).
    pub fn shipped_handle(&self) -> Arc<AtomicU64> {
        self.shipped.clone()
    }

    /// Ships the next batch of rows; returns how many it shipped (0: the
    /// store is up to date with the spool).
    pub async fn ship_once(&self) -> Result<usize, PgError> {
        let after = self.shipped();
        let (spool, reader) = (self.spool.clone(), self.reader.clone());
        let rows = tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(PoisonError::into_inner);
            let read = read_spool(&spool, &mut reader, after);
            if read.is_err() {
                *reader = None;
            }
            read
        })
        .await
        .map_err(|_| PgError::Interrupted("reading the ledger spool"))??;
        let Some(last) = rows.last().map(|r| r.event.seq) else {
            return Ok(0);
        };
        // The batch as one column array each: one statement inserts it.
        let big =
            |what, n: u64| i64::try_from(n).map_err(|_| PgError::OutOfRange { what, value: n });
        let mut cols = Columns::default();
        for row in &rows {
            let e = &row.event;
            let (kind, reason) = crate::chain::kind_names(e.kind);
            cols.seq.push(big("sequence number", e.seq)?);
            cols.at_ms.push(big("time", e.at_ms)?);
            cols.kind.push(kind);
            cols.reason.push(reason);
            cols.license_id.push(&e.license_id);
            cols.plugin.push(&e.plugin);
            cols.digest.push(&e.component_digest);
            cols.lease_id
                .push(e.lease_id.map(|l| big("lease id", l)).transpose()?);
            cols.invocation_id
                .push(big("invocation id", e.invocation_id)?);
            cols.hash.push(&row.hash);
            cols.format.push(i16::from(row.format));
            cols.seat_id
                .push(e.seat_id.map(|l| big("seat id", l)).transpose()?);
            cols.grant_id.push(e.grant_id.as_deref());
            cols.count.push(big("count", e.count)?);
            cols.token.push(e.token);
        }
        let mut client = self.store.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("begin shipping ledger rows"))?;
        // Prepared once per connection, not parsed and planned per batch.
        let insert = tx
            .prepare_cached(INSERT_BATCH)
            .await
            .map_err(PgError::query("prepare shipping ledger rows"))?;
        let inserted: HashSet<i64> = tx
            .query(
                &insert,
                &[
                    &self.host_id,
                    &cols.seq,
                    &cols.at_ms,
                    &cols.kind,
                    &cols.reason,
                    &cols.license_id,
                    &cols.plugin,
                    &cols.digest,
                    &cols.lease_id,
                    &cols.invocation_id,
                    &cols.hash,
                    &cols.format,
                    &cols.seat_id,
                    &cols.grant_id,
                    &cols.count,
                    &cols.token,
                ],
            )
            .await
            .map_err(PgError::query("ship ledger rows"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if inserted.len() < rows.len() {
            // Rows shipped before (a crash between commit and our count):
            // each must be the very same row.
            let again: Vec<i64> = cols
                .seq
                .iter()
                .copied()
                .filter(|s| !inserted.contains(s))
                .collect();
            let stored: HashMap<i64, Vec<u8>> = tx
                .query(
                    "SELECT seq, hash FROM ledger WHERE host_id = $1 AND seq = ANY($2)",
                    &[&self.host_id, &again],
                )
                .await
                .map_err(PgError::query("compare shipped ledger rows"))?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            if let Some(row) = rows.iter().find(|row| {
                let seq = i64::try_from(row.event.seq).unwrap_or(i64::MAX);
                !inserted.contains(&seq) && stored.get(&seq) != Some(&row.hash)
            }) {
                return Err(PgError::Diverged {
                    host: self.host_id.clone(),
                    seq: row.event.seq,
                });
            }
        }
        tx.commit()
            .await
            .map_err(PgError::query("commit shipped ledger rows"))?;
        self.shipped.store(last, Ordering::Release);
        Ok(rows.len())
    }

    /// Ships until `shutdown` completes, then ships what is left. It looks
    /// for rows every `every`, so that a busy host's rows go in batches of
    /// what gathered meanwhile (a few statements per `every`, not a few
    /// per call); a full batch is followed at once by the next. After a
    /// failure it tries again after a pause that doubles up to 5 s.
    pub async fn run(self, every: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pause = every;
        loop {
            let wait = match self.ship_once().await {
                Ok(BATCH) => {
                    pause = every;
                    continue;
                }
                Ok(_) => {
                    pause = every;
                    every
                }
                Err(e) => {
                    tracing::warn!(host = %self.host_id, "ledger rows not shipped yet: {e}");
                    pause = (pause * 2).min(Duration::from_secs(5));
                    pause
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        while let Ok(n) = self.ship_once().await {
            if n == 0 {
                break;
            }
        }
    }
}

/// Reads up to [`BATCH`] spooled rows after sequence number `after`
/// through `reader`, which it opens on `spool` if it is not open.
fn read_spool(
    spool: &Path,
    reader: &mut Option<rusqlite::Connection>,
    after: u64,
) -> Result<Vec<Spooled>, PgError> {
    let err = |source| PgError::Spool {
        path: spool.to_path_buf(),
        source,
    };
    let conn = match reader {
        Some(conn) => conn,
        None => reader.insert(crate::ledger::connect(spool).map_err(err)?),
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .map_err(err)?;
    let rows = stmt
        .query_map(rusqlite::params![after, BATCH as i64], |r| {
            let kind: String = r.get(2)?;
            let reason: Option<String> = r.get(3)?;
            let Some(kind) = kind_from_names(&kind, reason.as_deref()) else {
                return Err(rusqlite::Error::InvalidColumnType(
                    2,
                    "kind".into(),
                    rusqlite::types::Type::Text,
                ));
            };
            Ok(Spooled {
                event: event_from_row(r, kind)?,
                hash: r.get(9)?,
                format: r.get(10)?,
            })
        })
        .map_err(err)?;
    rows.collect::<Result<_, _>>().map_err(err)
}

impl PgStore {
    /// Usage per day or hour (UTC), license and plugin over every host's shipped
    /// rows, as `State::usage` gives it for one host.
    pub async fn usage(&self, f: &crate::state::UsageFilter) -> Result<Vec<UsageRow>, PgError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT to_char(to_timestamp(at_ms / 1000) AT TIME ZONE 'UTC',
                                CASE WHEN $5 THEN 'YYYY-MM-DD\"T\"HH24:00\"Z\"' ELSE 'YYYY-MM-DD' END) AS day,
                        license_id, plugin,
                        sum(CASE WHEN kind IN ('checkout', 'retake') THEN count ELSE 0 END)::bigint,
                        sum(CASE WHEN kind = 'release' THEN count ELSE 0 END)::bigint,
                        sum(CASE WHEN kind = 'reclaim' THEN count ELSE 0 END)::bigint,
                        sum(CASE WHEN kind = 'denial' THEN count ELSE 0 END)::bigint,
                        sum(CASE WHEN kind = 'withheld' THEN count ELSE 0 END)::bigint
                 FROM ledger
                 WHERE ($1::bigint IS NULL OR at_ms >= $1 * 1000) AND ($2::bigint IS NULL OR at_ms < $2 * 1000)
                   AND ($3::text IS NULL OR license_id = $3) AND ($4::text IS NULL OR plugin = $4)
                 GROUP BY day, license_id, plugin ORDER BY day, license_id, plugin",
                &[&f.since.map(to_db), &f.until.map(to_db), &f.license, &f.plugin, &f.hourly],
            )
            .await
            .map_err(PgError::query("read usage"))?;
        let n = |r: &tokio_postgres::Row, i| from_db(r.get(i));
        Ok(rows
            .iter()
            .map(|r| UsageRow {
                day: r.get(0),
                license_id: r.get(1),
                plugin: r.get(2),
                checkouts: n(r, 3),
                releases: n(r, 4),
                reclaims: n(r, 5),
                denials: n(r, 6),
                withheld: n(r, 7),
            })
            .collect())
    }

    /// Every host with rows in the shared ledger, with how many.
    pub async fn ledger_hosts(&self) -> Result<Vec<(String, u64)>, PgError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT host_id, count(*) FROM ledger GROUP BY host_id ORDER BY host_id",
                &[],
            )
            .await
            .map_err(PgError::query("list the hosts in the ledger"))?
            .iter()
            .map(|r| (r.get(0), from_db(r.get(1))))
            .collect())
    }

    /// Verifies host `host_id`'s chain in the shared ledger: the number of
    /// rows, or the first sequence number whose hash does not follow.
    pub async fn verify_host_chain(&self, host_id: &str) -> Result<Result<u64, u64>, PgError> {
        Ok(self.host_chain(host_id).await?.map(|head| head.rows))
    }

    /// Verifies host `host_id`'s chain in the shared ledger as
    /// [`PgStore::verify_host_chain`] does: its head, or the first sequence
    /// number whose hash does not follow.
    pub async fn host_chain(&self, host_id: &str) -> Result<Result<ChainHead, u64>, PgError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, at_ms, kind, reason, license_id, plugin, digest, lease_id,
                        invocation_id, hash, format, seat_id, grant_id, count, token
                 FROM ledger WHERE host_id = $1 ORDER BY seq",
                &[&host_id],
            )
            .await
            .map_err(PgError::query("read a host's ledger"))?;
        let mut prev = crate::chain::GENESIS;
        let mut expected = 1u64;
        for r in &rows {
            let seq = from_db(r.get(0));
            let kind: String = r.get(2);
            let reason: Option<String> = r.get(3);
            let event = kind_from_names(&kind, reason.as_deref()).map(|kind| UsageEvent {
                seq,
                at_ms: from_db(r.get(1)),
                kind,
                license_id: r.get::<_, String>(4).into(),
                plugin: r.get::<_, String>(5).into(),
                component_digest: r.get::<_, String>(6).into(),
                lease_id: r.get::<_, Option<i64>>(7).map(from_db),
                invocation_id: from_db(r.get(8)),
                seat_id: r.get::<_, Option<i64>>(11).map(from_db),
                grant_id: r.get::<_, Option<String>>(12).map(Into::into),
                count: from_db(r.get(13)),
                token: r.get(14),
            });
            let stored: Vec<u8> = r.get(9);
            let format = u8::try_from(r.get::<_, i16>(10)).unwrap_or(0);
            let computed = event.and_then(|e| row_hash_in(format, &prev, &e));
            if seq != expected || computed.is_none_or(|h| h[..] != stored[..]) {
                return Ok(Err(seq));
            }
            prev = computed.unwrap_or(prev);
            expected += 1;
        }
        Ok(Ok(ChainHead {
            rows: expected - 1,
            hash: prev,
        }))
    }
}

impl PgStore {
    /// Whether the shared ledger still extends `checkpoint` (made with
    /// `tollgate audit checkpoint` on the host whose key signed it): that
    /// host's chain verifies, reaches the checkpoint's row, and has its hash
    /// there.
    pub async fn verify_checkpoint(
        &self,
        checkpoint: &crate::state::Checkpoint,
    ) -> Result<crate::state::CheckpointReport, PgError> {
        let mut report = crate::state::checkpoint_report(checkpoint);
        if !report.ok() {
            return Ok(report);
        }
        // The host id in the store is the id of the key that signed it.
        let host = report.host_key.clone();
        let head = match self.host_chain(&host).await? {
            Ok(head) => head.rows,
            Err(seq) => {
                report.problems.push(format!(
                    "host {host}'s chain in the shared ledger fails verification at row {seq}"
                ));
                return Ok(report);
            }
        };
        if checkpoint.seq == 0 {
            return Ok(report);
        }
        let client = self.client().await?;
        let row: Option<Vec<u8>> = client
            .query_opt(
                "SELECT hash FROM ledger WHERE host_id = $1 AND seq = $2",
                &[&host, &to_db(checkpoint.seq)],
            )
            .await
            .map_err(PgError::query("read a checkpoint's row"))?
            .map(|r| r.get(0));
        crate::state::judge_checkpoint(&mut report, checkpoint, head, row);
        Ok(report)
    }
}
