//! State directory, grants, ledger and audit, without any WebAssembly.

use super::*;
use crate::ledger::SqliteLedger;
use std::sync::Arc;
use tollgate_license::issuer::{IssuerKey, LicenseTerms};
use tollgate_license::ledger::{Ledger, LedgerError, UsageEvent};
use tollgate_license::{Denial, ReclaimReason};

const NOW: u64 = 1_800_000_000;

/// A scratch directory, removed when dropped.
pub(crate) fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tollgate-state-{tag}-"))
        .tempdir()
        .expect("scratch dir")
}

fn license(key: &IssuerKey, id: &str, seats: Seats, f: impl FnOnce(&mut LicenseTerms)) -> String {
    let mut t = LicenseTerms::new(id, seats);
    f(&mut t);
    key.sign(t, NOW).expect("signs").to_file_text()
}

fn event(seq_hint: u64, kind: EventKind, lease: Option<u64>) -> UsageEvent {
    UsageEvent {
        lease_id: lease,
        seat_id: lease,
        grant_id: lease.map(|_| "g".into()),
        ..UsageEvent::new(
            kind,
            NOW * 1000 + seq_hint,
            "a".into(),
            "p".into(),
            "d".into(),
            seq_hint,
        )
    }
}

#[test]
fn install_requires_trust_and_adds_grants() {
    let temp = temp_dir("install");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let key = IssuerKey::generate().expect("key");
    let first = license(&key, "a", Seats::Counted(2), |_| {});
    assert!(matches!(
        state.install_text(&first, NOW),
        Err(StateError::Issuer(IssuerError::Untrusted(_)))
    ));
    assert!(
        state.grants().expect("grants").is_empty(),
        "nothing changed"
    );
    assert!(
        state
            .trust(&key.public(), Some("acme"), NOW)
            .expect("trust")
    );
    assert!(!state.trust(&key.public(), None, NOW).expect("trust again"));
    let installed = state.install_text(&first, NOW).expect("installs");
    assert!(installed.new);
    assert!(
        !state.install_text(&first, NOW).expect("again").new,
        "same grant twice adds nothing"
    );
    state
        .install_text(&license(&key, "a", Seats::Counted(3), |_| {}), NOW)
        .expect("second grant");
    let grants = state.seat_grants().expect("grants");
    assert_eq!(grants["a"].len(), 2, "each grant keeps its own seats");
    let status = state.status(NOW).expect("status");
    assert_eq!(status[0].seats, Some(5));
    assert_eq!(status[0].issued_by[&key.public().key_id()], Some(5));
    assert_eq!(status[0].grants.len(), 2);
}

#[test]
fn grants_keep_their_own_windows_and_plugins() {
    let temp = temp_dir("expiry");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let key = IssuerKey::generate().expect("key");
    state.trust(&key.public(), None, NOW).expect("trust");
    let text = license(&key, "a", Seats::Counted(2), |t| {
        t.expires_at = Some(NOW + 10)
    });
    state.install_text(&text, NOW).expect("installs");
    state
        .install_text(
            &license(&key, "a", Seats::Unlimited, |t| {
                t.plugins = vec!["hello".into()];
                t.expires_at = Some(NOW + 5);
            }),
            NOW,
        )
        .expect("installs");
    let grants = state.seat_grants().expect("grants");
    let bound: Vec<&Vec<String>> = grants["a"].iter().map(|g| &g.terms.plugins).collect();
    assert!(
        bound.contains(&&vec!["hello".to_string()]),
        "the unrestricted grant leaves the other's plugin rule alone: {bound:?}"
    );
    assert_eq!(state.status(NOW).expect("status")[0].seats, None);
    assert_eq!(state.status(NOW + 100).expect("status")[0].seats, Some(0));
    assert!(matches!(
        state.install_text(&text, NOW + 100),
        Err(StateError::Issuer(IssuerError::Expired(_)))
    ));
    // A renewal whose window starts later is installed ahead of time.
    let renewal = license(&key, "a", Seats::Counted(4), |t| {
        t.not_before = Some(NOW + 1_000);
    });
    assert!(
        state
            .install_text(&renewal, NOW)
            .expect("installs ahead")
            .new
    );
    assert_eq!(
        state.status(NOW + 100).expect("status")[0].seats,
        Some(0),
        "not yet"
    );
    assert_eq!(state.status(NOW + 1_000).expect("status")[0].seats, Some(4));
}

#[test]
fn revoke_and_reinstall() {
    let temp = temp_dir("revoke");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let key = IssuerKey::generate().expect("key");
    state.trust(&key.public(), None, NOW).expect("trust");
    assert!(matches!(
        state.revoke("a", NOW),
        Err(StateError::UnknownLicense(_))
    ));
    state
        .install_text(&license(&key, "a", Seats::Counted(1), |_| {}), NOW)
        .expect("installs");
    state.revoke("a", NOW).expect("revokes");
    assert!(state.status(NOW).expect("status")[0].revoked);
    let again = state
        .install_text(&license(&key, "a", Seats::Counted(1), |_| {}), NOW)
        .expect("installs");
    assert!(again.revoked, "a new grant does not lift the revocation");
    assert!(state.status(NOW).expect("status")[0].revoked);
    assert!(state.unrevoke("a").expect("unrevokes"));
    assert!(!state.status(NOW).expect("status")[0].revoked);
    assert!(!state.unrevoke("a").expect("unrevokes"), "was not revoked");
    let g = &again.grant.grant_id;
    assert_eq!(state.revoke_grant(g, NOW).expect("revokes the grant"), "a");
    let grants = state.seat_grants().expect("grants");
    assert_eq!(grants["a"].iter().filter(|x| x.revoked).count(), 1);
    assert!(matches!(
        state.revoke_grant("no-such-grant", NOW),
        Err(StateError::UnknownGrant(_))
    ));
}

#[test]
fn ledger_commits_chain_and_counts() {
    let temp = temp_dir("ledger");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    {
        let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
        ledger.record(event(1, EventKind::Checkout, Some(1)));
        ledger.record(event(2, EventKind::Checkout, Some(2)));
        ledger.record(event(3, EventKind::Release, Some(1)));
        ledger.record(event(
            4,
            EventKind::Return(ReclaimReason::InvocationEnded),
            Some(1),
        ));
        ledger.record(event(5, EventKind::Denial(Denial::Exhausted), None));
        ledger.sync().expect("durable");
        assert!(ledger.stats().commits >= 1 && ledger.stats().rows == 5);
    }
    // A second writer continues the chain after a restart.
    {
        let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
        ledger.record(event(
            6,
            EventKind::Reclaim(ReclaimReason::HostRestart),
            Some(2),
        ));
        ledger.record(event(
            7,
            EventKind::Return(ReclaimReason::HostRestart),
            Some(2),
        ));
        ledger.record(event(8, EventKind::Withheld, None));
        ledger.sync().expect("durable");
    }
    let audit = state.audit().expect("audit");
    assert!(audit.ok(), "{:?}", audit.problems);
    assert_eq!((audit.rows, audit.head_seq), (8, 8));
    let counters = state.ledger_counters().expect("counters");
    let (c, per_plugin) = &counters["a"];
    assert_eq!(
        (c.checkouts, c.releases, c.peak, c.in_use, c.withheld),
        (2, 1, 2, 0, 1)
    );
    assert_eq!(c.reclaims.get(ReclaimReason::HostRestart), 1);
    assert_eq!(c.returns.total(), 2);
    assert!(c.balanced(), "{c:?}");
    assert_eq!(c.denials.get(Denial::Exhausted), 1);
    assert_eq!(per_plugin["p"], *c);
    assert_eq!(state.last_ids().expect("ids"), (2, 8));
    assert_eq!(state.last_lease_id().expect("lease id"), 2);
    let usage = state.usage(&UsageFilter::default()).expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (
            usage[0].checkouts,
            usage[0].releases,
            usage[0].reclaims,
            usage[0].denials
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(usage[0].day, "2027-01-15");
    let hourly = state
        .usage(&UsageFilter {
            hourly: true,
            ..UsageFilter::default()
        })
        .expect("usage per hour");
    assert_eq!(hourly.len(), 1);
    assert_eq!(hourly[0].day, "2027-01-15T08:00Z");
    assert_eq!(hourly[0].checkouts, usage[0].checkouts);
    let none = state
        .usage(&UsageFilter {
            plugin: Some("other".into()),
            ..UsageFilter::default()
        })
        .expect("usage");
    assert!(none.is_empty());
}

/// One row of plugin `plugin` of license "a" (seat = lease = `seat`).
fn row_of(plugin: &str, n: u64, kind: EventKind, seat: Option<u64>) -> UsageEvent {
    UsageEvent {
        plugin: plugin.into(),
        ..event(n, kind, seat)
    }
}

#[test]
fn counters_kept_across_starts_match_the_ledger_counted_from_scratch() {
    let temp = temp_dir("sums");
    let state = State::open(temp.path()).expect("opens");
    let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
    let ended = EventKind::Return(ReclaimReason::InvocationEnded);
    // Before the first mark: p holds seats 1 and 2, q seat 3.
    for (n, plugin, seat) in [(1, "p", 1), (2, "p", 2), (3, "q", 3)] {
        ledger.record(row_of(plugin, n, EventKind::Checkout, Some(seat)));
    }
    ledger.sync().expect("durable");
    let first = state.ledger_counters().expect("counters");
    assert_eq!((first["a"].0.in_use, first["a"].0.peak), (3, 3));
    // After it: seat 1 back, then p takes 4 and 5 (license in use 4, p 3),
    // then everything back, a denial and a withheld call.
    ledger.record(row_of("p", 4, ended, Some(1)));
    ledger.record(row_of("p", 5, EventKind::Checkout, Some(4)));
    ledger.record(row_of("p", 6, EventKind::Checkout, Some(5)));
    for (n, plugin, seat) in [(7, "p", 2), (8, "q", 3), (9, "p", 4), (10, "p", 5)] {
        ledger.record(row_of(plugin, n, ended, Some(seat)));
    }
    ledger.record(row_of("q", 11, EventKind::Denial(Denial::Exhausted), None));
    ledger.record(row_of("q", 12, EventKind::Withheld, None));
    ledger.sync().expect("durable");
    let kept = state.ledger_counters().expect("counters");
    let (c, per_plugin) = &kept["a"];
    assert_eq!(
        (c.checkouts, c.in_use, c.peak, c.returns.total()),
        (5, 0, 4, 5)
    );
    assert_eq!((per_plugin["p"].peak, per_plugin["q"].peak), (3, 1));
    assert_eq!(
        (
            per_plugin["q"].withheld,
            per_plugin["q"].denials.get(Denial::Exhausted)
        ),
        (1, 1)
    );
    // No new rows: the same counters, read from the kept sums alone.
    assert_eq!(state.ledger_counters().expect("counters"), kept);
    // Counted again from the first row: the same.
    state
        .conn()
        .execute("DELETE FROM ledger_sums_mark", [])
        .expect("drop the mark");
    assert_eq!(state.ledger_counters().expect("counters"), kept);
    assert!(state.audit().expect("audit").ok());

    // Sums edited behind tollgate's back: the audit names them.
    let report = tamper(
        &state,
        "UPDATE ledger_sums SET n = n + 1 WHERE kind = 'checkout'",
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("stored usage sums up to row 12")),
        "{:?}",
        report.problems
    );
    let report = tamper(&state, "UPDATE ledger_runs SET peak = 9");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("stored seat peaks up to row 12")),
        "{:?}",
        report.problems
    );
}

/// The row the stored usage sums go up to.
fn sums_mark(state: &State) -> Option<u64> {
    state
        .conn()
        .query_row("SELECT upto FROM ledger_sums_mark", [], |r| r.get(0))
        .optional()
        .expect("mark")
}

#[test]
fn the_writer_stores_the_usage_sums_as_it_goes_and_when_it_stops() {
    let temp = temp_dir("writer-sums");
    let state = State::open(temp.path()).expect("opens");
    let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
    let ended = EventKind::Return(ReclaimReason::InvocationEnded);
    // Seats taken and returned, a few held across commits, and denials.
    let (mut seq, mut seat) = (0, 0);
    while seq < SUMS_STORED_EVERY_ROWS + 1_000 {
        for _ in 0..100 {
            seat += 1;
            let plugin = if seat % 3 == 0 { "q" } else { "p" };
            ledger.record(row_of(plugin, seat, EventKind::Checkout, Some(seat)));
            if seat % 7 != 0 {
                ledger.record(row_of(plugin, seat, ended, Some(seat)));
                seq += 1;
            }
            seq += 1;
        }
        ledger.record(row_of(
            "q",
            seat,
            EventKind::Denial(Denial::Exhausted),
            None,
        ));
        seq += 1;
        ledger.sync().expect("durable");
    }
    // Stored while it runs, once SUMS_STORED_EVERY_ROWS rows were committed, by
    // the commit after them.
    let mark = sums_mark(&state).expect("stored while running");
    assert!(
        (SUMS_STORED_EVERY_ROWS..seq).contains(&mark),
        "mark {mark} of {seq} rows"
    );
    // Stored up to the last row when it stops.
    drop(ledger);
    assert_eq!(sums_mark(&state), Some(seq));
    assert!(state.audit().expect("audit").ok());
    // The sums it kept are those counted from the first row.
    let kept = state.ledger_counters().expect("counters");
    state.forget_usage_sums().expect("forgotten");
    let counted = state.ledger_counters().expect("counters");
    assert_eq!(kept, counted);
    let c = &counted["a"].0;
    assert_eq!(c.in_use, u32::try_from(seat / 7).expect("small"));
    assert_eq!(c.peak, c.in_use + 1);
}

#[test]
fn a_call_waits_only_for_its_own_rows() {
    let temp = temp_dir("own-rows");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let ledger = Arc::new(SqliteLedger::open(state.db_path()).expect("ledger"));
    // Another connection holds the write lock, so no commit can finish.
    let blocker = rusqlite::Connection::open(state.db_path()).expect("opens");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("write lock");
    // Invocation 1 records a row and waits for it: it cannot be committed
    // while the lock is held.
    ledger.record(event(1, EventKind::Checkout, Some(1)));
    let waiting = {
        let ledger = ledger.clone();
        std::thread::spawn(move || ledger.sync_invocation(1))
    };
    // Invocation 2 recorded nothing: it is acknowledged at once, while
    // invocation 1 is still waiting.
    ledger.sync_invocation(2).expect("nothing to wait for");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(ledger.sync_invocation_async(2))
        .expect("nothing to wait for");
    assert!(
        !waiting.is_finished(),
        "invocation 1 was acknowledged uncommitted"
    );
    assert_eq!(ledger.stats().rows, 0);
    blocker.execute_batch("ROLLBACK").expect("unlock");
    waiting
        .join()
        .expect("joins")
        .expect("durable once the lock is gone");
    assert_eq!(ledger.stats().rows, 1);
    // Once committed, asking again does not commit again.
    let commits = ledger.stats().commits;
    ledger.sync_invocation(1).expect("durable");
    assert_eq!(ledger.stats().commits, commits);
    // The async form waits for its own rows.
    ledger.record(event(3, EventKind::Checkout, Some(3)));
    rt.block_on(ledger.sync_invocation_async(3))
        .expect("durable");
    assert_eq!(ledger.stats().rows, 2);
    drop(ledger);
    assert_eq!(state.audit().expect("audit").rows, 2);
}

#[test]
fn open_leases_are_found() {
    let temp = temp_dir("open");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
    ledger.record(event(1, EventKind::Checkout, Some(7)));
    ledger.record(event(2, EventKind::Checkout, Some(8)));
    ledger.record(event(
        3,
        EventKind::Reclaim(ReclaimReason::Trapped),
        Some(7),
    ));
    ledger.record(event(4, EventKind::Return(ReclaimReason::Trapped), Some(7)));
    // Seat 8's lease was sent back: the seat is still taken, no lease open.
    ledger.record(event(5, EventKind::Release, Some(8)));
    ledger.sync().expect("durable");
    let open = state.open_seats().expect("open");
    assert_eq!(
        open.iter()
            .map(|l| (l.seat_id, l.lease_id))
            .collect::<Vec<_>>(),
        vec![(8, None)]
    );
}

/// The chain head's point where open seats start, and its last lease id.
fn open_point(state: &State) -> (u64, u64) {
    state
        .conn()
        .query_row("SELECT open_from, last_lease FROM chain_head", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("chain head")
}

#[test]
fn open_seats_are_walked_from_the_oldest_one_open_and_the_audit_checks_that_point() {
    let temp = temp_dir("open-point");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
    // Seat 1 comes and goes; seat 2 is taken at row 3 and stays.
    ledger.record(event(1, EventKind::Checkout, Some(1)));
    ledger.record(event(
        2,
        EventKind::Return(ReclaimReason::InvocationEnded),
        Some(1),
    ));
    ledger.sync().expect("durable");
    assert_eq!(
        open_point(&state),
        (3, 1),
        "nothing open: from the next row"
    );
    ledger.record(event(3, EventKind::Checkout, Some(2)));
    for i in 4..=20 {
        ledger.record(event(i, EventKind::Checkout, Some(i)));
        ledger.record(event(
            i,
            EventKind::Return(ReclaimReason::InvocationEnded),
            Some(i),
        ));
    }
    ledger.sync().expect("durable");
    assert_eq!(open_point(&state), (3, 20));
    drop(ledger);
    let open = |state: &State| {
        state
            .open_seats()
            .expect("open")
            .iter()
            .map(|o| o.seat_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(open(&state), vec![2]);
    assert!(state.audit().expect("audit").ok());
    // A writer started again walks from the point, and moves it on once
    // seat 2 is returned.
    let ledger = SqliteLedger::open(state.db_path()).expect("ledger again");
    ledger.record(event(21, EventKind::Checkout, Some(21)));
    ledger.sync().expect("durable");
    assert_eq!(open_point(&state), (3, 21));
    ledger.record(event(
        3,
        EventKind::Return(ReclaimReason::InvocationEnded),
        Some(2),
    ));
    ledger.sync().expect("durable");
    assert_eq!(
        open_point(&state),
        (38, 21),
        "seat 21, taken at row 38, is the oldest"
    );
    assert_eq!(open(&state), vec![21]);
    drop(ledger);
    assert!(state.audit().expect("audit").ok());
    // A chain head moved past an open seat hides it from a restart.
    let hidden = tamper(&state, "UPDATE chain_head SET open_from = 41");
    assert_eq!(open(&state), Vec::<u64>::new());
    assert!(
        hidden
            .problems
            .iter()
            .any(|p| p.contains("before row 41 was returned, but seat 21")),
        "{:?}",
        hidden.problems
    );
    let reused = tamper(
        &state,
        "UPDATE chain_head SET open_from = 38, last_lease = 5",
    );
    assert!(
        reused
            .problems
            .iter()
            .any(|p| p.contains("last lease id 5 is below lease 21")),
        "{:?}",
        reused.problems
    );
    assert_eq!(state.last_lease_id().expect("last lease"), 5);
}

fn tamper(state: &State, sql: &str) -> AuditReport {
    state.conn().execute_batch(sql).expect("tamper");
    state.audit().expect("audit runs")
}

#[test]
fn audit_names_edited_inserted_and_deleted_rows() {
    let temp = temp_dir("audit");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let ledger = Arc::new(SqliteLedger::open(state.db_path()).expect("ledger"));
    for i in 1..=6 {
        ledger.record(event(i, EventKind::Checkout, Some(i)));
    }
    ledger.sync().expect("durable");
    drop(ledger);
    assert!(state.audit().expect("audit").ok());
    let edited = tamper(
        &state,
        "UPDATE ledger SET plugin = 'someone-else' WHERE seq = 3",
    );
    assert!(
        edited
            .problems
            .iter()
            .any(|p| p.contains("row 3 does not match")),
        "{:?}",
        edited.problems
    );
    tamper(&state, "UPDATE ledger SET plugin = 'p' WHERE seq = 3");
    let deleted = tamper(&state, "DELETE FROM ledger WHERE seq = 4");
    assert!(
        deleted
            .problems
            .iter()
            .any(|p| p.contains("rows 4..4 are missing")),
        "{:?}",
        deleted.problems
    );
    let inserted = tamper(
        &state,
        "INSERT INTO ledger (seq, at_ms, kind, reason, license_id, plugin, digest, lease_id, invocation_id, hash)
         SELECT 4, at_ms, kind, reason, license_id, plugin, digest, 99, invocation_id, hash FROM ledger WHERE seq = 5",
    );
    assert!(
        inserted
            .problems
            .iter()
            .any(|p| p.contains("row 4 does not match")),
        "{:?}",
        inserted.problems
    );
    let truncated = tamper(&state, "DELETE FROM ledger WHERE seq >= 4");
    assert!(
        truncated
            .problems
            .iter()
            .any(|p| p.contains("rows 4..6 are missing at the end")),
        "{:?}",
        truncated.problems
    );
}

#[test]
fn bad_state_dirs_and_databases_are_named() {
    let temp = temp_dir("bad");
    let dir = temp.path();
    // A file where the directory should be.
    let file = dir.join("a-file");
    std::fs::write(&file, "x").expect("write");
    assert!(matches!(
        State::open(&file.join("state")),
        Err(StateError::Dir { .. })
    ));
    // A database file that is not a database.
    let corrupt = dir.join("corrupt");
    std::fs::create_dir_all(&corrupt).expect("dir");
    std::fs::write(corrupt.join(DB_FILE), vec![0x42u8; 8192]).expect("write");
    let err = State::open(&corrupt).expect_err("corrupt");
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("move it aside"), "{err}");
    // Written by a newer version.
    let newer = dir.join("newer");
    State::open(&newer).expect("opens");
    connect(&newer.join(DB_FILE))
        .expect("conn")
        .pragma_update(None, "user_version", 99)
        .expect("bump");
    assert!(matches!(
        State::open(&newer),
        Err(StateError::NewerSchema { found: 99, .. })
    ));
    // One host per state directory.
    let ok = State::open(&dir.join("ok")).expect("opens");
    let lock = ok.lock_host().expect("first host");
    assert!(matches!(ok.lock_host(), Err(StateError::HostRunning(_))));
    drop(lock);
    assert!(ok.lock_host().is_ok(), "lock released with the host");
}

/// A full disk (SQLite's page cap on the writer's connection: a real
/// `SQLITE_FULL`, no mock) fails waiting calls and refuses new ones, loses
/// no row, and commits again once there is room, without a restart.
#[test]
fn a_full_ledger_fails_closed_and_recovers_without_a_restart() {
    let temp = temp_dir("full");
    let dir = temp.path();
    let state = State::open(dir).expect("opens");
    let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
    ledger.record(event(1, EventKind::Checkout, Some(1)));
    ledger.sync_invocation(1).expect("durable");
    assert!(ledger.ready().is_ok());
    let size = std::fs::metadata(state.db_path()).expect("db").len();
    ledger.limit_size(Some(size));
    let mut recorded = 1u64;
    let failure = (2..2_000u64).find_map(|i| {
        ledger.record(event(i, EventKind::Withheld, None));
        recorded += 1;
        ledger.sync_invocation(i).err()
    });
    let failure = failure.expect("the full disk made a commit fail");
    let cause = std::error::Error::source(&failure).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("full")),
        "{failure:?}"
    );
    let refused = ledger.ready().expect_err("new calls are refused");
    assert!(
        matches!(refused, LedgerError::CommitFailing { .. }),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("last commit failed"),
        "{refused}"
    );
    // A seat's return is never refused: rows still go in while it is full.
    ledger.record(event(
        9_999,
        EventKind::Return(ReclaimReason::InvocationEnded),
        Some(1),
    ));
    recorded += 1;
    ledger.limit_size(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ledger.sync().is_err() {
        assert!(std::time::Instant::now() < deadline, "did not recover");
        std::thread::yield_now();
    }
    assert!(ledger.ready().is_ok(), "calls are accepted again");
    assert_eq!(ledger.stats().rows, recorded, "no row was lost");
    drop(ledger);
    let audit = state.audit().expect("audit");
    assert!(audit.ok(), "{:?}", audit.problems);
    assert_eq!(audit.rows, recorded);
}

/// The usage export: pages after a cursor, with nothing doubled or lost,
/// ids stable per row and host, the grant's customer as subject, held time
/// on returns (their checkouts on an earlier page too), and events that an
/// independent CloudEvents implementation reads.
#[test]
fn usage_exports_as_cloudevents_page_by_page_behind_a_cursor() {
    let temp = temp_dir("export");
    let state = State::open(temp.path()).expect("opens");
    let key = IssuerKey::generate().expect("key");
    state.trust(&key.public(), None, NOW).expect("trust");
    let text = license(&key, "a", Seats::Counted(2), |t| {
        t.customer = Some("Acme Corp".into());
    });
    state.install_text(&text, NOW).expect("installs");
    let grant: Arc<str> = state.grants().expect("grants")[0].grant_id.clone().into();
    let row = |at: u64, kind: EventKind, seat: Option<u64>| UsageEvent {
        lease_id: seat,
        seat_id: seat,
        grant_id: seat.map(|_| grant.clone()),
        ..UsageEvent::new(kind, NOW * 1000 + at, "a".into(), "p".into(), "d".into(), 9)
    };
    let ended = ReclaimReason::InvocationEnded;
    {
        let ledger = SqliteLedger::open(state.db_path()).expect("ledger");
        ledger.record(row(10, EventKind::Checkout, Some(1)));
        ledger.record(row(20, EventKind::Checkout, Some(2)));
        ledger.record(row(30, EventKind::Release, Some(1)));
        ledger.record(row(45, EventKind::Return(ended), Some(1)));
        ledger.record(row(50, EventKind::Denial(Denial::Exhausted), None));
        ledger.record(row(70, EventKind::Return(ended), Some(2)));
        ledger.sync().expect("durable");
    }
    let host = "hostkey1";
    let first = state
        .usage_events(host, &ExportCursor::default(), 3)
        .expect("page");
    assert_eq!(first.events.len(), 3);
    // The cursor goes through its text form, as an exporter keeps it.
    let cursor = ExportCursor::parse(&first.next.encode(), host).expect("parses");
    let second = state.usage_events(host, &cursor, 100).expect("page");
    assert_eq!(second.events.len(), 3);
    let empty = state.usage_events(host, &second.next, 100).expect("page");
    assert!(empty.events.is_empty());
    assert_eq!(empty.next, second.next, "nothing new: the same cursor");
    // A bare row number starts after that row.
    let from_4 = state
        .usage_events(host, &ExportCursor::parse("4", host).expect("n"), 100)
        .expect("page");
    assert_eq!(from_4.events[0].data.seq, 5);

    let all: Vec<_> = first.events.iter().chain(&second.events).collect();
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "hostkey1-1",
            "hostkey1-2",
            "hostkey1-3",
            "hostkey1-4",
            "hostkey1-5",
            "hostkey1-6"
        ]
    );
    let types: Vec<&str> = all.iter().map(|e| e.kind).collect();
    assert_eq!(
        types,
        [
            "tollgate.seat.checkout",
            "tollgate.seat.checkout",
            "tollgate.lease.release",
            "tollgate.seat.return",
            "tollgate.request.denied",
            "tollgate.seat.return"
        ]
    );
    let held: Vec<Option<u64>> = all.iter().map(|e| e.data.held_ms).collect();
    assert_eq!(held, [None, None, None, Some(35), None, Some(50)]);
    assert_eq!(all[4].data.reason, Some("exhausted"));
    assert_eq!(all[4].subject, None, "a refusal names no grant");
    assert_eq!(all[0].subject.as_deref(), Some("Acme Corp"));
    assert_eq!(all[0].time, "2027-01-15T08:00:00.010Z");

    for (event, at) in all.into_iter().zip([10, 20, 30, 45, 50, 70]) {
        let line = serde_json::to_string(event).expect("serializes");
        let parsed: cloudevents::Event = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a CloudEvent ({e}): {line}"));
        use cloudevents::AttributesReader as _;
        assert_eq!(parsed.specversion(), cloudevents::event::SpecVersion::V10);
        assert_eq!(parsed.id(), event.id);
        assert_eq!(parsed.ty(), event.kind);
        assert_eq!(parsed.source().to_string(), "/tollgate/hosts/hostkey1");
        assert_eq!(parsed.subject(), event.subject.as_deref());
        assert_eq!(
            parsed.time().map(|t| t.timestamp_millis()),
            Some((NOW * 1000 + at) as i64)
        );
        match parsed.data() {
            Some(cloudevents::Data::Json(data)) => {
                assert_eq!(data["seq"], event.data.seq);
                assert_eq!(data["license_id"], "a");
            }
            other => panic!("data is JSON: {other:?}"),
        }
    }
}
