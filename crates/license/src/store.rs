//! What a host needs from the store that keeps its grants and ledger: the
//! grants and revocations to enforce, what a stopped host left taken, and
//! where the counters and ids left off. The SQLite state directory
//! (`tollgate-store`) implements [`GrantStore`]; a shared PostgreSQL store
//! is a second implementation of the same trait.
//!
//! [`recover`] and [`apply`] are the rules of a host's start and reload,
//! written once against the trait.

use crate::ledger::{EventKind, Ledger, LedgerError, UsageEvent};
use crate::{Clock, Counters, Grant, LicenseError, LicenseManager, ReclaimReason};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Counters per license id, with per-plugin counters, read from the ledger.
pub type LedgerCounters = BTreeMap<String, (Counters, BTreeMap<String, Counters>)>;

/// A seat a host took and never returned (the host died during the call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSeat {
    /// The seat id (the id of its first lease).
    pub seat_id: u64,
    /// The lease the plugin still held on it, if any.
    pub lease_id: Option<u64>,
    /// Its license.
    pub license_id: String,
    /// The grant it was taken from (unknown for rows of format 1).
    pub grant_id: Option<String>,
    /// Its plugin.
    pub plugin: String,
    /// Its component digest.
    pub digest: String,
    /// Its invocation.
    pub invocation_id: u64,
}

/// A store failed; its own error is the source (and what it displays).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps a store implementation's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }

    /// The store implementation's error, to inspect its kind.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// The grants, revocations and ledger history a host enforces and resumes.
pub trait GrantStore: Send + Sync {
    /// Every license id's grants, verified against their signed text and
    /// the issuers' scopes, as the seat pools enforce them.
    fn seat_grants(&self) -> Result<BTreeMap<String, Vec<Grant>>, StoreError>;
    /// Revoked license ids, with when (unix seconds).
    fn revocations(&self) -> Result<BTreeMap<String, u64>, StoreError>;
    /// Seats the ledger shows taken and never returned.
    fn open_seats(&self) -> Result<Vec<OpenSeat>, StoreError>;
    /// The largest lease id in the ledger (0 when none).
    fn last_lease_id(&self) -> Result<u64, StoreError>;
    /// Counters per license id and per plugin, summed from the ledger.
    fn ledger_counters(&self) -> Result<LedgerCounters, StoreError>;
    /// The first invocation id a starting host may use.
    fn first_free_invocation_id(&self) -> Result<u64, StoreError>;
    /// Records durably that ids below `below` may be in use; returns the
    /// mark now stored (never lowered).
    fn reserve_invocation_ids(&self, below: u64) -> Result<u64, StoreError>;
    /// Revokes every grant of `license_id`, also grants installed later.
    fn revoke(&self, license_id: &str, now: u64) -> Result<(), StoreError>;
    /// Lifts the revocation of `license_id`; false if it was not revoked.
    fn unrevoke(&self, license_id: &str) -> Result<bool, StoreError>;
    /// Revokes one grant; returns its license id.
    fn revoke_grant(&self, grant_id: &str, now: u64) -> Result<String, StoreError>;
}

/// Why a host could not start from its store.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The returns of seats a stopped host left taken could not be recorded.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A grant in the store could not be put in force.
    #[error(transparent)]
    License(#[from] LicenseError),
}

/// Opens the license manager of a store: returns the seats a stopped host
/// left taken (their rows committed before anything else happens), puts
/// the grants and revocations in force, and starts the counters and lease
/// ids where the ledger left off.
pub fn recover(
    store: &dyn GrantStore,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<LicenseManager>, RecoverError> {
    recover_as(store, ledger, clock, false)
}

/// Like [`recover`], for a host whose counted grants' seats are shared with
/// other hosts ([`LicenseManager::shared`]): its grants come from the shared
/// store, so none of `store`'s (the host's own state) are put in force.
pub fn recover_shared(
    store: &dyn GrantStore,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<LicenseManager>, RecoverError> {
    recover_as(store, ledger, clock, true)
}

fn recover_as(
    store: &dyn GrantStore,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
    shared: bool,
) -> Result<Arc<LicenseManager>, RecoverError> {
    let open = store.open_seats()?;
    let reason = ReclaimReason::HostRestart;
    for seat in &open {
        let row = |kind, lease_id| UsageEvent {
            lease_id,
            seat_id: Some(seat.seat_id),
            grant_id: seat.grant_id.as_deref().map(Arc::from),
            ..UsageEvent::new(
                kind,
                clock.now_ms(),
                seat.license_id.as_str().into(),
                seat.plugin.as_str().into(),
                seat.digest.as_str().into(),
                seat.invocation_id,
            )
        };
        if let Some(lease) = seat.lease_id {
            ledger.record(row(EventKind::Reclaim(reason), Some(lease)));
        }
        ledger.record(row(EventKind::Return(reason), None));
    }
    ledger.sync()?;
    if !open.is_empty() {
        tracing::warn!(
            "returned {} seat(s) left taken by a host that stopped during their calls",
            open.len()
        );
    }
    let licenses = Arc::new(if shared {
        LicenseManager::shared(ledger, clock)
    } else {
        LicenseManager::new(ledger, clock)
    });
    licenses.resume_lease_ids_after(store.last_lease_id()?);
    let mut history = store.ledger_counters()?;
    if !shared {
        apply(store, &licenses)?;
    }
    for id in licenses.ids() {
        if let Some((totals, per_plugin)) = history.remove(&id) {
            licenses.seed(&id, totals, per_plugin)?;
        }
    }
    Ok(licenses)
}

/// Puts the store's grants and revocations in force in `licenses`.
pub fn apply(store: &dyn GrantStore, licenses: &LicenseManager) -> Result<(), RecoverError> {
    let revoked = store.revocations()?;
    Ok(apply_grants(licenses, store.seat_grants()?, &revoked)?)
}

/// Puts `grants` (per license id) in force in `licenses`, each id revoked
/// or not as `revoked` says: what [`apply`] does with what a store read,
/// for a store read another way (asynchronously, say).
pub fn apply_grants(
    licenses: &LicenseManager,
    grants: BTreeMap<String, Vec<Grant>>,
    revoked: &BTreeMap<String, u64>,
) -> Result<(), LicenseError> {
    for (id, grants) in grants {
        licenses.set_grants(&id, grants)?;
        if revoked.contains_key(&id) {
            licenses.revoke(&id)?;
        } else {
            licenses.unrevoke(&id)?;
        }
    }
    Ok(())
}

/// Invocation ids reserved in the store per block.
pub const ID_BLOCK: u64 = 1 << 16;

/// Hands out invocation ids that never repeat, also across restarts: from a
/// counter, below a mark the store holds (when there is one). The
/// mark moves up a block at a time, half a block ahead of use, so a call
/// writes nothing of its own; a restart starts past the mark, skipping the
/// ids a block left unused.
pub struct InvocationIds {
    next: AtomicU64,
    /// Ids below this are reserved; `u64::MAX` without a state directory.
    reserved_below: AtomicU64,
    state: Option<Arc<dyn GrantStore>>,
    /// Held while the mark is moved, so one write moves it per block.
    reserving: Mutex<()>,
}

impl InvocationIds {
    /// Ids from 1, for a host without a state directory.
    pub fn in_memory() -> Self {
        Self {
            next: AtomicU64::new(1),
            reserved_below: AtomicU64::new(u64::MAX),
            state: None,
            reserving: Mutex::new(()),
        }
    }

    /// Ids past every id the state directory used or reserved before, with
    /// a first block reserved.
    pub fn durable(state: Arc<dyn GrantStore>) -> Result<Self, StoreError> {
        let first = state.first_free_invocation_id()?;
        let below = state.reserve_invocation_ids(first.saturating_add(ID_BLOCK))?;
        Ok(Self {
            next: AtomicU64::new(first),
            reserved_below: AtomicU64::new(below),
            state: Some(state),
            reserving: Mutex::new(()),
        })
    }

    /// The next id; fails only when the id is past the reserved mark and
    /// the mark cannot be moved.
    pub fn next(&self) -> Result<u64, StoreError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(state) = &self.state else {
            return Ok(id);
        };
        let below = self.reserved_below.load(Ordering::Acquire);
        if id.saturating_add(ID_BLOCK / 2) == below {
            // Half the block is used: reserve the next one now, so no call
            // waits at the block's end. A failure is retried there.
            if let Err(e) = self.reserve(state.as_ref(), below, below.saturating_add(ID_BLOCK)) {
                tracing::warn!("reserving invocation ids failed, will retry: {e}");
            }
        }
        if id >= self.reserved_below.load(Ordering::Acquire) {
            self.reserve(state.as_ref(), id, id.saturating_add(ID_BLOCK))?;
        }
        Ok(id)
    }

    /// The mark below which ids are reserved (`u64::MAX` without a store).
    pub fn reserved_below(&self) -> u64 {
        self.reserved_below.load(Ordering::Acquire)
    }

    /// Moves the stored mark to `to`, unless it is past `id` already (one
    /// write serves every call that finds the mark too low at once).
    fn reserve(&self, state: &dyn GrantStore, id: u64, to: u64) -> Result<(), StoreError> {
        let _one = self
            .reserving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.reserved_below.load(Ordering::Acquire) > id {
            return Ok(());
        }
        let stored = state.reserve_invocation_ids(to)?;
        self.reserved_below.fetch_max(stored, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::MemoryLedger;
    use crate::{ManualClock, Seats, Terms};

    /// A store kept in memory: one license with a grant of 2 seats, one
    /// seat left taken (with its lease) by a host that stopped, a history.
    #[derive(Default)]
    struct Remembered {
        revoked: bool,
        reserved: Mutex<u64>,
    }

    impl GrantStore for Remembered {
        fn seat_grants(&self) -> Result<BTreeMap<String, Vec<Grant>>, StoreError> {
            let terms = Terms::new(Seats::Counted(2));
            Ok(BTreeMap::from([(
                "demo".to_string(),
                vec![Grant::new("g1", terms)],
            )]))
        }
        fn revocations(&self) -> Result<BTreeMap<String, u64>, StoreError> {
            Ok(if self.revoked {
                BTreeMap::from([("demo".to_string(), 5)])
            } else {
                BTreeMap::new()
            })
        }
        fn open_seats(&self) -> Result<Vec<OpenSeat>, StoreError> {
            Ok(vec![OpenSeat {
                seat_id: 7,
                lease_id: Some(8),
                license_id: "demo".into(),
                grant_id: Some("g1".into()),
                plugin: "hello".into(),
                digest: "sha256:00".into(),
                invocation_id: 3,
            }])
        }
        fn last_lease_id(&self) -> Result<u64, StoreError> {
            Ok(8)
        }
        fn ledger_counters(&self) -> Result<LedgerCounters, StoreError> {
            let totals = Counters {
                checkouts: 4,
                releases: 3,
                ..Counters::default()
            };
            Ok(BTreeMap::from([(
                "demo".to_string(),
                (totals, BTreeMap::new()),
            )]))
        }
        fn first_free_invocation_id(&self) -> Result<u64, StoreError> {
            Ok(10)
        }
        fn reserve_invocation_ids(&self, below: u64) -> Result<u64, StoreError> {
            let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
            *reserved = (*reserved).max(below);
            Ok(*reserved)
        }
        fn revoke(&self, _: &str, _: u64) -> Result<(), StoreError> {
            Ok(())
        }
        fn unrevoke(&self, _: &str) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn revoke_grant(&self, _: &str, _: u64) -> Result<String, StoreError> {
            Ok("demo".into())
        }
    }

    #[test]
    fn recovery_returns_what_a_stopped_host_left_and_resumes_its_counters() {
        let ledger = Arc::new(MemoryLedger::default());
        let store = Remembered::default();
        let licenses = recover(
            &store,
            ledger.clone(),
            Arc::new(ManualClock::at_secs(1_000)),
        )
        .expect("recovers");
        let kinds: Vec<_> = ledger
            .events()
            .iter()
            .map(|e| (e.kind, e.lease_id))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventKind::Reclaim(ReclaimReason::HostRestart), Some(8)),
                (EventKind::Return(ReclaimReason::HostRestart), None),
            ]
        );
        let demo = licenses.describe("demo").expect("installed");
        assert_eq!(demo.seats.limit(), Some(2));
        assert!(!demo.revoked);
        assert_eq!((demo.counters.checkouts, demo.counters.releases), (4, 3));
    }

    #[test]
    fn a_shared_host_takes_no_grant_from_its_own_state() {
        let store = Remembered::default();
        let ledger = Arc::new(MemoryLedger::default());
        let licenses = recover_shared(
            &store,
            ledger.clone(),
            Arc::new(ManualClock::at_secs(1_000)),
        )
        .expect("recovers");
        assert!(licenses.is_shared());
        assert!(
            licenses.ids().is_empty(),
            "the host's own grant of demo must not be in force"
        );
        // What a stopped host left taken is still returned.
        assert!(
            ledger
                .events()
                .iter()
                .any(|e| e.kind == EventKind::Return(ReclaimReason::HostRestart))
        );
    }

    #[test]
    fn a_revocation_in_the_store_is_in_force_after_recovery() {
        let store = Remembered {
            revoked: true,
            ..Remembered::default()
        };
        let licenses = recover(
            &store,
            Arc::new(MemoryLedger::default()),
            Arc::new(ManualClock::at_secs(1_000)),
        )
        .expect("recovers");
        assert!(licenses.describe("demo").expect("installed").revoked);
    }

    #[test]
    fn invocation_ids_reserve_a_block_ahead_and_never_repeat() {
        let store = Arc::new(Remembered::default());
        let ids = InvocationIds::durable(store.clone()).expect("ids");
        assert_eq!(ids.next().expect("id"), 10);
        assert_eq!(ids.reserved_below(), 10 + ID_BLOCK);
        let mut last = 10;
        for _ in 0..ID_BLOCK {
            let id = ids.next().expect("id");
            assert!(id > last);
            last = id;
        }
        assert!(ids.reserved_below() > last);
        assert_eq!(*store.reserved.lock().expect("lock"), ids.reserved_below());
    }
}
