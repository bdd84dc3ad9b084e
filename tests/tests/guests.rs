//! Runs every example and rogue guest under the host and asserts its exact
//! outcome, then that every seat came back.

use std::time::{Duration, Instant};
use tollgate::license::LicenseStatus;
use tollgate::runtime::MissingLicense;
use tollgate::{Denial, Host, InvokeError, Limits, PluginSpec, ReclaimReason, Seats, Terms};
use tollgate_tests as guests;
use tollgate_tests::{assert_balanced, text, wait_until};

const SEAT: &str = "seat";

fn host_with(seats: Seats) -> Host {
    Host::builder()
        .license(SEAT, Terms::new(seats))
        .build()
        .expect("host starts")
}

fn load(host: &Host, name: &str, path: &str) {
    load_with(host, name, path, Limits::default());
}

fn load_with(host: &Host, name: &str, path: &str, limits: Limits) {
    host.load_plugin(PluginSpec::file(name, path).requires(SEAT).limits(limits))
        .expect("guest loads");
}

fn seat(host: &Host) -> LicenseStatus {
    host.licenses()
        .describe(SEAT)
        .expect("seat license installed")
}

#[test]
fn hello_licensed() {
    let host = host_with(Seats::Counted(1));
    load(&host, "hello", guests::HELLO_LICENSED);
    let out = host
        .invoke("hello", b"world")
        .expect("licensed call succeeds");
    assert_eq!(text(out), "hello, world! (licensed by seat)");
    let c = seat(&host).counters;
    assert_eq!(
        (c.checkouts, c.releases, c.reclaims.total(), c.peak),
        (1, 1, 0, 1)
    );
    assert_balanced(&host);
}

#[test]
fn hello_raw() {
    // The raw wit-bindgen example behaves exactly like hello-licensed...
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(1)))
        .license("spare", Terms::new(Seats::Counted(0)))
        .build()
        .expect("host starts");
    load(&host, "raw", guests::HELLO_RAW);
    let out = host
        .invoke("raw", b"world")
        .expect("licensed call succeeds");
    assert_eq!(text(out), "hello, world! (licensed by seat)");
    let c = seat(&host).counters;
    assert_eq!((c.checkouts, c.releases, c.peak), (1, 1, 1));
    // ...and a refusal sends back the seat it already took.
    host.load_plugin(
        PluginSpec::file("raw-both", guests::HELLO_RAW)
            .requires(SEAT)
            .may_use("spare"),
    )
    .expect("guest loads");
    let err = host
        .invoke("raw-both", b"world")
        .expect_err("spare has no seat");
    assert!(
        err.to_string()
            .contains("license spare was refused: every seat is taken"),
        "{err}"
    );
    let c = seat(&host).counters;
    assert_eq!(
        (c.checkouts, c.releases, c.reclaims.total(), c.in_use),
        (2, 2, 0, 0),
        "the seat taken before the refusal went back as a release"
    );
    assert_balanced(&host);
    // Without the SDK, no version is recorded; the import names still say 0.1.0.
    let report = host
        .inspect(&std::fs::read(guests::HELLO_RAW).expect("guest"))
        .expect("inspects");
    assert_eq!(report.recorded_wit_version, None);
    assert_eq!(
        (report.wit_packages, report.refused),
        (vec!["tollgate:plugin@0.1.0".to_string()], None)
    );
}

#[test]
fn drop_licensed() {
    let host = host_with(Seats::Counted(1));
    load(&host, "dropper", guests::DROP_LICENSED);
    let out = host
        .invoke("dropper", b"one two three")
        .expect("licensed call succeeds");
    assert_eq!(text(out), "three two one");
    let c = seat(&host).counters;
    assert_eq!(
        (c.checkouts, c.releases),
        (1, 1),
        "dropping the handle is a release"
    );
    assert_balanced(&host);
}

#[test]
fn ids() {
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(2)))
        .license(
            "extra",
            Terms {
                expires_at: Some(4_000_000_000),
                ..Terms::new(Seats::Unlimited)
            },
        )
        .license("not-mine", Terms::new(Seats::Counted(1)))
        .build()
        .expect("host starts");
    host.load_plugin(
        PluginSpec::file("ids", guests::IDS)
            .requires(SEAT)
            .may_use("extra")
            .may_use("absent"),
    )
    .expect("loads");
    assert_eq!(
        host.license_ids("ids"),
        Some(vec!["extra".to_string(), SEAT.to_string()])
    );
    let out = host.invoke("ids", b"").expect("licensed call succeeds");
    assert_eq!(
        text(out),
        "extra: seats=unlimited in-use=0->1 expires=4000000000\nseat: seats=2 in-use=0->1 expires=never\n"
    );
    assert_eq!(
        host.licenses()
            .describe("not-mine")
            .expect("installed")
            .counters
            .checkouts,
        0
    );
    assert_balanced(&host);
}

#[test]
fn no_license() {
    let host = host_with(Seats::Counted(1));
    load(&host, "freeloader", guests::NO_LICENSE);
    let err = host.invoke("freeloader", b"abc").expect_err("withheld");
    assert_eq!(
        err,
        InvokeError::Unlicensed {
            plugin: "freeloader".into(),
            missing: vec![MissingLicense {
                id: SEAT.into(),
                denial: None,
                lapsed: false,
            }],
        }
    );
    let c = seat(&host).counters;
    assert_eq!((c.checkouts, c.withheld), (0, 1));
    assert_balanced(&host);
}

#[test]
fn leaker() {
    let host = host_with(Seats::Counted(2));
    load(&host, "leaker", guests::LEAKER);
    for _ in 0..3 {
        // Each call starts from a fresh instance: the static is empty again
        // and the seats it kept last time are back.
        let out = host
            .invoke("leaker", b"")
            .expect("valid until reclaimed, so delivered");
        assert_eq!(text(out), "kept 1 lease(s)");
        assert_eq!(seat(&host).counters.in_use, 0);
    }
    let c = seat(&host).counters;
    assert_eq!(c.checkouts, 6);
    assert_eq!(c.reclaims.get(ReclaimReason::InvocationEnded), 6);
    assert_eq!(c.releases, 0);
    assert_balanced(&host);
}

/// The pooling allocator resets a reused slot's memory in place (only the
/// pages a call touched) instead of unmapping it: with a single slot, every
/// call reuses the last call's memory, and must still find its statics
/// empty, whichever plugin ran there before.
#[test]
fn a_reused_pool_slot_starts_clean() {
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(4)))
        .allocator(tollgate::runtime::Allocator::pooling(
            1,
            [&Limits::default()],
        ))
        .build()
        .expect("host starts");
    load(&host, "leaker", guests::LEAKER);
    load(&host, "hello", guests::HELLO_LICENSED);
    for round in 0..4 {
        let out = host.invoke("leaker", b"").expect("delivered");
        assert_eq!(text(out), "kept 1 lease(s)", "round {round}");
        let out = host.invoke("hello", b"pool").expect("delivered");
        assert_eq!(
            text(out),
            "hello, pool! (licensed by seat)",
            "round {round}"
        );
    }
    assert_eq!(seat(&host).counters.in_use, 0);
    assert_balanced(&host);
}

#[test]
fn trapper() {
    let host = host_with(Seats::Counted(1));
    load(&host, "trapper", guests::TRAPPER);
    let err = host.invoke("trapper", b"").expect_err("traps");
    match &err {
        InvokeError::Trapped { plugin, reason } => {
            assert_eq!(plugin, "trapper");
            assert!(reason.contains("unreachable"), "{reason}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(seat(&host).counters.reclaims.get(ReclaimReason::Trapped), 1);
    assert_balanced(&host);
    // The seat came back: a good plugin can take it now.
    load(&host, "hello", guests::HELLO_LICENSED);
    assert!(host.invoke("hello", b"x").is_ok());
}

#[test]
fn spinner() {
    let host = host_with(Seats::Counted(1));
    let limits = Limits {
        time: Duration::from_millis(100),
        ..Limits::default()
    };
    load_with(&host, "spinner", guests::SPINNER, limits);
    let started = Instant::now();
    let err = host.invoke("spinner", b"").expect_err("stopped");
    assert_eq!(
        err,
        InvokeError::TimedOut {
            plugin: "spinner".into(),
            limit: Duration::from_millis(100)
        }
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the time limit stopped it"
    );
    assert_eq!(
        seat(&host).counters.reclaims.get(ReclaimReason::TimedOut),
        1
    );
    assert_balanced(&host);
}

#[test]
fn hog() {
    let host = host_with(Seats::Counted(1));
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    load_with(&host, "hog", guests::HOG, limits);
    let err = host.invoke("hog", b"").expect_err("stopped");
    assert_eq!(
        err,
        InvokeError::MemoryLimit {
            plugin: "hog".into(),
            limit: 16 << 20
        }
    );
    assert_eq!(seat(&host).counters.reclaims.get(ReclaimReason::Trapped), 1);
    assert_balanced(&host);
}

#[test]
fn greedy() {
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(3)))
        .license("free", Terms::new(Seats::Unlimited))
        .build()
        .expect("host starts");
    host.load_plugin(
        PluginSpec::file("greedy", guests::GREEDY)
            .requires(SEAT)
            .may_use("free"),
    )
    .expect("loads");
    let out = host.invoke("greedy", b"").expect("it did hold the seat");
    assert_eq!(
        text(out),
        "free: took 1000, then enough\nseat: took 3, then LicenseError::Exhausted"
    );
    let c = seat(&host).counters;
    assert_eq!((c.peak, c.checkouts), (3, 3));
    assert_eq!(c.denials.get(Denial::Exhausted), 1);
    assert_eq!(c.reclaims.get(ReclaimReason::InvocationEnded), 3);
    assert_balanced(&host);
}

#[test]
fn greedy_is_capped_per_invocation() {
    let host = host_with(Seats::Unlimited);
    let limits = Limits {
        max_leases: 10,
        ..Limits::default()
    };
    load_with(&host, "greedy", guests::GREEDY, limits);
    let out = host.invoke("greedy", b"").expect("it did hold the seat");
    assert_eq!(text(out), "seat: took 10, then LicenseError::Exhausted");
    assert_balanced(&host);
}

#[test]
fn wrong_id() {
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(1)))
        .license("other", Terms::new(Seats::Counted(1)))
        .build()
        .expect("host starts");
    // Without requirements its output is visible: the host said no, and
    // the same no for an id it has as for one it has not, so a plugin
    // cannot probe which licenses the host holds.
    host.load_plugin(PluginSpec::file("wrong-open", guests::WRONG_ID))
        .expect("loads");
    assert_eq!(
        text(host.invoke("wrong-open", b"other").expect("ok")),
        "other: LicenseError::UnknownLicense"
    );
    assert_eq!(
        text(host.invoke("wrong-open", b"").expect("ok")),
        "someone-elses-license: LicenseError::UnknownLicense"
    );
    // With a requirement it holds nothing, so its result is withheld.
    load(&host, "wrong-id", guests::WRONG_ID);
    let err = host.invoke("wrong-id", b"other").expect_err("withheld");
    assert!(err.is_unlicensed(), "{err}");
    let other = host
        .licenses()
        .describe("other")
        .expect("installed")
        .counters;
    assert_eq!(
        (other.checkouts, other.denials.total()),
        (0, 0),
        "nothing about the other license moved"
    );
    assert_eq!(host.licenses().status().unknown_license_denials, 3);
    assert_balanced(&host);
}

/// A writer that keeps what tracing logs, for assertions.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn prober() {
    let host = host_with(Seats::Counted(1));
    load(&host, "prober", guests::PROBER);
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let (invocation, out) =
        tracing::subscriber::with_default(subscriber, || host.invoke_call("prober", b""));
    let out = out.expect("licensed call succeeds");
    // Deny-all sandbox: no host files, no environment, no sockets.
    assert_eq!(
        text(out),
        "file: denied (NotFound)\ndir: denied (NotFound)\nenv: empty\nsocket: denied (PermissionDenied)"
    );
    // Its stdout and stderr went to the debug log (never a default level),
    // tagged with the plugin's name and the invocation id.
    let logs = String::from_utf8(logs.0.lock().expect("log lock").clone()).expect("utf-8 logs");
    let line = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    };
    let out_line = line("prober: probing the sandbox").expect("stdout logged");
    let tag = format!("invocation={invocation}");
    assert!(
        out_line.contains("DEBUG")
            && out_line.contains("plugin=prober")
            && out_line.contains(&tag)
            && out_line.contains("stream=\"stdout\""),
        "{out_line}"
    );
    let err_line = line("this line goes to stderr").expect("stderr logged");
    assert!(
        err_line.contains("DEBUG")
            && err_line.contains(&tag)
            && err_line.contains("stream=\"stderr\""),
        "{err_line}"
    );
    assert_balanced(&host);
}

#[test]
fn prober_sees_only_what_it_is_given() {
    use tollgate::runtime::{Preopen, Sandbox};
    let scratch = tempfile::Builder::new()
        .prefix("tollgate-preopen-")
        .tempdir()
        .expect("dir");
    let dir = scratch.path();
    std::fs::write(dir.join("hello.txt"), "from the host").expect("write");
    let host = host_with(Seats::Counted(1));
    // Passed through: PATH with the value it has when the plugin loads; a
    // variable this process does not have is left out.
    let path = std::env::var("PATH").expect("tests run with a PATH");
    let sandbox = |writable| Sandbox {
        dirs: vec![Preopen {
            host: dir.to_path_buf(),
            guest: "/data".into(),
            writable,
        }],
        env: vec![("GREETING".into(), "hi".into())],
        pass_env: vec!["PATH".into(), "TOLLGATE_TEST_NEVER_SET".into()],
    };
    host.load_plugin(
        PluginSpec::file("ro", guests::PROBER)
            .requires(SEAT)
            .sandbox(sandbox(false)),
    )
    .expect("loads");
    host.load_plugin(
        PluginSpec::file("rw", guests::PROBER)
            .requires(SEAT)
            .sandbox(sandbox(true)),
    )
    .expect("loads");
    let out = text(host.invoke("ro", b"/data/hello.txt").expect("ok"));
    assert!(out.contains("/data/hello.txt: from the host"), "{out}");
    assert!(
        out.contains("write: denied (PermissionDenied)"),
        "read-only preopen: {out}"
    );
    assert!(
        out.contains(&format!("vars: GREETING=hi,PATH={path}")),
        "{out}"
    );
    assert!(!out.contains("TOLLGATE_TEST_NEVER_SET"), "{out}");
    assert!(
        out.contains("file: denied (NotFound)"),
        "/etc/passwd still out of reach: {out}"
    );
    assert!(!dir.join("hello.txt.copy").exists());
    let out = text(host.invoke("rw", b"/data/hello.txt").expect("ok"));
    assert!(out.contains("write: OPEN"), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("hello.txt.copy")).expect("written"),
        "from the host"
    );
    let escape = text(host.invoke("ro", b"/data/../../etc/passwd").expect("ok"));
    assert!(
        escape.contains("/data/../../etc/passwd: denied"),
        "{escape}"
    );
    let missing = host.load_plugin(PluginSpec::file("gone", guests::PROBER).sandbox(Sandbox {
        dirs: vec![Preopen {
            host: dir.join("nope"),
            guest: "/x".into(),
            writable: false,
        }],
        ..Sandbox::default()
    }));
    assert!(
        missing
            .expect_err("refused")
            .to_string()
            .contains("is not a directory")
    );
    assert_balanced(&host);
}

/// Loading the guest at `path` fails with a message naming the plugin's WIT
/// version (0.2.0) and this host's (0.1.0).
fn assert_refused_as_0_2_0(host: &Host, path: &str) {
    let err = host
        .load_plugin(PluginSpec::file("other-version", path).requires(SEAT))
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("built for tollgate:plugin@0.2.0")
            && message.contains("this host provides tollgate:plugin@0.1.0"),
        "{message}"
    );
}

#[test]
fn future_wit() {
    let host = host_with(Seats::Counted(1));
    assert_refused_as_0_2_0(&host, guests::FUTURE_WIT);
    let report = host
        .inspect(&std::fs::read(guests::FUTURE_WIT).expect("guest"))
        .expect("inspects");
    assert_eq!(
        report.wit_packages,
        vec!["tollgate:plugin@0.2.0".to_string()]
    );
    assert!(
        report
            .exports
            .iter()
            .any(|e| e == "tollgate:plugin/service@0.2.0"),
        "{report:?}"
    );
    assert!(report.refused.is_some());
    let ok = host
        .inspect(&std::fs::read(guests::HELLO_LICENSED).expect("guest"))
        .expect("inspects");
    assert_eq!(
        (ok.wit_packages, ok.refused),
        (vec!["tollgate:plugin@0.1.0".to_string()], None)
    );
    assert!(
        ok.imports
            .iter()
            .any(|i| i == "tollgate:plugin/licensing@0.1.0"),
        "{:?}",
        ok.imports
    );
}

#[test]
fn sdk_mismatch() {
    // Its imports match this host; only the version its SDK recorded differs.
    let host = host_with(Seats::Counted(1));
    assert_refused_as_0_2_0(&host, guests::SDK_MISMATCH);
    let report = host
        .inspect(&std::fs::read(guests::SDK_MISMATCH).expect("guest"))
        .expect("inspects");
    assert_eq!(report.recorded_wit_version.as_deref(), Some("0.2.0"));
    assert_eq!(
        report.wit_packages,
        vec!["tollgate:plugin@0.1.0".to_string()]
    );
    assert!(report.refused.is_some());
    // A plugin built on the SDK records this host's version and loads.
    let sdk = host
        .inspect(&std::fs::read(guests::HELLO_LICENSED).expect("guest"))
        .expect("inspects");
    assert_eq!(sdk.recorded_wit_version.as_deref(), Some("0.1.0"));
    assert_eq!(sdk.refused, None);
    assert!(seat(&host).counters.checkouts == 0);
}

/// Fails to compile — and so fails — when a guest in guest-examples has no
/// test of the same name in this file.
#[test]
fn every_guest_has_a_test() {
    macro_rules! has_test {
        ($name:ident) => {
            let _: fn() = $name;
        };
    }
    tollgate_tests::for_each_guest!(has_test);
    assert_eq!(guests::GUESTS.len(), 25);
}

#[test]
fn slow() {
    let host = host_with(Seats::Counted(1));
    load(&host, "slow", guests::SLOW);
    let out = host.invoke("slow", b"20").expect("licensed call succeeds");
    assert_eq!(text(out), "held 20ms, valid=true");
    assert_balanced(&host);
}

#[test]
fn slow_revoked_mid_call_is_withheld() {
    let host = host_with(Seats::Counted(2));
    load(&host, "slow", guests::SLOW);
    std::thread::scope(|s| {
        let call = s.spawn(|| host.invoke("slow", b"2000"));
        wait_until("the call to take its seat", || {
            seat(&host).counters.in_use == 1
        });
        assert_eq!(host.revoke_license(SEAT).expect("revokes"), 1);
        let err = call.join().expect("call thread").expect_err("withheld");
        assert!(err.is_unlicensed(), "{err}");
    });
    let c = seat(&host).counters;
    assert_eq!(c.reclaims.get(ReclaimReason::Revoked), 1);
    assert_eq!((c.releases, c.withheld), (0, 1));
    assert_eq!(
        host.invoke("slow", b"1").expect_err("revoked").to_string(),
        "result of plugin slow withheld as unlicensed: it did not hold seat (its request was refused: revoked)"
    );
    assert_balanced(&host);
}

#[test]
fn bench_licensed() {
    let host = host_with(Seats::Counted(1));
    load(&host, "bench", guests::BENCH_LICENSED);
    host.load_plugin(PluginSpec::file("bare", guests::BENCH_BARE))
        .expect("loads");
    let licensed = host.invoke("bench", b"work:3 abc").expect("licensed");
    assert_eq!(
        licensed,
        host.invoke("bare", b"work:3 abc").expect("bare"),
        "same work"
    );
    assert_eq!(
        text(host.invoke("bench", b"pairs:100").expect("pairs")),
        "100 pairs"
    );
    assert_eq!(
        text(host.invoke("bench", b"empty:100").expect("empty")),
        "100 calls"
    );
    let c = seat(&host).counters;
    assert_eq!((c.checkouts, c.releases), (1 + 101 + 1, 103));
    assert_balanced(&host);
}

/// The bare guest's source plus acquire and release of license `bench`:
/// the same answer as `bench-bare`, one checkout per call, and withheld
/// where `bench` has no free seat.
#[test]
fn bench_leased() {
    let host = Host::builder()
        .license("bench", Terms::new(Seats::Counted(1)))
        .build()
        .expect("host starts");
    host.load_plugin(PluginSpec::file("leased", guests::BENCH_LEASED).requires("bench"))
        .expect("loads");
    host.load_plugin(PluginSpec::file("bare", guests::BENCH_BARE))
        .expect("loads");
    for _ in 0..3 {
        assert_eq!(
            host.invoke("leased", b"work:3 abc").expect("licensed"),
            host.invoke("bare", b"work:3 abc").expect("bare"),
            "same work"
        );
    }
    let c = host.licenses().describe("bench").expect("bench").counters;
    assert_eq!((c.checkouts, c.releases, c.in_use), (3, 3, 0), "{c:?}");
    host.revoke_license("bench").expect("revokes");
    let err = host.invoke("leased", b"x").expect_err("refused");
    assert!(err.is_unlicensed(), "{err}");
}

/// The `wasi:http` twin of `bench-bare`, for `wasmtime serve` in bench
/// case G' (which checks that it answers what the plugins answer): a
/// `wasi:http` proxy, which tollgate refuses to load as a plugin, naming
/// the `wasi:http` import it does not provide.
#[test]
fn bench_http() {
    let host = host_with(Seats::Counted(1));
    let report = host
        .inspect(&std::fs::read(guests::BENCH_HTTP).expect("guest"))
        .expect("inspects");
    assert!(
        report
            .exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2.")),
        "{report:?}"
    );
    assert!(report.refused.is_some(), "{report:?}");
    let err = host
        .load_plugin(PluginSpec::file("http", guests::BENCH_HTTP))
        .expect_err("not a service-offer plugin");
    let text = err.to_string();
    assert!(
        text.contains("imports something this host does not provide")
            && text.contains("wasi:http/types"),
        "{err}"
    );
}

#[test]
fn bench_bare() {
    let host = host_with(Seats::Counted(1));
    host.load_plugin(PluginSpec::file("bare", guests::BENCH_BARE))
        .expect("loads without the licensing import");
    assert_eq!(
        text(host.invoke("bare", b"").expect("no requirement, delivered")),
        "cbf29ce484222325"
    );
    // Required to hold a license it cannot even ask for: always withheld.
    load(&host, "bare-required", guests::BENCH_BARE);
    assert!(
        host.invoke("bare-required", b"x")
            .expect_err("withheld")
            .is_unlicensed()
    );
    assert_eq!(seat(&host).counters.withheld, 1);
    assert_balanced(&host);
}

#[test]
fn recurser() {
    let host = host_with(Seats::Counted(1));
    load(&host, "recurser", guests::RECURSER);
    match host.invoke("recurser", b"").expect_err("stack overflow") {
        InvokeError::Trapped { plugin, reason } => {
            assert_eq!(plugin, "recurser");
            // Rust keeps its frames on a shadow stack in linear memory, which
            // runs out first; wasm's own call stack would trap the same way.
            assert!(
                reason.contains("out of bounds memory access")
                    || reason.contains("call stack exhausted"),
                "{reason}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(seat(&host).counters.reclaims.get(ReclaimReason::Trapped), 1);
    load(&host, "hello", guests::HELLO_LICENSED);
    assert!(
        host.invoke("hello", b"next").is_ok(),
        "the host serves the next call"
    );
    assert_balanced(&host);
}

#[test]
fn flooder() {
    let host = host_with(Seats::Counted(1));
    let limits = Limits {
        max_output_bytes: 1 << 20,
        ..Limits::default()
    };
    load_with(&host, "flooder", guests::FLOODER, limits);
    assert_eq!(
        host.invoke("flooder", b"2").expect_err("too large"),
        InvokeError::OutputTooLarge {
            plugin: "flooder".into(),
            size: 2 << 20,
            limit: 1 << 20
        }
    );
    assert_eq!(
        host.invoke("flooder", b"0").expect("empty output is fine"),
        Vec::<u8>::new()
    );
    // Past its memory limit it cannot even build the output.
    let err = host.invoke("flooder", b"100").expect_err("memory");
    assert!(matches!(err, InvokeError::MemoryLimit { .. }), "{err}");
    assert_balanced(&host);
}

#[test]
fn churner() {
    let host = host_with(Seats::Counted(1));
    let limits = Limits {
        time: Duration::from_millis(200),
        ..Limits::default()
    };
    load_with(&host, "churner", guests::CHURNER, limits);
    let err = host.invoke("churner", b"").expect_err("stopped");
    assert!(matches!(err, InvokeError::TimedOut { .. }), "{err}");
    let c = seat(&host).counters;
    assert!(c.checkouts > 100, "it churned: {c:?}");
    assert!(c.reclaims.get(ReclaimReason::TimedOut) <= 1);
    assert_eq!(c.peak, 1);
    assert_balanced(&host);
}

#[test]
fn double_release() {
    let host = host_with(Seats::Counted(1));
    load(&host, "double", guests::DOUBLE_RELEASE);
    let err = host
        .invoke("double", b"")
        .expect_err("the stale handle traps");
    assert!(matches!(err, InvokeError::Trapped { .. }), "{err}");
    let c = seat(&host).counters;
    assert_eq!(
        (c.checkouts, c.releases, c.reclaims.total()),
        (1, 1, 0),
        "released once, nothing else"
    );
    load(&host, "hello", guests::HELLO_LICENSED);
    assert!(host.invoke("hello", b"next").is_ok());
    assert_balanced(&host);
}

/// A rogue guest that tries every way but a delivered result to get its
/// bytes to the caller: none of its text reaches the caller of a withheld
/// call, trap texts never carry its function names, and its error strings
/// are bounded like its output.
#[test]
fn blabber() {
    const SECRET: &str = "SECRET-7f3a9c";
    const FUNCTION: &str = "secret_function_7f3a9c";
    let host = host_with(Seats::Counted(1));
    let limits = Limits {
        max_output_bytes: 1024,
        ..Limits::default()
    };
    load_with(&host, "blabber", guests::BLABBER, limits);
    let shown = |e: &InvokeError| format!("{e} | {e:?} | {}", e.public_message());
    // Withheld (no seat taken): whatever it returns or prints, the caller
    // learns only that the call was unlicensed.
    for action in ["print", "err:100", "err:5000"] {
        let err = host
            .invoke("blabber", action.as_bytes())
            .expect_err("withheld");
        assert!(err.is_unlicensed(), "{action}: {err}");
        assert!(!shown(&err).contains(SECRET), "{action}: {}", shown(&err));
    }
    // Traps, withheld or licensed: the kind of trap, never where.
    for action in ["trap", "licensed trap", "panic", "licensed panic"] {
        let err = host
            .invoke("blabber", action.as_bytes())
            .expect_err("traps");
        assert_eq!(err.code(), "plugin-trap", "{action}: {err}");
        let text = shown(&err);
        assert!(!text.contains(FUNCTION), "{action}: {text}");
        assert!(!text.contains(SECRET), "{action}: {text}");
        assert!(!text.contains("backtrace"), "{action}: {text}");
    }
    // Licensed: its error string is its answer, delivered within the
    // output limit and refused over it, like output.
    assert_eq!(
        host.invoke("blabber", b"licensed err:20")
            .expect_err("its own error"),
        InvokeError::Failed {
            plugin: "blabber".into(),
            message: "SECRET-7f3a9c-blabbe".into()
        }
    );
    assert_eq!(
        host.invoke("blabber", b"licensed err:5000")
            .expect_err("over the output limit"),
        InvokeError::OutputTooLarge {
            plugin: "blabber".into(),
            size: 5000,
            limit: 1024
        }
    );
    assert_eq!(
        text(
            host.invoke("blabber", b"licensed print")
                .expect("delivered")
        ),
        "SECRET-7f3a9c-blabber"
    );
    assert_balanced(&host);
}

/// Runs `clients` threads each calling the early-release guest `calls`
/// times on a host with `seats` seats (waiting up to 10 s for one), and
/// returns the delivered calls' spans, from right after `acquire` returned
/// to the end of the work, in nanoseconds.
fn early_release_spans(seats: u32, clients: usize, calls: usize) -> (Host, Vec<(u128, u128)>) {
    let host = host_with(Seats::Counted(seats));
    let limits = Limits {
        wait_for_seat: Some(Duration::from_secs(10)),
        time: Duration::from_secs(20),
        ..Limits::default()
    };
    load_with(&host, "early", guests::EARLY_RELEASE, limits);
    let spans = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    (0..calls)
                        .filter_map(|_| host.invoke("early", b"4").ok())
                        .map(|out| {
                            let out = text(out);
                            let (a, b) = out.split_once(' ').expect("START END");
                            (a.parse().expect("start"), b.parse().expect("end"))
                        })
                        .collect::<Vec<(u128, u128)>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("client"))
            .collect()
    });
    (host, spans)
}

/// The most spans that overlap at one instant.
fn max_overlap(spans: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = spans.iter().flat_map(|&(a, b)| [(a, 1), (b, -1)]).collect();
    // At equal times an end comes before a start: touching is not overlapping.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// A plugin that sends its license back at once and then works still holds
/// its seat until the call ends: with one seat, the delivered calls never
/// overlap; with three, up to three do, never four.
#[test]
fn early_release() {
    let (host, spans) = early_release_spans(1, 8, 4);
    assert!(spans.len() >= 20, "only {} calls delivered", spans.len());
    assert_eq!(
        max_overlap(&spans),
        1,
        "licensed calls overlapped on one seat"
    );
    let c = seat(&host).counters;
    assert_eq!(c.releases, c.checkouts, "every lease was sent back early");
    assert_eq!(c.returns.get(ReclaimReason::InvocationEnded), c.checkouts);
    assert_eq!(c.peak, 1);
    assert_balanced(&host);

    let (host, spans) = early_release_spans(3, 8, 4);
    assert!(spans.len() >= 20, "only {} calls delivered", spans.len());
    let most = max_overlap(&spans);
    assert!(
        (2..=3).contains(&most),
        "with three seats up to three calls overlap, never four: {most}"
    );
    assert_balanced(&host);
}
