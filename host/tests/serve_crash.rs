//! kill -9 `tollgate serve` at random moments while HTTP clients call
//! licensed plugins, restart it on the same state directory, and check that
//! every call a client saw acknowledged (HTTP 200) is in the ledger, the
//! chain verifies and every seat is free.
//!
//! Short form in CI (4 kills); `TOLLGATE_CRASH_LOOPS=N` runs N.

mod common;

use common::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Calls `plugin` until `stop`, recording the invocation id of every 200.
fn client(base: &str, plugin: &str, stop: &AtomicBool, acked: &Mutex<Vec<u64>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("{base}/v1/plugins/{plugin}/invoke");
    while !stop.load(Ordering::Relaxed) {
        // A killed server refuses or drops the connection: keep going.
        let Ok(mut r) = agent.post(&url).send(&b"2"[..]) else {
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

#[test]
fn kill_nine_under_http_load_loses_no_acknowledged_call() {
    let loops: u32 = std::env::var("TOLLGATE_CRASH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let root = prepare("crash", "2");
    let acked = Mutex::new(Vec::new());
    let mut seed = u64::from(std::process::id());
    for round in 0..loops {
        let mut s = Server::start(&root, "1s");
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for plugin in ["hello", "slow", "hello"] {
                let (base, stop, acked) = (&s.base, &stop, &acked);
                scope.spawn(move || client(base, plugin, stop, acked));
            }
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 700));
            s.child.kill().expect("SIGKILL");
            let status = s.child.wait().expect("reaped");
            assert!(!status.success(), "round {round}: killed, not exited");
            stop.store(true, Ordering::Relaxed);
        });
    }

    // A clean restart reclaims what the dead servers left open.
    let s = Server::start(&root, "1s");
    let (st, body, _) = s.invoke("hello", b"after");
    assert_eq!(st, 200, "{body}");
    let status = s.json("/v1/admin/status");
    let demo = status["licenses"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["id"] == "demo"))
        .cloned()
        .expect("demo license");
    assert!(s.terminate().success());

    let acked = acked.into_inner().expect("acked");
    assert!(
        acked.len() >= 10 * loops as usize,
        "too few calls acknowledged to mean anything: {}",
        acked.len()
    );
    let db = rusqlite::Connection::open(root.join("state/tollgate.db")).expect("db");
    for invocation in &acked {
        let kinds: Vec<String> = db
            .prepare("SELECT kind FROM ledger WHERE invocation_id = ?1 ORDER BY seq")
            .and_then(|mut q| {
                q.query_map([invocation], |r| r.get(0))
                    .and_then(Iterator::collect)
            })
            .expect("query");
        assert_eq!(
            kinds,
            vec!["checkout", "release"],
            "acknowledged call {invocation} is not in the ledger as it ran"
        );
    }
    let audit = std::process::Command::new(BIN)
        .args(["audit", "verify"])
        .env("TOLLGATE_STATE", root.join("state"))
        .output()
        .expect("audit");
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
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
    let open: u64 = db
        .query_row(
            "SELECT count(*) FROM ledger c WHERE kind = 'checkout' AND NOT EXISTS
             (SELECT 1 FROM ledger e WHERE e.lease_id = c.lease_id AND e.kind IN ('release', 'reclaim'))",
            [],
            |r| r.get(0),
        )
        .expect("open leases");
    assert_eq!(open, 0, "leases left open in the ledger");
    eprintln!(
        "serve crash test: {loops} kills, {} acknowledged calls, all in the ledger; {} host-restart reclaims",
        acked.len(),
        c["reclaims"]["host-restart"]
    );
}
