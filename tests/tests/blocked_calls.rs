//! Calls blocked inside a host call — sleeping, or waiting in line for a
//! seat — are still stopped by their time limit or by their caller going
//! away, and give back their seats and their place in the queue.

use std::time::{Duration, Instant};
use tollgate::{Host, InvokeError, Limits, PluginSpec, ReclaimReason, Seats, Terms};
use tollgate_tests as guests;
use tollgate_tests::{WAIT_LIMIT, assert_balanced, text, wait_until};

const SEAT: &str = "seat";

fn host(seats: u32) -> Host {
    Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(seats)))
        .build()
        .expect("host starts")
}

fn load(host: &Host, name: &str, limits: Limits) {
    host.load_plugin(
        PluginSpec::file(name, guests::SLOW)
            .requires(SEAT)
            .limits(limits),
    )
    .expect("guest loads");
}

fn in_use(host: &Host) -> u32 {
    host.licenses()
        .describe(SEAT)
        .expect("installed")
        .counters
        .in_use
}

fn waiting(host: &Host) -> usize {
    host.licenses().describe(SEAT).expect("installed").waiting
}

#[test]
fn time_limit_stops_a_plugin_sleeping_in_a_host_call() {
    let host = host(1);
    let limits = Limits {
        time: Duration::from_millis(200),
        ..Limits::default()
    };
    load(&host, "sleeper", limits);
    let started = Instant::now();
    // Asks to hold its seat for 30 s, far past its 200 ms limit.
    let err = host.invoke("sleeper", b"30000").expect_err("stopped");
    let took = started.elapsed();
    assert!(matches!(err, InvokeError::TimedOut { .. }), "{err}");
    assert!(took < Duration::from_secs(5), "stopped only after {took:?}");
    let c = host.licenses().describe(SEAT).expect("installed").counters;
    assert_eq!((c.checkouts, c.in_use), (1, 0));
    assert_eq!(c.reclaims.get(ReclaimReason::TimedOut), 1);
    // The next call is served normally.
    assert_eq!(
        text(host.invoke("sleeper", b"1").expect("served")),
        "held 1ms, valid=true"
    );
    assert_balanced(&host);
}

#[test]
fn time_limit_stops_a_plugin_waiting_in_line_for_a_seat() {
    let host = host(1);
    // The holder keeps the only seat for 3 s; the waiter would wait up to a
    // minute but has a 300 ms time limit.
    load(&host, "holder", Limits::default());
    let waiter = Limits {
        time: Duration::from_millis(300),
        wait_for_seat: Some(Duration::from_secs(60)),
        ..Limits::default()
    };
    load(&host, "waiter", waiter);
    std::thread::scope(|s| {
        let holder = s.spawn(|| host.invoke("holder", b"3000"));
        wait_until("the holder to take the seat", || in_use(&host) == 1);
        let started = Instant::now();
        let err = host.invoke("waiter", b"1").expect_err("stopped");
        let took = started.elapsed();
        assert!(matches!(err, InvokeError::TimedOut { .. }), "{err}");
        assert!(took < Duration::from_secs(2), "stopped only after {took:?}");
        // It left the queue: nobody is waiting, the holder still holds.
        assert_eq!(waiting(&host), 0);
        let held = holder.join().expect("holder thread");
        assert_eq!(
            text(held.expect("holder served")),
            "held 3000ms, valid=true"
        );
    });
    let c = host.licenses().describe(SEAT).expect("installed").counters;
    assert_eq!((c.checkouts, c.releases, c.in_use), (1, 1, 0));
    assert_balanced(&host);
}

#[test]
fn dropping_an_async_call_leaves_the_queue_and_frees_its_seat() {
    let host = host(1);
    // Neither call may end by itself before the futures are dropped: the
    // time limit is above the holder's 30 s, however slow the machine.
    let limits = Limits {
        wait_for_seat: Some(Duration::from_secs(60)),
        time: Duration::from_secs(60),
        ..Limits::default()
    };
    load(&host, "slow", limits);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The first call takes the seat for 30 s; the second waits in line.
        let holder = host.invoke_async("slow", b"30000");
        let waiter = host.invoke_async("slow", b"1");
        tokio::pin!(holder, waiter);
        let both = async { tokio::join!(holder.as_mut(), waiter.as_mut()) };
        let queued = async {
            let deadline = Instant::now() + WAIT_LIMIT;
            while (in_use(&host), waiting(&host)) != (1, 1) {
                assert!(
                    Instant::now() < deadline,
                    "the holder did not take the seat with the waiter in line"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            _ = both => panic!("a call ended while the holder holds the seat for 30 s"),
            () = queued => {}
        }
    });
    // Both futures are gone: the holder's seat came back as store-dropped
    // and the waiter's place in line is free.
    let status = host.licenses().describe(SEAT).expect("installed");
    assert_eq!(status.waiting, 0);
    assert_eq!(status.counters.in_use, 0);
    assert_eq!(status.counters.reclaims.get(ReclaimReason::StoreDropped), 1);
    // A fresh call gets the seat at once.
    let started = Instant::now();
    assert_eq!(
        text(host.invoke("slow", b"1").expect("served")),
        "held 1ms, valid=true"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_balanced(&host);
}
