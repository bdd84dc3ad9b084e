//! Reports read from the state database: status per license, usage per
//! license, plugin and day, and the audit of the ledger's hash chain.

use super::{State, StateError};
use crate::ledger::UsageEvent;
use crate::ledger::chain::{GENESIS, kind_from_names, row_hash};
use crate::license::Counters;
use rusqlite::params;
use serde::Serialize;
use std::collections::BTreeMap;

/// Status of one license id: issued seats, validity, and counters from the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LicenseReport {
    /// The license id.
    pub id: String,
    /// Seats issued by grants valid now (`None`: unlimited).
    pub seats: Option<u32>,
    /// Seats issued per issuer key id, over every grant (`None`: unlimited).
    pub issued_by: BTreeMap<String, Option<u32>>,
    /// Number of grants installed.
    pub grants: usize,
    /// Validity start of the enforced terms.
    pub not_before: Option<u64>,
    /// Expiry of the enforced terms.
    pub expires_at: Option<u64>,
    /// Whether it is revoked.
    pub revoked: bool,
    /// Counters from the ledger.
    pub counters: Counters,
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
}

/// Usage of one license by one plugin on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The license id.
    pub license_id: String,
    /// The plugin.
    pub plugin: String,
    /// Seats handed out.
    pub checkouts: u64,
    /// Seats sent back.
    pub releases: u64,
    /// Seats taken back by the host.
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

/// Most problems listed in one audit report.
const MAX_PROBLEMS: usize = 50;

impl State {
    /// Status of every installed license id at `now`.
    pub fn status(&self, now: u64) -> Result<Vec<LicenseReport>, StateError> {
        let terms = self.effective_terms(now)?;
        let revoked = self.revocations()?;
        let mut counters = self.ledger_counters()?;
        let mut issued: BTreeMap<String, (BTreeMap<String, Option<u32>>, usize)> = BTreeMap::new();
        for g in self.grants()? {
            let entry = issued.entry(g.license_id.clone()).or_default();
            entry.1 += 1;
            let seats = entry.0.entry(g.issuer.clone()).or_insert(Some(0));
            *seats = match (*seats, g.seats) {
                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                _ => None,
            };
        }
        Ok(terms
            .into_iter()
            .map(|(id, t)| {
                let (issued_by, grants) = issued.remove(&id).unwrap_or_default();
                LicenseReport {
                    seats: t.seats.limit(),
                    issued_by,
                    grants,
                    not_before: t.not_before,
                    expires_at: t.expires_at,
                    revoked: revoked.contains_key(&id),
                    counters: counters.remove(&id).map(|c| c.0).unwrap_or_default(),
                    id,
                }
            })
            .collect())
    }

    /// Usage aggregated per day, license and plugin.
    pub fn usage(&self, f: &UsageFilter) -> Result<Vec<UsageRow>, StateError> {
        self.query(
            "SELECT date(at_ms / 1000, 'unixepoch') AS day, license_id, plugin,
               sum(kind = 'checkout'), sum(kind = 'release'), sum(kind = 'reclaim'),
               sum(kind = 'denial'), sum(kind = 'withheld')
             FROM ledger
             WHERE (?1 IS NULL OR at_ms >= ?1 * 1000) AND (?2 IS NULL OR at_ms < ?2 * 1000)
               AND (?3 IS NULL OR license_id = ?3) AND (?4 IS NULL OR plugin = ?4)
             GROUP BY day, license_id, plugin ORDER BY day, license_id, plugin",
            params![f.since, f.until, f.license, f.plugin],
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
    /// row is named.
    pub fn audit(&self) -> Result<AuditReport, StateError> {
        let conn = self.conn();
        let (head_seq, head_hash): (u64, Vec<u8>) = conn
            .query_row("SELECT seq, hash FROM chain_head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok((0, GENESIS.to_vec())),
                e => Err(e),
            })
            .map_err(|e| self.err(e))?;
        let mut stmt = conn
            .prepare(
                "SELECT seq, at_ms, kind, reason, license_id, plugin, digest, lease_id, invocation_id, hash
                 FROM ledger ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut problems = Vec::new();
        let mut note = |p: String| {
            if problems.len() < MAX_PROBLEMS {
                problems.push(p);
            }
        };
        let (mut prev, mut expected_seq, mut count) = (GENESIS, 1u64, 0u64);
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
            let event = UsageEvent {
                seq,
                at_ms: r.get(1).map_err(|e| self.err(e))?,
                kind,
                license_id: r.get::<_, String>(4).map_err(|e| self.err(e))?.into(),
                plugin: r.get::<_, String>(5).map_err(|e| self.err(e))?.into(),
                component_digest: r.get::<_, String>(6).map_err(|e| self.err(e))?.into(),
                lease_id: r.get(7).map_err(|e| self.err(e))?,
                invocation_id: r.get(8).map_err(|e| self.err(e))?,
            };
            let computed = row_hash(&prev, &event);
            if stored.as_slice() != computed {
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
        Ok(AuditReport {
            rows: count,
            head_seq,
            problems,
        })
    }
}
