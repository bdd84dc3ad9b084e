//! tollgate's license core: seat pools keyed by license id and grant,
//! leases, the rules of a call, counters, signed license files, and the
//! [`ledger::Ledger`] trait that stores implement. Nothing here knows about
//! WebAssembly, SQL or HTTP.
#![deny(missing_docs)]

pub mod issuer;
pub mod ledger;
pub mod names;
pub mod store;

mod call;
mod clock;
mod pool;
mod reason;

pub use call::{CallLicensing, CallLimits, CallSeats, Entitlement, LicenseInfo, Pools};
pub use clock::{Clock, ManualClock, SystemClock, Timer};
pub use names::{InvalidLicenseId, InvalidPluginName, LicenseId, PluginName};
pub use pool::{
    Counters, Grant, GrantDemand, GrantStatus, Holder, LeaseEnding, LicenseStatus, Rules,
    STORE_ANSWER_WAIT, Seat, SeatHolder, SeatLost, SeatPool, Seats, Share, Terms, within_window,
};
pub use reason::{Denial, ReasonCounts, ReclaimReason};

use crate::ledger::{EventKind, Ledger, MemoryLedger, UsageEvent};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Errors from operator actions on the license manager.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LicenseError {
    /// The id is not a valid license id.
    #[error(transparent)]
    InvalidId(#[from] InvalidLicenseId),
    /// No license with this id is installed.
    #[error("no license {0:?} is installed on this host; install it first")]
    Unknown(String),
    /// The license has no grant with this id.
    #[error("license {id:?} has no grant {grant:?}; `tollgate status` lists its grants")]
    UnknownGrant {
        /// The license id.
        id: String,
        /// The grant id asked for.
        grant: String,
    },
}

/// A snapshot of the whole license manager.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ManagerStatus {
    /// Per license id, sorted by id.
    pub licenses: Vec<LicenseStatus>,
    /// Requests for ids that no license on this host has.
    pub unknown_license_denials: u64,
}

/// The host's license manager: one [`SeatPool`] per license id.
pub struct LicenseManager {
    pools: RwLock<BTreeMap<Arc<str>, Arc<SeatPool>>>,
    unknown_denials: AtomicU64,
    lease_ids: Arc<AtomicU64>,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
    /// Counted grants' seats are shared with other hosts through a store:
    /// only those of this host's batches are handed out.
    shared: bool,
    /// Told when a request found no seat free in a shared pool.
    wanted: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for LicenseManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LicenseManager").finish_non_exhaustive()
    }
}

impl Default for LicenseManager {
    fn default() -> Self {
        Self::new(Arc::new(MemoryLedger::default()), Arc::new(SystemClock))
    }
}

impl LicenseManager {
    /// A manager writing to `ledger` and reading time from `clock`.
    pub fn new(ledger: Arc<dyn Ledger>, clock: Arc<dyn Clock>) -> Self {
        Self {
            pools: RwLock::new(BTreeMap::new()),
            unknown_denials: AtomicU64::new(0),
            lease_ids: Arc::new(AtomicU64::new(1)),
            ledger,
            clock,
            shared: false,
            wanted: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// A manager whose counted grants' seats are shared with other hosts:
    /// a grant gives seats here only from the batch of it this host holds
    /// ([`LicenseManager::set_share`]), never more, and not past the batch's
    /// deadline. Unlimited grants need no batch.
    pub fn shared(ledger: Arc<dyn Ledger>, clock: Arc<dyn Clock>) -> Self {
        Self {
            shared: true,
            ..Self::new(ledger, clock)
        }
    }

    /// Whether counted grants' seats are shared with other hosts.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Completes after a request in a shared pool found no seat free here
    /// (at once if one did since the last wait): when a host may need a
    /// larger batch.
    pub async fn seats_wanted(&self) {
        self.wanted.notified().await;
    }

    /// Sets this host's batch of grant `grant` of license `id`: seats beyond
    /// it that are held now (newest first) end as `lease-lapsed`, and
    /// waiters look again. Returns how many seats ended.
    pub fn set_share(&self, id: &str, grant: &str, share: Share) -> Result<usize, LicenseError> {
        self.known(id)?
            .set_share(grant, share)
            .ok_or_else(|| LicenseError::UnknownGrant {
                id: id.to_string(),
                grant: grant.to_string(),
            })
    }

    /// Shrinks this host's batch of grant `grant` of license `id` to
    /// `seats`, or to the seats its calls hold now if more; returns the new
    /// size (`None`: no such grant, or no batch).
    pub fn shrink_share(&self, id: &str, grant: &str, seats: u32) -> Option<u32> {
        self.pool(id)?.shrink_share(grant, seats)
    }

    /// Caps the seats of this host's batch of grant `grant` of license `id`
    /// that calls here may hold at once, while other hosts wait for seats
    /// of it (`None`: the whole batch). `None` if there is no such grant.
    pub fn cap_share(&self, id: &str, grant: &str, cap: Option<u32>) -> Option<()> {
        self.pool(id)?.cap_share(grant, cap)
    }

    /// What this host's calls want of each counted grant now: the seats
    /// held and the calls waiting, with the batch it holds; how a shared
    /// host sizes its batches.
    pub fn demand(&self) -> Vec<GrantDemand> {
        let pools: Vec<Arc<SeatPool>> = {
            let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
            pools.values().cloned().collect()
        };
        pools.iter().flat_map(|p| p.demand()).collect()
    }

    /// The ledger events go to.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Installs a license given in memory as one grant (its id is the
    /// license id), replacing the grants it had. A revocation stays.
    pub fn install(&self, id: &str, terms: Terms) -> Result<(), LicenseError> {
        self.set_grants(id, vec![Grant::new(id, terms)])
    }

    /// Installs a trial license whose events stay out of the host's ledger
    /// (kept in a private in-memory ledger: counted, not billed).
    pub fn install_trial(&self, id: &str, terms: Terms) -> Result<(), LicenseError> {
        self.put(
            id,
            vec![Grant::new(id, terms)],
            Arc::new(MemoryLedger::default()),
        )
    }

    /// Puts `grants` in force for license `id`, creating its pool if needed.
    /// Seats held from a grant that is gone, revoked or out of its window
    /// end at once; counters of grants that stay are kept.
    pub fn set_grants(&self, id: &str, grants: Vec<Grant>) -> Result<(), LicenseError> {
        self.put(id, grants, self.ledger.clone())
    }

    fn put(
        &self,
        id: &str,
        grants: Vec<Grant>,
        ledger: Arc<dyn Ledger>,
    ) -> Result<(), LicenseError> {
        LicenseId::try_from(id)?;
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools.get(id) {
            pool.set_grants(grants);
        } else {
            let id: Arc<str> = id.into();
            let pool = SeatPool::new(
                id.clone(),
                grants,
                self.shared,
                ledger,
                self.clock.clone(),
                self.lease_ids.clone(),
                self.wanted.clone(),
            );
            pools.insert(id, Arc::new(pool));
        }
        Ok(())
    }

    /// Starts `id`'s counters from `history`, e.g. totals read back from a
    /// durable ledger when a host restarts.
    pub fn seed(
        &self,
        id: &str,
        history: Counters,
        per_plugin: BTreeMap<String, Counters>,
    ) -> Result<(), LicenseError> {
        self.known(id)?.seed(history, per_plugin);
        Ok(())
    }

    fn known(&self, id: &str) -> Result<Arc<SeatPool>, LicenseError> {
        self.pool(id)
            .ok_or_else(|| LicenseError::Unknown(id.to_string()))
    }

    /// Makes new lease ids start after `last`, so they stay unique across
    /// restarts of a host with a durable ledger.
    pub fn resume_lease_ids_after(&self, last: u64) {
        self.lease_ids
            .fetch_max(last.saturating_add(1), Ordering::SeqCst);
    }

    /// The pool of `id`, if installed.
    pub fn pool(&self, id: &str) -> Option<Arc<SeatPool>> {
        self.pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Every installed license id, sorted.
    pub fn ids(&self) -> Vec<String> {
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        pools.keys().map(|k| k.to_string()).collect()
    }

    /// The ids `entitlement` allows that are installed here, sorted.
    pub fn ids_for(&self, entitlement: &Entitlement) -> Vec<String> {
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        entitlement
            .ids()
            .filter(|id| pools.contains_key(*id))
            .map(str::to_string)
            .collect()
    }

    /// Starts one call's licensing: the call takes seats through the
    /// returned [`CallSeats`], which returns them when the call ends.
    pub fn call(
        self: &Arc<Self>,
        holder: Holder,
        entitlement: Arc<Entitlement>,
        limits: CallLimits,
    ) -> CallSeats {
        CallSeats::new(self.clone(), holder, entitlement, limits)
    }

    /// Counts a request for an id this host does not have (or the plugin's
    /// manifest does not name).
    fn count_unknown(&self) {
        self.unknown_denials.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the operator's rules for `id` (see [`Rules`] for the order of checks).
    pub fn set_rules(&self, id: &str, rules: Rules) -> Result<(), LicenseError> {
        self.known(id)?.set_rules(rules);
        Ok(())
    }

    /// Revokes license `id`, every grant of it present and future, until
    /// [`LicenseManager::unrevoke`]: returns how many held seats ended.
    pub fn revoke(&self, id: &str) -> Result<usize, LicenseError> {
        Ok(self.known(id)?.revoke())
    }

    /// Revokes one grant of license `id`: returns how many held seats ended.
    pub fn revoke_grant(&self, id: &str, grant: &str) -> Result<usize, LicenseError> {
        self.known(id)?
            .revoke_grant(grant)
            .ok_or_else(|| LicenseError::UnknownGrant {
                id: id.to_string(),
                grant: grant.to_string(),
            })
    }

    /// Lifts the revocation of license `id` (grants revoked one by one stay
    /// revoked).
    pub fn unrevoke(&self, id: &str) -> Result<(), LicenseError> {
        self.known(id)?.unrevoke();
        Ok(())
    }

    /// Ends the seats of every grant that expired while held; returns how
    /// many. Requests and status do this too; a host calls it now and then
    /// so an expired grant's seats end even when nothing else happens.
    pub fn sweep(&self) -> usize {
        let pools: Vec<Arc<SeatPool>> = self
            .pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        pools.iter().map(|p| p.sweep()).sum()
    }

    /// Counts a call withheld for lacking `id` (ignored if `id` is not installed,
    /// beyond the ledger row).
    pub fn record_withheld(&self, holder: &Holder, id: &str) {
        match self.pool(id) {
            Some(pool) => pool.record_withheld(holder),
            None => self.ledger.record(UsageEvent::new(
                EventKind::Withheld,
                self.clock.now_ms(),
                id.into(),
                holder.plugin.clone(),
                holder.component_digest.clone(),
                holder.invocation,
            )),
        }
    }

    /// A snapshot of one license.
    pub fn describe(&self, id: &str) -> Option<LicenseStatus> {
        self.pool(id).map(|p| p.status())
    }

    /// A snapshot of every license.
    pub fn status(&self) -> ManagerStatus {
        let pools: Vec<Arc<SeatPool>> = {
            let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
            pools.values().cloned().collect()
        };
        ManagerStatus {
            licenses: pools.iter().map(|p| p.status()).collect(),
            unknown_license_denials: self.unknown_denials.load(Ordering::Relaxed),
        }
    }
}

impl Pools for LicenseManager {
    fn pool(&self, id: &str) -> Option<Arc<SeatPool>> {
        LicenseManager::pool(self, id)
    }

    fn ids_for(&self, entitlement: &Entitlement) -> Vec<String> {
        LicenseManager::ids_for(self, entitlement)
    }

    fn count_unknown(&self) {
        LicenseManager::count_unknown(self);
    }
}

#[cfg(test)]
mod tests;
