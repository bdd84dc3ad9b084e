//! What one client may hold of `tollgate serve`, and ids that never repeat:
//! connections per client address (trusted proxies exempt), a write timeout
//! for clients that do not read their response, the call's place taken
//! before its body is read with a bound on buffered body bytes, the `Host`
//! check, and invocation ids across restarts.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// A connection to `addr` from local address `from` (any loopback address
/// works as a source), with a receive buffer of `recv_buffer` bytes if set.
fn connect_from(from: &str, addr: &str, recv_buffer: Option<u32>) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("local address"))
            .expect("bind");
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).expect("buffer");
        }
        let stream = socket
            .connect(addr.parse().expect("server address"))
            .await
            .expect("connect");
        stream.into_std().expect("std stream")
    });
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// The server's `host:port`.
fn addr_of(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_string()
}

/// Reads one HTTP response with a `content-length` (or up to EOF without
/// one); `None` when the connection ends or times out before a status line.
fn read_response(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned()),
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = stream.read_exact(&mut body);
    Some(head + &String::from_utf8_lossy(&body))
}

/// The status code of a response read by [`read_response`].
fn status(response: &Option<String>) -> Option<u16> {
    response
        .as_deref()
        .and_then(|r| r.strip_prefix("HTTP/1.1 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

/// The `error` code of a JSON error response.
fn error_code(response: &Option<String>) -> String {
    response
        .as_deref()
        .and_then(|r| r.split_once("\r\n\r\n"))
        .map(|(_, body)| code(body))
        .unwrap_or_default()
}

/// `GET /healthz` on `stream`, kept alive; the response.
fn healthz(stream: &mut TcpStream) -> Option<String> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    read_response(stream)
}

/// One value of `/metrics`, by name and labels.
fn metric(s: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.metrics().value(name, labels)
}

/// Past `max_connections_per_client`, a client address gets 429 and a
/// closed connection, while another address is still served and a trusted
/// proxy's address is not capped at all.
#[test]
fn connections_are_capped_per_client_address_except_trusted_proxies() {
    let scratch = prepare("per-client", "2");
    let root = scratch.path();
    let s = Server::start_with(
        root,
        "2s",
        "max_connections_per_client = 2\ntrusted_proxies = [\"127.0.0.3\"]",
    );
    let addr = addr_of(&s);
    // Two kept-alive connections from 127.0.0.1: the most it may hold.
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = connect_from("127.0.0.1", &addr, None);
            assert_eq!(status(&healthz(&mut c)), Some(200));
            c
        })
        .collect();
    // A third from the same address: refused with 429 and closed, before
    // it sends anything.
    let mut third = connect_from("127.0.0.1", &addr, None);
    let refused = read_response(&mut third);
    assert_eq!(status(&refused), Some(429), "{refused:?}");
    assert_eq!(error_code(&refused), "too-many-connections", "{refused:?}");
    assert_eq!(third.read(&mut [0u8; 16]).ok(), Some(0), "not closed");
    // Another client address is served meanwhile.
    let mut other = connect_from("127.0.0.2", &addr, None);
    assert_eq!(status(&healthz(&mut other)), Some(200));
    // A trusted proxy's address may hold many more.
    let proxied: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut c = connect_from("127.0.0.3", &addr, None);
            assert_eq!(status(&healthz(&mut c)), Some(200));
            c
        })
        .collect();
    // Once one of the two closes, 127.0.0.1 gets a place again (the server
    // notices the close on its own time, so ask until it has).
    let closed = held.pop().expect("two held");
    closed.shutdown(Shutdown::Both).expect("shutdown");
    drop(closed);
    let (mut answer, mut refused_while_waiting) = (None, 0.0);
    let freed = wait_until(Duration::from_secs(5), || {
        let mut again = connect_from("127.0.0.1", &addr, None);
        answer = healthz(&mut again);
        // Refused (a 429, or a reset if the request was sent after it).
        let served = status(&answer) == Some(200);
        if !served {
            refused_while_waiting += 1.0;
        }
        served
    });
    assert!(freed, "no place came free after a close: {answer:?}");
    // Asked over the connection 127.0.0.2 keeps open: 127.0.0.1 may still
    // count the connection just closed until the server notices the close.
    other
        .write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("metrics request");
    let response = read_response(&mut other).expect("metrics");
    let (_, text) = response.split_once("\r\n\r\n").expect("a body");
    let metrics = Exposition::parse(text).unwrap_or_else(|e| panic!("{e} in\n{text}"));
    // The third connection from 127.0.0.1, and each ask for a place made
    // before the server saw the close.
    assert_eq!(
        metrics.value(
            "tollgate_requests_refused_total",
            &[("reason", "connections-per-client")]
        ),
        Some(1.0 + refused_while_waiting),
        "{text}"
    );
    drop((held, proxied, other));
    assert!(s.terminate().success());
}

/// A client that asks for a large response and never reads it is closed
/// after `write_timeout`, so it does not keep its connection (nor the
/// response's bytes): with `max_connections = 2`, two such clients no
/// longer lock every other client out.
#[test]
fn a_client_that_does_not_read_its_response_is_closed() {
    let scratch = prepare("write-timeout", "4");
    let root = scratch.path();
    let s = Server::start_with_plugins(
        root,
        "2s",
        "write_timeout = \"1s\"\nmax_connections = 2",
        "[[plugin]]\nname = \"flood\"\ncomponent = \"FLOODER\"\nrequires = [\"demo\"]\nmax_response_bytes = \"32MiB\"\n",
    );
    let addr = addr_of(&s);
    let request =
        b"POST /v1/plugins/flood/invoke HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n16";
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            // A 4 KiB receive buffer, so the 16 MiB response cannot all
            // sit in the kernel's buffers.
            let mut c = connect_from("127.0.0.1", &addr, Some(4096));
            c.write_all(request).expect("request");
            c
        })
        .collect();
    // Both places are taken by clients that read nothing. A new client is
    // served once both are closed: one connection kept open and a second
    // served beside it needs both places.
    let mut first = connect_from("127.0.0.1", &addr, None);
    let answer = healthz(&mut first);
    assert_eq!(
        status(&answer),
        Some(200),
        "not served within 10 s while two clients do not read: {answer:?}"
    );
    let mut second = connect_from("127.0.0.1", &addr, None);
    let answer = healthz(&mut second);
    assert_eq!(status(&answer), Some(200), "{answer:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "served before write_timeout: {waited:?}"
    );
    // The stalled clients got part of the response, never all of it.
    for c in &mut stalled {
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(
            got.starts_with(b"HTTP/1.1 200") && got.len() < 16 << 20,
            "{} bytes",
            got.len()
        );
    }
    eprintln!("both places came free after {waited:?}");
    drop((first, second));
    assert!(s.terminate().success());
}

/// A request waits for a call's place before any of its body is read: with
/// every place taken, a client sending `Expect: 100-continue` is not asked
/// for its body until a call ends.
#[test]
fn a_request_waiting_for_a_place_has_none_of_its_body_read() {
    let scratch = prepare("permit-first", "4");
    let root = scratch.path();
    let s = Server::start_with(root, "2s", "max_concurrent_calls = 2");
    std::thread::scope(|scope| {
        let holders: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| s.invoke("slow", b"1500")))
            .collect();
        s.wait_in_use(2);
        let mut c = connect_from("127.0.0.1", &addr_of(&s), None);
        c.write_all(
            b"POST /v1/plugins/hello/invoke HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .expect("head");
        let proceed = read_response(&mut c);
        // Asked for the body only now that a call has ended (the other,
        // started a moment later, may still be finishing).
        let counters = s.demo()["counters"].clone();
        assert_eq!(
            status(&proceed),
            Some(100),
            "expected 100 Continue: {proceed:?}"
        );
        assert!(
            counters["returns"]["invocation-ended"].as_u64() >= Some(1),
            "the body was asked for while both calls still ran: {counters}"
        );
        c.write_all(b"ok").expect("body");
        let answer = read_response(&mut c);
        assert_eq!(status(&answer), Some(200), "{answer:?}");
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.ends_with("hello, ok! (licensed by demo)")),
            "{answer:?}"
        );
        for h in holders {
            assert_eq!(h.join().expect("holder").0, 200);
        }
    });
    assert!(s.terminate().success());
}

/// Many large bodies at once: the server holds at most
/// `max_buffered_request_bytes` of them; the rest get 503 `server-busy`
/// without being read, and the bytes come back once the calls end.
#[test]
fn buffered_request_bodies_stay_within_their_bound() {
    const BODY: usize = 400 << 10;
    let scratch = prepare("body-budget", "8");
    let root = scratch.path();
    let s = Server::start_with_plugins(
        root,
        "2s",
        "max_buffered_request_bytes = \"1MiB\"\nmax_concurrent_calls = 8",
        "[[plugin]]\nname = \"big\"\ncomponent = \"NONE\"\nmax_request_bytes = \"1MiB\"\nmax_response_bytes = \"1MiB\"\n",
    );
    let addr = addr_of(&s);
    // Six requests of 400 KiB each, every one stalled halfway: 2.4 MiB if
    // all were buffered, against a bound of 1 MiB.
    let mut clients: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut c = connect_from("127.0.0.1", &addr, None);
            c.write_all(
                format!(
                    "POST /v1/plugins/big/invoke HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {BODY}\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("head");
            c.write_all(&[b'a'; BODY / 2]).expect("half the body");
            c
        })
        .collect();
    let bytes = |n: usize| Some(n as f64);
    let (mut refused, mut held) = (None, None);
    let bounded = wait_until(Duration::from_secs(10), || {
        refused = metric(
            &s,
            "tollgate_requests_refused_total",
            &[("reason", "body-budget")],
        );
        held = metric(&s, "tollgate_request_body_bytes_buffered", &[]);
        refused == Some(4.0) && held == bytes(2 * BODY)
    });
    assert!(
        bounded,
        "expected 4 refused and {} bytes held, found {refused:?} refused, {held:?} held",
        2 * BODY
    );
    assert_eq!(
        metric(&s, "tollgate_request_body_bytes_buffered_peak", &[]),
        bytes(2 * BODY)
    );
    for c in &mut clients {
        // The refused ones may be closed already.
        let _ = c.write_all(&[b'b'; BODY / 2]);
    }
    let answers: Vec<Option<String>> = clients.iter_mut().map(read_response).collect();
    let ok = answers.iter().filter(|a| status(a) == Some(200)).count();
    let busy: Vec<&Option<String>> = answers.iter().filter(|a| status(a) == Some(503)).collect();
    let statuses: Vec<Option<u16>> = answers.iter().map(status).collect();
    assert_eq!((ok, busy.len()), (2, 4), "{statuses:?}");
    for a in busy {
        assert_eq!(error_code(a), "server-busy", "{a:?}");
        let a = a.as_deref().unwrap_or("");
        assert!(a.contains("max_buffered_request_bytes"), "{a}");
        assert!(a.to_ascii_lowercase().contains("retry-after: 1"), "{a}");
    }
    assert_eq!(
        metric(&s, "tollgate_request_body_bytes_buffered", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&s, "tollgate_request_body_bytes_buffered_peak", &[]),
        bytes(2 * BODY)
    );
    assert!(s.terminate().success());
}

/// Sends `request` on a fresh connection and reads the response.
fn exchange(s: &Server, request: &str) -> Option<String> {
    let mut c = connect_from("127.0.0.1", &addr_of(s), None);
    c.write_all(request.as_bytes()).expect("request");
    read_response(&mut c)
}

/// On a loopback address the server answers only to loopback host names
/// by default (a page on another site that rebinds its name to 127.0.0.1
/// gets 421); `allowed_hosts` names others.
#[test]
fn requests_must_name_an_allowed_host() {
    let scratch = prepare("host-check", "2");
    let root = scratch.path();
    let s = Server::start(root, "2s");
    let port = addr_of(&s).rsplit_once(':').expect("port").1.to_string();
    let call = |host: &str| {
        exchange(
            &s,
            &format!(
                "POST /v1/plugins/hello/invoke HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: 2\r\n\r\nok"
            ),
        )
    };
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "LocalHost".to_string(),
    ] {
        let answer = call(&format!("Host: {host}\r\n"));
        assert_eq!(status(&answer), Some(200), "{host}: {answer:?}");
    }
    for host in [
        format!("evil.example:{port}"),
        "127.0.0.1.nip.io".to_string(),
        format!("localhost.evil.example:{port}"),
    ] {
        let answer = call(&format!("Host: {host}\r\n"));
        assert_eq!(status(&answer), Some(421), "{host}: {answer:?}");
        assert_eq!(error_code(&answer), "host-not-allowed", "{answer:?}");
        assert!(!answer.as_deref().unwrap_or("").contains("licensed by"));
    }
    let answer = call("");
    assert_eq!(
        (status(&answer), error_code(&answer).as_str()),
        (Some(400), "host-missing"),
        "{answer:?}"
    );
    // Every route is checked, the admin API and unknown paths too.
    let answer = exchange(
        &s,
        &format!(
            "GET /v1/admin/status HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status(&answer), Some(421), "{answer:?}");
    let answer = exchange(
        &s,
        "GET /nowhere HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&answer), Some(421), "{answer:?}");
    // An absolute-form target names its host too.
    let answer = exchange(
        &s,
        "GET http://evil.example/healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&answer), Some(421), "{answer:?}");
    assert!(s.terminate().success());

    // Named hosts replace the defaults.
    let s = Server::start_with(root, "2s", "allowed_hosts = [\"api.example.com\"]");
    let get = |host: &str| {
        exchange(
            &s,
            &format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(status(&get("api.example.com:443")), Some(200));
    assert_eq!(status(&get("localhost")), Some(421));
    assert!(s.terminate().success());
    // "*" turns the check off.
    let s = Server::start_with(root, "2s", "allowed_hosts = [\"*\"]");
    let answer = exchange(
        &s,
        "GET /healthz HTTP/1.1\r\nHost: anything.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status(&answer), Some(200), "{answer:?}");
    assert!(s.terminate().success());
}

/// Invocation ids of calls that record nothing in the ledger (a plugin
/// that needs no license) still never repeat after a restart, or after a
/// kill -9.
#[test]
fn invocation_ids_never_repeat_across_restarts() {
    let scratch = prepare("ids", "2");
    let root = scratch.path();
    let plugins = "[[plugin]]\nname = \"free\"\ncomponent = \"NONE\"\n";
    let ids = |s: &Server| -> Vec<u64> {
        (0..3)
            .map(|_| {
                let r = s
                    .agent
                    .post(format!("{}/v1/plugins/free/invoke", s.base))
                    .send(&b"abc"[..])
                    .expect("request");
                assert_eq!(r.status().as_u16(), 200);
                r.headers()
                    .get("x-tollgate-invocation")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("an invocation id")
            })
            .collect()
    };
    let s = Server::start_with_plugins(root, "2s", "", plugins);
    let first = ids(&s);
    assert!(s.terminate().success());
    let s = Server::start_with_plugins(root, "2s", "", plugins);
    let second = ids(&s);
    let mut s = s;
    s.child.kill().expect("kill -9");
    s.child.wait().expect("dead");
    let s = Server::start_with_plugins(root, "2s", "", plugins);
    let third = ids(&s);
    assert!(s.terminate().success());
    let all: BTreeSet<u64> = first.iter().chain(&second).chain(&third).copied().collect();
    assert_eq!(
        all.len(),
        9,
        "ids repeated: {first:?}, after a restart {second:?}, after kill -9 {third:?}"
    );
    // These calls wrote no ledger row, so the ledger cannot tell a
    // restarted host which ids were used.
    let db = rusqlite::Connection::open(root.join("state/tollgate.db")).expect("db");
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM ledger WHERE plugin = 'free'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(rows, 0);
}
