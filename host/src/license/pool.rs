//! One license id's seats: an atomic acquire, release, reclaim and revoke,
//! with a fair FIFO wait queue and counters.

use super::clock::Clock;
use super::reason::{Denial, ReasonCounts, ReclaimReason};
use crate::ledger::{EventKind, Ledger, UsageEvent};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How many seats a license has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seats {
    /// At most this many leases at once.
    Counted(u32),
    /// Uncounted: any number of leases (each still counted as a checkout).
    Unlimited,
}

impl Seats {
    /// The seat count, or `None` when uncounted.
    pub fn limit(self) -> Option<u32> {
        match self {
            Seats::Counted(n) => Some(n),
            Seats::Unlimited => None,
        }
    }
}

/// The terms of one license: seats and validity window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Terms {
    /// How many seats.
    pub seats: Seats,
    /// Not valid before this unix second.
    pub not_before: Option<u64>,
    /// Not valid after this unix second.
    pub expires_at: Option<u64>,
    /// Plugins entitled, by name or `sha256:HEX`; empty: any plugin.
    pub plugins: Vec<String>,
}

impl Terms {
    /// Terms with `seats`, no validity window and no plugin rule.
    pub fn new(seats: Seats) -> Self {
        Self {
            seats,
            not_before: None,
            expires_at: None,
            plugins: Vec::new(),
        }
    }

    /// Whether the plugin rule lets `holder` use this license.
    pub fn entitles(&self, holder: &Holder) -> bool {
        self.plugins.is_empty()
            || self.plugins.iter().any(|p| {
                **p == *holder.plugin
                    || p.strip_prefix("sha256:") == Some(&*holder.component_digest)
            })
    }

    /// Whether the license is valid at unix second `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        within_window(self.not_before, self.expires_at, now)
    }
}

/// Whether unix second `now` lies in `[not_before, expires_at]` (open ends
/// when unset).
pub fn within_window(not_before: Option<u64>, expires_at: Option<u64>, now: u64) -> bool {
    not_before.is_none_or(|t| now >= t) && expires_at.is_none_or(|t| now <= t)
}

/// Who holds or asks for a seat: the plugin, its component and the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// The sha256 of the plugin's component, hex.
    pub component_digest: Arc<str>,
    /// The invocation asking.
    pub invocation: u64,
}

/// Counters for one license id, or for one plugin's use of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Seats held right now.
    pub in_use: u32,
    /// The most seats held at once.
    pub peak: u32,
    /// Leases handed out.
    pub checkouts: u64,
    /// Leases sent back by the plugin.
    pub releases: u64,
    /// Leases taken back by the host, by reason.
    pub reclaims: ReasonCounts<ReclaimReason>,
    /// Requests refused, by reason.
    pub denials: ReasonCounts<Denial>,
    /// Calls whose result was withheld because they lacked this license.
    pub withheld: u64,
}

impl Counters {
    fn checkout(&mut self) {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        self.checkouts += 1;
    }

    fn end(&mut self, end: LeaseEnding) {
        self.in_use = self.in_use.saturating_sub(1);
        match end {
            LeaseEnding::Released => self.releases += 1,
            LeaseEnding::Reclaimed(reason) => self.reclaims.add(reason, 1),
        }
    }

    /// Whether every lease handed out has come back: `checkouts == releases + reclaims`.
    pub fn balanced(&self) -> bool {
        self.in_use == 0 && self.checkouts == self.releases + self.reclaims.total()
    }
}

/// A snapshot of one license id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LicenseStatus {
    /// The license id.
    pub id: String,
    /// Seats and validity.
    pub terms: Terms,
    /// Whether the operator revoked it.
    pub revoked: bool,
    /// Callers waiting for a seat right now.
    pub waiting: usize,
    /// Counters over all plugins.
    pub counters: Counters,
    /// Counters per plugin name.
    pub per_plugin: BTreeMap<String, Counters>,
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnding {
    /// The plugin sent it back.
    Released,
    /// The host took it back.
    Reclaimed(ReclaimReason),
}

/// The outcome of ending a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseEnd {
    /// The lease was still valid (not revoked, not expired) when it ended.
    pub valid: bool,
}

/// An operator's rules for one license, applied after the issuer's terms.
///
/// Order of checks on every request: revoked; the issuer's plugin list;
/// `include` / `exclude`; the validity window; then `max_per_plugin` and
/// seats, where seats `reserve`d for other plugins (and not yet used by
/// them) count as taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rules {
    /// Only these plugins may use the license (empty: every plugin).
    pub include: Vec<String>,
    /// These plugins may not.
    pub exclude: Vec<String>,
    /// Seats held back for a plugin: others may not take them.
    pub reserve: BTreeMap<String, u32>,
    /// Most seats one plugin may hold at once.
    pub max_per_plugin: Option<u32>,
}

impl Rules {
    /// Whether include/exclude let `plugin` use the license.
    pub fn admits(&self, plugin: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p == plugin))
            && !self.exclude.iter().any(|p| p == plugin)
    }
}

struct PoolState {
    terms: Terms,
    rules: Rules,
    revoked: bool,
    outstanding: HashMap<u64, Holder>,
    totals: Counters,
    per_plugin: HashMap<Arc<str>, Counters>,
    /// Waiters in arrival order: ticket and plugin.
    queue: VecDeque<(u64, Arc<str>)>,
    next_ticket: u64,
}

impl PoolState {
    /// Not revoked and inside the validity window at `now`.
    fn in_force(&self, now: u64) -> bool {
        !self.revoked && self.terms.valid_at(now)
    }

    fn held_by(&self, plugin: &str) -> u32 {
        self.per_plugin.get(plugin).map_or(0, |c| c.in_use)
    }

    /// Whether `plugin` may take a seat now under the seat count, its
    /// per-plugin maximum and the other plugins' reservations.
    fn can_take(&self, plugin: &str) -> bool {
        if self
            .rules
            .max_per_plugin
            .is_some_and(|max| self.held_by(plugin) >= max)
        {
            return false;
        }
        match self.terms.seats {
            Seats::Unlimited => true,
            Seats::Counted(n) => {
                let held_back: u64 = self
                    .rules
                    .reserve
                    .iter()
                    .filter(|(p, _)| p.as_str() != plugin)
                    .map(|(p, r)| u64::from(r.saturating_sub(self.held_by(p))))
                    .sum();
                self.outstanding.len() as u64 + held_back < u64::from(n)
            }
        }
    }

    /// The first waiter (in arrival order) that could take a seat now.
    fn next_served(&self) -> Option<u64> {
        self.queue
            .iter()
            .find(|(_, p)| self.can_take(p))
            .map(|(t, _)| *t)
    }

    fn plugin(&mut self, plugin: &Arc<str>) -> &mut Counters {
        self.per_plugin.entry(plugin.clone()).or_default()
    }

    fn deny(&mut self, holder: &Holder, denial: Denial) {
        self.totals.denials.add(denial, 1);
        self.plugin(&holder.plugin).denials.add(denial, 1);
    }

    fn leave_queue(&mut self, ticket: u64) {
        self.queue.retain(|(t, _)| *t != ticket);
    }
}

/// The first decision on a request for a seat.
enum Admission {
    /// A seat now: its lease id.
    Granted(u64),
    /// Every seat is taken: a place in the queue and how long to wait.
    Queued(u64, Duration),
}

/// An async waiter's place in the queue; leaving it (the future dropped
/// because the call was cancelled or timed out) lets the next waiter look.
struct QueuePlace<'a> {
    pool: &'a SeatPool,
    ticket: u64,
    left: bool,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.pool.lock().leave_queue(self.ticket);
            self.pool.wake_waiters();
        }
    }
}

/// The seats of one license id.
pub struct SeatPool {
    id: Arc<str>,
    state: Mutex<PoolState>,
    seat_freed: Condvar,
    seat_freed_async: tokio::sync::Notify,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
    lease_ids: Arc<AtomicU64>,
}

impl std::fmt::Debug for SeatPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeatPool")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SeatPool {
    pub(super) fn new(
        id: Arc<str>,
        terms: Terms,
        ledger: Arc<dyn Ledger>,
        clock: Arc<dyn Clock>,
        lease_ids: Arc<AtomicU64>,
    ) -> Self {
        Self {
            id,
            state: Mutex::new(PoolState {
                terms,
                rules: Rules::default(),
                revoked: false,
                outstanding: HashMap::new(),
                totals: Counters::default(),
                per_plugin: HashMap::new(),
                queue: VecDeque::new(),
                next_ticket: 0,
            }),
            seat_freed: Condvar::new(),
            seat_freed_async: tokio::sync::Notify::new(),
            ledger,
            clock,
            lease_ids,
        }
    }

    /// The license id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Every update keeps the state consistent before it can panic, so a
        // poisoned lock still guards valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn event(&self, kind: EventKind, holder: &Holder, lease_id: Option<u64>) {
        self.ledger.record(UsageEvent {
            seq: 0,
            at_ms: self.clock.now_ms(),
            kind,
            license_id: self.id.clone(),
            plugin: holder.plugin.clone(),
            component_digest: holder.component_digest.clone(),
            lease_id,
            invocation_id: holder.invocation,
        });
    }

    /// Replaces the terms and lifts a revocation; held leases stay held.
    pub(super) fn set_terms(&self, terms: Terms) {
        let mut st = self.lock();
        st.terms = terms;
        st.revoked = false;
        drop(st);
        self.seat_freed.notify_all();
    }

    /// Starts the counters from `history` (e.g. totals read back from a
    /// durable ledger); nothing may be held yet.
    pub(super) fn seed(&self, history: Counters, per_plugin: BTreeMap<String, Counters>) {
        let mut st = self.lock();
        st.totals = Counters {
            in_use: 0,
            ..history
        };
        st.per_plugin = per_plugin
            .into_iter()
            .map(|(name, c)| (Arc::from(name), Counters { in_use: 0, ..c }))
            .collect();
    }

    /// Replaces the operator's rules.
    pub(super) fn set_rules(&self, rules: Rules) {
        self.lock().rules = rules;
        self.seat_freed.notify_all();
    }

    /// Records a refusal decided outside the pool (e.g. entitlement).
    pub(super) fn refuse(&self, holder: &Holder, denial: Denial) {
        self.lock().deny(holder, denial);
        self.event(EventKind::Denial(denial), holder, None);
    }

    /// Takes a seat in one atomic step, or says why not. With `wait`, queues
    /// in FIFO order for at most that long when every seat is taken,
    /// blocking the thread.
    pub fn acquire(
        self: &Arc<Self>,
        holder: &Holder,
        wait: Option<Duration>,
    ) -> Result<Lease, Denial> {
        let mut st = self.lock();
        let taken = match self.admit(&mut st, holder, wait) {
            Ok(Admission::Queued(ticket, wait)) => {
                let deadline = Instant::now() + wait;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    st = self
                        .seat_freed
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    let expired = Instant::now() >= deadline;
                    if let Some(taken) = self.turn(&mut st, holder, ticket, expired) {
                        break taken;
                    }
                }
            }
            Ok(Admission::Granted(lease_id)) => Ok(lease_id),
            Err(denial) => Err(denial),
        };
        drop(st);
        self.handed_out(holder, taken)
    }

    /// Like [`SeatPool::acquire`], but a waiter awaits its turn instead of
    /// blocking the thread; dropping the future leaves the queue.
    pub async fn acquire_async(
        self: &Arc<Self>,
        holder: &Holder,
        wait: Option<Duration>,
    ) -> Result<Lease, Denial> {
        let admitted = self.admit(&mut self.lock(), holder, wait);
        let taken = match admitted {
            Ok(Admission::Queued(ticket, wait)) => {
                let mut place = QueuePlace {
                    pool: self,
                    ticket,
                    left: false,
                };
                let deadline = tokio::time::Instant::now() + wait;
                let taken = loop {
                    let freed = self.seat_freed_async.notified();
                    tokio::pin!(freed);
                    // Registered before looking, so no wake-up is missed.
                    freed.as_mut().enable();
                    let expired = tokio::time::Instant::now() >= deadline;
                    if let Some(taken) = self.turn(&mut self.lock(), holder, ticket, expired) {
                        break taken;
                    }
                    let _ = tokio::time::timeout_at(deadline, freed).await;
                };
                place.left = true;
                taken
            }
            Ok(Admission::Granted(lease_id)) => Ok(lease_id),
            Err(denial) => Err(denial),
        };
        self.handed_out(holder, taken)
    }

    /// Records the outcome of a request and wraps a granted seat in a lease.
    fn handed_out(
        self: &Arc<Self>,
        holder: &Holder,
        taken: Result<u64, Denial>,
    ) -> Result<Lease, Denial> {
        match taken {
            Ok(lease_id) => {
                self.event(EventKind::Checkout, holder, Some(lease_id));
                Ok(Lease {
                    pool: Arc::clone(self),
                    id: lease_id,
                    holder: holder.clone(),
                    open: true,
                })
            }
            Err(denial) => {
                self.event(EventKind::Denial(denial), holder, None);
                Err(denial)
            }
        }
    }

    /// The first, atomic decision on a request: a seat now, a refusal, or a
    /// place in the queue when the caller is willing to wait.
    fn admit(
        &self,
        st: &mut PoolState,
        holder: &Holder,
        wait: Option<Duration>,
    ) -> Result<Admission, Denial> {
        let denial = if st.revoked {
            Denial::Revoked
        } else if !st.terms.entitles(holder) || !st.rules.admits(&holder.plugin) {
            Denial::NotEntitled
        } else if !st.terms.valid_at(self.clock.now_secs()) {
            Denial::Expired
        } else if st.can_take(&holder.plugin) && st.next_served().is_none() {
            return Ok(Admission::Granted(self.grant(st, holder)));
        } else if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            st.queue.push_back((ticket, holder.plugin.clone()));
            return Ok(Admission::Queued(ticket, wait));
        } else {
            Denial::Exhausted
        };
        st.deny(holder, denial);
        Err(denial)
    }

    /// A queued waiter looks again after a wake-up: its seat, a refusal, or
    /// `None` to keep waiting.
    fn turn(
        &self,
        st: &mut PoolState,
        holder: &Holder,
        ticket: u64,
        expired: bool,
    ) -> Option<Result<u64, Denial>> {
        let outcome = if st.revoked {
            Err(Denial::Revoked)
        } else if st.next_served() == Some(ticket) {
            st.leave_queue(ticket);
            let lease_id = self.grant(st, holder);
            if st.next_served().is_some() {
                self.wake_waiters();
            }
            return Some(Ok(lease_id));
        } else if expired {
            Err(Denial::TimedOut)
        } else {
            return None;
        };
        st.leave_queue(ticket);
        self.wake_waiters();
        if let Err(denial) = outcome {
            st.deny(holder, denial);
        }
        Some(outcome)
    }

    /// Wakes every waiter, blocked or awaiting, to look at the queue again.
    fn wake_waiters(&self) {
        self.seat_freed.notify_all();
        self.seat_freed_async.notify_waiters();
    }

    fn grant(&self, st: &mut PoolState, holder: &Holder) -> u64 {
        let lease_id = self.lease_ids.fetch_add(1, Ordering::Relaxed);
        st.outstanding.insert(lease_id, holder.clone());
        st.totals.checkout();
        st.plugin(&holder.plugin).checkout();
        lease_id
    }

    fn finish(&self, lease_id: u64, holder: &Holder, ending: LeaseEnding) -> LeaseEnd {
        let mut st = self.lock();
        if st.outstanding.remove(&lease_id).is_none() {
            // Already taken back (revoked): nothing to count twice.
            return LeaseEnd { valid: false };
        }
        let valid = st.in_force(self.clock.now_secs());
        st.totals.end(ending);
        st.plugin(&holder.plugin).end(ending);
        let wake = !st.queue.is_empty();
        drop(st);
        if wake {
            self.wake_waiters();
        }
        let kind = match ending {
            LeaseEnding::Released => EventKind::Release,
            LeaseEnding::Reclaimed(reason) => EventKind::Reclaim(reason),
        };
        self.event(kind, holder, Some(lease_id));
        LeaseEnd { valid }
    }

    fn is_outstanding_and_valid(&self, lease_id: u64) -> bool {
        let st = self.lock();
        st.outstanding.contains_key(&lease_id) && st.in_force(self.clock.now_secs())
    }

    /// Withdraws the license: new requests get `revoked`, every held lease is
    /// reclaimed now (its handle turns invalid) and waiters are turned away.
    pub fn revoke(&self) -> usize {
        let mut st = self.lock();
        st.revoked = true;
        let taken: Vec<(u64, Holder)> = st.outstanding.drain().collect();
        for (_, holder) in &taken {
            let ending = LeaseEnding::Reclaimed(ReclaimReason::Revoked);
            st.totals.end(ending);
            st.plugin(&holder.plugin).end(ending);
        }
        drop(st);
        self.wake_waiters();
        for (lease_id, holder) in &taken {
            self.event(
                EventKind::Reclaim(ReclaimReason::Revoked),
                holder,
                Some(*lease_id),
            );
        }
        taken.len()
    }

    /// Counts one call withheld because it ran without this license.
    pub fn record_withheld(&self, holder: &Holder) {
        let mut st = self.lock();
        st.totals.withheld += 1;
        st.plugin(&holder.plugin).withheld += 1;
        drop(st);
        self.event(EventKind::Withheld, holder, None);
    }

    /// A snapshot of terms and counters.
    pub fn status(&self) -> LicenseStatus {
        let st = self.lock();
        LicenseStatus {
            id: self.id.to_string(),
            terms: st.terms.clone(),
            revoked: st.revoked,
            waiting: st.queue.len(),
            counters: st.totals.clone(),
            per_plugin: st
                .per_plugin
                .iter()
                .map(|(name, c)| (name.to_string(), c.clone()))
                .collect(),
        }
    }
}

/// One held seat. Send it back with [`Lease::release`]; the host takes it
/// back with [`Lease::reclaim`]; if dropped unended it is reclaimed as
/// `store-dropped`, so a seat is never lost.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<SeatPool>,
    id: u64,
    holder: Holder,
    open: bool,
}

impl Lease {
    /// This lease's host-wide id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The license id it is a seat of.
    pub fn license_id(&self) -> &str {
        self.pool.id()
    }

    /// Who holds it.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Still held, not revoked, and inside the validity window.
    pub fn is_valid(&self) -> bool {
        self.open && self.pool.is_outstanding_and_valid(self.id)
    }

    /// The plugin sends the seat back.
    pub fn release(mut self) -> LeaseEnd {
        self.end(LeaseEnding::Released)
    }

    /// The host takes the seat back for `reason`.
    pub fn reclaim(mut self, reason: ReclaimReason) -> LeaseEnd {
        self.end(LeaseEnding::Reclaimed(reason))
    }

    fn end(&mut self, ending: LeaseEnding) -> LeaseEnd {
        self.open = false;
        self.pool.finish(self.id, &self.holder, ending)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.open {
            self.end(LeaseEnding::Reclaimed(ReclaimReason::StoreDropped));
        }
    }
}
