//! The database's clock, read on the host: grant windows and ledger times
//! of hosts sharing a store follow one clock, the database's.

use super::{PgError, PgStore};
use std::sync::atomic::{AtomicI64, Ordering};
use tollgate_license::{Clock, SystemClock};

/// The system clock corrected by the database's offset from it, as last
/// measured ([`PgStore::sync_clock`]); the system clock until then.
#[derive(Debug, Default)]
pub struct StoreClock {
    offset_ms: AtomicI64,
}

impl StoreClock {
    /// The database's clock minus this host's, in milliseconds, as last
    /// measured.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Sets the offset (the database's clock minus this host's).
    pub fn set_offset_ms(&self, offset: i64) {
        self.offset_ms.store(offset, Ordering::Relaxed);
    }
}

impl Clock for StoreClock {
    fn now_ms(&self) -> u64 {
        let local = i64::try_from(SystemClock.now_ms()).unwrap_or(i64::MAX);
        u64::try_from(local.saturating_add(self.offset_ms())).unwrap_or(0)
    }
}

impl PgStore {
    /// Measures the database's clock against this host's and sets `clock`
    /// to it (the reading taken halfway through the round trip).
    pub async fn sync_clock(&self, clock: &StoreClock) -> Result<(), PgError> {
        let client = self.client().await?;
        let before = SystemClock.now_ms();
        let row = client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await
            .map_err(PgError::query("read the database's clock"))?;
        let after = SystemClock.now_ms();
        let db: i64 = row.get(0);
        let halfway = i64::try_from(before / 2 + after / 2).unwrap_or(i64::MAX);
        clock.set_offset_ms(db.saturating_sub(halfway));
        Ok(())
    }
}
