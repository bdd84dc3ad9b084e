//! `tollgate store migrate`: a single host's state directory, with ledger
//! rows from real licensed calls, moved into a throwaway PostgreSQL store;
//! the store then shows what the state directory showed, a rerun moves
//! nothing, and a tampered ledger, a running host or a bad URL is refused
//! with nothing written; a moved host started on the store extends its
//! chain there.

use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use test_postgres::TestPostgres;

mod common;

use common::*;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `tollgate args` on `root/state`, expects exit `code`; its stdout
/// and stderr.
fn expect(root: &Path, code: i32, args: &[&str]) -> String {
    let o = tg(root, args);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(code), "tollgate {args:?}:\n{all}");
    assert!(!all.contains("panicked"), "{all}");
    all
}

fn json(root: &Path, args: &[&str]) -> Value {
    let o = tg(root, args);
    assert!(o.status.success(), "tollgate {args:?}:\n{}", text(&o));
    serde_json::from_slice(&o.stdout).expect("JSON")
}

fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tollgate-migrate-{tag}-"))
        .tempdir()
        .expect("scratch")
}

fn state_of(root: &Path) -> String {
    root.join("state").to_string_lossy().into_owned()
}

/// A state directory under `root` trusting issuer "acme" (scope `acme-*`)
/// with grants of acme-a and acme-b, ledger rows from licensed calls
/// (delivered, withheld and trapped) and license acme-b revoked.
fn single_host(root: &Path) {
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    expect(root, 0, &["issuer", "keygen", "--out", &p("keys")]);
    let trusted = expect(
        root,
        0,
        &[
            "trust",
            "add",
            &p("keys/issuer.pub"),
            "--name",
            "acme",
            "--ids",
            "acme-*",
        ],
    );
    assert!(trusted.contains("now trusts"), "{trusted}");
    sign_license(root, "acme-a", "2", "a.license");
    sign_license(root, "acme-b", "1", "b.license");
    expect(root, 0, &["license", "install", &p("a.license")]);
    expect(root, 0, &["license", "install", &p("b.license")]);
    let hello = guest("hello-licensed").to_string_lossy().into_owned();
    let calls = expect(
        root,
        0,
        &[
            "run",
            &hello,
            "--requires",
            "acme-a",
            "--repeat",
            "6",
            "--concurrency",
            "2",
            "--input",
            "/dev/null",
        ],
    );
    assert!(calls.contains("6 calls: 6 ok"), "{calls}");
    expect(root, 0, &["run", &hello, "--requires", "acme-b"]);
    let none = guest("no-license").to_string_lossy().into_owned();
    expect(root, 3, &["run", &none, "--requires", "acme-a"]);
    let trapper = guest("trapper").to_string_lossy().into_owned();
    expect(root, 4, &["run", &trapper, "--requires", "acme-b"]);
    expect(root, 0, &["license", "revoke", "acme-b"]);
}

/// The rows of the state directory's verified ledger.
fn verified_rows(root: &Path) -> u64 {
    let audit = json(root, &["audit", "verify", "--json"]);
    assert_eq!(audit["problems"], serde_json::json!([]), "{audit}");
    audit["rows"].as_u64().expect("rows")
}

#[test]
fn a_state_dir_moves_into_the_store_and_a_rerun_moves_nothing() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let dir = scratch("whole");
    let root = dir.path();
    single_host(root);
    let rows = verified_rows(root);
    assert!(rows >= 14, "{rows} rows");
    let listings: [&[&str]; 3] = [
        &["license", "list", "--json"],
        &["trust", "list", "--json"],
        &["usage", "--format", "json"],
    ];
    let here: Vec<Value> = listings.iter().map(|args| json(root, args)).collect();
    let db = root.join("state/tollgate.db");
    let db_before = std::fs::read(&db).expect("db");

    let state = state_of(root);
    let out = expect(
        root,
        0,
        &["store", "migrate", "--from", &state, "--to", &url],
    );
    assert_eq!(
        std::fs::read(&db).expect("db"),
        db_before,
        "the source changed"
    );
    assert!(root.join("state/host.key").exists(), "no host key: {out}");
    for line in [
        "issuers:           1 moved, 0 already there",
        "grants:            2 moved, 0 already there",
        "revoked licenses:  1 moved, 0 already there",
        "revoked grants:    0 moved, 0 already there",
        &format!("ledger rows:       {rows} moved, 0 already there"),
        &format!("chain verified in the store: {rows} rows, head hash "),
        "made the host key",
        "next: start this host with `store = \"URL\"`",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }

    // The store shows what the state directory showed.
    for (args, here) in listings.iter().zip(&here) {
        let mut args = args.to_vec();
        args.extend(["--store", &url]);
        assert_eq!(&json(root, &args), here, "{args:?}");
    }
    let verified = expect(root, 0, &["audit", "verify", "--store", &url]);
    assert!(
        verified.contains(&format!("{rows} rows, chain verified")),
        "{verified}"
    );
    assert_eq!(verified.matches("chain verified").count(), 1, "{verified}");

    // Again: nothing moves twice.
    let again = expect(
        root,
        0,
        &["store", "migrate", "--from", &state, "--to", &url],
    );
    for line in [
        "issuers:           0 moved, 1 already there",
        "grants:            0 moved, 2 already there",
        "revoked licenses:  0 moved, 1 already there",
        &format!("ledger rows:       0 moved, {rows} already there"),
    ] {
        assert!(again.contains(line), "{line:?} in:\n{again}");
    }
    assert!(!again.contains("made the host key"), "{again}");
    assert_eq!(
        json(root, &["license", "list", "--json", "--store", &url]),
        here[0]
    );
    let verified = expect(root, 0, &["audit", "verify", "--store", &url]);
    assert!(
        verified.contains(&format!("{rows} rows, chain verified")),
        "{verified}"
    );
}

#[test]
fn a_bad_url_an_unreachable_store_or_a_tampered_ledger_is_refused_with_nothing_written() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let dir = scratch("refused");
    let root = dir.path();
    single_host(root);
    let state = state_of(root);
    let migrate = |to: &str| expect(root, 2, &["store", "migrate", "--from", &state, "--to", to]);

    let bad = migrate("mysql://db.example/tollgate");
    assert!(bad.contains("is not a PostgreSQL URL"), "{bad}");
    let away = migrate("postgres://postgres@127.0.0.1:1/postgres");
    assert!(
        away.contains("cannot connect to the shared store"),
        "{away}"
    );
    let missing = expect(
        root,
        2,
        &[
            "store",
            "migrate",
            "--from",
            &root.join("nowhere").to_string_lossy(),
            "--to",
            &url,
        ],
    );
    assert!(
        missing.contains("is not a tollgate state directory"),
        "{missing}"
    );

    // A row edited in the SQLite file: refused before anything is written.
    rusqlite::Connection::open(root.join("state/tollgate.db"))
        .expect("db")
        .execute("UPDATE ledger SET count = count + 1 WHERE seq = 3", [])
        .expect("tamper");
    let tampered = migrate(&url);
    assert!(
        tampered.contains("does not verify: row 3 does not match its hash"),
        "{tampered}"
    );
    assert!(tampered.contains("nothing was moved"), "{tampered}");
    let ledger = expect(root, 0, &["audit", "verify", "--store", &url]);
    assert!(
        ledger.contains("the shared ledger has no rows yet"),
        "{ledger}"
    );
    let trusted = expect(root, 0, &["trust", "list", "--store", &url]);
    assert!(trusted.contains("no trusted issuers"), "{trusted}");
    assert!(
        !root.join("state/host.key").exists(),
        "no host key was made"
    );
}

#[test]
fn a_running_host_is_refused_then_moves_once_stopped_and_goes_on_with_the_store() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let dir = prepare("migrate-running", "2");
    let root = dir.path();
    let server = Server::start(root, "1s");
    assert_eq!(server.invoke("hello", b"operator").0, 200);
    let state = state_of(root);
    let refused = expect(
        root,
        2,
        &["store", "migrate", "--from", &state, "--to", &url],
    );
    assert!(
        refused.contains("a tollgate host is running on state directory"),
        "{refused}"
    );
    let ledger = expect(root, 0, &["audit", "verify", "--store", &url]);
    assert!(
        ledger.contains("the shared ledger has no rows yet"),
        "{ledger}"
    );

    assert!(server.terminate().success());
    let rows = verified_rows(root);
    let moved = expect(
        root,
        0,
        &["store", "migrate", "--from", &state, "--to", &url],
    );
    assert!(
        moved.contains(&format!("ledger rows:       {rows} moved, 0 already there")),
        "{moved}"
    );

    // The host started again on the store, as the summary says: the
    // migrated grant gives it seats, and its new rows extend the same chain.
    let settings = format!("store = {url:?}\nseat_batch_ttl = \"3s\"");
    let shared = Server::start_with(root, "1s", &settings);
    let ready = wait_until(Duration::from_secs(20), || {
        shared.admin("GET", "/readyz", None, None).0 == 200
    });
    assert!(ready, "the host on the store never got ready");
    assert_eq!(shared.invoke("hello", b"operator").0, 200);
    let shipped = wait_until(Duration::from_secs(10), || {
        shared
            .metrics()
            .value("tollgate_ledger_unshipped_rows", &[])
            == Some(0.0)
    });
    assert!(shipped, "the host's new rows were not shipped within 10 s");
    assert!(shared.terminate().success());
    let now = verified_rows(root);
    assert!(now > rows, "no new rows: {now}");
    let verified = expect(root, 0, &["audit", "verify", "--store", &url]);
    assert!(
        verified.contains(&format!("{now} rows, chain verified")),
        "{verified}"
    );
    assert_eq!(verified.matches("chain verified").count(), 1, "{verified}");
}

#[test]
fn help_says_what_moves_and_when_it_is_refused() {
    let dir = scratch("help");
    let help = expect(dir.path(), 0, &["store", "migrate", "--help"]);
    for needle in [
        "Move a single host's state directory into a shared PostgreSQL store",
        "--from <STATE_DIR>",
        "--to <URL>",
        "trusted issuer keys",
        "while a host runs on STATE_DIR",
        "Safe to run again",
        "store = \"URL\"",
    ] {
        assert!(help.contains(needle), "{needle:?} in:\n{help}");
    }
    let top = expect(dir.path(), 0, &["--help"]);
    assert!(top.contains("store "), "{top}");
}
