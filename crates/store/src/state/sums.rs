//! The ledger's sums kept up to a row, so that start-up reads only the rows
//! after it: per (license, plugin, kind, reason, format) the sum of the
//! rows' counts, and per license and per (license, plugin) the seats in use
//! at that row and the most held at once up to it. The ledger writer keeps
//! them as it commits and stores them every [`SUMS_STORED_EVERY_ROWS`] rows (and
//! when it stops); a start adds the rows written since the last store and
//! moves the mark; a full audit checks the stored sums against the ledger.

use super::{SEAT_MOVE, State, StateError, add, clamp};
use crate::chain::{kind_from_names, kind_names, row_format};
use rusqlite::{Connection, OptionalExtension, params};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate_license::ledger::{EventKind, UsageEvent};
use tollgate_license::store::LedgerCounters;

/// The ledger writer stores its sums at least this many rows apart: a start
/// after a crash folds at most this many rows (plus one commit's).
pub const SUMS_STORED_EVERY_ROWS: u64 = 50_000;

/// The tables (created with the schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger_sums (
    license_id TEXT NOT NULL, plugin TEXT NOT NULL, kind TEXT NOT NULL,
    reason TEXT NOT NULL, format INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (license_id, plugin, kind, reason, format));
CREATE TABLE IF NOT EXISTS ledger_runs (
    license_id TEXT NOT NULL, plugin TEXT NOT NULL, peak INTEGER NOT NULL, run INTEGER NOT NULL,
    PRIMARY KEY (license_id, plugin));
CREATE TABLE IF NOT EXISTS ledger_sums_mark (id INTEGER PRIMARY KEY CHECK (id = 1), upto INTEGER NOT NULL);
";

/// The `plugin` of a license's own row in `ledger_runs` (plugin names are
/// never empty).
const WHOLE_LICENSE: &str = "";

/// Sums of rows, keyed (license, plugin, kind, reason or "", format).
type Sums = BTreeMap<(String, String, String, String, i64), i64>;
/// Seat runs, keyed (license, plugin or [`WHOLE_LICENSE`]): (peak, run).
type Runs = BTreeMap<(String, String), (i64, i64)>;

/// The sums and runs of rows `after < seq <= upto`, starting from `runs`.
fn fold(
    tx: &Connection,
    after: u64,
    upto: u64,
    sums: &mut Sums,
    runs: &mut Runs,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare(
        "SELECT license_id, plugin, kind, coalesce(reason, ''), format, sum(count) FROM ledger
         WHERE seq > ?1 AND seq <= ?2 GROUP BY 1, 2, 3, 4, 5",
    )?;
    let rows = stmt.query_map(params![after, upto], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            r.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (key, n) = row?;
        *sums.entry(key).or_default() += n;
    }
    // Per (license, plugin): the highest running sum of seat moves over the
    // new rows, per license and per plugin, and the plugin's total move.
    let sql = format!(
        "SELECT license_id, plugin, max(run_l), max(run_p), sum(mv) FROM (
           SELECT license_id, plugin, {SEAT_MOVE} AS mv,
             sum({SEAT_MOVE}) OVER (PARTITION BY license_id ORDER BY seq ROWS UNBOUNDED PRECEDING) AS run_l,
             sum({SEAT_MOVE}) OVER (PARTITION BY license_id, plugin ORDER BY seq ROWS UNBOUNDED PRECEDING) AS run_p
           FROM ledger WHERE seq > ?1 AND seq <= ?2)
         GROUP BY license_id, plugin"
    );
    let mut stmt = tx.prepare(&sql)?;
    let rows = stmt.query_map(params![after, upto], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    // Per license: the highest running sum and the total move, applied
    // after every plugin's row, from the run the license had before.
    let mut whole: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in rows {
        let (license, plugin, highest_l, highest_p, total) = row?;
        let (peak, run) = runs.entry((license.clone(), plugin)).or_default();
        *peak = (*peak).max(*run + highest_p);
        *run += total;
        let (highest, sum) = whole.entry(license).or_insert((i64::MIN, 0));
        *highest = (*highest).max(highest_l);
        *sum += total;
    }
    for (license, (highest, total)) in whole {
        let (peak, run) = runs
            .entry((license, WHOLE_LICENSE.to_string()))
            .or_default();
        *peak = (*peak).max(*run + highest);
        *run += total;
    }
    Ok(())
}

/// The row the stored sums go up to, if they were ever stored.
fn mark(tx: &Connection) -> rusqlite::Result<Option<u64>> {
    tx.query_row("SELECT upto FROM ledger_sums_mark WHERE id = 1", [], |r| {
        r.get(0)
    })
    .optional()
}

/// The stored sums and runs, and the row they go up to (none without a
/// mark).
fn stored(tx: &Connection) -> rusqlite::Result<(u64, Sums, Runs)> {
    let Some(upto) = mark(tx)? else {
        // No mark: whatever the tables hold counts for nothing.
        return Ok((0, Sums::new(), Runs::new()));
    };
    let mut sums = Sums::new();
    let mut stmt =
        tx.prepare("SELECT license_id, plugin, kind, reason, format, n FROM ledger_sums")?;
    for row in stmt.query_map([], |r| {
        Ok((
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            r.get::<_, i64>(5)?,
        ))
    })? {
        let (key, n) = row?;
        sums.insert(key, n);
    }
    let mut runs = Runs::new();
    let mut stmt = tx.prepare("SELECT license_id, plugin, peak, run FROM ledger_runs")?;
    for row in stmt.query_map([], |r| {
        Ok((
            (r.get(0)?, r.get(1)?),
            (r.get::<_, i64>(2)?, r.get::<_, i64>(3)?),
        ))
    })? {
        let (key, value) = row?;
        runs.insert(key, value);
    }
    Ok((upto, sums, runs))
}

/// Replaces the stored sums and runs with these, up to row `upto`.
fn store(tx: &Connection, upto: u64, sums: &Sums, runs: &Runs) -> rusqlite::Result<()> {
    tx.execute_batch("DELETE FROM ledger_sums; DELETE FROM ledger_runs;")?;
    let mut put = tx.prepare(
        "INSERT INTO ledger_sums (license_id, plugin, kind, reason, format, n) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for ((license, plugin, kind, reason, format), n) in sums {
        put.execute(params![license, plugin, kind, reason, format, n])?;
    }
    let mut put = tx.prepare(
        "INSERT INTO ledger_runs (license_id, plugin, peak, run) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for ((license, plugin), (peak, run)) in runs {
        put.execute(params![license, plugin, peak, run])?;
    }
    tx.execute(
        "INSERT INTO ledger_sums_mark (id, upto) VALUES (1, ?1)
         ON CONFLICT(id) DO UPDATE SET upto = excluded.upto",
        [upto],
    )?;
    Ok(())
}

/// The counters that `sums` and `runs` give.
fn counters(sums: &Sums, runs: &Runs) -> LedgerCounters {
    let mut out = LedgerCounters::new();
    for ((license, plugin, kind, reason, format), n) in sums {
        let reason = (!reason.is_empty()).then_some(reason.as_str());
        let Some(kind) = kind_from_names(kind, reason) else {
            continue;
        };
        let n = u64::try_from(*n).unwrap_or(0);
        let entry = out.entry(license.clone()).or_default();
        add(&mut entry.0, kind, *format, n);
        add(entry.1.entry(plugin.clone()).or_default(), kind, *format, n);
    }
    for ((license, plugin), (peak, _)) in runs {
        let entry = out.entry(license.clone()).or_default();
        if plugin == WHOLE_LICENSE {
            entry.0.peak = entry.0.peak.max(clamp(*peak));
        } else {
            entry.1.entry(plugin.clone()).or_default().peak = clamp(*peak);
        }
    }
    out
}

/// A key of [`Kept`]'s added sums: (license, plugin, kind, reason or "",
/// format), from the rows' own strings.
type AddedKey = (Arc<str>, Arc<str>, &'static str, &'static str, i64);

/// The sums and runs of every row up to `upto`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Kept {
    sums: Sums,
    runs: Runs,
    /// Sums added by [`Kept::apply`] since the last [`Kept::store`], keyed
    /// without allocating (the rows' own shared strings).
    added: FxHashMap<AddedKey, i64>,
    /// The runs touched by [`Kept::apply`], current (those in `runs` may be
    /// older), likewise keyed.
    live: FxHashMap<(Arc<str>, Arc<str>), (i64, i64)>,
    /// [`WHOLE_LICENSE`], shared.
    whole: Arc<str>,
    /// The last row they cover.
    pub(crate) upto: u64,
}

impl Kept {
    /// The stored sums, with the rows after their mark folded in; the
    /// result is stored (moving the mark) when there were such rows. The
    /// rows are folded in a read transaction, which never holds up a
    /// running host's ledger writer (WAL); only storing takes the write
    /// lock, briefly.
    pub(crate) fn load(conn: &mut Connection) -> rusqlite::Result<Self> {
        let (after, mut kept) = {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
            let (after, mut sums, mut runs) = stored(&tx)?;
            let upto: u64 =
                tx.query_row("SELECT coalesce(max(seq), 0) FROM ledger", [], |r| r.get(0))?;
            if upto > after {
                fold(&tx, after, upto, &mut sums, &mut runs)?;
            }
            let kept = Self {
                sums,
                runs,
                upto,
                whole: WHOLE_LICENSE.into(),
                ..Self::default()
            };
            (after, kept)
        };
        if kept.upto > after {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Another reader may have moved the mark meanwhile: keep its.
            if mark(&tx)?.unwrap_or(0) == after {
                kept.store(&tx)?;
            }
            tx.commit()?;
        }
        Ok(kept)
    }

    /// Adds one committed row.
    pub(crate) fn apply(&mut self, e: &UsageEvent) {
        let (kind, reason) = kind_names(e.kind);
        let format = i64::from(row_format(e));
        let key = (
            e.license_id.clone(),
            e.plugin.clone(),
            kind,
            reason.unwrap_or(""),
            format,
        );
        *self.added.entry(key).or_default() += i64::try_from(e.count).unwrap_or(i64::MAX);
        // The same seat moves as `SEAT_MOVE` counts them.
        let mv = match e.kind {
            EventKind::Checkout => 1,
            EventKind::Return(_) => -1,
            EventKind::Release | EventKind::Reclaim(_) if format == 1 => -1,
            _ => 0,
        };
        for plugin in [&e.plugin, &self.whole] {
            let runs = &self.runs;
            let (peak, run) = self
                .live
                .entry((e.license_id.clone(), plugin.clone()))
                .or_insert_with(|| {
                    runs.get(&(e.license_id.to_string(), plugin.to_string()))
                        .copied()
                        .unwrap_or_default()
                });
            *run += mv;
            *peak = (*peak).max(*run);
        }
        self.upto = e.seq;
    }

    /// Folds what [`Kept::apply`] added into the sums and runs.
    fn settle(&mut self) {
        for ((license, plugin, kind, reason, format), n) in self.added.drain() {
            *self
                .sums
                .entry((
                    license.to_string(),
                    plugin.to_string(),
                    kind.to_string(),
                    reason.to_string(),
                    format,
                ))
                .or_default() += n;
        }
        for ((license, plugin), value) in &self.live {
            self.runs
                .insert((license.to_string(), plugin.to_string()), *value);
        }
    }

    /// Stores these sums and moves the mark to [`Kept::upto`], inside the
    /// caller's transaction.
    pub(crate) fn store(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        self.settle();
        store(tx, self.upto, &self.sums, &self.runs)
    }

    /// The counters these sums give.
    fn counters(mut self) -> LedgerCounters {
        self.settle();
        counters(&self.sums, &self.runs)
    }
}

impl State {
    /// Counters per license id (and per plugin) computed from the ledger
    /// alone: the stored sums up to their mark, plus the rows written since,
    /// which move the mark. Rows of format 1 (before seats lingered with
    /// their call) end the seat with the lease: their release or reclaim
    /// counts as a return.
    pub fn ledger_counters(&self) -> Result<LedgerCounters, StateError> {
        let kept = Kept::load(&mut self.conn()).map_err(|e| self.err(e))?;
        Ok(kept.counters())
    }

    /// Drops the stored usage sums: the next start adds up every row again
    /// (what a database from before they were kept does once).
    pub fn forget_usage_sums(&self) -> Result<(), StateError> {
        self.conn()
            .execute("DELETE FROM ledger_sums_mark", [])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// What differs between the stored sums and the ledger's rows up to the
    /// sums' mark, each as a problem for the audit (empty: they agree).
    pub(crate) fn check_sums(&self) -> Result<Vec<String>, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
            .map_err(|e| self.err(e))?;
        let (upto, sums, runs) = stored(&tx).map_err(|e| self.err(e))?;
        let (mut found_sums, mut found_runs) = (Sums::new(), Runs::new());
        fold(&tx, 0, upto, &mut found_sums, &mut found_runs).map_err(|e| self.err(e))?;
        drop(tx);
        let mut problems = Vec::new();
        if sums != found_sums {
            problems.push(format!(
                "the stored usage sums up to row {upto} differ from the ledger's rows (edited): delete the rows of table ledger_sums_mark and the sums are computed again at the next start"
            ));
        }
        if runs != found_runs {
            problems.push(format!(
                "the stored seat peaks up to row {upto} differ from the ledger's rows (edited): delete the rows of table ledger_sums_mark and the peaks are computed again at the next start"
            ));
        }
        Ok(problems)
    }
}
