//! Soak: many calls mixing good and hostile guests on a host with a durable
//! ledger, bounded by count and time. Afterwards every seat is free, every
//! checkout ended once, the ledger agrees with the counters, the hash chain
//! verifies, and resident memory did not keep growing.
//!
//! Short form (CI): `cargo test -p tollgate-tests --test soak`.
//! Long form: `TOLLGATE_SOAK_CALLS=100000 TOLLGATE_SOAK_SECS=900 cargo test
//! --release -p tollgate-tests --test soak -- --nocapture`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tollgate::license::issuer::{IssuerKey, LicenseTerms};
use tollgate::license::{Clock, SystemClock};
use tollgate::runtime::resident_memory_bytes;
use tollgate::store::state::State;
use tollgate::{Host, InvokeError, Limits, Seats};
use tollgate_tests as guests;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn soak_mixed_guests_with_a_durable_ledger() {
    let calls = env_u64("TOLLGATE_SOAK_CALLS", 6_000);
    let budget = Duration::from_secs(env_u64("TOLLGATE_SOAK_SECS", 240));
    let threads = env_u64("TOLLGATE_SOAK_THREADS", 2) as usize;
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-soak-")
        .tempdir()
        .expect("scratch dir");
    let dir = scratch.path();
    {
        let state = State::open(dir).expect("state");
        let key = IssuerKey::generate().expect("key");
        let now = SystemClock.now_secs();
        state.trust(&key.public(), None, now).expect("trust");
        for (id, seats) in [("seat", Seats::Counted(4)), ("open", Seats::Unlimited)] {
            let license = key.sign(LicenseTerms::new(id, seats), now).expect("sign");
            state
                .install_text(&license.to_file_text(), now)
                .expect("install");
        }
    }
    let host = Host::builder().state(dir).build().expect("host");
    let limits = Limits {
        memory_bytes: 8 << 20,
        time: Duration::from_millis(30),
        max_output_bytes: 1 << 20,
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
        ("prober", guests::PROBER),
        ("double", guests::DOUBLE_RELEASE),
        ("recurser", guests::RECURSER),
        ("flooder", guests::FLOODER),
        ("hog", guests::HOG),
        ("spinner", guests::SPINNER),
        ("churner", guests::CHURNER),
    ];
    tollgate_tests::load_mix(&host, &plugins, &limits);
    // Cheap guests often; the ones that run into a limit (time, memory) rarely.
    let schedule = |i: u64| match i % 200 {
        0 => "spinner",
        1 => "churner",
        2..=4 => "hog",
        5..=7 => "flooder",
        n => plugins[(n as usize) % 11].0,
    };
    let next = AtomicU64::new(0);
    let (ok, unlicensed, failed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    // Resident memory, in KiB, sampled by whichever thread starts call
    // number 0, `every`, 2 * `every`, ...: 64 samples over a full run.
    let every = (calls / 64).max(1);
    let samples = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls || started.elapsed() > budget {
                        break;
                    }
                    if i.is_multiple_of(every) {
                        let bytes = resident_memory_bytes().expect("resident memory is reported");
                        samples.lock().expect("samples").push((i, bytes / 1024));
                    }
                    let counter = match host.invoke(schedule(i), b"x y") {
                        Ok(_) => &ok,
                        Err(InvokeError::Unlicensed { .. }) => &unlicensed,
                        Err(e @ InvokeError::NotRecorded { .. }) => {
                            panic!("ledger failed: {e:?}")
                        }
                        Err(_) => &failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut samples = samples.into_inner().expect("samples");
    samples.sort_unstable();
    let rss: Vec<u64> = samples.into_iter().map(|(_, kib)| kib).collect();
    let done = ok.load(Ordering::Relaxed)
        + unlicensed.load(Ordering::Relaxed)
        + failed.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    assert!(done >= calls.min(1_000), "ran {done} calls in {elapsed:?}");

    // Seats, counters and ledger.
    tollgate_tests::assert_balanced(&host);
    let live = host.status();
    let state = host.state().expect("state");
    let ledger = state.ledger_counters().expect("ledger counters");
    for l in &live.licenses.licenses {
        let (from_ledger, _) = &ledger[&l.id];
        let c = &l.counters;
        assert_eq!(
            (
                from_ledger.checkouts,
                from_ledger.releases,
                from_ledger.reclaims.total(),
                from_ledger.denials.total(),
                from_ledger.withheld
            ),
            (
                c.checkouts,
                c.releases,
                c.reclaims.total(),
                c.denials.total(),
                c.withheld
            ),
            "{}: ledger disagrees with counters",
            l.id
        );
    }
    let audit = state.audit().expect("audit");
    assert!(audit.ok(), "{:?}", audit.problems);
    assert!(host.invoke("hello", b"after").is_ok(), "still serving");

    // Memory: the second half of the run does not keep growing.
    let half = rss.len() / 2;
    let (first, second) = (
        rss[..half].iter().max().copied().unwrap_or(0),
        rss[half..].iter().max().copied().unwrap_or(0),
    );
    eprintln!(
        "soak: {done} calls ({} ok, {} unlicensed, {} failed) in {:.1}s on {threads} threads; {} ledger rows; RSS max first half {first} KiB, second half {second} KiB",
        ok.load(Ordering::Relaxed),
        unlicensed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        audit.rows
    );
    assert!(
        rss.len() >= 8,
        "only {} memory samples in {done} calls, too few to tell growth; raise TOLLGATE_SOAK_SECS or lower TOLLGATE_SOAK_CALLS",
        rss.len()
    );
    assert!(
        second <= first + first / 4 + 16 * 1024,
        "memory kept growing: {first} KiB -> {second} KiB"
    );
}
