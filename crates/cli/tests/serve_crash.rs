//! kill -9 `tollgate serve` at random moments while HTTP clients call
//! licensed plugins, restart it on the same state directory, and check that
//! every call a client saw acknowledged (HTTP 200) is in the ledger, the
//! chain verifies and every seat is free.
//!
//! Short form in CI (4 kills); `TOLLGATE_CRASH_LOOPS=N` runs N.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Calls `plugin` with `input` until `stop`, recording the invocation id
/// of every 200.
fn client(base: &str, plugin: &str, input: &[u8], stop: &AtomicBool, acked: &Mutex<Vec<u64>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("{base}/v1/plugins/{plugin}/invoke");
    while !stop.load(Ordering::Relaxed) {
        // A killed server refuses or drops the connection: keep going,
        // after a pause (a back-off, not a wait for anything) so the
        // loop does not spin while the server is down.
        let Ok(mut r) = agent.post(&url).send(input) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let id = r
            .headers()
            .get("x-tollgate-invocation")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        // Only a complete 200 response counts as acknowledged.
        if r.status().as_u16() == 200
            && r.body_mut().read_to_vec().is_ok()
            && let Some(id) = id
        {
            acked.lock().expect("acked").push(id);
        }
    }
}

/// The ledger rows of every invocation, in order, read in one pass.
fn rows_by_invocation(db: &rusqlite::Connection) -> HashMap<u64, Vec<String>> {
    let mut rows: HashMap<u64, Vec<String>> = HashMap::new();
    let mut q = db
        .prepare(
            "SELECT invocation_id, kind FROM ledger WHERE invocation_id IS NOT NULL ORDER BY seq",
        )
        .expect("ledger query");
    let all = q
        .query_map([], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, String>(1)?)))
        .expect("ledger rows");
    for row in all {
        let (invocation, kind) = row.expect("ledger row");
        rows.entry(invocation).or_default().push(kind);
    }
    rows
}

/// Seats taken in the ledger and never returned.
fn open_seats(db: &rusqlite::Connection) -> u64 {
    db.query_row(
        "SELECT count(*) FROM ledger c WHERE kind = 'checkout' AND NOT EXISTS
         (SELECT 1 FROM ledger e WHERE e.seat_id = c.seat_id AND e.kind = 'return')",
        [],
        |r| r.get(0),
    )
    .expect("open leases")
}

/// What a dead server left on disk: every acknowledged call has exactly its
/// checkout, release and return rows, and the hash chain verifies.
fn check_after_kill(root: &std::path::Path, acked: &[u64], round: u32) {
    let db = rusqlite::Connection::open_with_flags(
        root.join("state/tollgate.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("db");
    let rows = rows_by_invocation(&db);
    for invocation in acked {
        assert_eq!(
            rows.get(invocation).map(Vec::as_slice),
            Some(
                &[
                    "checkout".to_string(),
                    "release".to_string(),
                    "return".to_string()
                ][..]
            ),
            "after kill {round}: acknowledged call {invocation} is not in the ledger as it ran"
        );
    }
    drop(db);
    let audit = tg(root, &["audit", "verify"]);
    assert!(
        audit.status.success(),
        "after kill {round}: {}",
        String::from_utf8_lossy(&audit.stderr)
    );
}

/// A restarted server holds no seat and has taken back every lease the
/// killed one left open.
fn check_after_restart(s: &Server, root: &std::path::Path, round: u32) {
    let demo = s.demo();
    assert_eq!(
        demo["counters"]["in_use"], 0,
        "restart {round}: seats in use: {demo}"
    );
    let db = rusqlite::Connection::open_with_flags(
        root.join("state/tollgate.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("db");
    assert_eq!(open_seats(&db), 0, "restart {round}: seats left taken");
}

#[test]
fn kill_nine_under_http_load_loses_no_acknowledged_call() {
    let loops: u32 = std::env::var("TOLLGATE_CRASH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let scratch = prepare("crash", "2");
    let root = scratch.path();
    let acked = Mutex::new(Vec::new());
    let mut seed = u64::from(std::process::id());
    let started = std::time::Instant::now();
    for round in 0..loops {
        let mut s = Server::start(root, "1s");
        check_after_restart(&s, root, round);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            // `slow` holds its seat 20 ms a call, so most kills find a
            // seat taken and the restart must reclaim it.
            for (plugin, input) in [("hello", "a"), ("slow", "20"), ("hello", "b")] {
                let (base, stop, acked) = (&s.base, &stop, &acked);
                scope.spawn(move || client(base, plugin, input.as_bytes(), stop, acked));
            }
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // The kill comes at a random moment under load: the wait is
            // what the test varies, not a wait for something to happen.
            std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 700));
            s.child.kill().expect("SIGKILL");
            let status = s.child.wait().expect("reaped");
            assert!(!status.success(), "round {round}: killed, not exited");
            stop.store(true, Ordering::Relaxed);
        });
        check_after_kill(root, &acked.lock().expect("acked"), round);
    }

    // A clean restart reclaims what the last dead server left open.
    let s = Server::start(root, "1s");
    check_after_restart(&s, root, loops);
    let (st, body, _) = s.invoke("hello", b"after");
    assert_eq!(st, 200, "{body}");
    let demo = s.demo();
    assert!(s.terminate().success());

    let acked = acked.into_inner().expect("acked");
    assert!(
        acked.len() >= 10 * loops as usize,
        "too few calls acknowledged to mean anything: {}",
        acked.len()
    );
    check_after_kill(root, &acked, loops);
    let c = &demo["counters"];
    assert_eq!(c["in_use"], 0, "{c}");
    let reclaims: u64 = c["reclaims"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(
        c["checkouts"].as_u64(),
        Some(c["releases"].as_u64().unwrap_or(0) + reclaims),
        "{c}"
    );
    assert!(
        c["reclaims"]["host-restart"].as_u64() >= Some(1),
        "no kill found a seat held: {c}"
    );
    eprintln!(
        "serve crash test: {loops} kills in {:.0?}, {} acknowledged calls, all in the ledger; {} host-restart reclaims",
        started.elapsed(),
        acked.len(),
        c["reclaims"]["host-restart"]
    );
}
