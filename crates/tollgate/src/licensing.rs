//! tollgate's licensing in an embedder's own wasmtime store.
//!
//! A component of the world `tollgate:plugin/service-offer` imports the WIT
//! interface `tollgate:plugin/licensing`. This module is its host side, the
//! same one tollgate's own invocations use, for an embedder who runs such a
//! component in a store of their own:
//!
//! - [`LicensedCall`]: the owned state of one call, kept in the store. It
//!   holds the seats the call takes until the call ends, and it is the guard
//!   that ends the call: [`LicensedCall::finish`] (or
//!   [`LicensedCall::end`] then [`EndedCall::commit`]) reclaims the leases
//!   still open, returns every seat, delivers the result only if the call
//!   held every required license to its end, and returns it only once the
//!   call's ledger rows are committed.
//! - [`LicensingView`]: the borrowed view (the call's state plus the store's
//!   [`ResourceTable`], where leases live) that implements the interface.
//! - [`add_to_linker`]: adds the interface to a [`Linker`].
//!
//! ```no_run
//! # async fn sketch(host: &tollgate::Host, component: &[u8]) -> wasmtime::Result<()> {
//! use tollgate::licensing::{self, LicensedCall, LicensingView};
//! use wasmtime::component::{Component, Linker, ResourceTable};
//! use wasmtime::{Engine, Store};
//!
//! struct State {
//!     table: ResourceTable,
//!     licensing: LicensedCall,
//! }
//!
//! let engine = Engine::default();
//! let mut linker = Linker::<State>::new(&engine);
//! licensing::add_to_linker(&mut linker, |s: &mut State| {
//!     LicensingView::new(&mut s.licensing, &mut s.table)
//! })?;
//! // One call: open it, run the component in its own store, end it.
//! let limits = tollgate::license::CallLimits::from(&tollgate::Limits::default());
//! let call = host.open_call("hello", component, &["demo"], limits)?;
//! let state = State { table: ResourceTable::new(), licensing: call };
//! let mut store = Store::new(&engine, state);
//! let instance = linker
//!     .instantiate_async(&mut store, &Component::new(&engine, component)?)
//!     .await?;
//! let returned: Result<Vec<u8>, String> = // ... call `invoke` on `instance` ...
//! #   Ok(Vec::new());
//! // No guest code runs after this; the result is withheld unless licensed.
//! let output = store.into_data().licensing.finish_async(returned).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Dropping a [`LicensedCall`] without ending it (a cancelled call, a store
//! dropped early) reclaims its leases and returns its seats as
//! `store-dropped`; no result passes through it, so none is delivered.

use crate::license::ledger::LedgerError;
use crate::license::{
    CallLimits, CallSeats, Denial, Entitlement, Holder, LicenseManager, ReclaimReason,
};
use crate::runtime::Limits;
use crate::runtime::bindings::licensing::{self as generated, LicenseInfo};
use std::fmt;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// A required license a call did not hold, and why, if it asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingLicense {
    /// The required license id.
    pub id: String,
    /// Why the host refused it, if the plugin asked.
    pub denial: Option<Denial>,
    /// Its seat ended during the call because the shared store's batch it
    /// came from lapsed (another host may hold that seat now).
    pub lapsed: bool,
}

impl fmt::Display for MissingLicense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.denial {
            _ if self.lapsed => write!(
                f,
                "{} (its seat's batch from the shared store lapsed during the call)",
                self.id
            ),
            Some(d) => write!(f, "{} (its request was refused: {d})", self.id),
            None => write!(f, "{} (never acquired)", self.id),
        }
    }
}

/// The missing licenses, comma-separated, for error messages.
pub(crate) fn list(missing: &[MissingLicense]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stable code of a result withheld for lacking `missing`:
/// `lease-lapsed` when a seat's shared batch lapsed, else the first
/// refusal's reason, or `unlicensed` when the plugin never asked.
pub(crate) fn unlicensed_code(missing: &[MissingLicense]) -> &'static str {
    if missing.iter().any(|m| m.lapsed) {
        return "lease-lapsed";
    }
    match missing.iter().find_map(|m| m.denial) {
        Some(Denial::NotEntitled) => "not-entitled",
        Some(Denial::Exhausted) => "exhausted",
        Some(Denial::TimedOut) => "seat-wait-timed-out",
        Some(Denial::Revoked) => "revoked",
        Some(Denial::Expired) => "expired",
        _ => "unlicensed",
    }
}

/// Why the result of a call did not reach its caller.
#[derive(Debug, thiserror::Error)]
pub enum Withheld {
    /// The call ended without a required license: its result is withheld.
    #[error("result of call {invocation} withheld as unlicensed: it did not hold {}", list(.missing))]
    Unlicensed {
        /// The call's invocation id.
        invocation: u64,
        /// The required licenses it lacked.
        missing: Vec<MissingLicense>,
    },
    /// The call's usage could not be made durable, so it is not acknowledged.
    #[error("the usage of call {invocation} could not be recorded, so its result is withheld")]
    NotRecorded {
        /// The call's invocation id.
        invocation: u64,
        /// What the ledger reported.
        #[source]
        source: LedgerError,
    },
}

impl Withheld {
    /// A short stable code for the reason, as tollgate's logs and HTTP
    /// errors use it.
    pub fn code(&self) -> &'static str {
        match self {
            Withheld::Unlicensed { missing, .. } => unlicensed_code(missing),
            Withheld::NotRecorded { .. } => "ledger-unavailable",
        }
    }
}

/// How the guest's part of a call ended.
#[derive(Debug)]
pub enum CallEnd<T> {
    /// The guest returned `T`: delivered only if the call held every
    /// required license to its end. Open leases are reclaimed as
    /// `invocation-ended`.
    Returned(T),
    /// The host stopped the call (a trap, a time limit, a cancellation):
    /// open leases are reclaimed for `reason`, and `report` is what the
    /// caller gets instead of a result, licensed or not. It should carry
    /// nothing the guest wrote.
    Stopped {
        /// Why the call's leases end.
        reason: ReclaimReason,
        /// The host's own account of the stop.
        report: T,
    },
}

/// One call's licensing: the seats it takes, kept in the store until the
/// call ends, and the guard that ends it.
///
/// Put it in the store's data, reach it from [`add_to_linker`] through a
/// [`LicensingView`], and once the guest is done take it back out of the
/// store (e.g. with [`wasmtime::Store::into_data`]) and end it with
/// [`LicensedCall::finish`] or [`LicensedCall::end`]. Dropped without
/// ending, its leases are reclaimed and its seats returned as
/// `store-dropped`.
#[must_use = "a call's result is delivered only through `finish` or `end`; dropping it returns its seats as store-dropped"]
#[derive(Debug)]
pub struct LicensedCall {
    seats: CallSeats,
    requires: Vec<String>,
    /// Also the call's license manager and invocation id.
    will_ask: WillAsk,
}

/// A call's promise to the ledger that it will ask for its rows' commit
/// ([`Ledger::call_started`]), kept until it does; dropped before, the
/// call is abandoned there, so no commit waits for it.
#[derive(Debug)]
struct WillAsk {
    licenses: Arc<LicenseManager>,
    invocation: u64,
    asked: bool,
}

impl WillAsk {
    fn new(licenses: &Arc<LicenseManager>, invocation: u64) -> Self {
        licenses.ledger().call_started(invocation);
        Self {
            licenses: licenses.clone(),
            invocation,
            asked: false,
        }
    }
}

impl Drop for WillAsk {
    fn drop(&mut self) {
        if !self.asked {
            self.licenses.ledger().call_abandoned(self.invocation);
        }
    }
}

impl LicensedCall {
    /// Opens the licensing of one call by `holder` on `licenses`: it may ask
    /// for the ids `entitlement` allows, within `limits`, and its result is
    /// delivered only if it holds every id of `requires` to its end (an id
    /// outside `entitlement` can never be held).
    pub fn open(
        licenses: &Arc<LicenseManager>,
        holder: Holder,
        entitlement: Arc<Entitlement>,
        requires: Vec<String>,
        limits: CallLimits,
    ) -> Self {
        let will_ask = WillAsk::new(licenses, holder.invocation);
        Self {
            seats: licenses.call(holder, entitlement, limits),
            requires,
            will_ask,
        }
    }

    /// Who the call is: the plugin, its component's digest, its invocation id.
    pub fn holder(&self) -> &Holder {
        self.seats.holder()
    }

    /// The license ids the call must hold to its end.
    pub fn requires(&self) -> &[String] {
        &self.requires
    }

    /// Ends the call: leases still open are reclaimed, every seat returns to
    /// its pool, refusals are recorded, and a returned result is kept only
    /// if the call held every required license to this moment, from a grant
    /// still in force (otherwise it is dropped here and the call recorded as
    /// withheld). The answer reaches the caller through [`EndedCall::commit`].
    pub fn end<T>(mut self, how: CallEnd<T>) -> EndedCall<T> {
        let reason = match &how {
            CallEnd::Returned(_) => ReclaimReason::InvocationEnded,
            CallEnd::Stopped { reason, .. } => *reason,
        };
        let ended = self.seats.end(reason);
        let holder = self.seats.holder();
        let invocation = holder.invocation;
        let outcome = match how {
            CallEnd::Stopped { report, .. } => Ok(report),
            CallEnd::Returned(returned) => {
                let missing: Vec<MissingLicense> = self
                    .requires
                    .iter()
                    .filter(|id| !ended.held_to_end.contains(*id))
                    .map(|id| MissingLicense {
                        id: id.clone(),
                        denial: ended.denied.get(id).copied(),
                        lapsed: ended.lapsed.contains(id),
                    })
                    .collect();
                if missing.is_empty() {
                    Ok(returned)
                } else {
                    drop(returned);
                    for m in &missing {
                        self.will_ask.licenses.record_withheld(holder, &m.id);
                    }
                    Err(Withheld::Unlicensed {
                        invocation,
                        missing,
                    })
                }
            }
        };
        EndedCall {
            leases: ended.leases,
            outcome,
            will_ask: self.will_ask,
        }
    }

    /// Ends a call whose guest returned `returned` (see [`LicensedCall::end`])
    /// and waits, blocking the thread, until its usage is durable. Must not
    /// be called from async code; use [`LicensedCall::finish_async`] there.
    pub fn finish<T>(self, returned: T) -> Result<T, Withheld> {
        self.end(CallEnd::Returned(returned)).commit()
    }

    /// Like [`LicensedCall::finish`], awaiting durability.
    pub async fn finish_async<T: Send>(self, returned: T) -> Result<T, Withheld> {
        self.end(CallEnd::Returned(returned)).commit_async().await
    }
}

/// A call that has ended, whose answer waits for its usage to be durable.
///
/// Dropped without [`EndedCall::commit`], the answer reaches no one; the
/// seats are back either way.
#[must_use = "the answer reaches the caller only through `commit`, once the call's usage is durable"]
pub struct EndedCall<T> {
    leases: Vec<u64>,
    outcome: Result<T, Withheld>,
    /// Also the call's license manager and invocation id.
    will_ask: WillAsk,
}

impl<T> fmt::Debug for EndedCall<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndedCall")
            .field("invocation", &self.will_ask.invocation)
            .field("leases", &self.leases)
            .field("withheld", &self.withheld())
            .finish_non_exhaustive()
    }
}

impl<T> EndedCall<T> {
    /// The call's invocation id.
    pub fn invocation(&self) -> u64 {
        self.will_ask.invocation
    }

    /// Every lease handed out during the call, in order.
    pub fn leases(&self) -> &[u64] {
        &self.leases
    }

    /// The required licenses the call lacked, if its result is withheld
    /// for that.
    pub fn withheld(&self) -> Option<&[MissingLicense]> {
        match &self.outcome {
            Err(Withheld::Unlicensed { missing, .. }) => Some(missing),
            _ => None,
        }
    }

    /// The answer, once the call's ledger rows are committed (blocking the
    /// thread until they are); withheld if they cannot be. Must not be
    /// called from async code; use [`EndedCall::commit_async`] there.
    pub fn commit(mut self) -> Result<T, Withheld> {
        self.will_ask.asked = true;
        let call = &self.will_ask;
        let synced = call.licenses.ledger().sync_invocation(call.invocation);
        self.answer(synced)
    }

    /// Like [`EndedCall::commit`], awaiting the commit.
    pub async fn commit_async(mut self) -> Result<T, Withheld>
    where
        T: Send,
    {
        // The ask is made when the future is created, before it is awaited.
        self.will_ask.asked = true;
        let call = &self.will_ask;
        let synced = call
            .licenses
            .ledger()
            .sync_invocation_async(call.invocation)
            .await;
        self.answer(synced)
    }

    fn answer(self, synced: Result<(), LedgerError>) -> Result<T, Withheld> {
        match synced {
            Ok(()) => self.outcome,
            Err(source) => Err(Withheld::NotRecorded {
                invocation: self.will_ask.invocation,
                source,
            }),
        }
    }
}

/// The seat and lease limits of a plugin's [`Limits`].
impl From<&Limits> for CallLimits {
    fn from(limits: &Limits) -> Self {
        CallLimits {
            wait: limits.wait_for_seat,
            max_leases: limits.max_leases,
            max_acquires: limits.max_acquires,
        }
    }
}

/// The guest's handle to a lease, kept in the store's [`ResourceTable`]:
/// the lease id and its license id.
#[derive(Debug)]
pub struct LeaseRef {
    lease_id: u64,
    license_id: String,
}

/// One call's licensing state and the store's resource table, borrowed for
/// a host call: what [`add_to_linker`] reaches the interface through.
pub struct LicensingView<'a> {
    call: &'a mut LicensedCall,
    table: &'a mut ResourceTable,
}

impl<'a> LicensingView<'a> {
    /// A view of `call` keeping its leases in `table` (the store's table,
    /// which WASI shares).
    pub fn new(call: &'a mut LicensedCall, table: &'a mut ResourceTable) -> Self {
        Self { call, table }
    }

    /// The plugin sends the lease back (release or drop): the lease ends,
    /// the seat stays with the call until it ends.
    fn end_handle(&mut self, handle: Resource<LeaseRef>) -> wasmtime::Result<()> {
        let lease = self.table.delete(handle)?;
        self.call.seats.release(lease.lease_id);
        Ok(())
    }
}

/// Adds the `tollgate:plugin/licensing` interface to `linker`; `get` finds
/// the call's [`LicensingView`] in the store's data. Its `acquire` may wait
/// for a seat, so instances must be run with wasmtime's async API on a
/// tokio runtime.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> LicensingView<'_>,
) -> wasmtime::Result<()> {
    generated::add_to_linker::<T, HasLicensing>(linker, get)
}

/// Ties [`LicensingView`] to the linker.
struct HasLicensing;

impl HasData for HasLicensing {
    type Data<'a> = LicensingView<'a>;
}

fn to_wit(denial: Denial) -> generated::LicenseError {
    use generated::LicenseError as E;
    match denial {
        Denial::UnknownLicense => E::UnknownLicense,
        Denial::Exhausted => E::Exhausted,
        Denial::Expired => E::Expired,
        Denial::NotEntitled => E::NotEntitled,
        Denial::TimedOut => E::TimedOut,
        Denial::Revoked => E::Revoked,
    }
}

impl generated::Host for LicensingView<'_> {
    fn license_ids(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.call.seats.license_ids())
    }

    fn describe(
        &mut self,
        license_id: String,
    ) -> wasmtime::Result<Result<LicenseInfo, generated::LicenseError>> {
        Ok(self
            .call
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
    ) -> wasmtime::Result<Result<Resource<LeaseRef>, generated::LicenseError>> {
        // Waiting for a seat suspends only this call; a time limit or a
        // cancelled caller drops the wait and leaves the queue.
        match self
            .call
            .seats
            .acquire_async(&license_id, &TokioTimer)
            .await
        {
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

impl generated::HostLease for LicensingView<'_> {
    fn license_id(&mut self, lease: Resource<LeaseRef>) -> wasmtime::Result<String> {
        Ok(self.table.get(&lease)?.license_id.clone())
    }

    fn valid(&mut self, lease: Resource<LeaseRef>) -> wasmtime::Result<bool> {
        let lease_id = self.table.get(&lease)?.lease_id;
        Ok(self.call.seats.lease_is_valid(lease_id))
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
