//! The host side of WIT `tollgate:plugin/licensing`: leases live in the
//! store's `ResourceTable`; every seat goes through the [`LicenseManager`].

use super::bindings::licensing::{self, LicenseInfo};
use super::plugin::Limits;
use crate::license::{Denial, Entitlement, Holder, Lease, LicenseManager, ReclaimReason};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasData, Resource, ResourceTable};

/// The guest's handle to a lease: an index into the invocation's held leases.
#[derive(Debug)]
pub struct LeaseRef {
    lease_id: u64,
    license_id: String,
}

/// What one invocation holds and has done with licenses.
pub(crate) struct LicensingState {
    manager: Arc<LicenseManager>,
    holder: Holder,
    entitlement: Arc<Entitlement>,
    wait: Option<Duration>,
    max_leases: usize,
    max_acquires: usize,
    held: HashMap<u64, Lease>,
    /// License ids held validly at some point of this invocation.
    satisfied: BTreeSet<String>,
    /// Every lease handed out during this invocation.
    pub(crate) lease_ids: Vec<u64>,
    /// Why the last request for an entitled id was refused.
    denied: BTreeMap<String, Denial>,
}

impl LicensingState {
    pub(crate) fn new(
        manager: Arc<LicenseManager>,
        holder: Holder,
        entitlement: Arc<Entitlement>,
        limits: &Limits,
    ) -> Self {
        Self {
            manager,
            holder,
            entitlement,
            wait: limits.wait_for_seat,
            max_leases: limits.max_leases,
            max_acquires: limits.max_acquires,
            held: HashMap::new(),
            satisfied: BTreeSet::new(),
            lease_ids: Vec::new(),
            denied: BTreeMap::new(),
        }
    }

    fn end(&mut self, lease: Lease, reason: Option<ReclaimReason>) {
        let id = lease.license_id().to_string();
        let end = match reason {
            None => lease.release(),
            Some(reason) => lease.reclaim(reason),
        };
        if end.valid {
            self.satisfied.insert(id);
        }
    }

    /// Reclaims every lease still held, for `reason`.
    pub(crate) fn reclaim_all(&mut self, reason: ReclaimReason) {
        let mut leftover: Vec<Lease> = self.held.drain().map(|(_, l)| l).collect();
        leftover.sort_by_key(Lease::id);
        for lease in leftover {
            self.end(lease, Some(reason));
        }
    }

    /// Whether a valid lease of `id` was held during this invocation.
    pub(crate) fn satisfied(&self, id: &str) -> bool {
        self.satisfied.contains(id)
    }

    /// Why the last request for `id` was refused, if it was.
    pub(crate) fn denial(&self, id: &str) -> Option<Denial> {
        self.denied.get(id).copied()
    }
}

/// The borrowed view that implements the generated host traits.
pub(crate) struct LicensingView<'a> {
    pub(crate) state: &'a mut LicensingState,
    pub(crate) table: &'a mut ResourceTable,
}

/// Marker tying [`LicensingView`] to the linker.
pub(crate) struct LicensingCtx;

impl HasData for LicensingCtx {
    type Data<'a> = LicensingView<'a>;
}

fn to_wit(denial: Denial) -> licensing::LicenseError {
    use licensing::LicenseError as E;
    match denial {
        Denial::UnknownLicense => E::UnknownLicense,
        Denial::Exhausted => E::Exhausted,
        Denial::Expired => E::Expired,
        Denial::NotEntitled => E::NotEntitled,
        Denial::TimedOut => E::TimedOut,
        Denial::Revoked => E::Revoked,
    }
}

impl LicensingView<'_> {
    fn end_handle(&mut self, handle: Resource<LeaseRef>) -> wasmtime::Result<()> {
        let lease_ref = self.table.delete(handle)?;
        if let Some(lease) = self.state.held.remove(&lease_ref.lease_id) {
            self.state.end(lease, None);
        }
        Ok(())
    }
}

impl licensing::Host for LicensingView<'_> {
    fn license_ids(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.state.manager.ids_for(&self.state.entitlement))
    }

    fn describe(
        &mut self,
        license_id: String,
    ) -> wasmtime::Result<Result<LicenseInfo, licensing::LicenseError>> {
        let Some(status) = self.state.manager.describe(&license_id) else {
            return Ok(Err(to_wit(Denial::UnknownLicense)));
        };
        if !self.state.entitlement.allows(&license_id) {
            return Ok(Err(to_wit(Denial::NotEntitled)));
        }
        Ok(Ok(LicenseInfo {
            id: status.id,
            seats: status.terms.seats.limit(),
            in_use: status.counters.in_use,
            expires_at: status.terms.expires_at,
        }))
    }

    async fn acquire(
        &mut self,
        license_id: String,
    ) -> wasmtime::Result<Result<Resource<LeaseRef>, licensing::LicenseError>> {
        let state = &mut *self.state;
        // Caps on what one call may hold and ask for, so a plugin looping on
        // acquire can neither exhaust host memory nor flood the ledger.
        if state.held.len() >= state.max_leases || state.lease_ids.len() >= state.max_acquires {
            return Ok(Err(to_wit(Denial::Exhausted)));
        }
        // Waiting for a seat suspends only this call; a time limit or a
        // cancelled caller drops the wait and leaves the queue.
        match state
            .manager
            .acquire_async(&state.holder, &state.entitlement, &license_id, state.wait)
            .await
        {
            Ok(lease) => {
                let lease_id = lease.id();
                state.held.insert(lease_id, lease);
                state.lease_ids.push(lease_id);
                let handle = self.table.push(LeaseRef {
                    lease_id,
                    license_id,
                })?;
                Ok(Ok(handle))
            }
            Err(denial) => {
                if state.entitlement.allows(&license_id) {
                    state.denied.insert(license_id, denial);
                }
                Ok(Err(to_wit(denial)))
            }
        }
    }

    fn release(&mut self, lease: Resource<LeaseRef>) -> wasmtime::Result<()> {
        self.end_handle(lease)
    }
}

impl licensing::HostLease for LicensingView<'_> {
    fn license_id(&mut self, lease: Resource<LeaseRef>) -> wasmtime::Result<String> {
        Ok(self.table.get(&lease)?.license_id.clone())
    }

    fn valid(&mut self, lease: Resource<LeaseRef>) -> wasmtime::Result<bool> {
        let lease_id = self.table.get(&lease)?.lease_id;
        Ok(self.state.held.get(&lease_id).is_some_and(Lease::is_valid))
    }

    fn drop(&mut self, lease: Resource<LeaseRef>) -> wasmtime::Result<()> {
        self.end_handle(lease)
    }
}
