//! `tollgate serve` end to end on a loopback port, driven by a real HTTP
//! client: every status, admin auth, install/revoke, reload under load,
//! client disconnects, warm compile cache and graceful shutdown.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use common::*;

#[test]
fn every_status_admin_auth_and_live_license_changes() {
    let root = prepare("status", "1");
    let s = Server::start(&root, "5s");
    assert_eq!(
        s.invoke("hello", b"world"),
        (200, "hello, world! (licensed by demo)".into(), None)
    );
    let (st, body, _) = s.invoke("nope", b"");
    assert_eq!((st, code(&body).as_str()), (404, "unknown-plugin"));
    let (st, body, _) = s.invoke("hello", &[b'x'; 65]);
    assert_eq!(
        (st, code(&body).as_str()),
        (413, "request-too-large"),
        "{body}"
    );
    let (st, body, _) = s.invoke("freeloader", b"x");
    assert_eq!((st, code(&body).as_str()), (403, "unlicensed"), "{body}");
    let (st, body, _) = s.invoke("excluded", b"x");
    assert_eq!(st, 403, "{body}");
    let (st, body, _) = s.invoke("trapper", b"");
    assert_eq!((st, code(&body).as_str()), (500, "plugin-trap"), "{body}");
    let (st, body, _) = s.invoke("spinner", b"");
    assert_eq!((st, code(&body).as_str()), (504, "time-limit"), "{body}");

    // A slow call holds the only seat: the next is refused (503 + Retry-After),
    // a waiting one times out (503).
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| s.invoke("slow", b"1500"));
        s.wait_in_use(1);
        let (st, body, retry) = s.invoke("hello", b"x");
        assert_eq!(
            (st, code(&body).as_str(), retry.as_deref()),
            (503, "exhausted", Some("1")),
            "{body}"
        );
        let (st, body, _) = s.invoke("waiter", b"x");
        assert_eq!(
            (st, code(&body).as_str()),
            (503, "seat-wait-timed-out"),
            "{body}"
        );
        assert_eq!(holder.join().expect("holder").0, 200);
    });

    // Admin: nothing without the right token.
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        for path in ["/v1/admin/status", "/metrics", "/v1/admin/licenses"] {
            let (st, body) = s.admin("GET", path, None, token);
            assert_eq!(st, 401, "{path} {token:?}: {body}");
            assert!(!body.contains("demo"), "nothing leaks: {body}");
        }
    }
    assert_eq!(s.admin("GET", "/healthz", None, None).0, 200);
    assert_eq!(s.admin("GET", "/readyz", None, None).0, 200);
    let status = s.json("/v1/admin/status");
    assert!(
        status["host"]["plugins"]
            .as_array()
            .is_some_and(|p| p.len() == 7),
        "{status}"
    );
    let metrics = s.admin("GET", "/metrics", None, Some(TOKEN)).1;
    for needle in [
        "tollgate_invocations_total{plugin=\"hello\",outcome=\"ok\"} 1",
        "tollgate_seats_in_use{license=\"demo\"} 0",
        "tollgate_denials_total{license=\"demo\",reason=\"exhausted\"}",
        "tollgate_reclaims_total{license=\"demo\",reason=\"timed-out\"} 1",
        "tollgate_invoke_duration_seconds_count{plugin=\"hello\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    let usage: Value = serde_json::from_str(
        &s.admin("GET", "/v1/admin/usage?plugin=hello", None, Some(TOKEN))
            .1,
    )
    .expect("usage");
    assert_eq!(usage[0]["checkouts"], 1, "{usage}");

    // Install a second grant over the API while calls run: seats add up at once.
    let p = |n: &str| root.join(n).to_string_lossy().into_owned();
    assert!(
        tg(
            &root,
            &[
                "issuer",
                "sign",
                "--key",
                &p("keys/issuer.key"),
                "--license-id",
                "demo",
                "--seats",
                "2",
                "--out",
                &p("more.license")
            ]
        )
        .status
        .success()
    );
    let text = std::fs::read_to_string(root.join("more.license")).expect("license");
    let (st, body) = s.admin("POST", "/v1/admin/licenses", Some(&text), Some(TOKEN));
    assert_eq!(st, 201, "{body}");
    assert_eq!(s.demo()["seats"]["counted"], 3, "{}", s.demo());
    let (st, body) = s.admin(
        "POST",
        "/v1/admin/licenses",
        Some(&text.replace("seats: 2", "seats: 20")),
        Some(TOKEN),
    );
    assert_eq!((st, code(&body).as_str()), (400, "bad-request"), "{body}");
    assert!(body.contains("signature does not match"), "{body}");

    // Revoke while a call holds a seat: that call is withheld, later ones refused.
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| s.invoke("slow", b"1000"));
        s.wait_in_use(1);
        let (st, body) = s.admin("POST", "/v1/admin/licenses/demo/revoke", None, Some(TOKEN));
        assert_eq!(st, 200, "{body}");
        let (st, body, _) = in_flight.join().expect("in flight");
        // Withheld, with the reason its seat ended.
        assert_eq!((st, code(&body).as_str()), (403, "revoked"), "{body}");
    });
    let (st, body, _) = s.invoke("hello", b"x");
    assert_eq!((st, code(&body).as_str()), (403, "revoked"), "{body}");
    assert_eq!(s.demo()["counters"]["in_use"], 0);
    assert!(s.terminate().success());
}

#[test]
fn disconnect_cancels_reload_keeps_serving_shutdown_drains() {
    let root = prepare("lifecycle", "4");
    let s = Server::start(&root, "10s");

    // A client that hangs up mid-call cancels it and its seat comes back at
    // once, even though the plugin is blocked in a host call (a 60 s sleep).
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    write!(
        stream,
        "POST /v1/plugins/slow/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n60000"
    )
    .expect("send");
    s.wait_in_use(1);
    drop(stream);
    s.wait_in_use(0);
    assert_eq!(
        s.demo()["counters"]["reclaims"]["store-dropped"],
        1,
        "{}",
        s.demo()
    );

    // Reload while calls run: none fails.
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            (0..60)
                .map(|_| s.invoke("hello", b"load").0)
                .filter(|st| *st != 200)
                .count()
        });
        for _ in 0..3 {
            let (st, body) = s.admin("POST", "/v1/admin/plugins/hello/reload", None, Some(TOKEN));
            assert_eq!(st, 200, "{body}");
        }
        assert_eq!(load.join().expect("load"), 0, "calls failed during reload");
    });
    // Reloaded, it keeps the limits its [[plugin]] gave it (64-byte requests).
    let (st, body, _) = s.invoke("hello", &[b'x'; 65]);
    assert_eq!(
        (st, code(&body).as_str()),
        (413, "request-too-large"),
        "{body}"
    );
    let (st, _) = s.admin("DELETE", "/v1/admin/plugins/trapper", None, Some(TOKEN));
    assert_eq!(st, 204);
    assert_eq!(s.invoke("trapper", b"").0, 404);

    // SIGTERM with a call in flight: it finishes, the server exits 0.
    let base = s.base.clone();
    let agent = s.agent.clone();
    let in_flight = std::thread::spawn(move || {
        let mut r = agent
            .post(format!("{base}/v1/plugins/slow/invoke"))
            .send(&b"800"[..])
            .expect("request");
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().expect("body"),
        )
    });
    s.wait_in_use(1);
    let started = Instant::now();
    let status = s.terminate();
    assert!(status.success(), "exit {status:?}");
    let (st, body) = in_flight.join().expect("in flight");
    assert_eq!((st, body.as_str()), (200, "held 800ms, valid=true"));
    assert!(started.elapsed() < Duration::from_secs(10));

    // Nothing lost: every seat is free and the acknowledged call is in the ledger.
    let status: Value =
        serde_json::from_slice(&tg(&root, &["status", "--json"]).stdout).expect("status");
    let c = &status[0]["counters"];
    let reclaims: u64 = c["reclaims"]
        .as_object()
        .expect("reclaims")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(c["in_use"], 0, "{c}");
    assert_eq!(
        c["checkouts"].as_u64(),
        Some(c["releases"].as_u64().unwrap_or(0) + reclaims),
        "{c}"
    );
    assert!(tg(&root, &["audit", "verify"]).status.success());
    let usage: Value = serde_json::from_slice(
        &tg(&root, &["usage", "--format", "json", "--plugin", "slow"]).stdout,
    )
    .expect("usage");
    assert_eq!(
        usage[0]["releases"], 1,
        "the drained call's release was committed: {usage}"
    );
}

#[test]
fn warm_compile_cache_serves_without_compiling() {
    let root = prepare("cache", "2");
    let cold = Server::start(&root, "1s");
    let plugins = cold.json("/v1/admin/plugins");
    let hello = plugins
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "hello")
        .cloned()
        .expect("hello");
    assert_eq!(
        hello["from_cache"], false,
        "the first start compiles: {plugins}"
    );
    assert!(cold.terminate().success());
    let warm = Server::start(&root, "1s");
    let plugins = warm.json("/v1/admin/plugins");
    assert!(
        plugins
            .as_array()
            .expect("plugins")
            .iter()
            .all(|p| p["from_cache"] == true),
        "{plugins}"
    );
    assert_eq!(warm.invoke("hello", b"again").0, 200);
    // A damaged cache entry is ignored safely: recompiled, and still served.
    for entry in walk(&root.join("state/compile-cache")) {
        std::fs::write(&entry, b"not a compiled component").expect("damage");
    }
    assert!(warm.terminate().success());
    let again = Server::start(&root, "1s");
    let plugins = again.json("/v1/admin/plugins");
    let hello = plugins
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "hello")
        .cloned()
        .expect("hello");
    assert_eq!(
        hello["from_cache"], false,
        "a damaged entry is recompiled: {plugins}"
    );
    assert_eq!(again.invoke("hello", b"again").0, 200);
    let mut log = String::new();
    std::fs::File::open(root.join("serve.log"))
        .and_then(|mut f| f.read_to_string(&mut log))
        .expect("log");
    assert!(log.contains("ignoring compile cache entry"), "{log}");
    assert!(again.terminate().success());
    let _ = std::fs::remove_dir_all(&root);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
