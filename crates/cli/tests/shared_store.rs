//! Two `tollgate serve` processes on one PostgreSQL database share one
//! license's seats exactly, and a revocation made once reaches both.

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use test_postgres::TestPostgres;

mod common;

use common::*;

/// Trusts a new issuer in the store at `url` and installs its license
/// `demo` of `seats` there, from `root`.
fn install_shared(root: &Path, url: &str, seats: &str) {
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    let ok = |args: &[&str]| {
        let out = tg(root, args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&["issuer", "keygen", "--out", &p("keys")]);
    let trusted = ok(&["trust", "add", "--store", url, &p("keys/issuer.pub")]);
    assert!(trusted.contains("the shared store now trusts"), "{trusted}");
    sign_demo(root, seats);
    let installed = ok(&["license", "install", "--store", url, &p("demo.license")]);
    assert!(installed.contains("installed license demo"), "{installed}");
    let listed = ok(&["license", "list", "--store", url]);
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("demo ")),
        "{listed}"
    );
    // Commands that read a state directory only say so.
    let status = tg(root, &["audit", "checkpoint", "--store", url]);
    assert_eq!(status.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("works on a state directory only"),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// Starts `tollgate serve` for host `name` under `root/name`, on the shared
/// store at `url`, with plugin `early` requiring `demo`.
fn shared_host(root: &Path, url: &str, name: &str) -> Server {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("host dir");
    std::fs::write(dir.join("admin.token"), TOKEN).expect("token");
    let config = format!(
        "listen = \"127.0.0.1:0\"\nstate = \"state\"\nstore = {url:?}\nseat_batch_ttl = \"3s\"\n\
         admin_token_file = \"admin.token\"\n\
         [[plugin]]\nname = \"early\"\ncomponent = {:?}\nrequires = [\"demo\"]\n\
         wait_for_seat = \"10s\"\ntime_limit = \"20s\"\n",
        guest("early-release")
    );
    std::fs::write(dir.join("tollgate.toml"), config).expect("config");
    Server::spawn(&dir, Command::new(BIN), &["--log-format", "json"])
        .unwrap_or_else(|e| panic!("host {name} did not start: {e}"))
}

/// The most spans running at any one moment.
fn most_at_once(spans: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = spans.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    // An end before a start at the same instant: touching is not overlapping.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

#[test]
fn two_hosts_share_five_seats_exactly_and_a_revocation_reaches_both() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-shared-")
        .tempdir()
        .expect("scratch");
    let root = scratch.path();
    install_shared(root, &url, "5");
    let hosts = [shared_host(root, &url, "a"), shared_host(root, &url, "b")];

    // 12 clients, 6 on each host, with a guest that sends its license back
    // early: the delivered calls never overlap more than the 5 seats.
    let spans: Vec<(u128, u128)> = std::thread::scope(|scope| {
        let runs: Vec<_> = hosts
            .iter()
            .map(|h| scope.spawn(move || delivered_spans(h, 6, 6)))
            .collect();
        runs.into_iter()
            .flat_map(|r| r.join().expect("host clients"))
            .collect()
    });
    assert!(spans.len() >= 30, "only {} calls delivered", spans.len());
    let most = most_at_once(&spans);
    eprintln!("{} calls delivered, at most {most} at once", spans.len());
    assert!(most <= 5, "{most} delivered calls ran at once on 5 seats");
    assert!(most >= 2, "the hosts never ran calls together");

    // Every row the hosts committed reaches the shared ledger, each host's
    // chain whole.
    for h in &hosts {
        let shipped = wait_until(Duration::from_secs(10), || {
            h.metrics().value("tollgate_ledger_unshipped_rows", &[]) == Some(0.0)
        });
        assert!(shipped, "a host's ledger was not shipped within 10 s");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = rt
        .block_on(tollgate_store::postgres::PgStore::connect(&url, 1))
        .expect("store");
    let ledger = rt.block_on(store.ledger_hosts()).expect("ledger");
    assert_eq!(ledger.len(), 2, "{ledger:?}");
    for (host, rows) in &ledger {
        let verified = rt.block_on(store.verify_host_chain(host)).expect("verify");
        assert_eq!(verified, Ok(*rows), "host {host}");
        // At least a checkout and a return for each delivered call.
        assert!(*rows >= 2, "host {host}: {rows} rows");
    }
    let rows: u64 = ledger.iter().map(|(_, n)| n).sum();
    assert!(
        rows >= 2 * spans.len() as u64,
        "{rows} rows for {} calls",
        spans.len()
    );
    // Status on the store: both hosts' batches of the one grant, within
    // its seats, and nothing in use once the calls are over.
    let status = tg(root, &["status", "--store", &url, "--json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let grants: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let demo = &grants[0];
    assert_eq!(
        (demo["license_id"].as_str(), demo["seats"].as_u64()),
        (Some("demo"), Some(5))
    );
    let shares = demo["hosts"].as_array().expect("hosts");
    let batched: u64 = shares.iter().filter_map(|h| h["batch"].as_u64()).sum();
    let in_use: u64 = shares.iter().filter_map(|h| h["in_use"].as_u64()).sum();
    assert!(batched <= 5, "{grants}");
    assert_eq!(in_use, 0, "{grants}");
    // Usage over both hosts: a checkout per delivered call.
    let usage = tg(root, &["usage", "--store", &url, "--format", "json"]);
    assert!(
        usage.status.success(),
        "{}",
        String::from_utf8_lossy(&usage.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&usage.stdout).expect("json");
    let checkouts: u64 = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["checkouts"].as_u64())
        .sum();
    assert!(checkouts >= spans.len() as u64, "{rows}");
    let audit = tg(root, &["audit", "verify", "--store", &url]);
    let shown = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.status.success(), "{shown}");
    assert_eq!(shown.matches("chain verified").count(), 2, "{shown}");

    // A revocation made once, on the store, reaches both hosts within 2 s.
    let revoked = tg(root, &["license", "revoke", "--store", &url, "demo"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    for h in &hosts {
        let reached = wait_until(Duration::from_secs(2), || {
            code(&h.invoke("early", b"1").1) == "revoked"
        });
        assert!(reached, "the revocation did not reach a host within 2 s");
    }
    let status = tg(root, &["status", "--store", &url, "--json"]);
    let grants: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(grants[0]["revoked"], true, "{grants}");
    for h in hosts {
        assert!(h.terminate().success());
    }
}

#[test]
fn with_the_store_away_a_host_serves_from_its_batch_then_says_store_unavailable_then_recovers() {
    let pg = TestPostgres::start();
    let url = pg.url();
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-shared-away-")
        .tempdir()
        .expect("scratch");
    let root = scratch.path();
    install_shared(root, &url, "5");
    let host = shared_host(root, &url, "a");
    let ready = || host.admin("GET", "/readyz", None, None);
    assert!(
        wait_until(Duration::from_secs(20), || ready().0 == 200),
        "never ready: {:?}",
        ready()
    );
    assert_eq!(host.invoke("early", b"1").0, 200);

    pg.stop();
    // Its batch outlives the store for a while: calls go on meanwhile.
    assert_eq!(host.invoke("early", b"1").0, 200, "served from the batch");
    // Then the host holds no
    // seats and says why: not ready, and calls refused as
    // store-unavailable rather than as exhausted seats.
    let mut last = (0, String::new());
    let away = wait_until(Duration::from_secs(15), || {
        last = ready();
        last.0 == 503
    });
    assert!(away, "still ready with the store stopped: {last:?}");
    assert_eq!(code(&last.1), "store-unavailable", "{}", last.1);
    let (st, body, _) = host.invoke("early", b"1");
    assert_eq!(
        (st, code(&body).as_str()),
        (503, "store-unavailable"),
        "{body}"
    );

    pg.restart();
    let back = wait_until(Duration::from_secs(30), || {
        ready().0 == 200 && host.invoke("early", b"1").0 == 200
    });
    assert!(
        back,
        "did not recover after the store came back: {:?}",
        ready()
    );
    assert!(host.terminate().success());
}
