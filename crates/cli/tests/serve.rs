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

/// A metric's name, labels and the value it must have.
type Sample<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

#[test]
fn every_status_admin_auth_and_live_license_changes() {
    let scratch = prepare("status", "1");
    let root = scratch.path();
    let s = Server::start(root, "5s");
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
    let metrics = s.metrics();
    let checks: [Sample; 5] = [
        (
            "tollgate_invocations_total",
            &[("plugin", "hello"), ("outcome", "ok")],
            1.0,
        ),
        ("tollgate_seats_in_use", &[("license", "demo")], 0.0),
        (
            "tollgate_denials_total",
            &[("license", "demo"), ("reason", "exhausted")],
            1.0,
        ),
        (
            "tollgate_reclaims_total",
            &[("license", "demo"), ("reason", "timed-out")],
            1.0,
        ),
        (
            "tollgate_invoke_duration_seconds_count",
            &[("plugin", "hello")],
            2.0,
        ),
    ];
    for (name, labels, want) in checks {
        assert_eq!(
            metrics.value(name, labels),
            Some(want),
            "{name}{labels:?} in {metrics:?}"
        );
    }
    let usage: Value = serde_json::from_str(
        &s.admin("GET", "/v1/admin/usage?plugin=hello", None, Some(TOKEN))
            .1,
    )
    .expect("usage");
    assert_eq!(usage[0]["checkouts"], 1, "{usage}");
    // The same rows as CloudEvents, page by page behind the cursor header.
    let events_page = |query: &str| {
        let mut r = s
            .agent
            .get(format!("{}/v1/admin/usage/events?{query}", s.base))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .call()
            .expect("events");
        let cursor = r
            .headers()
            .get("tollgate-cursor")
            .and_then(|v| v.to_str().ok())
            .expect("a cursor header")
            .to_string();
        let body = r.body_mut().read_to_string().expect("body");
        let events: Vec<Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON event per line"))
            .collect();
        (events, cursor)
    };
    let (first, cursor) = events_page("limit=2");
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["type"], "tollgate.seat.checkout", "{first:?}");
    let (rest, end) = events_page(&format!("after={cursor}&limit=10000"));
    assert_eq!(rest[0]["data"]["seq"], 3, "{rest:?}");
    let (none, same) = events_page(&format!("after={end}"));
    assert!(none.is_empty() && same == end);
    for bad in ["limit=0", "after=nope", "limit=10001", "color=red"] {
        let (st, body) = s.admin(
            "GET",
            &format!("/v1/admin/usage/events?{bad}"),
            None,
            Some(TOKEN),
        );
        assert_eq!(
            (st, code(&body).as_str()),
            (400, "bad-request"),
            "{bad}: {body}"
        );
    }
    assert_eq!(s.admin("GET", "/v1/admin/usage/events", None, None).0, 401);

    // Install a second grant over the API while calls run: seats add up at once.
    sign_license(root, "demo", "2", "more.license");
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

/// After a known run of calls (licensed, withheld, refused for want of a
/// seat, and one whose client hung up), `/metrics` declares every family
/// with its type and counts exactly those calls.
#[test]
fn metrics_count_exactly_the_calls_made() {
    let scratch = prepare("metrics", "1");
    let root = scratch.path();
    let s = Server::start(root, "5s");
    for n in 0..3 {
        let (st, body, _) = s.invoke("hello", format!("{n}").as_bytes());
        assert_eq!(st, 200, "{body}");
    }
    for _ in 0..2 {
        let (st, body, _) = s.invoke("freeloader", b"x");
        assert_eq!((st, code(&body).as_str()), (403, "unlicensed"), "{body}");
    }
    // A call holds the only seat until its client hangs up; meanwhile two
    // calls are refused.
    let mut holder = TcpStream::connect(s.base.trim_start_matches("http://")).expect("connect");
    write!(
        holder,
        "POST /v1/plugins/slow/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n60000"
    )
    .expect("send");
    s.wait_in_use(1);
    for _ in 0..2 {
        let (st, body, _) = s.invoke("hello", b"x");
        assert_eq!((st, code(&body).as_str()), (503, "exhausted"), "{body}");
    }
    drop(holder);
    s.wait_in_use(0);

    let m = s.metrics();
    for (family, kind) in [
        ("tollgate_invocations_total", "counter"),
        ("tollgate_invoke_duration_seconds", "histogram"),
        ("tollgate_seats_in_use", "gauge"),
        ("tollgate_seats_issued", "gauge"),
        ("tollgate_checkouts_total", "counter"),
        ("tollgate_releases_total", "counter"),
        ("tollgate_withheld_total", "counter"),
        ("tollgate_denials_total", "counter"),
        ("tollgate_reclaims_total", "counter"),
        ("tollgate_request_body_bytes_buffered", "gauge"),
        ("tollgate_request_body_bytes_buffered_peak", "gauge"),
        ("tollgate_request_body_bytes_budget", "gauge"),
        ("tollgate_requests_refused_total", "counter"),
        ("tollgate_ledger_commits_total", "counter"),
        ("tollgate_ledger_rows_total", "counter"),
        ("tollgate_ledger_writer_cpu_seconds_total", "counter"),
    ] {
        assert_eq!(m.type_of(family), Some(kind), "{family} in {m:?}");
    }
    // Every licensed call's checkout and return, and the releases, went
    // through the durable ledger, several rows to a commit at most.
    let rows = m.value("tollgate_ledger_rows_total", &[]).unwrap_or(0.0);
    let commits = m.value("tollgate_ledger_commits_total", &[]).unwrap_or(0.0);
    assert!(rows >= 4.0 + 3.0 + 4.0, "{m:?}");
    assert!(commits >= 1.0 && commits <= rows, "{m:?}");
    assert!(
        m.value("tollgate_ledger_writer_cpu_seconds_total", &[])
            .is_some_and(|s| s > 0.0),
        "{m:?}"
    );
    let calls = |plugin: &str, outcome: &str| {
        m.value(
            "tollgate_invocations_total",
            &[("plugin", plugin), ("outcome", outcome)],
        )
    };
    assert_eq!(calls("hello", "ok"), Some(3.0));
    assert_eq!(calls("hello", "exhausted"), Some(2.0));
    assert_eq!(calls("freeloader", "unlicensed"), Some(2.0));
    // The call whose client hung up never finished: it is not counted.
    assert_eq!(m.series("tollgate_invocations_total").len(), 3, "{m:?}");
    let latency = |series: &str, labels: &[(&str, &str)]| m.value(series, labels);
    assert_eq!(
        latency(
            "tollgate_invoke_duration_seconds_count",
            &[("plugin", "hello")]
        ),
        Some(5.0)
    );
    assert_eq!(
        latency(
            "tollgate_invoke_duration_seconds_bucket",
            &[("plugin", "hello"), ("le", "+Inf")]
        ),
        Some(5.0)
    );
    assert_eq!(
        latency(
            "tollgate_invoke_duration_seconds_count",
            &[("plugin", "freeloader")]
        ),
        Some(2.0)
    );
    let demo = |name: &str| m.value(name, &[("license", "demo")]);
    assert_eq!(demo("tollgate_seats_issued"), Some(1.0));
    assert_eq!(demo("tollgate_seats_in_use"), Some(0.0));
    // Three licensed calls and the one that held the seat.
    assert_eq!(demo("tollgate_checkouts_total"), Some(4.0));
    assert_eq!(demo("tollgate_releases_total"), Some(3.0));
    // The freeloader's calls, and the two refused a seat: all four ran
    // without the license they require.
    assert_eq!(demo("tollgate_withheld_total"), Some(4.0));
    let by_reason =
        |name: &str, reason: &str| m.value(name, &[("license", "demo"), ("reason", reason)]);
    assert_eq!(by_reason("tollgate_denials_total", "exhausted"), Some(2.0));
    assert_eq!(
        m.series("tollgate_denials_total")
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>(),
        2.0,
        "no other denial: {m:?}"
    );
    assert_eq!(
        by_reason("tollgate_reclaims_total", "store-dropped"),
        Some(1.0)
    );
    assert_eq!(
        m.series("tollgate_reclaims_total")
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>(),
        1.0,
        "no other reclaim: {m:?}"
    );
    assert_eq!(
        m.value(
            "tollgate_requests_refused_total",
            &[("reason", "body-budget")]
        ),
        Some(0.0)
    );
    assert!(s.terminate().success());
}

/// The exposition parser the metrics tests rely on: it reads label values
/// with escapes and refuses what a scraper would.
#[test]
fn exposition_parser_reads_escapes_and_refuses_untyped_or_repeated_samples() {
    let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\,\\n\",y=\"2\"} 7\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 3\nh_count 3\n";
    let parsed = Exposition::parse(text).expect("parses");
    assert_eq!(parsed.type_of("a_total"), Some("counter"));
    assert_eq!(
        parsed.value("a_total", &[("x", "q\"\\,\n"), ("y", "2")]),
        Some(7.0)
    );
    assert_eq!(parsed.value("a_total", &[("y", "2")]), None);
    assert_eq!(parsed.value("h_bucket", &[("le", "+Inf")]), Some(3.0));
    for bad in [
        "a_total 1\n",
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE a counter\n# TYPE a gauge\n",
        "# TYPE a counter\na{x=\"1} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE g gauge\ng_count 1\n",
    ] {
        assert!(Exposition::parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn disconnect_cancels_reload_keeps_serving_shutdown_drains() {
    let scratch = prepare("lifecycle", "4");
    let root = scratch.path();
    let s = Server::start(root, "10s");

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
        serde_json::from_slice(&tg(root, &["status", "--json"]).stdout).expect("status");
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
    assert!(tg(root, &["audit", "verify"]).status.success());
    let usage: Value = serde_json::from_slice(
        &tg(root, &["usage", "--format", "json", "--plugin", "slow"]).stdout,
    )
    .expect("usage");
    assert_eq!(
        usage[0]["releases"], 1,
        "the drained call's release was committed: {usage}"
    );
}

/// SIGTERM with a call that outlives the grace period: the call is
/// cancelled when the period ends (its client hears so), its seat comes
/// back, and the server exits 0 with the ledger committed.
#[test]
fn shutdown_cancels_calls_still_running_when_the_grace_period_ends() {
    let scratch = prepare("grace", "2");
    let root = scratch.path();
    let s = Server::start(root, "500ms");
    let base = s.base.clone();
    let agent = s.agent.clone();
    let in_flight = std::thread::spawn(move || {
        let mut r = agent
            .post(format!("{base}/v1/plugins/slow/invoke"))
            .send(&b"60000"[..])
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
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the call was not cut short: {:?}",
        started.elapsed()
    );
    let (st, body) = in_flight.join().expect("in flight");
    assert_eq!((st, code(&body).as_str()), (500, "cancelled"), "{body}");
    let log = std::fs::read_to_string(root.join("serve.log")).expect("log");
    assert!(
        log.contains("grace period over: cancelled 1 call(s)"),
        "{log}"
    );
    assert!(!log.contains("still running at exit"), "{log}");

    let status: Value =
        serde_json::from_slice(&tg(root, &["status", "--json"]).stdout).expect("status");
    let c = &status[0]["counters"];
    assert_eq!(c["in_use"], 0, "{c}");
    assert_eq!(c["checkouts"], 1, "{c}");
    assert_eq!(c["reclaims"]["store-dropped"], 1, "{c}");
    assert!(tg(root, &["audit", "verify"]).status.success());
}

#[test]
fn warm_compile_cache_serves_without_compiling() {
    let scratch = prepare("cache", "2");
    let root = scratch.path();
    let cold = Server::start(root, "1s");
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
    let warm = Server::start(root, "1s");
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
    let again = Server::start(root, "1s");
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

/// With `tls_cert` and `tls_key`, `serve` speaks HTTPS only: a client that
/// trusts the certificate calls a plugin and the admin API; a plain HTTP
/// request gets no answer; a key that does not go with the certificate, or
/// half of the pair, is refused by `check-config` naming the setting.
#[test]
fn serves_https_with_the_configured_certificate() {
    let scratch = prepare("tls", "2");
    let root = scratch.path();
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    std::fs::write(root.join("cert.pem"), made.cert.pem()).expect("cert");
    std::fs::write(root.join("key.pem"), made.signing_key.serialize_pem()).expect("key");
    let s = Server::start_with(
        root,
        "5s",
        "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
    );
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    let trusted = ureq::tls::Certificate::from_pem(made.cert.pem().as_bytes())
        .expect("PEM")
        .to_owned();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    trusted,
                ])))
                .build(),
        )
        .build()
        .into();
    let mut r = agent
        .post(format!("{}/v1/plugins/hello/invoke", s.base))
        .send("tls")
        .expect("HTTPS call");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.body_mut().read_to_string().expect("body"),
        "hello, tls! (licensed by demo)"
    );
    let r = agent
        .get(format!("{}/v1/admin/status", s.base))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .expect("admin over HTTPS");
    assert_eq!(r.status().as_u16(), 200);
    // A client that does not trust the certificate gets no answer.
    assert!(
        ureq::Agent::config_builder()
            .build()
            .new_agent()
            .get(format!("{}/healthz", s.base))
            .call()
            .is_err()
    );
    // Plain HTTP on the TLS port: no HTTP answer comes back.
    let addr = s.base.trim_start_matches("https://");
    let mut plain = TcpStream::connect(addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    drop(s);

    let other =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    std::fs::write(root.join("other.pem"), other.signing_key.serialize_pem()).expect("key");
    for (settings, needle) in [
        (
            "tls_cert = \"cert.pem\"\ntls_key = \"other.pem\"\n",
            "does not go with the certificate",
        ),
        (
            "tls_cert = \"cert.pem\"\n",
            "`tls_cert` is set without `tls_key`",
        ),
        (
            "tls_cert = \"key.pem\"\ntls_key = \"key.pem\"\n",
            "holds no certificate",
        ),
    ] {
        let err = refused_config(root, settings);
        assert!(err.contains(needle), "{settings}: {err}");
    }
}

/// The viewer token of the servers [`start_with_viewer`] starts.
const VIEWER: &str = "viewer-token-0123456789";

/// A server on `root` whose viewer token is [`VIEWER`].
fn start_with_viewer(root: &std::path::Path) -> Server {
    std::fs::write(root.join("viewer.token"), VIEWER).expect("token");
    Server::start_with(root, "5s", "viewer_token_file = \"viewer.token\"\n")
}

/// The viewer token reads what the admin token reads and changes nothing:
/// the admin API answers 403 to it for every change, and nothing changed.
#[test]
fn the_viewer_token_reads_everything_and_changes_nothing() {
    let scratch = prepare("viewer", "2");
    let root = scratch.path();
    let s = start_with_viewer(root);
    for path in [
        "/v1/admin/status",
        "/v1/admin/licenses/demo",
        "/v1/admin/plugins",
        "/v1/admin/usage",
        "/v1/admin/usage/events",
        "/v1/admin/alerts",
        "/metrics",
    ] {
        let (st, body) = s.admin("GET", path, None, Some(VIEWER));
        assert_eq!(st, 200, "{path}: {body}");
    }
    sign_license(root, "demo", "2", "more.license");
    let text = std::fs::read_to_string(root.join("more.license")).expect("license");
    for (method, path, body) in [
        ("POST", "/v1/admin/licenses/demo/revoke", None),
        ("POST", "/v1/admin/licenses", Some(text.as_str())),
        ("POST", "/v1/admin/plugins/hello/reload", None),
        ("DELETE", "/v1/admin/plugins/hello", None),
    ] {
        let (st, answer) = s.admin(method, path, body, Some(VIEWER));
        assert_eq!(
            (st, code(&answer).as_str()),
            (403, "forbidden"),
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(s.demo()["revoked"], false, "{}", s.demo());
    assert_eq!(s.demo()["seats"]["counted"], 2, "{}", s.demo());
    assert_eq!(
        s.invoke("hello", b"still"),
        (200, "hello, still! (licensed by demo)".into(), None)
    );
    // The admin token still changes things.
    let (st, body) = s.admin("POST", "/v1/admin/licenses/demo/revoke", None, Some(TOKEN));
    assert_eq!(st, 200, "{body}");
    // The viewer file must not hold the admin token.
    std::fs::write(root.join("viewer.token"), TOKEN).expect("token");
    let out = refused_config(
        root,
        "admin_token_file = \"admin.token\"\nviewer_token_file = \"viewer.token\"\n",
    );
    assert!(
        out.contains("`viewer_token_file` holds the admin token"),
        "{out}"
    );
}

/// What `check-config` prints for `settings` written to `root/bad.toml`,
/// which it must refuse (exit 2).
fn refused_config(root: &std::path::Path, settings: &str) -> String {
    std::fs::write(root.join("bad.toml"), settings).expect("config");
    let o = tg(
        root,
        &["check-config", &root.join("bad.toml").to_string_lossy()],
    );
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "{settings}: {out}");
    out
}

/// Reads one HTTP/1.1 response from `stream`: its status, its head
/// (lowercased) and its body (by its Content-Length).
fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read");
        assert_eq!(
            n,
            1,
            "the connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("a length"));
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the body");
    (status, head, body)
}

/// A request answered before its body was read (the viewer token trying a
/// change) says `Connection: close`, so a client does not send its next
/// request on a connection the server then closes; a call whose body was
/// read keeps its connection for the next request.
#[test]
fn a_request_refused_with_its_body_unread_says_its_connection_closes() {
    let scratch = prepare("unread", "1");
    let s = start_with_viewer(scratch.path());
    let addr = s.base.trim_start_matches("http://").to_string();
    let connect = || {
        let c = TcpStream::connect(&addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        c
    };
    // The head alone: the refusal cannot have read a body not yet sent.
    let mut refused = connect();
    write!(
        refused,
        "POST /v1/admin/licenses HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {VIEWER}\r\nContent-Length: 10\r\n\r\n"
    )
    .expect("send");
    let (status, head, _) = read_response(&mut refused);
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    let mut kept = connect();
    write!(
        kept,
        "POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nworld"
    )
    .expect("send");
    let (status, head, body) = read_response(&mut kept);
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "hello, world! (licensed by demo)"),
        "{head}"
    );
    assert!(!head.contains("connection: close"), "{head}");
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    assert_eq!(read_response(&mut kept).0, 200);
}
