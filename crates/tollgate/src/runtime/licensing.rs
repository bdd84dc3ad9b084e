//! The host side of WIT `tollgate:plugin/licensing`: leases live in the
//! store's `ResourceTable`; every seat goes through the call's [`CallSeats`].

use super::bindings::licensing::{self, LicenseInfo};
use crate::license::{CallSeats, Denial};
use wasmtime::component::{HasData, Resource, ResourceTable};

/// The guest's handle to a lease: the lease id and its license id.
#[derive(Debug)]
pub struct LeaseRef {
    lease_id: u64,
    license_id: String,
}

/// The borrowed view that implements the generated host traits.
pub(crate) struct LicensingView<'a> {
    pub(crate) seats: &'a mut CallSeats,
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
    /// The plugin sends the lease back (release or drop): the lease ends,
    /// the seat stays with the call until it ends.
    fn end_handle(&mut self, handle: Resource<LeaseRef>) -> wasmtime::Result<()> {
        let lease = self.table.delete(handle)?;
        self.seats.release(lease.lease_id);
        Ok(())
    }
}

impl licensing::Host for LicensingView<'_> {
    fn license_ids(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.seats.license_ids())
    }

    fn describe(
        &mut self,
        license_id: String,
    ) -> wasmtime::Result<Result<LicenseInfo, licensing::LicenseError>> {
        Ok(self
            .seats
            .describe(&license_id)
            .map(|info| LicenseInfo {
                id: info.id,
                seats: info.seats.limit(),
                in_use: info.in_use,
                expires_at: info.expires_at,
            })
            .map_err(to_wit))
    }

    async fn acquire(
        &mut self,
        license_id: String,
    ) -> wasmtime::Result<Result<Resource<LeaseRef>, licensing::LicenseError>> {
        // Waiting for a seat suspends only this call; a time limit or a
        // cancelled caller drops the wait and leaves the queue.
        match self.seats.acquire_async(&license_id, &TokioTimer).await {
            Ok(lease_id) => {
                let handle = self.table.push(LeaseRef {
                    lease_id,
                    license_id,
                })?;
                Ok(Ok(handle))
            }
            Err(denial) => Ok(Err(to_wit(denial))),
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
        Ok(self.seats.lease_is_valid(lease_id))
    }

    fn drop(&mut self, lease: Resource<LeaseRef>) -> wasmtime::Result<()> {
        self.end_handle(lease)
    }
}

/// tokio's timer, which ends a wait for a seat at its deadline.
struct TokioTimer;

impl crate::license::Timer for TokioTimer {
    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}
