//! Usage for billing systems: the ledger's committed rows as CloudEvents
//! 1.0, read page by page behind an opaque cursor. An event's `id` is
//! stable per ledger row and host, so a billing system that takes it as its
//! idempotency key counts every row once, however often it is sent.

use super::{State, StateError};
use crate::chain::{kind_from_names, kind_names};
use crate::ledger::{LEDGER_COLUMNS, event_from_row};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use tollgate_license::issuer::format_time_ms;
use tollgate_license::ledger::{EventKind, UsageEvent};

/// Most events one page may hold.
pub const MAX_EXPORT_PAGE: usize = 10_000;

/// The prefix of an encoded cursor, naming its format.
const CURSOR_PREFIX: &str = "tgc1.";

/// A cursor, or a sequence number to start after, could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{given:?} is not an export cursor or a ledger sequence number ({why}); pass the cursor the last export returned, or a row number such as 0 to start from the first row"
)]
pub struct CursorError {
    /// What was given.
    pub given: String,
    /// What is wrong with it.
    pub why: String,
}

/// Where an export stands: per ledger chain (one per host, named by its
/// host key id), the last row already handed out. Opaque to its users:
/// [`ExportCursor::encode`] and [`ExportCursor::parse`] are its only forms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportCursor {
    chains: BTreeMap<String, u64>,
}

impl ExportCursor {
    /// A cursor standing after row `seq` of the chain of host `host`.
    pub fn at(host: &str, seq: u64) -> Self {
        Self {
            chains: BTreeMap::from([(host.to_string(), seq)]),
        }
    }

    /// Reads `text`: an encoded cursor, or a bare ledger sequence number
    /// that stands for "after this row" of `host`'s chain.
    pub fn parse(text: &str, host: &str) -> Result<Self, CursorError> {
        let bad = |why: &str| CursorError {
            given: text.chars().take(80).collect(),
            why: why.to_string(),
        };
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let seq = text.parse().map_err(|_| bad("the number is too large"))?;
            return Ok(Self::at(host, seq));
        }
        let body = text
            .strip_prefix(CURSOR_PREFIX)
            .ok_or_else(|| bad("it does not start with tgc1."))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("it is not URL-safe base64"))?;
        let plain = String::from_utf8(bytes).map_err(|_| bad("it is not text inside"))?;
        let mut chains = BTreeMap::new();
        for part in plain.split(';').filter(|p| !p.is_empty()) {
            let (chain, seq) = part
                .rsplit_once('=')
                .ok_or_else(|| bad("a chain has no position"))?;
            let seq = seq.parse().map_err(|_| bad("a position is not a number"))?;
            if chain.is_empty() || chains.insert(chain.to_string(), seq).is_some() {
                return Err(bad("a chain is unnamed or named twice"));
            }
        }
        Ok(Self { chains })
    }

    /// The cursor as one URL-safe token.
    pub fn encode(&self) -> String {
        let plain: Vec<String> = self
            .chains
            .iter()
            .map(|(chain, seq)| format!("{chain}={seq}"))
            .collect();
        format!("{CURSOR_PREFIX}{}", URL_SAFE_NO_PAD.encode(plain.join(";")))
    }

    /// The last row of `host`'s chain already handed out (0: none).
    pub fn after(&self, host: &str) -> u64 {
        self.chains.get(host).copied().unwrap_or(0)
    }
}

/// One usage event in CloudEvents 1.0's JSON format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: &'static str,
    /// `<host key id>-<ledger seq>`: stable per row and host, an
    /// idempotency key.
    pub id: String,
    /// `/tollgate/hosts/<host key id>`.
    pub source: String,
    /// `tollgate.seat.checkout`, `tollgate.lease.release`, … (see
    /// [`event_type`]).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The customer the grant was issued to, when the row names a grant
    /// whose license file names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the row was recorded, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: &'static str,
    /// What happened.
    pub data: EventData,
}

/// The `data` of a usage event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventData {
    /// The ledger row.
    pub seq: u64,
    /// The license id.
    pub license_id: String,
    /// The grant the seat came from, if a seat was involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The plugin.
    pub plugin: String,
    /// The sha256 of the plugin's component, hex.
    pub digest: String,
    /// The call.
    pub invocation_id: u64,
    /// The lease, if one was involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<u64>,
    /// The seat (the id of its first lease), if one was involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seat_id: Option<u64>,
    /// Seats (or refused requests) the event stands for.
    pub seats: u64,
    /// Why a lease or seat ended, or why a request was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// For a seat's return: how long the call held it, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
}

/// One page of an export: its events, in ledger order, and the cursor to
/// ask for the next page with.
#[derive(Clone, Debug)]
pub struct ExportPage {
    /// The events.
    pub events: Vec<CloudEvent>,
    /// Where the next page starts; the same cursor when nothing was new.
    pub next: ExportCursor,
}

/// The CloudEvents `type` of a ledger row of `kind`.
pub fn event_type(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Checkout => "tollgate.seat.checkout",
        EventKind::Return(_) => "tollgate.seat.return",
        EventKind::Retake => "tollgate.lease.retake",
        EventKind::Release => "tollgate.lease.release",
        EventKind::Reclaim(_) => "tollgate.lease.reclaim",
        EventKind::Denial(_) => "tollgate.request.denied",
        EventKind::Withheld => "tollgate.call.withheld",
    }
}

impl State {
    /// Up to `limit` (at most [`MAX_EXPORT_PAGE`]) committed ledger rows of
    /// this host's chain after `cursor`, as CloudEvents whose ids and source
    /// name `host` (the host key id).
    pub fn usage_events(
        &self,
        host: &str,
        cursor: &ExportCursor,
        limit: usize,
    ) -> Result<ExportPage, StateError> {
        let after = cursor.after(host);
        let limit = limit.clamp(1, MAX_EXPORT_PAGE);
        let conn = self.conn();
        let err = |e| self.err(e);
        let mut rows = conn
            .prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))
            .map_err(err)?;
        let events: Vec<UsageEvent> = rows
            .query_map(params![after, limit as u64], |r| {
                let kind: String = r.get(2)?;
                let reason: Option<String> = r.get(3)?;
                let kind = kind_from_names(&kind, reason.as_deref()).ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(2, kind, rusqlite::types::Type::Text)
                })?;
                event_from_row(r, kind)
            })
            .and_then(Iterator::collect)
            .map_err(err)?;
        let customers: HashMap<String, String> = conn
            .prepare_cached("SELECT grant_id, customer FROM grants WHERE customer IS NOT NULL")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(Iterator::collect)
            })
            .map_err(err)?;
        // When each seat returned in this page was checked out: from the
        // page itself, else the nearest checkout row before it.
        let mut checked_out: HashMap<u64, u64> = HashMap::new();
        let mut checkout_before = conn
            .prepare_cached(
                "SELECT at_ms FROM ledger WHERE seq < ?1 AND kind = 'checkout' AND lease_id = ?2
                 ORDER BY seq DESC LIMIT 1",
            )
            .map_err(err)?;
        let source = format!("/tollgate/hosts/{host}");
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let held_ms = match (e.kind, e.seat_id) {
                (EventKind::Checkout, Some(seat)) => {
                    checked_out.insert(seat, e.at_ms);
                    None
                }
                (EventKind::Return(_), Some(seat)) => {
                    let start = match checked_out.remove(&seat) {
                        Some(at) => Some(at),
                        None => checkout_before
                            .query_row(params![e.seq, seat], |r| r.get::<_, u64>(0))
                            .optional()
                            .map_err(err)?,
                    };
                    start.map(|at| e.at_ms.saturating_sub(at))
                }
                _ => None,
            };
            let (_, reason) = kind_names(e.kind);
            out.push(CloudEvent {
                specversion: "1.0",
                id: format!("{host}-{}", e.seq),
                source: source.clone(),
                kind: event_type(e.kind),
                subject: e
                    .grant_id
                    .as_deref()
                    .and_then(|g| customers.get(g).cloned()),
                time: format_time_ms(e.at_ms),
                datacontenttype: "application/json",
                data: EventData {
                    seq: e.seq,
                    license_id: e.license_id.to_string(),
                    grant_id: e.grant_id.as_deref().map(str::to_string),
                    plugin: e.plugin.to_string(),
                    digest: e.component_digest.to_string(),
                    invocation_id: e.invocation_id,
                    lease_id: e.lease_id,
                    seat_id: e.seat_id,
                    seats: e.count,
                    reason,
                    held_ms,
                },
            });
        }
        let mut next = cursor.clone();
        if let Some(last) = out.last() {
            next.chains.insert(host.to_string(), last.data.seq);
        }
        Ok(ExportPage { events: out, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_a_bare_number_stands_for_this_host() {
        let c = ExportCursor::at("host-a", 42);
        let text = c.encode();
        assert!(text.starts_with("tgc1."), "{text}");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "URL-safe: {text}"
        );
        assert_eq!(ExportCursor::parse(&text, "other").expect("parses"), c);
        assert_eq!(
            ExportCursor::parse("7", "host-a").expect("a number"),
            ExportCursor::at("host-a", 7)
        );
        assert_eq!(
            ExportCursor::parse(&text, "host-b")
                .expect("parses")
                .after("host-b"),
            0
        );
    }

    #[test]
    fn a_bad_cursor_says_what_is_wrong_and_what_to_pass() {
        for bad in [
            "",
            "tgc1.!!",
            "tgc2.AAAA",
            "-3",
            "tgc1.YQ",
            "99999999999999999999999",
        ] {
            let err = ExportCursor::parse(bad, "h").expect_err(bad);
            let text = err.to_string();
            assert!(
                text.contains("pass the cursor the last export returned"),
                "{text}"
            );
        }
    }
}
