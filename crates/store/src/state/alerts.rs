//! Alerts' durable side: which alerts are firing (so a restart does not
//! send a crossing again) and the outbox of webhook deliveries (so a
//! restart loses none).

use super::{State, StateError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

/// The alert tables, created when the state directory is opened.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_firing (
    license_id TEXT NOT NULL, alert TEXT NOT NULL, since_ms INTEGER NOT NULL,
    PRIMARY KEY (license_id, alert));
CREATE TABLE IF NOT EXISTS alert_outbox (
    id INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL,
    delivered_ms INTEGER, last_error TEXT);
";

/// One webhook delivery in the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutboxEntry {
    /// Its id, in the order deliveries were queued.
    pub id: u64,
    /// When it was queued, unix milliseconds.
    pub created_ms: u64,
    /// The JSON body sent.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, unix milliseconds.
    pub next_ms: u64,
    /// When the receiver acknowledged it, if it has.
    pub delivered_ms: Option<u64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    Ok(OutboxEntry {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        body: r.get(2)?,
        attempts: r.get(3)?,
        next_ms: r.get(4)?,
        delivered_ms: r.get(5)?,
        last_error: r.get(6)?,
    })
}

const ENTRY_COLUMNS: &str = "id, created_ms, body, attempts, next_ms, delivered_ms, last_error";

impl State {
    /// The alerts firing now, as `(license id, alert, since)`.
    pub fn firing_alerts(&self) -> Result<Vec<(String, String, u64)>, StateError> {
        self.query(
            "SELECT license_id, alert, since_ms FROM alert_firing ORDER BY license_id, alert",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    /// Records that `alert` of `license` started (`Some(since)`) or stopped
    /// (`None`) firing and queues `body` for the webhook, in one
    /// transaction: the crossing is sent once, and never lost. Returns the
    /// outbox id (`None` when no body is queued).
    pub fn alert_crossed(
        &self,
        license: &str,
        alert: &str,
        since_ms: Option<u64>,
        body: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<u64>, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        match since_ms {
            Some(since) => tx.execute(
                "INSERT OR REPLACE INTO alert_firing (license_id, alert, since_ms) VALUES (?1, ?2, ?3)",
                params![license, alert, since],
            ),
            None => tx.execute(
                "DELETE FROM alert_firing WHERE license_id = ?1 AND alert = ?2",
                params![license, alert],
            ),
        }
        .map_err(|e| self.err(e))?;
        let id = match body {
            Some(body) => {
                tx.execute(
                    "INSERT INTO alert_outbox (created_ms, body, next_ms) VALUES (?1, ?2, ?1)",
                    params![now_ms, body],
                )
                .map_err(|e| self.err(e))?;
                Some(u64::try_from(tx.last_insert_rowid()).unwrap_or(0))
            }
            None => None,
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// Undelivered outbox entries in the order they were queued, up to the
    /// first that is not due at `now_ms`: deliveries go out in order, and
    /// one waiting for its retry holds back those after it.
    pub fn outbox_due(&self, now_ms: u64, limit: usize) -> Result<Vec<OutboxEntry>, StateError> {
        let pending = self.query(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM alert_outbox
                 WHERE delivered_ms IS NULL ORDER BY id LIMIT ?1"
            ),
            params![limit as u64],
            entry,
        )?;
        Ok(pending
            .into_iter()
            .take_while(|e| e.next_ms <= now_ms)
            .collect())
    }

    /// When the oldest undelivered entry is due, if any is waiting.
    pub fn outbox_next_due(&self) -> Result<Option<u64>, StateError> {
        self.conn()
            .query_row(
                "SELECT next_ms FROM alert_outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.err(e))
    }

    /// The last `limit` outbox entries, newest first.
    pub fn outbox_recent(&self, limit: usize) -> Result<Vec<OutboxEntry>, StateError> {
        self.query(
            &format!("SELECT {ENTRY_COLUMNS} FROM alert_outbox ORDER BY id DESC LIMIT ?1"),
            params![limit as u64],
            entry,
        )
    }

    /// Records an attempt at entry `id`: delivered at `now_ms`, or failed
    /// with `error` and due again at `retry_ms`.
    pub fn outbox_attempted(
        &self,
        id: u64,
        now_ms: u64,
        outcome: Result<(), (&str, u64)>,
    ) -> Result<(), StateError> {
        let conn = self.conn();
        match outcome {
            Ok(()) => conn.execute(
                "UPDATE alert_outbox SET attempts = attempts + 1, delivered_ms = ?2, last_error = NULL
                 WHERE id = ?1",
                params![id, now_ms],
            ),
            Err((error, retry_ms)) => conn.execute(
                "UPDATE alert_outbox SET attempts = attempts + 1, next_ms = ?2, last_error = ?3
                 WHERE id = ?1",
                params![id, retry_ms, error],
            ),
        }
        .map(drop)
        .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::temp_dir;
    use super::*;

    #[test]
    fn a_crossing_and_its_delivery_survive_reopening_the_state() {
        let temp = temp_dir("alerts");
        {
            let state = State::open(temp.path()).expect("opens");
            let id = state
                .alert_crossed("demo", "in-use", Some(1_000), Some("{\"a\":1}"), 1_000)
                .expect("recorded")
                .expect("queued");
            assert_eq!(state.outbox_due(999, 10).expect("due"), []);
            let due = state.outbox_due(1_000, 10).expect("due");
            assert_eq!(
                (due.len(), due[0].id, due[0].body.as_str()),
                (1, id, "{\"a\":1}")
            );
            state
                .outbox_attempted(id, 1_000, Err(("refused", 3_000)))
                .expect("attempt");
        }
        let state = State::open(temp.path()).expect("reopens");
        assert_eq!(
            state.firing_alerts().expect("firing"),
            [("demo".to_string(), "in-use".to_string(), 1_000)]
        );
        assert_eq!(state.outbox_next_due().expect("next"), Some(3_000));
        let due = state.outbox_due(3_000, 10).expect("due");
        assert_eq!(
            (due[0].attempts, due[0].last_error.as_deref()),
            (1, Some("refused"))
        );
        state
            .outbox_attempted(due[0].id, 3_100, Ok(()))
            .expect("delivered");
        assert_eq!(state.outbox_due(u64::MAX, 10).expect("due"), []);
        assert_eq!(state.outbox_next_due().expect("next"), None);
        // A later entry waits behind an earlier one that is not due yet.
        let a = state
            .alert_crossed("demo", "expiry", Some(3_500), Some("a"), 3_500)
            .expect("recorded")
            .expect("queued");
        state
            .alert_crossed("demo", "expiry", None, Some("b"), 3_600)
            .expect("recorded");
        state
            .outbox_attempted(a, 3_600, Err(("down", 9_000)))
            .expect("attempt");
        assert_eq!(state.outbox_due(5_000, 10).expect("due"), []);
        assert_eq!(state.outbox_next_due().expect("next"), Some(9_000));
        let due = state.outbox_due(9_000, 10).expect("due");
        assert_eq!(
            due.iter().map(|e| e.body.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        state
            .alert_crossed("demo", "in-use", None, None, 4_000)
            .expect("stopped");
        assert!(state.firing_alerts().expect("firing").is_empty());
        assert_eq!(
            state.outbox_recent(5).expect("recent")[2].delivered_ms,
            Some(3_100)
        );
    }
}
