//! Exact enforcement through `tollgate serve`: a plugin that sends its
//! license back early still holds its seat until its call ends, and a
//! revocation made on the state directory reaches a running server.

use std::time::Duration;

mod common;

use common::*;

const EARLY: &str = r#"
[[plugin]]
name = "early"
component = "EARLY"
requires = ["demo"]
wait_for_seat = "10s"
time_limit = "20s"
"#;

/// The delivered calls whose span overlaps another's.
fn overlapping(spans: &[(u128, u128)]) -> usize {
    let mut sorted = spans.to_vec();
    sorted.sort_unstable();
    let mut latest_end = 0;
    let mut n = 0;
    for (start, end) in sorted {
        if start < latest_end {
            n += 1;
        }
        latest_end = latest_end.max(end);
    }
    n
}

#[test]
fn early_release_over_http_never_runs_two_licensed_calls_on_one_seat() {
    let scratch = prepare("early", "1");
    let root = scratch.path();
    let early = EARLY.replace("EARLY", &guest("early-release").to_string_lossy());
    let s = Server::start_with(root, "5s", &early);
    let spans = delivered_spans(&s, 8, 4);
    assert!(spans.len() >= 20, "only {} calls delivered", spans.len());
    assert_eq!(
        overlapping(&spans),
        0,
        "calls overlapped on one seat: {spans:?}"
    );
    let c = &s.demo()["counters"];
    assert_eq!(c["in_use"], 0, "{c}");
    assert_eq!(c["peak"], 1, "{c}");
    assert_eq!(
        c["releases"], c["checkouts"],
        "every lease came back early: {c}"
    );
    assert_eq!(c["returns"]["invocation-ended"], c["checkouts"], "{c}");
    assert!(s.terminate().success());
}

#[test]
fn a_revocation_on_the_state_directory_reaches_a_running_server_within_two_seconds() {
    let scratch = prepare("revoke-live", "1");
    let root = scratch.path();
    let s = Server::start(root, "5s");
    assert_eq!(s.invoke("hello", b"x").0, 200);
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| s.invoke("slow", b"4000"));
        s.wait_in_use(1);
        let revoked = tg(root, &["license", "revoke", "demo"]);
        assert!(
            revoked.status.success(),
            "{}",
            String::from_utf8_lossy(&revoked.stderr)
        );
        // Within 2 s the server has read the revocation: the seat held by
        // the call in flight has ended, and new calls are refused.
        let mut last = (0, String::new());
        let reached = wait_until(Duration::from_secs(2), || {
            let (st, body, _) = s.invoke("hello", b"x");
            last = (st, body);
            code(&last.1) == "revoked"
        });
        assert!(
            reached,
            "the revocation did not reach the server within 2 s: {} {}",
            last.0, last.1
        );
        assert_eq!(last.0, 403);
        assert_eq!(s.demo()["counters"]["in_use"], 0, "{}", s.demo());
        // It ran on without its seat: its result is withheld.
        let (st, body, _) = in_flight.join().expect("in flight");
        assert_eq!((st, code(&body).as_str()), (403, "revoked"), "{body}");
    });
    let (st, body, _) = s.invoke("hello", b"x");
    assert_eq!((st, code(&body).as_str()), (403, "revoked"), "{body}");
    let c = &s.demo()["counters"];
    assert_eq!(c["returns"]["revoked"], 1, "{c}");
    let unrevoked = tg(root, &["license", "unrevoke", "demo"]);
    assert!(unrevoked.status.success());
    assert!(
        wait_until(Duration::from_secs(2), || s.invoke("hello", b"x").0 == 200),
        "unrevoke did not reach the server"
    );
    assert!(s.terminate().success());
}
