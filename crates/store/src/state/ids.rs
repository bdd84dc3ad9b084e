//! Invocation ids that never repeat: the state database keeps the mark
//! below which ids may have been handed out; a host reserves ids above it in
//! blocks, so a restart (or a crash) starts past every id used before, and
//! calls cost no database write of their own.

use super::{State, StateError};
use rusqlite::{OptionalExtension, params};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS invocation_ids (
    id INTEGER PRIMARY KEY CHECK (id = 1), reserved_below INTEGER NOT NULL)";

impl State {
    /// The first invocation id a starting host may use: the stored mark,
    /// or, in a state directory that has none yet (made by an earlier
    /// version), past the largest id in the ledger.
    pub fn first_free_invocation_id(&self) -> Result<u64, StateError> {
        let conn = self.conn();
        conn.execute_batch(TABLE).map_err(|e| self.err(e))?;
        let reserved: Option<i64> = conn
            .query_row(
                "SELECT reserved_below FROM invocation_ids WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(reserved) = reserved {
            // Every id handed out was below the mark when it was.
            return Ok(u64::try_from(reserved).unwrap_or(0).max(1));
        }
        let in_ledger: i64 = conn
            .query_row(
                "SELECT coalesce(max(invocation_id), 0) FROM ledger",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(in_ledger).unwrap_or(0) + 1)
    }

    /// Records durably that ids below `below` may be in use, and returns the
    /// mark now stored (never lowered).
    pub fn reserve_invocation_ids(&self, below: u64) -> Result<u64, StateError> {
        let below = i64::try_from(below).unwrap_or(i64::MAX);
        let conn = self.conn();
        conn.execute_batch(TABLE).map_err(|e| self.err(e))?;
        let stored: i64 = conn
            .query_row(
                "INSERT INTO invocation_ids (id, reserved_below) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET reserved_below = max(reserved_below, excluded.reserved_below)
                 RETURNING reserved_below",
                params![below],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(stored).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tollgate_license::store::{ID_BLOCK, InvocationIds};

    #[test]
    fn a_state_directory_without_a_mark_starts_past_its_ledger() {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-ids-upgrade-")
            .tempdir()
            .expect("scratch dir");
        let state = State::open(dir.path()).expect("state");
        assert_eq!(state.first_free_invocation_id().expect("empty"), 1);
        // A ledger written before the mark existed: ids up to 41 were used.
        state
            .conn()
            .execute(
                "INSERT INTO ledger (seq, at_ms, kind, license_id, plugin, digest, invocation_id, hash)
                 VALUES (1, 0, 'checkout', 'a', 'p', 'd', 41, x'00')",
                [],
            )
            .expect("row");
        assert_eq!(state.first_free_invocation_id().expect("upgrade"), 42);
        // Once a mark is stored it decides, and it never moves down.
        assert_eq!(state.reserve_invocation_ids(100).expect("mark"), 100);
        assert_eq!(state.reserve_invocation_ids(50).expect("lower"), 100);
        assert_eq!(state.first_free_invocation_id().expect("marked"), 100);
    }

    #[test]
    fn invocation_ids_never_repeat_and_cost_a_write_per_block() {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-invocation-ids-")
            .tempdir()
            .expect("scratch dir");
        let state = Arc::new(State::open(dir.path()).expect("state"));
        let ids = InvocationIds::durable(state.clone()).expect("ids");
        let writes_before = state.conn().total_changes();
        let mut last = 0;
        let calls = 2 * ID_BLOCK + 10;
        for _ in 0..calls {
            let id = ids.next().expect("id");
            assert!(id > last, "{id} after {last}");
            last = id;
        }
        let writes = state.conn().total_changes() - writes_before;
        assert!(writes <= 3, "{writes} database writes for {calls} ids");
        drop(ids);
        // Reopened (a restart, or a crash: the mark was written before any
        // id below it was handed out), ids go on past the last one.
        let ids = InvocationIds::durable(state).expect("ids again");
        let next = ids.next().expect("id");
        assert!(next > last, "{next} after {last}");
        assert!(next <= last + 2 * ID_BLOCK, "skipped {}", next - last);
    }

    #[test]
    fn invocation_ids_from_many_threads_are_distinct() {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-invocation-ids-threads-")
            .tempdir()
            .expect("scratch dir");
        let state = Arc::new(State::open(dir.path()).expect("state"));
        let ids = InvocationIds::durable(state).expect("ids");
        let per_thread = ID_BLOCK as usize;
        let mut all: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..per_thread)
                            .map(|_| ids.next().expect("id"))
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4 * per_thread);
        assert!(ids.reserved_below() > all[all.len() - 1]);
    }
}
