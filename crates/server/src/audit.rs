//! The ledger's audit status for the dashboard: a background task checks
//! the hash chain in full when the server starts and once a day, and in
//! between only the rows added since the last check (from the hash it
//! verified then), so the status stays current at any ledger size.

use serde::Serialize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tollgate::Host;
use tollgate_license::{Clock, SystemClock};
use tollgate_store::state::State;

/// How often the rows added since the last check are checked.
pub(crate) const INCREMENTAL_EVERY: Duration = Duration::from_secs(60);
/// How often the whole chain is checked again.
pub(crate) const FULL_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Most problems kept to show.
const SHOWN_PROBLEMS: usize = 5;

/// The last audit's outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct AuditStatus {
    /// Whether every row checked so far verifies.
    pub(crate) ok: bool,
    /// The last row verified.
    pub(crate) verified_to: u64,
    /// Rows read by the last check.
    pub(crate) rows_checked: u64,
    /// Whether the last check read the whole chain.
    pub(crate) full: bool,
    /// When the last check ended, unix milliseconds.
    pub(crate) at_ms: u64,
    /// How long it took, in milliseconds.
    pub(crate) took_ms: u64,
    /// When the whole chain was last checked, unix milliseconds.
    pub(crate) full_at_ms: Option<u64>,
    /// The first problems found, each naming its row.
    pub(crate) problems: Vec<String>,
}

/// The audit status, shared between the auditor and the admin API.
#[derive(Default)]
pub(crate) struct Audits {
    last: Mutex<Option<AuditStatus>>,
}

impl Audits {
    /// The last outcome, once a check has ended.
    pub(crate) fn last(&self) -> Option<AuditStatus> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, status: AuditStatus) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
    }
}

/// Checks the ledger until `stop`: in full first and every
/// [`FULL_EVERY`], incrementally every [`INCREMENTAL_EVERY`] between.
pub(crate) async fn run(host: Arc<Host>, audits: Arc<Audits>, stop: CancellationToken) {
    // The audit reads through a connection of its own, so that a full
    // audit of a large ledger (about a minute for 10 million rows) never
    // holds up the host's state: status, installs, revocations.
    let Some(dir) = host.state().map(|s| s.dir().to_path_buf()) else {
        return;
    };
    let mut verified: Option<(u64, [u8; 32])> = None;
    let mut full_at: Option<(Instant, u64)> = None;
    loop {
        let full = verified.is_none() || full_at.is_none_or(|(t, _)| t.elapsed() >= FULL_EVERY);
        let from = if full { None } else { verified };
        let started = Instant::now();
        let dir = dir.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let state = State::open_read_only(&dir).map_err(|e| e.to_string())?;
            let report = match from {
                None => state.audit(),
                Some((seq, hash)) => state.audit_after(seq, hash),
            }
            .map_err(|e| e.to_string())?;
            let head = if report.ok() {
                Some((
                    report.head_seq,
                    state
                        .chain_hash_at(report.head_seq)
                        .map_err(|e| e.to_string())?,
                ))
            } else {
                None
            };
            Ok::<_, String>((report, head))
        })
        .await;
        let now_ms = SystemClock.now_ms();
        match checked {
            Ok(Ok((report, head))) => {
                if full {
                    full_at = Some((Instant::now(), now_ms));
                }
                let ok = report.ok();
                audits.set(AuditStatus {
                    ok,
                    verified_to: head.map_or(verified.map_or(0, |(s, _)| s), |(s, _)| s),
                    rows_checked: report.rows,
                    full,
                    at_ms: now_ms,
                    took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    full_at_ms: full_at.map(|(_, ms)| ms),
                    problems: report.problems.into_iter().take(SHOWN_PROBLEMS).collect(),
                });
                if let Some(head) = head {
                    verified = Some(head);
                } else {
                    tracing::error!(
                        "the ledger audit found problems; run `tollgate audit verify` for all of them"
                    );
                    // Checked in full again next time.
                    verified = None;
                }
            }
            Ok(Err(e)) => tracing::warn!("the ledger audit could not run: {e}"),
            Err(e) => tracing::warn!("the ledger audit stopped: {e}"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(INCREMENTAL_EVERY) => {}
        }
    }
}
