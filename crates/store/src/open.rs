//! Which seats are taken and not yet returned, found by walking ledger rows
//! in order: the ledger writer keeps one such set to store the point from
//! which open seats start, recovery walks the rows after that point, and
//! the audit walks them all to check it.

use crate::chain::kind_from_names;
use crate::ledger::{LEDGER_COLUMNS, event_from_row};
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};
use tollgate_license::ledger::{EventKind, UsageEvent};
use tollgate_license::store::OpenSeat;

/// `set` moved past the ledger's rows from row `from` on, in order (rows of
/// a kind this build does not know move nothing; the audit names them).
pub(crate) fn walk(conn: &Connection, from: u64, mut set: OpenSet) -> rusqlite::Result<OpenSet> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq >= ?1 ORDER BY seq"
    ))?;
    let mut rows = stmt.query([from])?;
    while let Some(r) = rows.next()? {
        let kind: String = r.get(2)?;
        let reason: Option<String> = r.get(3)?;
        if let Some(kind) = kind_from_names(&kind, reason.as_deref()) {
            set.apply(&event_from_row(r, kind)?);
        }
    }
    Ok(set)
}

/// An open seat: its checkout row and the lease the plugin still holds.
struct Open {
    checkout: UsageEvent,
    lease: Option<u64>,
}

/// The seats open after the rows applied so far.
#[derive(Default)]
pub(crate) struct OpenSet {
    /// Each open seat by its id (for rows of format 1, which have no seat,
    /// the id of its only lease).
    seats: HashMap<u64, Open>,
    /// The open seats' ids by the sequence number of their checkout row.
    by_checkout: BTreeMap<u64, u64>,
    /// The largest lease id seen.
    last_lease: u64,
}

impl OpenSet {
    /// An empty set that knows lease ids up to `last_lease` were used.
    pub(crate) fn after_lease(last_lease: u64) -> Self {
        Self {
            last_lease,
            ..Self::default()
        }
    }

    /// Moves the set past one row.
    pub(crate) fn apply(&mut self, e: &UsageEvent) {
        if let Some(lease) = e.lease_id {
            self.last_lease = self.last_lease.max(lease);
        }
        match (e.kind, e.seat_id, e.lease_id) {
            // Format 2 and later: a checkout opens its seat, a return
            // closes it, and the seat's leases come and go in between.
            (EventKind::Checkout, Some(seat), lease) => self.open(seat, e, lease),
            (EventKind::Retake, Some(seat), lease) => {
                if let Some(open) = self.seats.get_mut(&seat) {
                    open.lease = lease;
                }
            }
            (EventKind::Release | EventKind::Reclaim(_), Some(seat), _) => {
                if let Some(open) = self.seats.get_mut(&seat) {
                    open.lease = None;
                }
            }
            (EventKind::Return(_), Some(seat), _) => self.close(seat),
            // Format 1: the lease was the seat, and ended with it.
            (EventKind::Checkout, None, Some(lease)) => self.open(lease, e, Some(lease)),
            (EventKind::Release | EventKind::Reclaim(_), None, Some(lease)) => self.close(lease),
            _ => {}
        }
    }

    fn open(&mut self, seat: u64, checkout: &UsageEvent, lease: Option<u64>) {
        let previous = self.seats.insert(
            seat,
            Open {
                checkout: checkout.clone(),
                lease,
            },
        );
        if let Some(previous) = previous {
            self.by_checkout.remove(&previous.checkout.seq);
        }
        self.by_checkout.insert(checkout.seq, seat);
    }

    fn close(&mut self, seat: u64) {
        if let Some(open) = self.seats.remove(&seat) {
            self.by_checkout.remove(&open.checkout.seq);
        }
    }

    /// The sequence number of the oldest open seat's checkout row.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.by_checkout.keys().next().copied()
    }

    /// The largest lease id among the rows applied.
    pub(crate) fn last_lease(&self) -> u64 {
        self.last_lease
    }

    /// The open seats, oldest checkout first, each with its lease still held.
    pub(crate) fn seats(&self) -> Vec<OpenSeat> {
        self.by_checkout
            .values()
            .filter_map(|seat| self.seats.get(seat).map(|open| (*seat, open)))
            .map(|(seat_id, open)| {
                let c = &open.checkout;
                OpenSeat {
                    seat_id,
                    lease_id: open.lease,
                    license_id: c.license_id.to_string(),
                    grant_id: c.grant_id.as_deref().map(str::to_string),
                    plugin: c.plugin.to_string(),
                    digest: c.component_digest.to_string(),
                    invocation_id: c.invocation_id,
                }
            })
            .collect()
    }
}
