//! Reports read from the state database: status per license, usage per
//! license, plugin and day, and the audit of the ledger's hash chain.

use super::{ScopeProblem, State, StateError};
use crate::chain::{GENESIS, kind_from_names, row_hash_in};
use crate::ledger::{Head, LEDGER_COLUMNS, event_from_row, read_head};
use crate::open::OpenSet;
use rusqlite::params;
use serde::Serialize;
use std::collections::BTreeMap;
use tollgate_license::{Counters, Grant, Seats, Terms};

/// Status of one license id: issued seats, validity, and counters from the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LicenseReport {
    /// The license id.
    pub id: String,
    /// Seats issued by grants valid now (`None`: unlimited).
    pub seats: Option<u32>,
    /// Seats issued per issuer key id, over every grant (`None`: unlimited).
    pub issued_by: BTreeMap<String, Option<u32>>,
    /// Validity start of the enforced terms.
    pub not_before: Option<u64>,
    /// Expiry of the enforced terms.
    pub expires_at: Option<u64>,
    /// Whether it is revoked.
    pub revoked: bool,
    /// Counters from the ledger.
    pub counters: Counters,
    /// Each grant of the id, in install order.
    pub grants: Vec<GrantReport>,
    /// Grants of the id the issuers' scopes keep out of force (outside
    /// their issuer's scope, or the id granted by several issuers not
    /// sharing it explicitly), with what the operator must decide.
    pub conflicts: Vec<ScopeProblem>,
}

/// One grant of a license, as `status` shows it: the grant as installed,
/// and its state now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantReport {
    /// The grant as installed.
    #[serde(flatten)]
    pub grant: super::Grant,
    /// Revoked alone or with its license id.
    pub revoked: bool,
    /// Gives seats now: not revoked, inside its window, not left out by
    /// the issuers' scopes.
    pub in_force: bool,
    /// Left out of force by the issuers' scopes (see `conflicts`).
    pub left_out: bool,
    /// Seats of it held now, from the ledger.
    pub in_use: u32,
}

/// Filters for the usage report; times are unix seconds.
#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    /// Events at or after this time.
    pub since: Option<u64>,
    /// Events before this time.
    pub until: Option<u64>,
    /// Only this license id.
    pub license: Option<String>,
    /// Only this plugin.
    pub plugin: Option<String>,
    /// Per hour instead of per day.
    pub hourly: bool,
}

/// Usage of one license by one plugin on one UTC day (or hour).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// The day, `YYYY-MM-DD` (UTC); per hour, the hour, `YYYY-MM-DDTHH:00Z`.
    pub day: String,
    /// The license id.
    pub license_id: String,
    /// The plugin.
    pub plugin: String,
    /// Leases handed to plugins.
    pub checkouts: u64,
    /// Leases sent back by plugins.
    pub releases: u64,
    /// Leases ended by the host.
    pub reclaims: u64,
    /// Requests refused.
    pub denials: u64,
    /// Calls withheld.
    pub withheld: u64,
}

/// The outcome of checking the ledger's hash chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Rows read.
    pub rows: u64,
    /// Rows up to this one were not read: a verified checkpoint vouches for
    /// them (0: every row was read).
    pub after: u64,
    /// The last sequence number the chain head vouches for.
    pub head_seq: u64,
    /// Each problem found, naming the row; empty when the chain verifies.
    pub problems: Vec<String>,
}

impl AuditReport {
    /// Whether the chain verifies.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Seats and window of the grants in force, for display: seats add up, the
/// window spans them all (none in force: no seats, no window).
fn summary(live: &[&Grant]) -> Terms {
    let seats = live.iter().try_fold(0u32, |n, g| {
        g.terms.seats.limit().map(|s| n.saturating_add(s))
    });
    Terms {
        seats: seats.map_or(Seats::Unlimited, Seats::Counted),
        not_before: live.iter().map(|g| g.terms.not_before).min().flatten(),
        expires_at: if live.iter().any(|g| g.terms.expires_at.is_none()) {
            None
        } else {
            live.iter().filter_map(|g| g.terms.expires_at).max()
        },
        plugins: Vec::new(),
    }
}

/// Most problems listed in one audit report.
const MAX_PROBLEMS: usize = 50;

impl State {
    /// Status of every installed license id at `now`.
    pub fn status(&self, now: u64) -> Result<Vec<LicenseReport>, StateError> {
        let revoked = self.revocations()?;
        let enforced = self.enforced_grants()?;
        let mut conflicts: BTreeMap<String, Vec<ScopeProblem>> = BTreeMap::new();
        for p in enforced.problems {
            conflicts.entry(p.license_id.clone()).or_default().push(p);
        }
        let terms: BTreeMap<String, Terms> = enforced
            .by_license
            .into_iter()
            .map(|(id, grants)| {
                let live: Vec<&Grant> = grants
                    .iter()
                    .filter(|g| !g.revoked && g.terms.valid_at(now))
                    .collect();
                (id, summary(&live))
            })
            .collect();
        let mut counters = self.ledger_counters()?;
        // Seats held per grant: the open seats, walked from the point the
        // chain head keeps (not a scan of every row).
        let mut held: BTreeMap<String, i64> = BTreeMap::new();
        for seat in self.open_seats()? {
            if let Some(grant) = seat.grant_id {
                *held.entry(grant).or_default() += 1;
            }
        }
        let revoked_grants = enforced.revoked;
        let mut grant_reports: BTreeMap<String, Vec<GrantReport>> = BTreeMap::new();
        let mut issued: BTreeMap<String, BTreeMap<String, Option<u32>>> = BTreeMap::new();
        for g in enforced.grants {
            let revoked_now =
                revoked.contains_key(&g.license_id) || revoked_grants.contains(&g.grant_id);
            let left_out = conflicts
                .get(&g.license_id)
                .is_some_and(|ps| ps.iter().any(|p| p.grants.contains(&g.grant_id)));
            grant_reports
                .entry(g.license_id.clone())
                .or_default()
                .push(GrantReport {
                    in_force: !revoked_now && !left_out && g.valid_at(now),
                    left_out,
                    revoked: revoked_now,
                    in_use: u32::try_from(held.get(&g.grant_id).copied().unwrap_or(0).max(0))
                        .unwrap_or(u32::MAX),
                    grant: g.clone(),
                });
            let entry = issued.entry(g.license_id.clone()).or_default();
            let seats = entry.entry(g.issuer.clone()).or_insert(Some(0));
            *seats = match (*seats, g.seats) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                _ => None,
            };
        }
        Ok(terms
            .into_iter()
            .map(|(id, t)| {
                let issued_by = issued.remove(&id).unwrap_or_default();
                LicenseReport {
                    seats: t.seats.limit(),
                    issued_by,
                    not_before: t.not_before,
                    expires_at: t.expires_at,
                    revoked: revoked.contains_key(&id),
                    counters: counters.remove(&id).map(|c| c.0).unwrap_or_default(),
                    grants: grant_reports.remove(&id).unwrap_or_default(),
                    conflicts: conflicts.remove(&id).unwrap_or_default(),
                    id,
                }
            })
            .collect())
    }

    /// Usage aggregated per day (or hour), license and plugin.
    pub fn usage(&self, f: &UsageFilter) -> Result<Vec<UsageRow>, StateError> {
        self.query(
            "SELECT CASE WHEN ?5 THEN strftime('%Y-%m-%dT%H:00Z', at_ms / 1000, 'unixepoch')
                    ELSE date(at_ms / 1000, 'unixepoch') END AS day, license_id, plugin,
               sum(CASE WHEN kind IN ('checkout', 'retake') THEN count ELSE 0 END),
               sum(CASE WHEN kind = 'release' THEN count ELSE 0 END),
               sum(CASE WHEN kind = 'reclaim' THEN count ELSE 0 END),
               sum(CASE WHEN kind = 'denial' THEN count ELSE 0 END),
               sum(CASE WHEN kind = 'withheld' THEN count ELSE 0 END)
             FROM ledger
             WHERE (?1 IS NULL OR at_ms >= ?1 * 1000) AND (?2 IS NULL OR at_ms < ?2 * 1000)
               AND (?3 IS NULL OR license_id = ?3) AND (?4 IS NULL OR plugin = ?4)
             GROUP BY day, license_id, plugin ORDER BY day, license_id, plugin",
            params![f.since, f.until, f.license, f.plugin, f.hourly],
            |r| {
                Ok(UsageRow {
                    day: r.get(0)?,
                    license_id: r.get(1)?,
                    plugin: r.get(2)?,
                    checkouts: r.get(3)?,
                    releases: r.get(4)?,
                    reclaims: r.get(5)?,
                    denials: r.get(6)?,
                    withheld: r.get(7)?,
                })
            },
        )
    }

    /// Re-computes the hash chain over every ledger row and compares it with
    /// the stored hashes and the chain head: any edited, inserted or deleted
    /// row is named. The usage sums kept for start-up are checked against
    /// the rows too.
    pub fn audit(&self) -> Result<AuditReport, StateError> {
        let mut report = self.audit_after(0, GENESIS)?;
        let left = MAX_PROBLEMS.saturating_sub(report.problems.len());
        report
            .problems
            .extend(self.check_sums()?.into_iter().take(left));
        Ok(report)
    }

    /// [`State::audit`] of the rows after row `after` only, the chain going
    /// on from `hash` (the hash of row `after`, as a verified checkpoint
    /// vouches for it): the cost is what was added since. Rows up to
    /// `after` are not read, so a change to them shows only in a full audit.
    pub fn audit_after(&self, after: u64, hash: [u8; 32]) -> Result<AuditReport, StateError> {
        let mut conn = self.conn();
        // The head and the rows are read in one read transaction, so a
        // commit landing in between cannot look like a broken chain.
        let conn = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)
            .map_err(|e| self.err(e))?;
        let Head {
            seq: head_seq,
            hash: head_hash,
            open_from,
            last_lease,
        } = read_head(&conn).map_err(|e| self.err(e))?;
        // From the first row, the seats left open are known too, to check
        // where the chain head says they start.
        let mut open = (after == 0).then(OpenSet::default);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq > ?1 ORDER BY seq"
            ))
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([after]).map_err(|e| self.err(e))?;
        let mut problems = Vec::new();
        let mut note = |p: String| {
            if problems.len() < MAX_PROBLEMS {
                problems.push(p);
            }
        };
        let (mut prev, mut expected_seq, mut count) = (hash, after + 1, 0u64);
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            count += 1;
            let seq: u64 = r.get(0).map_err(|e| self.err(e))?;
            let kind: String = r.get(2).map_err(|e| self.err(e))?;
            let reason: Option<String> = r.get(3).map_err(|e| self.err(e))?;
            let stored: Vec<u8> = r.get(9).map_err(|e| self.err(e))?;
            if seq != expected_seq {
                if seq > expected_seq {
                    note(format!(
                        "rows {expected_seq}..{} are missing (deleted)",
                        seq - 1
                    ));
                } else {
                    note(format!("row {seq} is out of order (inserted)"));
                }
            }
            let Some(kind) = kind_from_names(&kind, reason.as_deref()) else {
                note(format!("row {seq} has an unknown kind {kind:?} (edited)"));
                expected_seq = seq + 1;
                prev = stored.as_slice().try_into().unwrap_or(GENESIS);
                continue;
            };
            let event = event_from_row(r, kind).map_err(|e| self.err(e))?;
            if let Some(open) = open.as_mut() {
                open.apply(&event);
            }
            let format: u8 = r.get(10).map_err(|e| self.err(e))?;
            let computed = row_hash_in(format, &prev, &event);
            if computed.is_none() {
                note(format!(
                    "row {seq} has an unknown row format {format} (edited)"
                ));
            } else if computed.is_some_and(|h| stored.as_slice() != h) {
                note(format!(
                    "row {seq} does not match its hash (edited, or a row before it was changed)"
                ));
            }
            prev = stored.as_slice().try_into().unwrap_or(GENESIS);
            expected_seq = seq + 1;
        }
        let last = expected_seq - 1;
        if last != head_seq {
            if last < head_seq {
                note(format!(
                    "rows {}..{head_seq} are missing at the end (deleted)",
                    last + 1
                ));
            } else {
                note(format!(
                    "rows {}..{last} are not covered by the chain head (appended outside tollgate)",
                    head_seq + 1
                ));
            }
        } else if prev.as_slice() != head_hash.as_slice() {
            note(format!("the chain head does not match row {last} (edited)"));
        }
        if let Some(mut open) = open {
            // `open_from` 0 (not yet moved since an upgrade) claims nothing.
            if open_from > 0
                && open.oldest().is_some_and(|oldest| oldest < open_from)
                && let Some(seat) = open.seats().first()
            {
                note(format!(
                    "the chain head says every seat taken before row {open_from} was returned, but seat {} (taken by invocation {}) is not; a restart would not return it (edited)",
                    seat.seat_id, seat.invocation_id
                ));
            }
            if open.last_lease() > last_lease && head_seq > 0 {
                note(format!(
                    "the chain head's last lease id {last_lease} is below lease {} in the rows; a restart would hand out lease ids again (edited)",
                    open.last_lease()
                ));
            }
        }
        Ok(AuditReport {
            rows: count,
            after,
            head_seq,
            problems,
        })
    }
}
