//! Many calls mixing good and rogue guests, concurrently: the host stays up
//! and every seat comes back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tollgate::{Host, InvokeError, Limits, Seats, Terms};
use tollgate_tests as guests;

#[test]
fn ten_thousand_mixed_calls_at_concurrency_two() {
    let host = Host::builder()
        .license("seat", Terms::new(Seats::Counted(4)))
        .license("open", Terms::new(Seats::Unlimited))
        .build()
        .expect("host starts");
    let limits = Limits {
        memory_bytes: 8 << 20,
        time: Duration::from_millis(30),
        ..Limits::default()
    };
    let plugins = [
        ("hello", guests::HELLO_LICENSED),
        ("drop", guests::DROP_LICENSED),
        ("ids", guests::IDS),
        ("none", guests::NO_LICENSE),
        ("leaker", guests::LEAKER),
        ("trapper", guests::TRAPPER),
        ("greedy", guests::GREEDY),
        ("wrong", guests::WRONG_ID),
        ("hog", guests::HOG),
        ("spinner", guests::SPINNER),
    ];
    tollgate_tests::load_mix(&host, &plugins, &limits);
    // Cheap guests often, slow ones (hog, spinner) rarely.
    let schedule = |i: u64| match i % 100 {
        0 => "spinner",
        1..=3 => "hog",
        n => plugins[(n as usize) % 8].0,
    };
    const CALLS: u64 = 10_000;
    let next = AtomicU64::new(0);
    let (ok, unlicensed, failed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= CALLS {
                        break;
                    }
                    let counter = match host.invoke(schedule(i), b"x y") {
                        Ok(_) => &ok,
                        Err(InvokeError::Unlicensed { .. }) => &unlicensed,
                        Err(_) => &failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let (ok, unlicensed, failed) = (
        ok.load(Ordering::Relaxed),
        unlicensed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(ok + unlicensed + failed, CALLS);
    // Rogue guests never deliver a result; good ones may still be refused a
    // seat while greedy or leaker hold them all.
    let never_delivers = ["spinner", "hog", "trapper", "none", "wrong"];
    let rogue_calls = (0..CALLS)
        .filter(|i| never_delivers.contains(&schedule(*i)))
        .count() as u64;
    assert!(
        failed + unlicensed >= rogue_calls,
        "{failed} + {unlicensed} < {rogue_calls}"
    );
    assert!(ok <= CALLS - rogue_calls);
    assert!(ok > 0 && unlicensed > 0 && failed > 0);
    tollgate_tests::assert_balanced(&host);
    let status = host.status();
    let total: u64 = status.plugins.iter().map(|p| p.invocations).sum();
    assert_eq!(total, CALLS);
    // The host still serves a good call normally afterwards.
    assert!(host.invoke("hello", b"after").is_ok());
}
