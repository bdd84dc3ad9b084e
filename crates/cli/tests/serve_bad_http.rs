//! Malformed, oversized and hostile HTTP requests against `tollgate serve`:
//! each gets a clear refusal (or the connection is closed), changes nothing
//! the admin API can see, leaves no seat held, and the server keeps serving
//! `/healthz` and licensed calls.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// The server's `read_timeout` in these tests.
const READ_TIMEOUT: &str = "read_timeout = \"2s\"";

/// How a raw request ends on the client side.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// Wait for the server to answer and close (`Connection: close`).
    Wait,
    /// Close our sending side at once: the request is cut off.
    Cut,
}

/// Sends raw bytes on a fresh connection and returns what came back
/// (possibly nothing) before the server closed it or 3 s passed.
fn raw(s: &Server, bytes: &[u8], end: End) -> String {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // The server may close early (e.g. after refusing huge headers), so a
    // failed write is part of what is being tested, not a test failure.
    let _ = stream.write_all(bytes);
    if end == End::Cut {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// A complete request that asks the server to close after its answer.
fn request(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The status code of a raw HTTP reply, if there was one.
fn status_of(reply: &str) -> Option<u16> {
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

/// The JSON body of a raw reply (after the blank line), if it is JSON.
fn json_body(reply: &str) -> Option<Value> {
    let (_, body) = reply.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Everything the admin API shows: licenses with counters, plugins, and the
/// installed grants.
fn snapshot(s: &Server) -> Value {
    json!({
        "licenses": s.json("/v1/admin/licenses"),
        "plugins": s.json("/v1/admin/plugins"),
        "status": s.json("/v1/admin/status"),
    })
}

/// Still alive, still serving a licensed call, and no seat held afterwards.
fn still_serving(s: &Server) {
    let (st, body) = s.admin("GET", "/healthz", None, None);
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    let (st, body, _) = s.invoke("hello", b"ok");
    assert_eq!(
        (st, body.as_str()),
        (200, "hello, ok! (licensed by demo)"),
        "{body}"
    );
    let licenses = s.json("/v1/admin/licenses");
    let all = licenses["licenses"].as_array().expect("licenses");
    assert!(all.iter().any(|l| l["id"] == "demo"), "{licenses}");
    for l in all {
        assert_eq!(l["counters"]["in_use"], 0, "{licenses}");
        assert_eq!(l["revoked"], false, "{licenses}");
    }
}

/// Runs one hostile request: the admin API's view is the same before and
/// after it, and the server still serves.
fn case(s: &Server, what: &str, hostile: impl FnOnce()) {
    let before = snapshot(s);
    hostile();
    let after = snapshot(s);
    assert_eq!(after, before, "{what}: the state changed");
    still_serving(s);
}

/// A refusal or a closed connection, never a success.
fn refused(reply: &str, allowed: &[u16], what: &str) {
    match status_of(reply) {
        None => assert!(
            reply.is_empty(),
            "{what}: not HTTP and not closed: {reply:?}"
        ),
        Some(code) => assert!(allowed.contains(&code), "{what}: {reply}"),
    }
}

/// A small deterministic generator, so a failing garbage input can be rerun.
fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (*seed >> 56) as u8
        })
        .collect()
}

#[test]
fn malformed_and_oversized_requests_change_nothing() {
    let scratch = prepare("bad-http", "2");
    let root = scratch.path();
    let s = Server::start_with(root, "2s", READ_TIMEOUT);
    still_serving(&s);
    let first = snapshot(&s);
    assert_eq!(
        first["plugins"].as_array().map(Vec::len),
        Some(7),
        "{first}"
    );

    // Not HTTP at all: a TLS hello, random bytes, blank lines.
    case(&s, "TLS client hello", || {
        let reply = raw(
            &s,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http",
            End::Cut,
        );
        refused(&reply, &[400], "TLS");
    });
    let mut seed = 0x7011_6a7e;
    for len in [1, 7, 64, 513, 4096] {
        case(&s, "garbage", || {
            let bytes = garbage(&mut seed, len);
            refused(&raw(&s, &bytes, End::Cut), &[400], "garbage");
        });
    }
    case(&s, "blank lines", || {
        refused(&raw(&s, b"\r\n\r\n\r\n", End::Cut), &[400], "blank");
    });

    // Cut-off and malformed request lines.
    for junk in [
        &b"POST /v1/plugins/hello/inv"[..],
        b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Le",
        b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /hea\0lthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\0b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET\r\n\r\n",
    ] {
        let what = String::from_utf8_lossy(junk);
        case(&s, &what, || {
            // A body cut short never reaches the plugin; the server may
            // answer 400 or 413 for it.
            refused(&raw(&s, junk, End::Cut), &[400, 413, 505], &what);
        });
    }

    // Methods the routes do not take.
    for method in ["BREW", "GET", "PUT", "DELETE"] {
        case(&s, method, || {
            let reply = raw(
                &s,
                &request(method, "/v1/plugins/hello/invoke", "", b""),
                End::Wait,
            );
            refused(&reply, &[400, 405], method);
        });
    }

    // Huge request parts are refused, not buffered without bound.
    case(&s, "64 KiB path", || {
        let path = format!("/v1/plugins/{}/invoke", "a".repeat(64 * 1024));
        let reply = raw(&s, &request("POST", &path, "", b"x"), End::Wait);
        refused(&reply, &[400, 404, 414, 431], "long path");
    });
    case(&s, "2,000 headers", || {
        let mut headers = String::new();
        for i in 0..2000 {
            headers.push_str(&format!("X-Filler-{i}: {}\r\n", "a".repeat(100)));
        }
        let reply = raw(
            &s,
            &request("POST", "/v1/plugins/hello/invoke", &headers, b"x"),
            End::Wait,
        );
        refused(&reply, &[400, 431], "many headers");
    });
    case(&s, "one 1 MiB header", || {
        let header = format!("X-Big: {}\r\n", "b".repeat(1 << 20));
        let reply = raw(
            &s,
            &request("POST", "/v1/plugins/hello/invoke", &header, b"x"),
            End::Wait,
        );
        refused(&reply, &[400, 431], "big header");
    });

    // A body over the plugin's 64-byte limit: 413 with a JSON error, the
    // plugin never runs.
    case(&s, "body over the limit", || {
        let reply = raw(
            &s,
            &request("POST", "/v1/plugins/hello/invoke", "", &[b'x'; 65]),
            End::Wait,
        );
        assert_eq!(status_of(&reply), Some(413), "{reply}");
        let body = json_body(&reply).expect("a JSON error");
        assert_eq!(body["error"], "request-too-large", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("64")),
            "{body}"
        );
    });
    // 100 MB declared: refused from the header, before any of the body is
    // sent, and the connection is not kept waiting for it.
    case(&s, "Content-Length 100 MB", || {
        let started = Instant::now();
        let reply = raw(
            &s,
            b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n",
            End::Wait,
        );
        assert_eq!(status_of(&reply), Some(413), "{reply}");
        assert_eq!(
            json_body(&reply).map(|b| b["error"].clone()),
            Some(json!("request-too-large")),
            "{reply}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "it waited");
    });
    for length in ["-1", "abc", "1, 2", "18446744073709551616"] {
        case(&s, &format!("Content-Length {length}"), || {
            let reply = raw(
                &s,
                format!("POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n\r\nx").as_bytes(),
                End::Cut,
            );
            refused(&reply, &[400, 413], length);
        });
    }

    // Chunked bodies that lie about their size.
    let chunked = |chunks: &str| {
        format!(
            "POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
        )
    };
    // Malformed chunk framing: 400 naming the body as the problem, not 413.
    for (what, chunks) in [
        ("size overflows", "ffffffffffffffffff\r\nab\r\n0\r\n\r\n"),
        ("size not hex", "zz\r\nab\r\n0\r\n\r\n"),
        (
            "size says 5, 20 bytes sent",
            "5\r\n01234567890123456789\r\n0\r\n\r\n",
        ),
    ] {
        case(&s, what, || {
            let reply = raw(&s, chunked(chunks).as_bytes(), End::Wait);
            assert_eq!(status_of(&reply), Some(400), "{what}: {reply}");
            let body = json_body(&reply).expect("a JSON error");
            assert_eq!(body["error"], "bad-request", "{what}: {body}");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("request body could not be read")),
                "{what}: {body}"
            );
        });
    }
    // Bodies that stop short and stall: 408 once `read_timeout` passes.
    for (what, chunks) in [
        ("size says 100, 3 bytes sent", "64\r\nabc"),
        ("no last chunk", "3\r\nabc\r\n"),
    ] {
        case(&s, what, || {
            let started = Instant::now();
            let reply = raw(&s, chunked(chunks).as_bytes(), End::Wait);
            assert_eq!(status_of(&reply), Some(408), "{what}: {reply}");
            assert_eq!(
                json_body(&reply).map(|b| b["error"].clone()),
                Some(json!("request-timeout")),
                "{reply}"
            );
            assert!(
                started.elapsed() >= Duration::from_millis(1900),
                "{what}: answered before read_timeout"
            );
        });
    }
    // Cut off mid-body: the server drops the request (there is nobody to
    // answer), the plugin never runs.
    for (what, chunks) in [
        ("size says 100, 3 bytes sent, then closed", "64\r\nabc"),
        ("no last chunk, then closed", "3\r\nabc\r\n"),
    ] {
        case(&s, what, || {
            refused(&raw(&s, chunked(chunks).as_bytes(), End::Cut), &[400], what);
        });
    }
    case(&s, "chunks adding up over the limit", || {
        // Three chunks of 0x20 bytes: 96 bytes against a 64-byte limit.
        let chunks = format!("20\r\n{}\r\n", "y".repeat(32)).repeat(3) + "0\r\n\r\n";
        let reply = raw(&s, chunked(&chunks).as_bytes(), End::Wait);
        assert_eq!(status_of(&reply), Some(413), "{reply}");
        assert_eq!(
            json_body(&reply).map(|b| b["error"].clone()),
            Some(json!("request-too-large")),
            "{reply}"
        );
    });
    // Content-Length and chunked together, hiding a second request in the
    // body: refused, or the hidden request is not run as a second call.
    let hello_calls = |s: &Server| {
        s.json("/v1/admin/licenses/demo")["counters"]["checkouts"]
            .as_u64()
            .unwrap_or(0)
    };
    let calls_before = hello_calls(&s);
    let hidden =
        "POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nz";
    let smuggle = format!(
        "POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
    );
    let reply = raw(&s, smuggle.as_bytes(), End::Cut);
    assert!(
        reply.matches("HTTP/1.1 200").count() <= 1,
        "the hidden request ran: {reply}"
    );
    assert!(hello_calls(&s) <= calls_before + 1, "{reply}");
    still_serving(&s);

    // Path tricks in plugin names never reach a file, another plugin or
    // another route.
    for path in [
        "/v1/plugins/../admin/status/invoke",
        "/v1/plugins/./hello/invoke",
        "/v1/plugins/%2e%2e/invoke",
        "/v1/plugins/%2e%2e%2fadmin%2fstatus/invoke",
        "/v1/plugins/..%2f..%2f..%2fetc%2fpasswd/invoke",
        "/v1/plugins/hello%00/invoke",
        "/v1/plugins/hello%2Finvoke/invoke",
        "/v1/plugins/hello/../hello/invoke",
        "/v1/plugins//invoke",
        "/v1/plugins/%FF%FE/invoke",
    ] {
        case(&s, path, || {
            let reply = raw(&s, &request("POST", path, "", b"x"), End::Wait);
            refused(&reply, &[400, 404, 405], path);
            assert!(!reply.contains("\"licenses\""), "{path} leaked: {reply}");
            assert!(!reply.contains("root:"), "{path} leaked: {reply}");
            assert!(!reply.contains("licensed by"), "{path} ran: {reply}");
        });
    }
    let token = format!("Authorization: Bearer {TOKEN}\r\n");
    for (method, path) in [
        ("GET", "/v1/admin/plugins/..%2f..%2fetc%2fpasswd"),
        ("POST", "/v1/admin/plugins/%2e%2e/reload"),
        ("DELETE", "/v1/admin/plugins/hello%00"),
        ("DELETE", "/v1/admin/plugins/hello%2F"),
        ("POST", "/v1/admin/licenses/..%2fdemo/revoke"),
        ("POST", "/v1/admin/licenses/demo%00/revoke"),
        ("GET", "/v1/admin/licenses/%2e%2e"),
    ] {
        case(&s, path, || {
            let reply = raw(&s, &request(method, path, &token, b""), End::Wait);
            refused(&reply, &[400, 404, 405], path);
            assert!(!reply.contains("root:"), "{path} leaked: {reply}");
        });
    }
    // Loading a plugin under a name with path tricks: refused by name.
    let component = guest("hello-licensed").to_string_lossy().replace('\\', "/");
    for name in ["..", "../evil", "a/b", "hello\u{0}", "%2e%2e", "", "Hello"] {
        case(&s, &format!("load {name:?}"), || {
            let body = json!({ "name": name, "component": component, "requires": ["demo"] });
            let (st, reply) = s.admin(
                "POST",
                "/v1/admin/plugins",
                Some(&body.to_string()),
                Some(TOKEN),
            );
            assert_eq!(
                (st, code(&reply).as_str()),
                (400, "bad-request"),
                "{name:?}: {reply}"
            );
            assert!(reply.contains("name"), "{name:?}: {reply}");
        });
    }
    case(&s, "load /etc/passwd", || {
        let body = json!({ "name": "passwd", "component": "/etc/passwd" });
        let (st, reply) = s.admin(
            "POST",
            "/v1/admin/plugins",
            Some(&body.to_string()),
            Some(TOKEN),
        );
        assert_eq!((st, code(&reply).as_str()), (400, "bad-request"), "{reply}");
        assert!(!reply.contains("root:"), "{reply}");
    });

    // Admin calls without the right token: 401 and nothing else, whatever
    // the route and body.
    for auth in [
        String::new(),
        "Authorization: Bearer wrong-token-wrong-token\r\n".to_string(),
        "Authorization: Bearer \r\n".to_string(),
        format!("Authorization: Basic {TOKEN}\r\n"),
        format!("Authorization: Bearer {TOKEN}x\r\n"),
        format!("Authorization: Bearer {}\r\n", &TOKEN[..TOKEN.len() - 1]),
        format!("X-Admin-Token: {TOKEN}\r\n"),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/admin/status", ""),
            ("GET", "/v1/admin/licenses", ""),
            ("GET", "/v1/admin/usage", ""),
            ("POST", "/v1/admin/licenses/demo/revoke", ""),
            ("POST", "/v1/admin/licenses", "tollgate-license v1\n"),
            (
                "POST",
                "/v1/admin/plugins",
                "{\"name\":\"x\",\"component\":\"/etc/passwd\"}",
            ),
            ("DELETE", "/v1/admin/plugins/hello", ""),
            ("GET", &format!("/metrics?token={TOKEN}"), ""),
        ] {
            case(&s, &format!("{method} {path} [{auth}]"), || {
                let reply = raw(
                    &s,
                    &request(method, path, &auth, body.as_bytes()),
                    End::Wait,
                );
                assert_eq!(
                    status_of(&reply),
                    Some(401),
                    "{method} {path} [{auth}] -> {reply}"
                );
                let body = json_body(&reply).expect("a JSON error");
                assert_eq!(
                    body,
                    json!({ "error": "unauthorized", "message": "a valid admin (or, to read, viewer) bearer token is required" }),
                    "{reply}"
                );
                for secret in ["demo", "hello", "tollgate_", TOKEN] {
                    assert!(!reply.contains(secret), "401 leaked {secret:?}: {reply}");
                }
            });
        }
    }

    // Bad admin bodies with the right token: 400 naming the problem.
    let nested = "[".repeat(60_000);
    let binary = "\u{0}\u{1}binary";
    for (path, body, needle) in [
        ("/v1/admin/plugins", "{not json", "expected"),
        ("/v1/admin/plugins", "", "expected"),
        ("/v1/admin/plugins", "{\"name\": 5}", "expected"),
        ("/v1/admin/plugins", nested.as_str(), "expected"),
        (
            "/v1/admin/plugins",
            "{\"name\":\"x\",\"component\":\"y\",\"evil\":1}",
            "unknown field",
        ),
        (
            "/v1/admin/licenses",
            "tollgate-license v1\nseats: lots\n",
            "grant:",
        ),
        ("/v1/admin/licenses", "tollgate-license v2\n", "v2"),
        ("/v1/admin/licenses", binary, "license"),
        ("/v1/admin/licenses", "", "license"),
    ] {
        case(
            &s,
            &format!("{path} {:?}", &body[..body.len().min(20)]),
            || {
                let (st, reply) = s.admin("POST", path, Some(body), Some(TOKEN));
                assert_eq!(
                    (st, code(&reply).as_str()),
                    (400, "bad-request"),
                    "{body:?} -> {reply}"
                );
                assert!(reply.contains(needle), "{body:?} -> {reply}");
            },
        );
    }
    // Oversized admin bodies are refused from their Content-Length, before
    // the client sends them (a client still writing would see the
    // connection close under it, so only the head is sent here).
    for (path, declared) in [
        ("/v1/admin/licenses", 1 << 20),
        ("/v1/admin/plugins", 100_000),
        ("/v1/admin/plugins", 65_537),
    ] {
        case(&s, &format!("{path} body of {declared} bytes"), || {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{token}Content-Length: {declared}\r\n\r\n"
            );
            let reply = raw(&s, head.as_bytes(), End::Wait);
            assert_eq!(status_of(&reply), Some(413), "{reply}");
            assert_eq!(
                json_body(&reply).map(|b| b["error"].clone()),
                Some(json!("request-too-large")),
                "{reply}"
            );
        });
    }
    for query in [
        "since=yesterday-ish",
        "until=2027-13-45",
        "since=%FF",
        "evil=1",
        "since=1&since=2",
    ] {
        case(&s, query, || {
            let reply = raw(
                &s,
                &request("GET", &format!("/v1/admin/usage?{query}"), &token, b""),
                End::Wait,
            );
            assert_eq!(status_of(&reply), Some(400), "{query}: {reply}");
        });
    }

    // Clients that send half a request, or a body one byte at a time, and
    // stall: others are still served, in normal time.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stalled: Vec<TcpStream> = (0..64)
        .map(|i| {
            let mut c = TcpStream::connect(&addr).expect("connect");
            let partial: &[u8] = if i % 2 == 0 {
                b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Le"
            } else {
                b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\na"
            };
            c.write_all(partial).expect("partial");
            c
        })
        .collect();
    for _ in 0..5 {
        let started = Instant::now();
        still_serving(&s);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "slow while others stall: {:?}",
            started.elapsed()
        );
        for c in stalled.iter_mut().skip(1).step_by(2) {
            let _ = c.write_all(b"b");
        }
    }
    // `read_timeout` ends both kinds: a half-sent head is closed without an
    // answer, a body that never completes gets 408. No descriptor is held
    // for long by a client that stalls.
    let started = Instant::now();
    for (i, mut c) in stalled.into_iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reply = Vec::new();
        let _ = c.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        if i % 2 == 0 {
            assert_eq!(reply, "", "half a head, stalled");
        } else {
            assert_eq!(status_of(&reply), Some(408), "slow body: {reply}");
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stalled clients were held {:?}",
        started.elapsed()
    );
    still_serving(&s);
    assert!(s.terminate().success());
}

/// Past `max_connections`, further clients wait in the backlog and are
/// served as soon as a connection closes; an idle connection closes after
/// `read_timeout`.
#[test]
fn connections_over_the_limit_wait_for_a_free_one() {
    let scratch = prepare("max-conns", "2");
    let root = scratch.path();
    let s = Server::start_with(root, "2s", "read_timeout = \"2s\"\nmax_connections = 3");
    let addr = s.base.trim_start_matches("http://").to_string();
    // Three idle connections take every place (keep-alive after one call
    // each, so they are accepted and served, then idle).
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).expect("connect");
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .expect("request");
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 256];
            let n = c.read(&mut buf).expect("answer");
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
            c
        })
        .collect();
    // A fourth client: connected by the kernel, answered only once an idle
    // one is closed by `read_timeout` (2 s), not before.
    let started = Instant::now();
    let reply = raw(
        &s,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        End::Wait,
    );
    let waited = started.elapsed();
    // `raw` gives up after 3 s of silence; the idle ones close after 2 s.
    assert_eq!(status_of(&reply), Some(200), "{reply}");
    assert!(
        waited >= Duration::from_millis(1000),
        "served at once, past the limit: {waited:?}"
    );
    // The idle connections were closed by the server.
    for c in &mut idle {
        let mut buf = [0u8; 16];
        assert_eq!(c.read(&mut buf).ok(), Some(0), "idle connection still open");
    }
    drop(idle);
    still_serving(&s);
    assert!(s.terminate().success());
}
