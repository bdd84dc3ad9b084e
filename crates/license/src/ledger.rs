//! The usage ledger: every seat taken and returned, every lease handed out,
//! sent back or reclaimed, every refusal (one row per call, license and
//! reason, with a count) and every withheld call is one event, recorded in
//! the order the seats moved.
//!
//! [`MemoryLedger`] is the in-memory ledger used by the embedded default;
//! durable ledgers (in `tollgate-store`) implement the same [`Ledger`] trait.

use crate::reason::{Denial, ReclaimReason};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// What happened to a seat or a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "reason")]
pub enum EventKind {
    /// A seat was taken from a grant and a lease on it handed to a plugin.
    Checkout,
    /// A lease handed to a plugin on a seat its call already held (the
    /// plugin had sent the license back and asked again).
    Retake,
    /// A plugin sent its lease back; the seat stays with the call.
    Release,
    /// The host ended a lease the plugin still held, with the reason.
    Reclaim(ReclaimReason),
    /// A seat went back to its pool, with why the call's hold on it ended.
    Return(ReclaimReason),
    /// Requests for a seat were refused, with the reason (`count` of them).
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
    /// The seat concerned: the id of the first lease on it.
    pub seat_id: Option<u64>,
    /// The grant the seat was taken from.
    pub grant_id: Option<Arc<str>>,
    /// How many events this row stands for (refusals are summed per call).
    pub count: u64,
    /// The fencing token of the shared store's batch the seat was taken
    /// under (`None` on a host with its own seats).
    pub token: Option<i64>,
}

impl UsageEvent {
    /// An event of `kind` for one license, plugin and call, standing for
    /// one occurrence and naming no lease, seat or grant.
    pub fn new(
        kind: EventKind,
        at_ms: u64,
        license_id: Arc<str>,
        plugin: Arc<str>,
        component_digest: Arc<str>,
        invocation_id: u64,
    ) -> Self {
        Self {
            seq: 0,
            at_ms,
            kind,
            license_id,
            plugin,
            component_digest,
            lease_id: None,
            invocation_id,
            seat_id: None,
            grant_id: None,
            count: 1,
            token: None,
        }
    }
}

/// A ledger could not make events durable, or will not take new calls now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The store under the ledger failed; its error is the source.
    #[error("the usage ledger could not {action}")]
    Store {
        /// What the ledger was doing ("commit", "open …").
        action: String,
        /// The store's error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The last commit failed; new calls wait until one succeeds.
    #[error("the usage ledger's last commit failed; calls resume once a commit succeeds")]
    CommitFailing {
        /// Why the last commit failed.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Too many rows wait for their commit.
    #[error("{queued} usage rows wait for their commit (at most {limit}); retry shortly")]
    Backlog {
        /// Rows waiting.
        queued: usize,
        /// The most that may wait.
        limit: usize,
    },
}

impl LedgerError {
    /// A store error met while doing `action`.
    pub fn store(
        action: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Store {
            action: action.into(),
            source: Arc::new(source),
        }
    }
}

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

    /// A call has started whose rows will come and which will then ask for
    /// their commit ([`Ledger::sync_invocation`] or its async form), or say
    /// [`Ledger::call_abandoned`]: a ledger that groups commits may hold a
    /// commit back a little for such calls. The default does nothing.
    fn call_started(&self, invocation: u64) {
        let _ = invocation;
    }

    /// A call announced with [`Ledger::call_started`] will not ask for its
    /// rows' commit (its answer reaches no one): nothing waits for it.
    fn call_abandoned(&self, invocation: u64) {
        let _ = invocation;
    }

    /// Whether a new call may start: an error when commits fail (a full
    /// disk) or too many rows wait for their commit. Calls already running
    /// still record; only new ones are refused.
    fn ready(&self) -> Result<(), LedgerError> {
        Ok(())
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
            lease_id: Some(1),
            ..UsageEvent::new(kind, 1, "a".into(), "p".into(), "d".into(), 1)
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
