//! Keeps a host's seat batches: leased from the shared store, grown when
//! calls here find no seat, renewed before they lapse, shrunk when idle,
//! handed back at shutdown.

use super::{PgError, PgStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_license::{GrantDemand, LicenseManager, Share};

/// How a host sizes and renews its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// How long a batch lives in the store unless renewed (renewed every
    /// third of it).
    pub ttl: Duration,
    /// How much sooner than the store this host stops using a batch, for
    /// clocks that drift and a host that pauses.
    pub margin: Duration,
    /// Seats kept beyond those in use and waited for (the low watermark).
    pub spare: u32,
    /// Idle seats kept at most; more are given back (the high watermark).
    pub max_idle: u32,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15),
            margin: Duration::from_secs(3),
            spare: 1,
            max_idle: 2,
        }
    }
}

/// Whether a host's batches can still be in force: the store answered a
/// round recently enough that batches leased then have not passed their
/// deadline. A host without it holds no seats: it is not ready, and its
/// refusals are the store's fault, not the license's.
#[derive(Debug)]
pub struct StoreHealth {
    last_ok: std::sync::Mutex<Option<Instant>>,
    /// How long a batch leased at a successful round stays usable here.
    window: Duration,
}

impl StoreHealth {
    /// Whether the last successful round is recent enough.
    pub fn available(&self) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < self.window)
    }

    fn answered(&self, asked: Instant) {
        *self
            .last_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(asked);
    }
}

/// One host's batches of every counted grant of a shared license manager.
pub struct Batcher {
    store: PgStore,
    licenses: Arc<LicenseManager>,
    host_id: String,
    settings: BatchSettings,
    /// Grants whose other hosts asked for seats in vain at the last lease,
    /// with this host's fair part of each (`u32::MAX` until a lease tells
    /// it): this host keeps none idle of them, and lets its calls hold no
    /// more than its part, so hosts that wait are not starved by busy ones.
    contended: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    health: Arc<StoreHealth>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("host_id", &self.host_id)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Batches of `licenses`' grants for host `host_id` from `store`.
    pub fn new(
        store: PgStore,
        licenses: Arc<LicenseManager>,
        host_id: impl Into<String>,
        settings: BatchSettings,
    ) -> Self {
        Self {
            store,
            licenses,
            host_id: host_id.into(),
            settings,
            contended: std::sync::Mutex::default(),
            health: Arc::new(StoreHealth {
                last_ok: std::sync::Mutex::new(None),
                window: settings.ttl.saturating_sub(settings.margin),
            }),
        }
    }

    /// Whether the store answers well enough for this host's batches to
    /// be in force; readable after the batcher moved into its task.
    pub fn health(&self) -> Arc<StoreHealth> {
        self.health.clone()
    }

    /// Renews every batch each third of the TTL, and grows them as soon as
    /// a call here finds no seat, until `shutdown` completes; then hands
    /// every batch back. A failed round is logged and tried again; batches
    /// not renewed lapse by themselves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let every = self.settings.ttl / 3;
        let mut renew_at = Instant::now();
        let mut listener: Option<super::Listener> = None;
        let mut heard = false;
        loop {
            let renew = heard || Instant::now() >= renew_at;
            heard = false;
            if renew {
                renew_at = Instant::now() + every;
                // Notifications sent while not listening are lost; the
                // renewal every third of the TTL is the fallback.
                if listener.is_none() {
                    listener = self.store.listen(&[super::seats::CHANNEL]).await.ok();
                }
            }
            let asked = Instant::now();
            match self.round(renew).await {
                // Only a full round proves every batch was renewed.
                Ok(()) if renew => self.health.answered(asked),
                Ok(()) => {}
                Err(e) => tracing::warn!(host = %self.host_id, "seat batches not renewed: {e}"),
            }
            let wait = renew_at.saturating_duration_since(Instant::now());
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
                () = self.licenses.seats_wanted() => {}
                notification = next_notification(&mut listener) => match notification {
                    Some((_, payload)) => heard = self.heard(&payload),
                    None => listener = None,
                },
            }
        }
        if let Err(e) = self.return_all().await {
            tracing::warn!(host = %self.host_id, "seat batches not handed back: {e}");
        }
    }

    /// Another host asked for seats of a grant in vain, or gave some back:
    /// keep none idle of it until a lease finds nobody short, and look at
    /// the batches again (the round that follows renews them all).
    /// Returns whether the notification came from another host.
    fn heard(&self, payload: &str) -> bool {
        let Some((grant, host)) = payload.split_once('\t') else {
            return false;
        };
        if host == self.host_id {
            return false;
        }
        self.contended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(grant.to_string())
            .or_insert(u32::MAX);
        true
    }

    /// One round: each counted grant's batch sized to what calls here hold
    /// and wait for. With `renew`, every batch is leased again; otherwise
    /// only those that must grow.
    pub async fn round(&self, renew: bool) -> Result<(), PgError> {
        for demand in self.licenses.demand() {
            if !demand.in_force {
                if demand.share.is_some_and(|s| s.seats > 0) {
                    self.give_back(&demand).await?;
                }
                continue;
            }
            let have = demand
                .share
                .filter(|s| s.until > Instant::now())
                .map_or(0, |s| s.seats);
            let want = self.want(&demand, have);
            if want > have || renew {
                self.lease(&demand, want).await?;
            }
        }
        Ok(())
    }

    /// The batch size for a grant's demand when `have` is held.
    /// Seats are kept idle only while no other host wants them and the
    /// pool is not exact; while others want them, no more than this
    /// host's fair part is asked for.
    fn want(&self, d: &GrantDemand, have: u32) -> u32 {
        let part = self.part(&d.grant_id);
        // An exact pool keeps none idle either.
        let (spare, max_idle) = if part.is_some() || d.exact {
            (0, 0)
        } else {
            (self.settings.spare, self.settings.max_idle)
        };
        let busy = d.in_use.saturating_add(d.waiting);
        let want = if have < busy.saturating_add(spare) || have > busy.saturating_add(max_idle) {
            busy.saturating_add(spare)
        } else {
            have
        };
        want.min(d.seats).min(part.unwrap_or(u32::MAX))
    }

    /// This host's fair part of a grant other hosts wait for, if they do.
    fn part(&self, grant: &str) -> Option<u32> {
        self.contended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(grant)
            .copied()
    }

    /// Leases `want` seats of a grant and puts the batch in force here. A
    /// shrink is made here first, so no call takes a seat the store is
    /// about to free.
    async fn lease(&self, d: &GrantDemand, want: u32) -> Result<(), PgError> {
        // Growing keeps the batch as it is here until the store answers;
        // shrinking keeps at least the seats held now.
        let want = match self.licenses.shrink_share(&d.license_id, &d.grant_id, want) {
            Some(kept) => kept.max(want),
            None => want,
        };
        // The deadline counts from before the request: the store's counts
        // from its own later moment.
        let asked = Instant::now();
        // A store that hangs must not hold this round past a renewal.
        let patience = self.settings.ttl / 3;
        let batch = tokio::time::timeout(
            patience,
            self.store.lease_batch_reporting(
                &d.grant_id,
                &self.host_id,
                want,
                self.settings.ttl,
                super::seats::Load {
                    in_use: d.in_use,
                    waiting: d.waiting,
                },
            ),
        )
        .await
        .map_err(|_| PgError::TimedOut(patience))??;
        let until = asked + self.settings.ttl.saturating_sub(self.settings.margin);
        // Others short of seats: this host's calls hold at most its fair
        // part, the rest draining as calls end and going back at the next
        // lease.
        let part = (batch.others_short > 0)
            .then(|| d.seats.div_ceil(batch.others_wanting.saturating_add(1)));
        {
            let mut contended = self
                .contended
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match part {
                Some(part) => contended.insert(d.grant_id.clone(), part),
                None => contended.remove(&d.grant_id),
            };
        }
        let _ = self.licenses.cap_share(&d.license_id, &d.grant_id, part);
        let share = Share {
            seats: batch.seats,
            token: batch.token,
            until,
        };
        // A grant removed meanwhile has nothing to put in force.
        let _ = self.licenses.set_share(&d.license_id, &d.grant_id, share);
        Ok(())
    }

    /// Hands back every batch no call here holds a seat of (a host
    /// shutting down gracefully, its calls drained); a batch still in use
    /// is left to lapse in the store.
    pub async fn return_all(&self) -> Result<(), PgError> {
        for d in self.licenses.demand() {
            self.give_back(&d).await?;
        }
        Ok(())
    }

    /// Hands a grant's batch back to the store once no call here holds a
    /// seat of it (it is emptied here first, so none takes one meanwhile).
    async fn give_back(&self, d: &GrantDemand) -> Result<(), PgError> {
        if self.licenses.shrink_share(&d.license_id, &d.grant_id, 0) == Some(0) {
            self.store.return_batch(&d.grant_id, &self.host_id).await?;
        }
        Ok(())
    }
}

/// The next notification of `listener`; never, without one; `None` once its
/// connection ended.
pub(crate) async fn next_notification(
    listener: &mut Option<super::Listener>,
) -> Option<(String, String)> {
    match listener {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}
