//! Seat batches: how hosts share a grant's seats exactly.
//!
//! A host leases a *batch* of a grant's seats for a time to live, and
//! hands them to its calls without asking the database again. The one
//! invariant, checked in one transaction with the grant's row locked and
//! judged by the database's clock: the unexpired batches of a grant never
//! sum above its seats. Each lease is a new *fencing token*, logged with
//! its size and window, so the ledger's rows can be replayed against the
//! batches they were taken under.
//!
//! A batch is valid on the database's clock until its `expires_at`, which
//! is counted from the start of the transaction that granted it; a host
//! counts its own deadline from a monotonic reading taken *before* it
//! asked, less a margin, so it stops using the seats no later than the
//! database frees them.

use super::{PgError, PgStore, SESSION_IDLE_IN_TRANSACTION};
use std::time::Duration;
use tokio_postgres::IsolationLevel;

/// The channel on which hosts ask each other to look at their batches of
/// a grant again: payload `GRANT_ID<tab>HOST_ID`, sent by a host that got
/// fewer seats than it asked for, or that gave seats back.
pub const CHANNEL: &str = "tollgate_seats";

/// What a host's calls hold and wait for of a grant, as it leases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Seats its calls hold.
    pub in_use: u32,
    /// Its calls waiting for a seat of the license.
    pub waiting: u32,
}

/// What the store granted a host: its batch of one grant's seats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Seats in the batch (at most what was asked for).
    pub seats: u32,
    /// The fencing token of this lease; every ledger row taken under it
    /// carries it.
    pub token: i64,
    /// Whether the grant is unlimited (the batch is then as large as asked).
    pub unlimited: bool,
    /// Seats the other hosts' live batches asked for and did not get: when
    /// above 0, this host should give back what it holds idle.
    pub others_short: u32,
    /// Other hosts whose live batches ask for seats: with them, this host's
    /// fair part of the grant is its seats over one more than these.
    pub others_wanting: u32,
}

/// The second statement of a lease, run after the grant's row is locked
/// (so, at READ COMMITTED, with a snapshot that sees every batch committed
/// before the lock was had): sizes the batch from the seats the others'
/// live batches leave, stores it (with what was asked) under a new token,
/// logs it, and tells how many seats the others asked for in vain, how
/// many this host held before, and how many other hosts want seats.
const LEASE: &str = "
WITH mine AS (
    SELECT coalesce(sum(seats) FILTER (WHERE expires_at > clock_timestamp()), 0)::bigint AS held,
           coalesce(max(wanted), 0)::bigint AS asked
    FROM seat_batches WHERE grant_id = $1 AND host_id = $2
), others AS (
    SELECT coalesce(sum(seats), 0)::bigint AS taken,
           coalesce(sum(greatest(wanted - seats, 0)), 0)::bigint AS short,
           count(*) FILTER (WHERE wanted > 0) AS wanting
    FROM seat_batches
    WHERE grant_id = $1 AND host_id <> $2 AND expires_at > clock_timestamp()
), granted AS (
    SELECT CASE WHEN $4::bigint IS NULL THEN $3::bigint
                ELSE least($3::bigint, greatest($4::bigint - taken, 0)) END::integer AS seats,
           nextval('fencing_tokens') AS token,
           now() + make_interval(secs => $5::float8) AS expires_at,
           short, wanting
    FROM others
), stored AS (
    INSERT INTO seat_batches (grant_id, host_id, seats, wanted, token, expires_at, in_use, waiting)
    SELECT $1, $2, seats, $3::integer, token, expires_at, $6, $7 FROM granted
    ON CONFLICT (grant_id, host_id) DO UPDATE
        SET seats = EXCLUDED.seats, wanted = EXCLUDED.wanted, token = EXCLUDED.token,
            expires_at = EXCLUDED.expires_at, in_use = EXCLUDED.in_use,
            waiting = EXCLUDED.waiting
), logged AS (
    INSERT INTO seat_batch_log (token, grant_id, host_id, seats, granted_at, expires_at)
    SELECT token, $1, $2, seats, clock_timestamp(), expires_at FROM granted
)
SELECT seats, token, short, (SELECT held FROM mine), (SELECT asked FROM mine), wanting
FROM granted";

impl PgStore {
    /// Sets `host_id`'s batch of grant `grant_id` to `want` seats, or to as
    /// many as the other hosts' live batches leave, valid for `ttl` on the
    /// database's clock. Asking for fewer seats than held shrinks the
    /// batch (the host must have stopped using the others); asking for 0
    /// keeps nothing but a token.
    pub async fn lease_batch(
        &self,
        grant_id: &str,
        host_id: &str,
        want: u32,
        ttl: Duration,
    ) -> Result<Batch, PgError> {
        self.lease_batch_reporting(grant_id, host_id, want, ttl, Load::default())
            .await
    }

    /// [`PgStore::lease_batch`], storing with the batch what `load` says
    /// the host's calls hold and wait for (for `tollgate status --store`).
    pub async fn lease_batch_reporting(
        &self,
        grant_id: &str,
        host_id: &str,
        want: u32,
        ttl: Duration,
        load: Load,
    ) -> Result<Batch, PgError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(PgError::query("begin a seat lease"))?;
        // This transaction locks the grant's row, which every host's lease
        // waits for: if this host is cut off inside it, the server ends it
        // within a fifth of the batch TTL, before the others' batches lapse
        // (the session's own limit is longer, for every other transaction).
        let hold = (ttl / 5).clamp(Duration::from_millis(200), SESSION_IDLE_IN_TRANSACTION);
        tx.batch_execute(&format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            hold.as_millis()
        ))
        .await
        .map_err(PgError::query("bound a seat lease"))?;
        let grant = tx
            .query_opt(
                "SELECT seats FROM grants WHERE grant_id = $1 FOR UPDATE",
                &[&grant_id],
            )
            .await
            .map_err(PgError::query("lock a grant"))?
            .ok_or_else(|| PgError::UnknownGrant(grant_id.to_string()))?;
        let seats: Option<i32> = grant.get(0);
        let row = tx
            .query_one(
                LEASE,
                &[
                    &grant_id,
                    &host_id,
                    &i64::from(want),
                    &seats.map(i64::from),
                    &ttl.as_secs_f64(),
                    &i32::try_from(load.in_use).unwrap_or(i32::MAX),
                    &i32::try_from(load.waiting).unwrap_or(i32::MAX),
                ],
            )
            .await
            .map_err(PgError::query("lease seats"))?;
        let granted = i64::from(row.get::<_, i32>(0));
        let (held, asked) = (row.get::<_, i64>(3), row.get::<_, i64>(4));
        let want = i64::from(want);
        // Short of a demand that grew, or giving seats back: the other
        // hosts look at their batches of the grant again (on commit). Hosts
        // that stay short of a steady demand do not wake each other.
        let short_anew = granted < want && want > asked;
        if seats.is_some() && (short_anew || granted < held) {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &format!("{grant_id}\t{host_id}")],
            )
            .await
            .map_err(PgError::query("notify the other hosts"))?;
        }
        tx.commit()
            .await
            .map_err(PgError::query("commit a seat lease"))?;
        Ok(Batch {
            seats: u32::try_from(granted).unwrap_or(0),
            token: row.get(1),
            unlimited: seats.is_none(),
            others_short: u32::try_from(row.get::<_, i64>(2)).unwrap_or(u32::MAX),
            others_wanting: u32::try_from(row.get::<_, i64>(5)).unwrap_or(u32::MAX),
        })
    }

    /// Gives `host_id`'s batch of `grant_id` back (a host shutting down, or
    /// one with no call on the grant).
    pub async fn return_batch(&self, grant_id: &str, host_id: &str) -> Result<(), PgError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM seat_batches WHERE grant_id = $1 AND host_id = $2",
                &[&grant_id, &host_id],
            )
            .await
            .map_err(PgError::query("return a seat batch"))?;
        Ok(())
    }
}
