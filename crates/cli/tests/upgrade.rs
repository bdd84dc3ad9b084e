//! A state directory written before exact enforcement (schema 1, ledger
//! rows of format 1) upgrades in place: its ledger still verifies, the seat
//! its dead host left taken is returned, and its counters keep their
//! invariants across both row formats.
//!
//! `fixtures/state-v1/tollgate.db` was made by the `tollgate` binary of
//! commit 560474d: an issuer trusted as `acme`, license `acme` with 2 seats,
//! 5 calls of hello-licensed, a trapper, a no-license and a greedy call, and
//! a slow call killed with SIGKILL while it held its seat.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

use common::{BIN, guest};

/// A scratch dir, removed when dropped, whose `state` holds the fixture.
fn state_from_fixture(tag: &str) -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix(&format!("tollgate-upgrade-{tag}-"))
        .tempdir()
        .expect("scratch");
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).expect("scratch");
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1/tollgate.db");
    std::fs::copy(fixture, state.join("tollgate.db")).expect("fixture");
    root
}

fn tg(root: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("TOLLGATE_STATE", root.join("state"))
        .env_remove("TOLLGATE_LOG")
        .output()
        .expect("tollgate runs")
}

fn ok(root: &std::path::Path, args: &[&str]) -> String {
    let o = tg(root, args);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "tollgate {args:?}:\n{all}");
    all
}

fn total(reasons: &Value) -> u64 {
    reasons
        .as_object()
        .expect("reasons")
        .values()
        .filter_map(Value::as_u64)
        .sum()
}

#[test]
fn a_schema_1_state_directory_upgrades_in_place() {
    let scratch = state_from_fixture("v1");
    let root = scratch.path();
    let out = ok(root, &["audit", "verify"]);
    assert!(out.contains("ledger verified: 19 rows"), "{out}");

    // The first host on it returns the seat the killed call held, then serves.
    let input = root.join("in.txt");
    std::fs::write(&input, "upgraded").expect("input");
    let out = ok(
        root,
        &[
            "run",
            &guest("hello-licensed").to_string_lossy(),
            "--requires",
            "acme",
            "--input",
            &input.to_string_lossy(),
        ],
    );
    assert!(out.contains("hello, upgraded! (licensed by acme)"), "{out}");

    let status: Value =
        serde_json::from_str(&ok(root, &["status", "--json"])).expect("status JSON");
    let c = &status[0]["counters"];
    assert_eq!(c["in_use"], 0, "{c}");
    assert_eq!(c["checkouts"], 10, "{c}");
    assert_eq!(
        c["reclaims"]["host-restart"], 1,
        "the killed call's lease: {c}"
    );
    let checkouts = c["checkouts"].as_u64().expect("checkouts");
    let releases = c["releases"].as_u64().expect("releases");
    let retakes = c["retakes"].as_u64().expect("retakes");
    assert_eq!(checkouts, releases + total(&c["reclaims"]), "{c}");
    assert_eq!(checkouts - retakes, total(&c["returns"]), "{c}");
    assert_eq!(status[0]["grants"][0]["in_force"], true, "{status}");
    assert_eq!(status[0]["conflicts"], serde_json::json!([]), "{status}");
    // The issuer trusted before scopes keeps its name and gets the default scope.
    let issuers: Value =
        serde_json::from_str(&ok(root, &["trust", "list", "--json"])).expect("trust JSON");
    assert_eq!(issuers[0]["name"], "acme", "{issuers}");
    assert_eq!(issuers[0]["scope"], serde_json::json!(["*"]), "{issuers}");

    // Old rows keep format 1 and still verify, chained with the new ones.
    let out = ok(root, &["audit", "verify"]);
    assert!(out.contains("ledger verified: 24 rows"), "{out}");
    let db = rusqlite::Connection::open(root.join("state/tollgate.db")).expect("db");
    let formats: Vec<(i64, i64)> = db
        .prepare("SELECT format, count(*) FROM ledger GROUP BY format ORDER BY format")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
        })
        .expect("formats");
    assert_eq!(formats, vec![(1, 19), (2, 5)]);
}
