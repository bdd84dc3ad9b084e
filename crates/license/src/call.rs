//! What one call holds: the seats it took, kept until it ends, the leases
//! its plugin holds on them, and its refusals, counted when it ends.

use crate::clock::Timer;
use crate::pool::{Holder, Seat, SeatLost, SeatPool, Seats};
use crate::reason::{Denial, ReclaimReason};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Where a call finds the seat pools of the ids it asks for: the license
/// manager, seen from a call (so a call needs nothing else of it).
pub trait Pools: Send + Sync + std::fmt::Debug {
    /// The pool of license `id`, if installed.
    fn pool(&self, id: &str) -> Option<Arc<SeatPool>>;
    /// The ids `entitlement` allows that are installed, sorted.
    fn ids_for(&self, entitlement: &Entitlement) -> Vec<String>;
    /// Counts a request for an id no pool has.
    fn count_unknown(&self);
}

/// Which license ids a plugin may ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entitlement {
    ids: BTreeSet<String>,
}

impl Entitlement {
    /// A plugin entitled to exactly these ids.
    pub fn to<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        Self {
            ids: ids.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `id` is among them.
    pub fn allows(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// The ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(String::as_str)
    }
}

/// What a plugin is told about one license it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LicenseInfo {
    /// The license id.
    pub id: String,
    /// Seats of the grants in force that entitle the plugin.
    pub seats: Seats,
    /// Seats held now, by every plugin.
    pub in_use: u32,
    /// The latest end among those grants (`None`: one never ends).
    pub expires_at: Option<u64>,
}

/// Caps on what one call may ask for, so a plugin looping on `acquire` can
/// neither exhaust host memory nor flood the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// How long a request may wait for a seat; `None`: refuse at once.
    pub wait: Option<Duration>,
    /// Most leases the plugin may hold at once.
    pub max_leases: usize,
    /// Most requests in all, granted or refused.
    pub max_acquires: usize,
}

/// How a call's licensing ended, for deciding whether its result is delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallLicensing {
    /// License ids of which the call held a seat up to its end, from a grant
    /// still in force when it ended.
    pub held_to_end: BTreeSet<String>,
    /// Why the call lacks an id it asked for: the last refusal, or why the
    /// seat it held ended early (`revoked`, `expired`).
    pub denied: BTreeMap<String, Denial>,
    /// Ids whose seat ended during the call because its shared-store batch
    /// lapsed: the call ran without the seat being sure.
    pub lapsed: BTreeSet<String>,
    /// Every lease handed out during the call, in order.
    pub leases: Vec<u64>,
}

/// The seats one call holds, from its first `acquire` until [`CallSeats::end`].
///
/// A seat the call takes stays taken until the call ends: when the plugin
/// sends its lease back the seat lingers with the call, and asking for the
/// same license again takes that seat back instead of a new one. So N seats
/// bound N concurrent calls whatever the plugin does with its handles.
/// Dropped without `end`, every seat comes back as `store-dropped`.
#[derive(Debug)]
pub struct CallSeats {
    manager: Arc<dyn Pools>,
    holder: Holder,
    entitlement: Arc<Entitlement>,
    limits: CallLimits,
    seats: Vec<Seat>,
    requests: usize,
    /// Refusals by license id and reason, recorded as one row each at the end.
    refused: BTreeMap<(String, Denial), u64>,
    outcome: CallLicensing,
    ended: bool,
}

impl CallSeats {
    pub(super) fn new(
        manager: Arc<dyn Pools>,
        holder: Holder,
        entitlement: Arc<Entitlement>,
        limits: CallLimits,
    ) -> Self {
        Self {
            manager,
            holder,
            entitlement,
            limits,
            seats: Vec::new(),
            requests: 0,
            refused: BTreeMap::new(),
            outcome: CallLicensing::default(),
            ended: false,
        }
    }

    /// Who holds the seats.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// The license ids this call's plugin may ask for that are installed.
    pub fn license_ids(&self) -> Vec<String> {
        self.manager.ids_for(&self.entitlement)
    }

    /// What the plugin is told about `id`: seats of the grants in force that
    /// entitle it, seats in use, and the latest end among those grants. An id
    /// outside the plugin's manifest is `unknown-license`, installed or not.
    pub fn describe(&self, id: &str) -> Result<LicenseInfo, Denial> {
        if !self.entitlement.allows(id) {
            return Err(Denial::UnknownLicense);
        }
        let pool = self.manager.pool(id).ok_or(Denial::UnknownLicense)?;
        let (seats, expires_at, in_use) = pool.describe_for(&self.holder)?;
        Ok(LicenseInfo {
            id: id.to_string(),
            seats,
            in_use,
            expires_at,
        })
    }

    /// A lease on a seat of `id`, blocking up to the call's wait; its id.
    pub fn acquire(&mut self, id: &str) -> Result<u64, Denial> {
        let pool = self.admit(id)?;
        if let Some(lease) = self.retake(id) {
            return lease;
        }
        let taken = pool.take(&self.holder, self.limits.wait);
        self.taken(id, taken)
    }

    /// Like [`CallSeats::acquire`], awaiting a seat instead of blocking;
    /// dropping the future gives up the place in line. `timer` ends the wait
    /// (the core has no timer of its own).
    pub async fn acquire_async(&mut self, id: &str, timer: &dyn Timer) -> Result<u64, Denial> {
        let pool = self.admit(id)?;
        if let Some(lease) = self.retake(id) {
            return lease;
        }
        let taken = pool.take_async(&self.holder, self.limits.wait, timer).await;
        self.taken(id, taken)
    }

    /// Checks the call's caps and the manifest, and finds the pool.
    fn admit(&mut self, id: &str) -> Result<Arc<SeatPool>, Denial> {
        // Probing for ids outside the manifest learns nothing: they are all
        // unknown, installed or not, and leave no ledger row.
        let pool = match self.manager.pool(id) {
            Some(pool) if self.entitlement.allows(id) => pool,
            _ => {
                self.manager.count_unknown();
                return Err(Denial::UnknownLicense);
            }
        };
        self.requests += 1;
        let open = self.seats.iter().filter(|s| s.lease().is_some()).count();
        if self.requests > self.limits.max_acquires || open >= self.limits.max_leases {
            return Err(self.refuse(id, Denial::Exhausted));
        }
        Ok(pool)
    }

    /// A new lease on a seat of `id` this call holds and whose lease its
    /// plugin sent back, if there is one. A lingering seat whose grant ended
    /// meanwhile is let go, and the request goes to the pool.
    fn retake(&mut self, id: &str) -> Option<Result<u64, Denial>> {
        loop {
            let i = self
                .seats
                .iter()
                .position(|s| s.license_id() == id && s.lease().is_none())?;
            match self.seats[i].retake() {
                Ok(lease) => {
                    self.outcome.leases.push(lease);
                    return Some(Ok(lease));
                }
                Err(Denial::Exhausted) => return Some(Err(self.refuse(id, Denial::Exhausted))),
                Err(_) => {
                    // Its grant was revoked or expired: the pool already took
                    // the seat back; this call no longer holds it.
                    let gone = self.seats.remove(i);
                    let _ = gone.give_back(ReclaimReason::InvocationEnded);
                }
            }
        }
    }

    fn taken(&mut self, id: &str, taken: Result<Seat, Denial>) -> Result<u64, Denial> {
        match taken {
            Ok(seat) => {
                let lease = seat.id();
                self.outcome.leases.push(lease);
                self.seats.push(seat);
                Ok(lease)
            }
            Err(denial) => Err(self.refuse(id, denial)),
        }
    }

    fn refuse(&mut self, id: &str, denial: Denial) -> Denial {
        *self.refused.entry((id.to_string(), denial)).or_default() += 1;
        self.outcome.denied.insert(id.to_string(), denial);
        denial
    }

    /// The license id of open lease `lease`, if this call holds it.
    pub fn lease_license(&self, lease: u64) -> Option<&str> {
        self.seat_of(lease).map(Seat::license_id)
    }

    fn seat_of(&self, lease: u64) -> Option<&Seat> {
        self.seats.iter().find(|s| s.lease() == Some(lease))
    }

    /// Whether `lease` is open, its seat still held and its grant in force.
    pub fn lease_is_valid(&self, lease: u64) -> bool {
        self.seat_of(lease).is_some_and(|s| s.lease_is_valid(lease))
    }

    /// The plugin sends `lease` back: recorded as a release; the seat stays
    /// with the call until it ends. False if the call holds no such lease.
    pub fn release(&mut self, lease: u64) -> bool {
        self.seats
            .iter_mut()
            .find(|s| s.lease() == Some(lease))
            .is_some_and(Seat::release)
    }

    /// Ends the call: leases the plugin still holds are reclaimed for
    /// `reason`, every seat returns to its pool, refusals are recorded (one
    /// row per license id and reason, with a count).
    pub fn end(&mut self, reason: ReclaimReason) -> CallLicensing {
        if self.ended {
            return std::mem::take(&mut self.outcome);
        }
        self.ended = true;
        let mut lost = BTreeMap::new();
        for seat in std::mem::take(&mut self.seats) {
            let id = seat.license_id().to_string();
            match seat.give_back(reason) {
                Ok(()) => {
                    self.outcome.held_to_end.insert(id);
                }
                Err(why) => {
                    lost.insert(id, why);
                }
            }
        }
        // A seat whose grant was revoked or expired, or whose batch lapsed,
        // during the call says why the call lacks that license.
        for (id, why) in lost {
            if !self.outcome.held_to_end.contains(&id) {
                match why {
                    SeatLost::Denied(denial) => {
                        self.outcome.denied.insert(id, denial);
                    }
                    SeatLost::Lapsed => {
                        self.outcome.lapsed.insert(id);
                    }
                }
            }
        }
        for ((id, denial), count) in std::mem::take(&mut self.refused) {
            if let Some(pool) = self.manager.pool(&id) {
                pool.record_denials(&self.holder, denial, count);
            }
        }
        std::mem::take(&mut self.outcome)
    }
}

impl Drop for CallSeats {
    fn drop(&mut self) {
        if !self.ended {
            self.end(ReclaimReason::StoreDropped);
        }
    }
}
