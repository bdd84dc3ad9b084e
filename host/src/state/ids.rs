//! Invocation ids that never repeat: the state database keeps the mark
//! below which ids may have been handed out; a host reserves ids above it in
//! blocks, so a restart (or a crash) starts past every id used before, and
//! calls cost no database write of their own.

use super::{State, StateError};
use rusqlite::{OptionalExtension, params};

const TABLE: &str = "CREATE TABLE IF NOT EXISTS invocation_ids (
    id INTEGER PRIMARY KEY CHECK (id = 1), reserved_below INTEGER NOT NULL)";

impl State {
    /// The first invocation id a starting host may use: past the largest in
    /// the ledger and past every id reserved before.
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
        let in_ledger: i64 = conn
            .query_row(
                "SELECT coalesce(max(invocation_id), 0) FROM ledger",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let reserved = u64::try_from(reserved.unwrap_or(0)).unwrap_or(0);
        let in_ledger = u64::try_from(in_ledger).unwrap_or(0);
        Ok(reserved.max(in_ledger + 1))
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
