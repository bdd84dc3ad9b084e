//! Which seats are taken and not yet returned, found by walking ledger rows
//! in order: the ledger writer keeps one such set to store the point from
//! which open seats start, recovery walks the rows after that point, and
//! the audit walks them all to check it.

use crate::chain::kind_from_names;
use crate::ledger::{LEDGER_COLUMNS, event_from_row};
use rusqlite::Connection;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
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
    seats: FxHashMap<u64, Open>,
    /// `(checkout row, seat id)` in the order the checkouts were applied
    /// (rising sequence numbers); an entry whose seat has closed, or opened
    /// again from a later row, is stale and dropped when met, or when stale
    /// entries outnumber the open seats.
    by_checkout: VecDeque<(u64, u64)>,
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
        self.seats.insert(
            seat,
            Open {
                checkout: checkout.clone(),
                lease,
            },
        );
        self.by_checkout.push_back((checkout.seq, seat));
    }

    fn close(&mut self, seat: u64) {
        if self.seats.remove(&seat).is_some() && self.by_checkout.len() > 2 * self.seats.len() + 64
        {
            // Keeps the stale entries fewer than the live ones (plus a
            // little), however long the oldest seat stays open.
            let seats = &self.seats;
            self.by_checkout
                .retain(|&(seq, seat)| is_open_from(seats, seq, seat));
        }
    }

    /// The sequence number of the oldest open seat's checkout row.
    pub(crate) fn oldest(&mut self) -> Option<u64> {
        while let Some(&(seq, seat)) = self.by_checkout.front() {
            if is_open_from(&self.seats, seq, seat) {
                return Some(seq);
            }
            self.by_checkout.pop_front();
        }
        None
    }

    /// The largest lease id among the rows applied.
    pub(crate) fn last_lease(&self) -> u64 {
        self.last_lease
    }

    /// The open seats, oldest checkout first, each with its lease still held.
    pub(crate) fn seats(&self) -> Vec<OpenSeat> {
        self.by_checkout
            .iter()
            .filter_map(|&(seq, seat)| {
                let open = self.seats.get(&seat)?;
                (open.checkout.seq == seq).then_some((seat, open))
            })
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

/// Whether `seat` is open from the checkout in row `seq` (not closed since,
/// nor opened again by a later row).
fn is_open_from(seats: &FxHashMap<u64, Open>, seq: u64, seat: u64) -> bool {
    seats
        .get(&seat)
        .is_some_and(|open| open.checkout.seq == seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_license::ReclaimReason;

    fn row(seq: u64, kind: EventKind, seat: u64) -> UsageEvent {
        UsageEvent {
            seq,
            seat_id: Some(seat),
            lease_id: matches!(kind, EventKind::Checkout).then_some(seat),
            ..UsageEvent::new(kind, 0, "l".into(), "p".into(), "d".into(), seat)
        }
    }

    #[test]
    fn a_long_held_seat_stays_oldest_and_the_calls_behind_it_leave_little_behind() {
        let ended = EventKind::Return(ReclaimReason::InvocationEnded);
        let mut set = OpenSet::default();
        set.apply(&row(1, EventKind::Checkout, 1));
        let mut seq = 1;
        for seat in 2..10_000 {
            seq += 1;
            set.apply(&row(seq, EventKind::Checkout, seat));
            assert_eq!(set.oldest(), Some(1));
            seq += 1;
            set.apply(&row(seq, ended, seat));
            assert!(set.by_checkout.len() <= 2 * set.seats.len() + 65);
        }
        assert_eq!(set.seats().len(), 1);
        // A seat id taken again from a later row is open from that row.
        seq += 1;
        set.apply(&row(seq, EventKind::Checkout, 7));
        seq += 1;
        set.apply(&row(seq, ended, 1));
        assert_eq!(set.oldest(), Some(seq - 1));
        assert_eq!(
            set.seats().iter().map(|s| s.seat_id).collect::<Vec<_>>(),
            [7]
        );
        seq += 1;
        set.apply(&row(seq, ended, 7));
        assert_eq!(set.oldest(), None);
        assert!(set.seats().is_empty());
        assert_eq!(set.last_lease(), 9_999);
    }
}
