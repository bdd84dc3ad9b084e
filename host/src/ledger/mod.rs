//! The usage ledger: every checkout, release, reclaim, denial and withheld
//! call is one event, recorded in order.
//!
//! [`MemoryLedger`] is the in-memory ledger used by the embedded default;
//! durable ledgers implement the same [`Ledger`] trait.

pub mod chain;
mod sqlite;

pub(crate) use sqlite::connect;
pub use sqlite::{CommitStats, SqliteLedger};

use crate::license::{Denial, ReclaimReason};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// What happened to a seat or a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "reason")]
pub enum EventKind {
    /// A seat was handed to a plugin.
    Checkout,
    /// A plugin sent its seat back.
    Release,
    /// The host took a seat back, with the reason.
    Reclaim(ReclaimReason),
    /// A request for a seat was refused, with the reason.
    Denial(Denial),
    /// A call's result was withheld because it ran without this license.
    Withheld,
}

/// One ledger row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    /// Position in the ledger, from 1, assigned by the ledger.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The license id concerned.
    pub license_id: Arc<str>,
    /// The plugin concerned.
    pub plugin: Arc<str>,
    /// The sha256 of the plugin's component, hex.
    pub component_digest: Arc<str>,
    /// The lease concerned, if a seat was involved.
    pub lease_id: Option<u64>,
    /// The invocation during which it happened.
    pub invocation_id: u64,
}

/// A ledger could not make events durable.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the usage ledger could not commit: {0}")]
pub struct LedgerError(pub String);

/// Where usage events go.
pub trait Ledger: Send + Sync {
    /// Appends one event; the ledger assigns its `seq`.
    fn record(&self, event: UsageEvent);

    /// Returns once every event recorded so far is durable.
    fn sync(&self) -> Result<(), LedgerError> {
        Ok(())
    }

    /// Like [`Ledger::sync`], awaiting durability instead of blocking the
    /// thread. The default blocks, which suits ledgers that never wait.
    fn sync_async(&self) -> SyncFuture<'_> {
        let synced = self.sync();
        Box::pin(std::future::ready(synced))
    }

    /// Returns once every event recorded so far for `invocation` is
    /// durable; at once when it has none waiting. The default waits for
    /// everything, like [`Ledger::sync`].
    fn sync_invocation(&self, invocation: u64) -> Result<(), LedgerError> {
        let _ = invocation;
        self.sync()
    }

    /// Like [`Ledger::sync_invocation`], awaiting durability instead of
    /// blocking the thread.
    fn sync_invocation_async(&self, invocation: u64) -> SyncFuture<'_> {
        let _ = invocation;
        self.sync_async()
    }
}

/// What [`Ledger::sync_async`] returns.
pub type SyncFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LedgerError>> + Send + 'a>>;

/// A bounded in-memory ledger: keeps the newest `capacity` events and counts
/// the ones it let go.
#[derive(Debug)]
pub struct MemoryLedger {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug)]
struct MemoryInner {
    events: VecDeque<UsageEvent>,
    capacity: usize,
    next_seq: u64,
    evicted: u64,
}

impl MemoryLedger {
    /// The default number of events kept in memory.
    pub const DEFAULT_CAPACITY: usize = 1 << 20;

    /// A ledger that keeps at most `capacity` events.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(MemoryInner {
                events: VecDeque::new(),
                capacity: capacity.max(1),
                next_seq: 1,
                evicted: 0,
            }),
        }
    }

    /// The events still held, oldest first.
    pub fn events(&self) -> Vec<UsageEvent> {
        self.lock().events.iter().cloned().collect()
    }

    /// How many events were dropped to stay within capacity.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }
}

impl Ledger for MemoryLedger {
    fn record(&self, mut event: UsageEvent) {
        let mut inner = self.lock();
        event.seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.events.len() == inner.capacity {
            inner.events.pop_front();
            inner.evicted += 1;
        }
        inner.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> UsageEvent {
        UsageEvent {
            seq: 0,
            at_ms: 1,
            kind,
            license_id: "a".into(),
            plugin: "p".into(),
            component_digest: "d".into(),
            lease_id: Some(1),
            invocation_id: 1,
        }
    }

    #[test]
    fn assigns_sequence_and_evicts_oldest() {
        let ledger = MemoryLedger::with_capacity(2);
        ledger.record(event(EventKind::Checkout));
        ledger.record(event(EventKind::Release));
        ledger.record(event(EventKind::Withheld));
        let events = ledger.events();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(events[1].kind, EventKind::Withheld);
        assert_eq!(ledger.evicted(), 1);
    }

    #[test]
    fn kinds_serialize_with_reason() {
        let json = serde_json::to_value(event(EventKind::Reclaim(ReclaimReason::Trapped)))
            .expect("serializes");
        assert_eq!(json["kind"]["kind"], "reclaim");
        assert_eq!(json["kind"]["reason"], "trapped");
    }
}
