//! Time as the license manager sees it; replaceable in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;

    /// Unix time in seconds.
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock standing at unix second `secs`.
    pub fn at_secs(secs: u64) -> Self {
        Self {
            ms: AtomicU64::new(secs * 1000),
        }
    }

    /// Moves the clock to unix second `secs`.
    pub fn set_secs(&self, secs: u64) {
        self.ms.store(secs * 1000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// Sleeps until a deadline: how an async wait for a seat ends in time. The
/// core has no timer of its own; the runtime passes its (tokio's, in
/// tollgate) to [`crate::CallSeats::acquire_async`].
pub trait Timer: Send + Sync {
    /// A future that completes at `deadline`.
    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}
