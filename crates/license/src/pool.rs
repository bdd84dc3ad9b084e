//! One license id's seats, taken from its grants: an atomic take, the seat
//! kept by its call until the call ends, revocation and expiry that end the
//! seats of a grant, a fair FIFO wait queue, and counters.

use super::clock::Clock;
use super::clock::Timer;
use super::reason::{Denial, ReasonCounts, ReclaimReason};
use crate::ledger::{EventKind, Ledger, UsageEvent};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
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

/// Counters for one license id, one grant, or one plugin's use of a license.
///
/// Invariants, once every call has ended: each lease handed out came back
/// once, `checkouts == releases + reclaims`; each seat taken went back once,
/// `checkouts - retakes == returns`. While calls run, `in_use` is the seats
/// they hold: `checkouts - retakes - returns`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Seats held right now (by running calls, whether or not the plugin
    /// still holds its lease).
    pub in_use: u32,
    /// The most seats held at once.
    pub peak: u32,
    /// Leases handed to plugins.
    pub checkouts: u64,
    /// Of those, leases on a seat the call already held (asked for again
    /// after sending the license back).
    pub retakes: u64,
    /// Leases sent back by the plugin.
    pub releases: u64,
    /// Leases the host ended while the plugin held them, by reason.
    pub reclaims: ReasonCounts<ReclaimReason>,
    /// Seats back in the pool, by why the call's hold ended.
    pub returns: ReasonCounts<ReclaimReason>,
    /// Requests refused, by reason.
    pub denials: ReasonCounts<Denial>,
    /// Calls whose result was withheld because they lacked this license.
    pub withheld: u64,
}

impl Counters {
    fn take(&mut self) {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        self.checkouts += 1;
    }

    fn retake(&mut self) {
        self.checkouts += 1;
        self.retakes += 1;
    }

    fn end_lease(&mut self, end: LeaseEnding) {
        match end {
            LeaseEnding::Released => self.releases += 1,
            LeaseEnding::Reclaimed(reason) => self.reclaims.add(reason, 1),
        }
    }

    fn give_back(&mut self, reason: ReclaimReason) {
        self.in_use = self.in_use.saturating_sub(1);
        self.returns.add(reason, 1);
    }

    /// Whether every lease and every seat handed out has come back.
    pub fn balanced(&self) -> bool {
        self.in_use == 0
            && self.checkouts == self.releases + self.reclaims.total()
            && self.checkouts.saturating_sub(self.retakes) == self.returns.total()
    }
}

/// One grant of a license id: the terms of one signed license file (or of a
/// license given in memory), from which seats are taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The grant id.
    pub id: String,
    /// Its seats, window and plugins.
    pub terms: Terms,
    /// Whether the operator revoked this grant alone.
    pub revoked: bool,
}

impl Grant {
    /// A grant `id` with `terms`, not revoked.
    pub fn new(id: impl Into<String>, terms: Terms) -> Self {
        Self {
            id: id.into(),
            terms,
            revoked: false,
        }
    }
}

/// This host's batch of a grant whose seats several hosts share: how many
/// of the grant's seats it may hold at once, under which fencing token,
/// and until when. Past `until` the batch has lapsed: it gives no seat,
/// and seats still held from it end (`lease-lapsed`), since the store may
/// already have given them to another host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// Seats of the grant this host may hold at once.
    pub seats: u32,
    /// The store's fencing token for this batch; ledger rows of seats
    /// taken under it carry it.
    pub token: i64,
    /// This host's own deadline for the batch, on its monotonic clock.
    pub until: Instant,
}

/// What a host's calls want of one counted grant now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantDemand {
    /// The license id.
    pub license_id: String,
    /// The grant.
    pub grant_id: String,
    /// The grant's seats.
    pub seats: u32,
    /// Whether it gives seats now (not revoked, inside its window).
    pub in_force: bool,
    /// Seats of it held by calls here.
    pub in_use: u32,
    /// Calls here waiting for a seat of the license.
    pub waiting: u32,
    /// The license's pool is exact: no seat is kept that no call holds.
    pub exact: bool,
    /// This host's batch of it.
    pub share: Option<Share>,
}

/// A snapshot of one grant with its own counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantStatus {
    /// The grant id.
    pub id: String,
    /// Its seats, window and plugins.
    pub terms: Terms,
    /// Whether the operator revoked it (alone or with its license id).
    pub revoked: bool,
    /// Whether seats can be taken from it now (not revoked, inside its window).
    pub in_force: bool,
    /// Its counters (seats taken from it).
    pub counters: Counters,
}

/// A snapshot of one license id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LicenseStatus {
    /// The license id.
    pub id: String,
    /// Seats of the grants in force now, added up.
    pub seats: Seats,
    /// The latest end among the grants in force now (`None`: one never ends,
    /// or none is in force).
    pub expires_at: Option<u64>,
    /// Every grant, in the order seats are taken from them.
    pub grants: Vec<GrantStatus>,
    /// Whether the operator revoked the license id (every grant, present and future).
    pub revoked: bool,
    /// Callers waiting for a seat right now.
    pub waiting: usize,
    /// Counters over all plugins.
    pub counters: Counters,
    /// Counters per plugin name.
    pub per_plugin: BTreeMap<String, Counters>,
    /// Who holds each seat in use now, by seat id.
    pub holders: Vec<SeatHolder>,
}

/// A seat in use, as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SeatHolder {
    /// The seat (the id of its first lease).
    pub seat: u64,
    /// The grant it was taken from.
    pub grant: String,
    /// The plugin whose call holds it.
    pub plugin: String,
    /// That call.
    pub invocation: u64,
    /// The lease the plugin holds on it (`None`: sent back; the seat
    /// lingers with the call).
    pub lease: Option<u64>,
    /// When it was taken, unix milliseconds.
    pub since_ms: u64,
}

/// How a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseEnding {
    /// The plugin sent it back.
    Released,
    /// The host took it back.
    Reclaimed(ReclaimReason),
}

/// An operator's rules for one license, applied after the issuer's terms.
///
/// Order of checks on every request: revoked; the issuer's plugin list;
/// `include` / `exclude`; the validity window; then `max_per_plugin` and
/// seats, where seats `reserve`d for other plugins (and not yet used by
/// them) count as taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Only these plugins may use the license (empty: every plugin).
    pub include: Vec<String>,
    /// These plugins may not.
    pub exclude: Vec<String>,
    /// Seats held back for a plugin: others may not take them.
    pub reserve: BTreeMap<String, u32>,
    /// Most seats one plugin may hold at once.
    pub max_per_plugin: Option<u32>,
    /// On a shared store, no seat is kept here that no call holds: each
    /// seat is asked of the store when a call wants it and handed back
    /// when it ends (`pool = "exact"`), for scarce, expensive licenses.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

impl Rules {
    /// Whether include/exclude let `plugin` use the license.
    pub fn admits(&self, plugin: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p == plugin))
            && !self.exclude.iter().any(|p| p == plugin)
    }
}

/// One grant inside a pool.
struct GrantSlot {
    id: Arc<str>,
    terms: Terms,
    revoked: bool,
    counters: Counters,
    /// Its seats are shared with other hosts: only those of `share` may be
    /// held here.
    shared: bool,
    /// This host's batch, for a shared grant.
    share: Option<Share>,
    /// The most seats of its batch calls here may hold at once, when other
    /// hosts wait for seats of it: seats above it drain as calls end.
    cap: Option<u32>,
}

impl GrantSlot {
    /// Not revoked and inside its window at unix second `now`.
    fn in_force(&self, id_revoked: bool, now: u64) -> bool {
        !id_revoked && !self.revoked && self.terms.valid_at(now)
    }

    /// Seats free in this grant for this host at `at`; `None`: uncounted.
    /// A shared grant's seats are those of its batch while it lasts.
    fn free(&self, at: Instant) -> Option<u64> {
        self.terms.seats.limit().map(|n| {
            let here = match self.share {
                _ if !self.shared => n,
                Some(share) if share.until > at => {
                    share.seats.min(n).min(self.cap.unwrap_or(u32::MAX))
                }
                _ => 0,
            };
            u64::from(here).saturating_sub(u64::from(self.counters.in_use))
        })
    }

    /// Whether seats held from it must end at `at` because its batch is
    /// gone or past its deadline (a shared, counted grant only).
    fn lapsed(&self, at: Instant) -> bool {
        self.shared
            && self.terms.seats.limit().is_some()
            && self.share.is_none_or(|share| share.until <= at)
    }

    /// The fencing token seats taken from it now carry.
    fn token(&self) -> Option<i64> {
        self.share.filter(|_| self.shared).map(|share| share.token)
    }

    /// The unix second it stops being in force (`u64::MAX`: never).
    fn ends(&self) -> u64 {
        self.terms.expires_at.unwrap_or(u64::MAX)
    }
}

/// How long a call that may not wait for a seat waits, on a shared host,
/// for the store to answer its one request for more.
pub const STORE_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Why a call's seat ended before the call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatLost {
    /// Its grant was revoked or expired: the call lacks the license for
    /// that reason.
    Denied(Denial),
    /// Its shared-store batch lapsed (not renewed in time): another host
    /// may hold the seat now.
    Lapsed,
}

/// A seat held by a running call.
struct SeatHold {
    holder: Holder,
    /// When it was taken, unix milliseconds.
    since_ms: u64,
    grant: Arc<str>,
    /// The lease the plugin holds on it, if it has not sent it back.
    lease: Option<u64>,
    /// The fencing token of the batch it was taken under (shared grants).
    token: Option<i64>,
}

struct PoolState {
    grants: Vec<GrantSlot>,
    /// Counted grants' seats are shared with other hosts (see [`Share`]).
    shared: bool,
    rules: Rules,
    /// The whole license id is revoked, grants installed later included.
    revoked: bool,
    /// Seats held by running calls, by seat id.
    held: FxHashMap<u64, SeatHold>,
    totals: Counters,
    per_plugin: FxHashMap<Arc<str>, Counters>,
    /// Waiters in arrival order: ticket and who waits.
    queue: VecDeque<(u64, Holder)>,
    next_ticket: u64,
    /// Batches put in force here so far (a shared pool): how a waiter that
    /// asked the store once knows it answered.
    share_rounds: u64,
    /// Waiters of a shared pool that may not wait for a seat, by ticket,
    /// with the batches put in force when they came: each waits for one
    /// answer of the store, then takes a seat or is refused.
    asking: HashMap<u64, u64>,
    /// When the pool was made: the instant [`PoolState::batch_now`] gives
    /// when no grant has a batch whose deadline it would be compared with.
    created: Instant,
}

impl PoolState {
    fn held_by(&self, plugin: &str) -> u32 {
        self.per_plugin.get(plugin).map_or(0, |c| c.in_use)
    }

    /// The instant shared grants' batch deadlines are compared with: now
    /// when a grant is shared; else no deadline is looked at, so the clock
    /// is not read (a call takes and returns its seats with no monotonic
    /// clock read at all).
    fn batch_now(&self) -> Instant {
        if self.grants.iter().any(|g| g.shared) {
            Instant::now()
        } else {
            self.created
        }
    }

    fn grant(&self, id: &str) -> Option<&GrantSlot> {
        self.grants.iter().find(|g| &*g.id == id)
    }

    fn grant_mut(&mut self, id: &str) -> Option<&mut GrantSlot> {
        self.grants.iter_mut().find(|g| &*g.id == id)
    }

    /// Whether the grant `id` is installed and in force at `now`.
    fn grant_in_force(&self, id: &str, now: u64) -> bool {
        self.grant(id)
            .is_some_and(|g| g.in_force(self.revoked, now) && !g.lapsed(self.batch_now()))
    }

    /// Why `holder` cannot have a seat at `now` whatever the others hold,
    /// if so: revoked, not entitled, or no entitling grant in force.
    fn refusal(&self, holder: &Holder, now: u64) -> Option<Denial> {
        if self.revoked {
            return Some(Denial::Revoked);
        }
        if !self.rules.admits(&holder.plugin) {
            return Some(Denial::NotEntitled);
        }
        let mut entitling = self.grants.iter().filter(|g| g.terms.entitles(holder));
        let mut any = false;
        let mut unrevoked = false;
        for g in entitling.by_ref() {
            any = true;
            if !g.revoked {
                unrevoked = true;
                if g.terms.valid_at(now) {
                    return None;
                }
            }
        }
        Some(if !any {
            Denial::NotEntitled
        } else if !unrevoked {
            Denial::Revoked
        } else {
            Denial::Expired
        })
    }

    /// The grant `holder` takes a seat from now: of the grants in force that
    /// entitle it and have a seat free, the one that ends first; `None` when
    /// every seat is taken (or held back by the license's rules).
    fn pick(&self, holder: &Holder, now: u64) -> Option<usize> {
        let at = self.batch_now();
        if self
            .rules
            .max_per_plugin
            .is_some_and(|max| self.held_by(&holder.plugin) >= max)
        {
            return None;
        }
        // Reservations apply to the license id as a whole: seats reserved
        // for other plugins and not yet used by them count as taken.
        let held_back: u64 = self
            .rules
            .reserve
            .iter()
            .filter(|(p, _)| p.as_str() != &*holder.plugin)
            .map(|(p, r)| u64::from(r.saturating_sub(self.held_by(p))))
            .sum();
        if held_back > 0 {
            let mut free = Some(0u64);
            for g in self.grants.iter().filter(|g| g.in_force(self.revoked, now)) {
                free = free.zip(g.free(at)).map(|(a, b)| a + b);
            }
            if free.is_some_and(|f| f <= held_back) {
                return None;
            }
        }
        self.grants
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                g.in_force(self.revoked, now)
                    && g.terms.entitles(holder)
                    && g.free(at).is_none_or(|f| f > 0)
            })
            .min_by_key(|(i, g)| (g.ends(), *i))
            .map(|(i, _)| i)
    }

    /// The first waiter (in arrival order) that could take a seat now.
    fn next_served(&self, now: u64) -> Option<u64> {
        self.queue
            .iter()
            .find(|(_, h)| self.pick(h, now).is_some())
            .map(|(t, _)| *t)
    }

    fn plugin(&mut self, plugin: &Arc<str>) -> &mut Counters {
        self.per_plugin.entry(plugin.clone()).or_default()
    }

    fn leave_queue(&mut self, ticket: u64) {
        self.queue.retain(|(t, _)| *t != ticket);
        self.asking.remove(&ticket);
    }

    /// Applies `f` to the totals, the plugin's and the grant's counters.
    fn count(&mut self, holder: &Holder, grant: Option<&str>, f: impl Fn(&mut Counters)) {
        f(&mut self.totals);
        f(self.plugin(&holder.plugin));
        if let Some(g) = grant.and_then(|g| self.grant_mut(g)) {
            f(&mut g.counters);
        }
    }
}

/// The first decision on a request for a seat.
enum Admission {
    /// A seat now.
    Granted(Taken),
    /// Every seat is taken: a place in the queue and how long to wait.
    Queued(u64, Duration),
}

/// A seat just taken: its id (the id of its first lease) and grant.
struct Taken {
    seat: u64,
    grant: Arc<str>,
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

/// The seats of one license id, taken from its grants.
///
/// Every change to the seats and its ledger row happen under one lock, so
/// the ledger holds the seats' moves in the order they happened.
pub struct SeatPool {
    id: Arc<str>,
    state: Mutex<PoolState>,
    seat_freed: Condvar,
    seat_freed_async: tokio::sync::Notify,
    ledger: Arc<dyn Ledger>,
    clock: Arc<dyn Clock>,
    lease_ids: Arc<AtomicU64>,
    /// Told when a request of a shared pool found no seat free here: the
    /// host may need a larger batch.
    wanted: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for SeatPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeatPool")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A ledger row about to be recorded: who, which lease, seat and grant.
struct Row<'a> {
    kind: EventKind,
    holder: &'a Holder,
    lease: Option<u64>,
    seat: Option<u64>,
    grant: Option<&'a Arc<str>>,
    count: u64,
    /// The fencing token of the batch the seat was taken under.
    token: Option<i64>,
}

impl SeatPool {
    pub(super) fn new(
        id: Arc<str>,
        grants: Vec<Grant>,
        shared: bool,
        ledger: Arc<dyn Ledger>,
        clock: Arc<dyn Clock>,
        lease_ids: Arc<AtomicU64>,
        wanted: Arc<tokio::sync::Notify>,
    ) -> Self {
        let pool = Self {
            id,
            state: Mutex::new(PoolState {
                grants: Vec::new(),
                shared,
                rules: Rules::default(),
                revoked: false,
                held: FxHashMap::default(),
                totals: Counters::default(),
                per_plugin: FxHashMap::default(),
                queue: VecDeque::new(),
                next_ticket: 0,
                share_rounds: 0,
                asking: HashMap::new(),
                created: Instant::now(),
            }),
            seat_freed: Condvar::new(),
            seat_freed_async: tokio::sync::Notify::new(),
            ledger,
            clock,
            lease_ids,
            wanted,
        };
        pool.set_grants(grants);
        pool
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

    /// Records one ledger row; called with the pool locked, so rows keep
    /// the order of the seats' moves.
    fn record(&self, row: Row<'_>) {
        self.record_at(row, self.clock.now_ms());
    }

    /// [`SeatPool::record`] at `at_ms`, a time the caller read already.
    fn record_at(&self, row: Row<'_>, at_ms: u64) {
        self.ledger.record(UsageEvent {
            seq: 0,
            at_ms,
            kind: row.kind,
            license_id: self.id.clone(),
            plugin: row.holder.plugin.clone(),
            component_digest: row.holder.component_digest.clone(),
            lease_id: row.lease,
            invocation_id: row.holder.invocation,
            seat_id: row.seat,
            grant_id: row.grant.cloned(),
            count: row.count,
            token: row.token,
        });
    }

    /// Replaces the grants (seats, windows, plugins, per-grant revocations);
    /// counters of grants that stay are kept. Seats held from a grant that
    /// is gone, revoked or out of its window now end at once.
    pub(super) fn set_grants(&self, grants: Vec<Grant>) {
        let mut st = self.lock();
        // A host reads its grants again every second: the same grants change
        // nothing, and wake no waiter.
        let unchanged = st.grants.len() == grants.len()
            && st.grants.iter().zip(&grants).all(|(slot, g)| {
                *slot.id == *g.id && slot.terms == g.terms && slot.revoked == g.revoked
            });
        if unchanged {
            return;
        }
        let mut old: HashMap<Arc<str>, (Counters, Option<Share>, Option<u32>)> = st
            .grants
            .drain(..)
            .map(|g| (g.id, (g.counters, g.share, g.cap)))
            .collect();
        let shared = st.shared;
        st.grants = grants
            .into_iter()
            .map(|g| {
                let id: Arc<str> = g.id.into();
                let (counters, share, cap) = old.remove(&id).unwrap_or_default();
                GrantSlot {
                    counters,
                    share,
                    cap,
                    shared,
                    id,
                    terms: g.terms,
                    revoked: g.revoked,
                }
            })
            .collect();
        let now = self.clock.now_secs();
        self.sweep_all(&mut st, now);
        drop(st);
        self.wake_waiters();
    }

    /// Ends every seat whose grant is no longer in force (revoked, removed or
    /// past its window): the lease, if the plugin still holds it, is
    /// reclaimed and the seat returned, both with reason `revoked` or
    /// `expired`. Returns how many seats ended.
    fn sweep_locked(&self, st: &mut PoolState) -> (usize, u64) {
        let now = self.clock.now_secs();
        // The common case costs one look per grant: every grant that has
        // seats held is still in force. (Seats of a grant that was removed
        // are ended by `set_grants`, which sweeps in full.)
        let at = st.batch_now();
        if st
            .grants
            .iter()
            .filter(|g| g.counters.in_use > 0)
            .all(|g| g.in_force(st.revoked, now) && !g.lapsed(at))
        {
            return (0, now);
        }
        (self.sweep_all(st, now), now)
    }

    /// Ends every held seat whose grant is not in force at `now` or gone,
    /// or whose batch lapsed.
    fn sweep_all(&self, st: &mut PoolState, now: u64) -> usize {
        let at = st.batch_now();
        let ended: Vec<(u64, ReclaimReason)> = st
            .held
            .iter()
            .filter_map(|(seat, h)| {
                let reason = match st.grant(&h.grant) {
                    Some(g) if g.in_force(st.revoked, now) && !g.lapsed(at) => return None,
                    Some(g) if g.in_force(st.revoked, now) => ReclaimReason::LeaseLapsed,
                    Some(g) if !st.revoked && !g.revoked => ReclaimReason::Expired,
                    _ => ReclaimReason::Revoked,
                };
                Some((*seat, reason))
            })
            .collect();
        let mut ended = ended;
        ended.sort_unstable();
        for (seat, reason) in &ended {
            self.end_seat(st, *seat, *reason);
        }
        ended.len()
    }

    /// Ends seats of grants no longer in force; see [`SeatPool::revoke`].
    pub fn sweep(&self) -> usize {
        let (n, _) = self.sweep_locked(&mut self.lock());
        if n > 0 {
            self.wake_waiters();
        }
        n
    }

    /// Takes `seat` back from its call: reclaims an open lease, returns the
    /// seat, records both. False if the seat was not held.
    fn end_seat(&self, st: &mut PoolState, seat: u64, reason: ReclaimReason) -> bool {
        let Some(hold) = st.held.remove(&seat) else {
            return false;
        };
        if let Some(lease) = hold.lease {
            let ending = LeaseEnding::Reclaimed(reason);
            st.count(&hold.holder, Some(&hold.grant), |c| c.end_lease(ending));
            self.record(Row {
                kind: EventKind::Reclaim(reason),
                holder: &hold.holder,
                lease: Some(lease),
                seat: Some(seat),
                grant: Some(&hold.grant),
                count: 1,
                token: hold.token,
            });
        }
        st.count(&hold.holder, Some(&hold.grant), |c| c.give_back(reason));
        // An exact pool keeps no seat idle: the batcher gives it back.
        if st.shared && st.rules.exact {
            self.wanted.notify_one();
        }
        self.record(Row {
            kind: EventKind::Return(reason),
            holder: &hold.holder,
            lease: None,
            seat: Some(seat),
            grant: Some(&hold.grant),
            count: 1,
            token: hold.token,
        });
        true
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
        let mut st = self.lock();
        if st.rules != rules {
            st.rules = rules;
            drop(st);
            self.wake_waiters();
        }
    }

    /// Counts `count` refusals of `holder` for `denial` and records them as
    /// one ledger row.
    pub(super) fn record_denials(&self, holder: &Holder, denial: Denial, count: u64) {
        let mut st = self.lock();
        st.count(holder, None, |c| c.denials.add(denial, count));
        self.record(Row {
            kind: EventKind::Denial(denial),
            holder,
            lease: None,
            seat: None,
            grant: None,
            count,
            token: None,
        });
    }

    /// Takes a seat in one atomic step, or says why not. With `wait`, queues
    /// in FIFO order for at most that long when every seat is taken,
    /// blocking the thread. The refusal is not counted here: the call
    /// counts its refusals when it ends ([`super::CallSeats`]).
    pub(super) fn take(
        self: &Arc<Self>,
        holder: &Holder,
        wait: Option<Duration>,
    ) -> Result<Seat, Denial> {
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
            Ok(Admission::Granted(taken)) => Ok(taken),
            Err(denial) => Err(denial),
        };
        drop(st);
        taken.map(|t| self.seat(holder, t))
    }

    /// Like [`SeatPool::take`], but a waiter awaits its turn instead of
    /// blocking the thread; dropping the future leaves the queue.
    pub(super) async fn take_async(
        self: &Arc<Self>,
        holder: &Holder,
        wait: Option<Duration>,
        timer: &dyn Timer,
    ) -> Result<Seat, Denial> {
        let admitted = self.admit(&mut self.lock(), holder, wait);
        let taken = match admitted {
            Ok(Admission::Queued(ticket, wait)) => {
                let mut place = QueuePlace {
                    pool: self,
                    ticket,
                    left: false,
                };
                let deadline = Instant::now() + wait;
                let mut timeout = timer.sleep_until(deadline);
                let taken = loop {
                    let freed = self.seat_freed_async.notified();
                    let mut freed = std::pin::pin!(freed);
                    // Registered before looking, so no wake-up is missed.
                    freed.as_mut().enable();
                    let expired = Instant::now() >= deadline;
                    if let Some(taken) = self.turn(&mut self.lock(), holder, ticket, expired) {
                        break taken;
                    }
                    // Whichever comes first: a freed seat or the deadline.
                    std::future::poll_fn(|cx| {
                        if freed.as_mut().poll(cx).is_ready()
                            || timeout.as_mut().poll(cx).is_ready()
                        {
                            std::task::Poll::Ready(())
                        } else {
                            std::task::Poll::Pending
                        }
                    })
                    .await;
                };
                place.left = true;
                taken
            }
            Ok(Admission::Granted(taken)) => Ok(taken),
            Err(denial) => Err(denial),
        };
        taken.map(|t| self.seat(holder, t))
    }

    fn seat(self: &Arc<Self>, holder: &Holder, taken: Taken) -> Seat {
        Seat {
            pool: Arc::clone(self),
            id: taken.seat,
            grant: taken.grant,
            holder: holder.clone(),
            lease: Some(taken.seat),
            held: true,
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
        let (ended, now) = self.sweep_locked(st);
        if ended > 0 {
            self.wake_waiters();
        }
        if let Some(denial) = st.refusal(holder, now) {
            return Err(denial);
        }
        // A waiter that could be served now goes first; one that cannot
        // (its plugin at its cap, say) does not block this request.
        if st.next_served(now).is_none()
            && let Some(i) = st.pick(holder, now)
        {
            return Ok(Admission::Granted(self.grant_seat(st, holder, i)));
        }
        if st.shared {
            self.wanted.notify_one();
        }
        let ticket = st.next_ticket;
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            st.next_ticket += 1;
            st.queue.push_back((ticket, holder.clone()));
            return Ok(Admission::Queued(ticket, wait));
        }
        // A host sharing seats asks the store once before it says
        // exhausted: its batch may grow.
        if st.shared && st.grants.iter().any(|g| g.terms.seats.limit().is_some()) {
            st.next_ticket += 1;
            st.queue.push_back((ticket, holder.clone()));
            st.asking.insert(ticket, st.share_rounds);
            return Ok(Admission::Queued(ticket, STORE_ANSWER_WAIT));
        }
        Err(Denial::Exhausted)
    }

    /// A queued waiter looks again after a wake-up: its seat, a refusal, or
    /// `None` to keep waiting.
    fn turn(
        &self,
        st: &mut PoolState,
        holder: &Holder,
        ticket: u64,
        expired: bool,
    ) -> Option<Result<Taken, Denial>> {
        let (_, now) = self.sweep_locked(st);
        let outcome = if let Some(denial) = st.refusal(holder, now) {
            Err(denial)
        } else if st.next_served(now) == Some(ticket)
            && let Some(i) = st.pick(holder, now)
        {
            st.leave_queue(ticket);
            let taken = self.grant_seat(st, holder, i);
            if st.next_served(now).is_some() {
                self.wake_waiters();
            }
            return Some(Ok(taken));
        } else if let Some(&round) = st.asking.get(&ticket) {
            // It asked the store once: refused when the store answered
            // without a seat for it (or did not answer in time).
            if st.share_rounds > round || expired {
                Err(Denial::Exhausted)
            } else {
                return None;
            }
        } else if expired {
            Err(Denial::TimedOut)
        } else {
            return None;
        };
        st.leave_queue(ticket);
        self.wake_waiters();
        Some(outcome)
    }

    /// Wakes every waiter, blocked or awaiting, to look at the queue again.
    fn wake_waiters(&self) {
        self.seat_freed.notify_all();
        self.seat_freed_async.notify_waiters();
    }

    fn grant_seat(&self, st: &mut PoolState, holder: &Holder, grant: usize) -> Taken {
        let seat = self.lease_ids.fetch_add(1, Ordering::Relaxed);
        let token = st.grants[grant].token();
        let grant = st.grants[grant].id.clone();
        let at_ms = self.clock.now_ms();
        st.held.insert(
            seat,
            SeatHold {
                holder: holder.clone(),
                since_ms: at_ms,
                grant: grant.clone(),
                lease: Some(seat),
                token,
            },
        );
        st.count(holder, Some(&grant), Counters::take);
        self.record_at(
            Row {
                kind: EventKind::Checkout,
                holder,
                lease: Some(seat),
                seat: Some(seat),
                grant: Some(&grant),
                count: 1,
                token,
            },
            at_ms,
        );
        Taken { seat, grant }
    }

    /// Withdraws the license id: every grant, present and future, until
    /// [`SeatPool::unrevoke`]. New requests get `revoked`, held seats end now
    /// (their leases turn invalid, their calls are withheld) and waiters are
    /// turned away. Returns how many seats ended.
    pub fn revoke(&self) -> usize {
        let mut st = self.lock();
        st.revoked = true;
        let (n, _) = self.sweep_locked(&mut st);
        drop(st);
        self.wake_waiters();
        n
    }

    /// Withdraws one grant; returns how many seats ended, or `None` if the
    /// pool has no such grant.
    pub fn revoke_grant(&self, grant: &str) -> Option<usize> {
        let mut st = self.lock();
        st.grant_mut(grant)?.revoked = true;
        let (n, _) = self.sweep_locked(&mut st);
        drop(st);
        self.wake_waiters();
        Some(n)
    }

    /// Lifts a revocation of the license id (grants revoked one by one stay
    /// revoked).
    pub fn unrevoke(&self) {
        let was_revoked = std::mem::replace(&mut self.lock().revoked, false);
        if was_revoked {
            self.wake_waiters();
        }
    }

    /// Sets this host's batch of `grant`; `None` if the grant is not
    /// here. Seats held beyond the batch (newest first) end as
    /// `lease-lapsed`; returns how many.
    pub fn set_share(&self, grant: &str, share: Share) -> Option<usize> {
        let mut st = self.lock();
        st.share_rounds += 1;
        let slot = st.grant_mut(grant)?;
        slot.share = Some(share);
        let over = slot.counters.in_use.saturating_sub(share.seats) as usize;
        let mut excess: Vec<u64> = st
            .held
            .iter()
            .filter(|(_, h)| &*h.grant == grant)
            .map(|(seat, _)| *seat)
            .collect();
        excess.sort_unstable_by(|a, b| b.cmp(a));
        excess.truncate(over);
        for seat in &excess {
            self.end_seat(&mut st, *seat, ReclaimReason::LeaseLapsed);
        }
        // Seats of a batch past its deadline end too.
        let (lapsed, _) = self.sweep_locked(&mut st);
        drop(st);
        self.wake_waiters();
        Some(excess.len() + lapsed)
    }

    /// Shrinks this host's batch of `grant` to `seats`, or to the seats
    /// held now if more: no call loses its seat. Returns the new size, or
    /// `None` if the grant is not here or has no batch.
    pub fn shrink_share(&self, grant: &str, seats: u32) -> Option<u32> {
        let mut st = self.lock();
        let slot = st.grant_mut(grant)?;
        let in_use = slot.counters.in_use;
        let share = slot.share.as_mut()?;
        share.seats = share.seats.min(seats.max(in_use));
        Some(share.seats)
    }

    /// Caps the seats of `grant` that calls here may hold at once (`None`:
    /// the whole batch); seats held above the cap stay until their calls
    /// end. `None` if the grant is not here.
    pub fn cap_share(&self, grant: &str, cap: Option<u32>) -> Option<()> {
        let mut st = self.lock();
        let slot = st.grant_mut(grant)?;
        let raised = cap.unwrap_or(u32::MAX) > slot.cap.unwrap_or(u32::MAX);
        slot.cap = cap;
        drop(st);
        if raised {
            self.wake_waiters();
        }
        Some(())
    }

    /// What calls here want of each counted grant now.
    pub fn demand(&self) -> Vec<GrantDemand> {
        let st = self.lock();
        let now = self.clock.now_secs();
        let waiting = u32::try_from(st.queue.len()).unwrap_or(u32::MAX);
        st.grants
            .iter()
            .filter_map(|g| {
                Some(GrantDemand {
                    license_id: self.id.to_string(),
                    grant_id: g.id.to_string(),
                    seats: g.terms.seats.limit()?,
                    in_force: g.in_force(st.revoked, now),
                    in_use: g.counters.in_use,
                    waiting,
                    exact: st.rules.exact,
                    share: g.share,
                })
            })
            .collect()
    }

    /// Counts one call withheld because it ran without this license.
    pub fn record_withheld(&self, holder: &Holder) {
        let mut st = self.lock();
        st.count(holder, None, |c| c.withheld += 1);
        self.record(Row {
            kind: EventKind::Withheld,
            holder,
            lease: None,
            seat: None,
            grant: None,
            count: 1,
            token: None,
        });
    }

    /// What `holder` would be told about this license: the seats of the
    /// grants in force that entitle it and the latest end among them, or why
    /// it may not use the license.
    pub fn describe_for(&self, holder: &Holder) -> Result<(Seats, Option<u64>, u32), Denial> {
        let mut st = self.lock();
        let (_, now) = self.sweep_locked(&mut st);
        if let Some(denial) = st.refusal(holder, now) {
            return Err(denial);
        }
        let live = st
            .grants
            .iter()
            .filter(|g| g.in_force(st.revoked, now) && g.terms.entitles(holder));
        let (seats, ends) = summarize(live);
        Ok((seats, ends, st.totals.in_use))
    }

    /// A snapshot of grants and counters.
    pub fn status(&self) -> LicenseStatus {
        let mut st = self.lock();
        let (_, now) = self.sweep_locked(&mut st);
        let (seats, expires_at) =
            summarize(st.grants.iter().filter(|g| g.in_force(st.revoked, now)));
        LicenseStatus {
            id: self.id.to_string(),
            seats,
            expires_at,
            grants: st
                .grants
                .iter()
                .map(|g| GrantStatus {
                    id: g.id.to_string(),
                    terms: g.terms.clone(),
                    revoked: st.revoked || g.revoked,
                    in_force: g.in_force(st.revoked, now),
                    counters: g.counters.clone(),
                })
                .collect(),
            revoked: st.revoked,
            waiting: st.queue.len(),
            counters: st.totals.clone(),
            per_plugin: st
                .per_plugin
                .iter()
                .map(|(name, c)| (name.to_string(), c.clone()))
                .collect(),
            holders: {
                let mut holders: Vec<SeatHolder> = st
                    .held
                    .iter()
                    .map(|(seat, h)| SeatHolder {
                        seat: *seat,
                        grant: h.grant.to_string(),
                        plugin: h.holder.plugin.to_string(),
                        invocation: h.holder.invocation,
                        lease: h.lease,
                        since_ms: h.since_ms,
                    })
                    .collect();
                holders.sort_by_key(|h| h.seat);
                holders
            },
        }
    }

    /// The plugin sends back lease `lease` on `seat`: recorded, and the seat
    /// lingers with the call. False if the seat is no longer held or the
    /// lease already ended.
    fn release_lease(&self, seat: u64, lease: u64) -> bool {
        let mut st = self.lock();
        let Some(hold) = st.held.get_mut(&seat) else {
            return false;
        };
        if hold.lease != Some(lease) {
            return false;
        }
        hold.lease = None;
        let (holder, grant, token) = (hold.holder.clone(), hold.grant.clone(), hold.token);
        st.count(&holder, Some(&grant), |c| {
            c.end_lease(LeaseEnding::Released)
        });
        self.record(Row {
            kind: EventKind::Release,
            holder: &holder,
            lease: Some(lease),
            seat: Some(seat),
            grant: Some(&grant),
            count: 1,
            token,
        });
        true
    }

    /// A new lease on a seat the call still holds and whose lease it sent
    /// back, if the seat's grant is still in force.
    fn retake(&self, seat: u64) -> Result<u64, Denial> {
        let mut st = self.lock();
        let _ = self.sweep_locked(&mut st);
        let Some(hold) = st.held.get(&seat) else {
            return Err(Denial::Revoked);
        };
        if hold.lease.is_some() {
            return Err(Denial::Exhausted);
        }
        let lease = self.lease_ids.fetch_add(1, Ordering::Relaxed);
        let (holder, grant, token) = (hold.holder.clone(), hold.grant.clone(), hold.token);
        if let Some(hold) = st.held.get_mut(&seat) {
            hold.lease = Some(lease);
        }
        st.count(&holder, Some(&grant), Counters::retake);
        self.record(Row {
            kind: EventKind::Retake,
            holder: &holder,
            lease: Some(lease),
            seat: Some(seat),
            grant: Some(&grant),
            count: 1,
            token,
        });
        Ok(lease)
    }

    /// Whether `seat` is still held with `lease` open and its grant in force.
    fn lease_in_force(&self, seat: u64, lease: u64) -> bool {
        let st = self.lock();
        let now = self.clock.now_secs();
        st.held
            .get(&seat)
            .is_some_and(|h| h.lease == Some(lease) && st.grant_in_force(&h.grant, now))
    }

    /// Returns `seat` (from `grant`) to the pool at the end of its call:
    /// `Ok` if it was still held and its grant in force up to that moment,
    /// else why not (revoked, expired, or its batch lapsed).
    fn give_back(&self, seat: u64, grant: &str, reason: ReclaimReason) -> Result<(), SeatLost> {
        let mut st = self.lock();
        let (_, now) = self.sweep_locked(&mut st);
        let outcome = if st.held.contains_key(&seat) && st.grant_in_force(grant, now) {
            Ok(())
        } else {
            match st.grant(grant) {
                Some(g) if g.in_force(st.revoked, now) => Err(SeatLost::Lapsed),
                Some(g) if !st.revoked && !g.revoked => Err(SeatLost::Denied(Denial::Expired)),
                _ => Err(SeatLost::Denied(Denial::Revoked)),
            }
        };
        let ended = self.end_seat(&mut st, seat, reason);
        let wake = ended && !st.queue.is_empty();
        drop(st);
        if wake {
            self.wake_waiters();
        }
        outcome
    }
}

/// The seats and latest end of some grants (`None`: one of them never ends,
/// or there are none).
fn summarize<'a>(grants: impl Iterator<Item = &'a GrantSlot>) -> (Seats, Option<u64>) {
    let mut seats = Seats::Counted(0);
    let mut ends: Option<u64> = None;
    let mut any = false;
    let mut endless = false;
    for g in grants {
        any = true;
        seats = match (seats, g.terms.seats) {
            (Seats::Counted(a), Seats::Counted(b)) => Seats::Counted(a.saturating_add(b)),
            _ => Seats::Unlimited,
        };
        match g.terms.expires_at {
            Some(t) => ends = Some(ends.map_or(t, |e| e.max(t))),
            None => endless = true,
        }
    }
    (seats, if any && !endless { ends } else { None })
}

/// A seat one call holds, taken from one grant, until the call ends. The
/// plugin's lease on it may end sooner (the plugin sends the license back);
/// the seat stays with the call and returns to the pool only through
/// [`Seat::give_back`], or as `store-dropped` if dropped.
#[derive(Debug)]
pub struct Seat {
    pool: Arc<SeatPool>,
    id: u64,
    grant: Arc<str>,
    holder: Holder,
    lease: Option<u64>,
    held: bool,
}

impl Seat {
    /// The seat's id: the id of its first lease.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The license id it is a seat of.
    pub fn license_id(&self) -> &str {
        self.pool.id()
    }

    /// The grant it was taken from.
    pub fn grant_id(&self) -> &str {
        &self.grant
    }

    /// Who holds it.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// The lease the plugin holds on it, if it has not sent it back.
    pub fn lease(&self) -> Option<u64> {
        self.lease
    }

    /// Whether `lease` is this seat's open lease, the seat is still held and
    /// its grant in force.
    pub fn lease_is_valid(&self, lease: u64) -> bool {
        self.lease == Some(lease) && self.pool.lease_in_force(self.id, lease)
    }

    /// The plugin sends its lease back; the seat stays with the call. False
    /// if it held none (or the host had already ended it).
    pub fn release(&mut self) -> bool {
        match self.lease.take() {
            Some(lease) => self.pool.release_lease(self.id, lease),
            None => false,
        }
    }

    /// A new lease on this seat after the plugin sent the last one back.
    pub fn retake(&mut self) -> Result<u64, Denial> {
        let lease = self.pool.retake(self.id)?;
        self.lease = Some(lease);
        Ok(lease)
    }

    /// Ends the call's hold: an open lease is reclaimed for `reason` and the
    /// seat goes back to the pool. `Ok` if the seat was still held and its
    /// grant in force (not revoked, not expired, its batch not lapsed) up
    /// to now, else why not.
    pub fn give_back(mut self, reason: ReclaimReason) -> Result<(), SeatLost> {
        self.held = false;
        self.pool.give_back(self.id, &self.grant, reason)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.held {
            self.held = false;
            let _ = self
                .pool
                .give_back(self.id, &self.grant, ReclaimReason::StoreDropped);
        }
    }
}
