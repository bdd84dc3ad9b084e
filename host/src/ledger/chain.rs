//! The hash chain over ledger rows: each row's hash covers the previous
//! row's hash and every field of the row.

use super::{EventKind, UsageEvent};
use sha2::{Digest, Sha256};

/// The hash before the first row.
pub const GENESIS: [u8; 32] = [0; 32];

/// The stored names of an event kind and its reason.
pub fn kind_names(kind: EventKind) -> (&'static str, Option<&'static str>) {
    match kind {
        EventKind::Checkout => ("checkout", None),
        EventKind::Release => ("release", None),
        EventKind::Reclaim(r) => ("reclaim", Some(r.as_str())),
        EventKind::Denial(d) => ("denial", Some(d.as_str())),
        EventKind::Withheld => ("withheld", None),
    }
}

/// Parses stored names back into a kind.
pub fn kind_from_names(kind: &str, reason: Option<&str>) -> Option<EventKind> {
    use crate::license::{Denial, ReclaimReason};
    Some(match (kind, reason) {
        ("checkout", None) => EventKind::Checkout,
        ("release", None) => EventKind::Release,
        ("withheld", None) => EventKind::Withheld,
        ("reclaim", Some(r)) => EventKind::Reclaim(ReclaimReason::from_name(r)?),
        ("denial", Some(d)) => EventKind::Denial(Denial::from_name(d)?),
        _ => return None,
    })
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The hash of `event` following a row whose hash is `prev`.
pub fn row_hash(prev: &[u8; 32], event: &UsageEvent) -> [u8; 32] {
    let (kind, reason) = kind_names(event.kind);
    let mut h = Sha256::new();
    h.update(b"tollgate ledger row v1");
    h.update(prev);
    h.update(event.seq.to_le_bytes());
    h.update(event.at_ms.to_le_bytes());
    field(&mut h, kind.as_bytes());
    field(&mut h, reason.unwrap_or("").as_bytes());
    field(&mut h, event.license_id.as_bytes());
    field(&mut h, event.plugin.as_bytes());
    field(&mut h, event.component_digest.as_bytes());
    h.update(event.lease_id.map_or([0xff; 8], u64::to_le_bytes));
    h.update(event.invocation_id.to_le_bytes());
    h.finalize().into()
}
