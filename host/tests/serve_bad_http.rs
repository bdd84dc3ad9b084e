//! Malformed, oversized and hostile HTTP requests against `tollgate serve`:
//! each gets a clear refusal (or the connection is closed), nothing changes
//! state, no seat is held afterwards, and the server keeps serving.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends raw bytes on a fresh connection and returns what came back
/// (possibly nothing) before the server closed it or 2 s passed. Complete
/// requests say `Connection: close` so the reply ends the connection.
fn raw(s: &Server, bytes: &[u8]) -> String {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// The status code of a raw HTTP reply, if there was one.
fn status_of(reply: &str) -> Option<u16> {
    reply
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

/// What must hold after every bad request: still healthy, still serving a
/// licensed call, no seat held, nothing installed or loaded by it.
fn still_fine(s: &Server, before: &Value) {
    assert_eq!(s.admin("GET", "/healthz", None, None).0, 200);
    let (st, body, _) = s.invoke("hello", b"ok");
    assert_eq!(st, 200, "{body}");
    let status = s.json("/v1/admin/status");
    for l in status["licenses"].as_array().expect("licenses") {
        assert_eq!(l["counters"]["in_use"], 0, "{status}");
    }
    let ids = |v: &Value| {
        v["licenses"]
            .as_array()
            .map(|a| a.iter().map(|l| l["id"].clone()).collect::<Vec<_>>())
    };
    assert_eq!(ids(&status), ids(before), "licenses changed");
    let plugins = |v: &Value| {
        v["plugins"]
            .as_array()
            .map(|a| a.iter().map(|p| p["name"].clone()).collect::<Vec<_>>())
    };
    assert_eq!(plugins(&status), plugins(before), "plugins changed");
}

#[test]
fn malformed_and_hostile_requests_change_nothing() {
    let root = prepare("bad-http", "2");
    let s = Server::start(&root, "2s");
    let before = s.json("/v1/admin/status");
    let token_line = format!("Authorization: Bearer {TOKEN}\r\n");

    // Garbage, a truncated request line, a bad method, a bad version.
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http"[..],
        b"POST /v1/plugins/hello/inv",
        b"BREW /v1/plugins/hello/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\r\n\r\n\r\n",
    ] {
        let reply = raw(&s, junk);
        assert!(
            matches!(status_of(&reply), None | Some(400 | 404 | 405 | 505)),
            "{junk:?} -> {reply}"
        );
        still_fine(&s, &before);
    }

    // Huge headers: refused, not buffered without bound.
    let mut huge =
        b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
    for i in 0..2000 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(100)).as_bytes());
    }
    huge.extend_from_slice(b"Content-Length: 1\r\n\r\nx");
    let reply = raw(&s, &huge);
    assert!(
        matches!(status_of(&reply), None | Some(400 | 431)),
        "{reply}"
    );
    still_fine(&s, &before);

    // A body over the plugin's 64-byte limit: 413 with a JSON error, the
    // plugin never runs.
    let (st, body, _) = s.invoke("hello", &[b'x'; 65]);
    assert_eq!(
        (st, code(&body).as_str()),
        (413, "request-too-large"),
        "{body}"
    );
    // The same, declared by Content-Length but never sent in full.
    let reply = raw(
        &s,
        b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100000000\r\n\r\nxx",
    );
    assert!(
        reply.is_empty() || status_of(&reply) == Some(413),
        "{reply}"
    );
    // A chunked body whose chunk sizes lie.
    let reply = raw(
        &s,
        b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n0\r\n\r\n",
    );
    assert!(
        matches!(status_of(&reply), None | Some(400 | 413)),
        "{reply}"
    );
    let reply = raw(
        &s,
        b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    );
    assert!(
        matches!(status_of(&reply), None | Some(400 | 413)),
        "{reply}"
    );
    still_fine(&s, &before);

    // Path tricks in plugin names never reach a file or another route.
    for path in [
        "/v1/plugins/../admin/status/invoke",
        "/v1/plugins/%2e%2e/invoke",
        "/v1/plugins/%2e%2e%2fadmin/invoke",
        "/v1/plugins/hello%00/invoke",
        "/v1/plugins/hello%2Finvoke/invoke",
        "/v1/plugins//invoke",
    ] {
        let reply = raw(
            &s,
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
            )
            .as_bytes(),
        );
        assert!(
            matches!(status_of(&reply), Some(400 | 404 | 405)),
            "{path} -> {reply}"
        );
        assert!(!reply.contains("\"licenses\""), "{path} leaked: {reply}");
    }
    still_fine(&s, &before);

    // Admin calls: no token, a wrong token, a token in the wrong scheme.
    for auth in [
        String::new(),
        "Authorization: Bearer wrong-token-wrong-token\r\n".to_string(),
        format!("Authorization: Basic {TOKEN}\r\n"),
        format!("Authorization: Bearer {TOKEN}x\r\n"),
    ] {
        for (method, path, body) in [
            ("GET", "/v1/admin/status", ""),
            ("POST", "/v1/admin/licenses/demo/revoke", ""),
            (
                "POST",
                "/v1/admin/plugins",
                "{\"name\":\"x\",\"component\":\"/etc/passwd\"}",
            ),
            ("DELETE", "/v1/admin/plugins/hello", ""),
            ("GET", "/metrics", ""),
        ] {
            let reply = raw(
                &s,
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            assert_eq!(
                status_of(&reply),
                Some(401),
                "{method} {path} [{auth}] -> {reply}"
            );
            assert!(reply.contains("\"unauthorized\""), "{reply}");
            assert!(!reply.contains("demo"), "401 leaked: {reply}");
        }
    }
    still_fine(&s, &before);

    // Bad admin bodies with the right token: 400 naming the problem.
    for (path, body, needle) in [
        ("/v1/admin/plugins", "{not json", "expected"),
        ("/v1/admin/plugins", "{\"name\": 5}", "expected"),
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
        ("/v1/admin/licenses", "\u{0}\u{1}binary", "license"),
    ] {
        let (st, reply) = s.admin("POST", path, Some(body), Some(TOKEN));
        assert_eq!(
            (st, code(&reply).as_str()),
            (400, "bad-request"),
            "{body:?} -> {reply}"
        );
        assert!(reply.contains(needle), "{body:?} -> {reply}");
    }
    let reply = raw(
        &s,
        format!("GET /v1/admin/usage?since=yesterday-ish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{token_line}\r\n")
            .as_bytes(),
    );
    assert_eq!(status_of(&reply), Some(400), "{reply}");
    still_fine(&s, &before);

    // A slow client that sends half a request and stalls does not stop
    // others from being served.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = TcpStream::connect(&addr).expect("connect");
            c.write_all(b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Le")
                .expect("partial");
            c
        })
        .collect();
    for _ in 0..5 {
        still_fine(&s, &before);
    }
    stalled.clear();
    assert!(s.terminate().success());
}
