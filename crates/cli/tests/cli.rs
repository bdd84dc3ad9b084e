//! The `tollgate` binary end to end: outputs, exit codes, summaries, errors.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn guest(name: &str) -> PathBuf {
    PathBuf::from(test_guests::path(name))
}

fn tollgate(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TOLLGATE_LOG")
        .output()
        .expect("tollgate runs")
}

fn run_guest(name: &str, extra: &[&str]) -> Output {
    let path = guest(name);
    let mut args = vec!["run", path.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    tollgate(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A new temporary directory, removed when dropped.
fn scratch() -> TempDir {
    TempDir::new().expect("temporary directory")
}

fn summary(path: &PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("summary written"))
        .expect("summary is JSON")
}

/// The summary's invariants: no seat in use, every lease ended once
/// (`checkouts == releases + reclaims`), every seat returned once
/// (`checkouts - retakes == returns`).
fn assert_seats_back(s: &Value) {
    let sum = |v: &Value| -> u64 {
        v.as_object()
            .expect("counts by reason")
            .values()
            .map(|v| v.as_u64().unwrap_or(0))
            .sum()
    };
    for (id, l) in s["licenses"].as_object().expect("licenses") {
        let n = |key: &str| l[key].as_u64().unwrap_or(0);
        assert_eq!(l["in_use"], 0, "{id}: {l}");
        assert_eq!(
            n("checkouts"),
            n("releases") + sum(&l["reclaims"]),
            "{id}: {l}"
        );
        assert_eq!(
            n("checkouts") - n("retakes"),
            sum(&l["returns"]),
            "{id}: {l}"
        );
    }
}

#[test]
fn hello_prints_output_and_exits_zero() {
    let tmp = scratch();
    let input = tmp.path().join("name.txt");
    std::fs::write(&input, "cli").expect("write input");
    let sum = tmp.path().join("hello.json");
    let o = run_guest(
        "hello-licensed",
        &[
            "--license",
            "demo=1",
            "--input",
            input.to_str().expect("utf-8"),
            "--summary",
            sum.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello, cli! (licensed by demo)");
    let s = summary(&sum);
    assert_eq!(
        (
            s["invocations"].as_u64(),
            s["ok"].as_u64(),
            s["unlicensed"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(1), Some(1), Some(0), Some(0))
    );
    let demo = &s["licenses"]["demo"];
    assert_eq!(
        (
            demo["seats"].as_u64(),
            demo["checkouts"].as_u64(),
            demo["releases"].as_u64(),
            demo["peak"].as_u64()
        ),
        (Some(1), Some(1), Some(1), Some(1))
    );
    assert_eq!(demo["reclaims"]["trapped"], 0);
    assert_eq!(demo["denials"]["exhausted"], 0);
    assert_seats_back(&s);
}

#[test]
fn stdin_input_and_repeat_with_concurrency() {
    let tmp = scratch();
    let sum = tmp.path().join("repeat.json");
    let mut child = Command::new(BIN)
        .args([
            "run",
            guest("drop-licensed").to_str().expect("utf-8"),
            "--license",
            "d=1",
            "--input",
            "-",
            "--repeat",
            "300",
            "--concurrency",
            "2",
            "--wait",
            "5s",
            "--summary",
            sum.to_str().expect("utf-8"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a b c")
        .expect("write stdin");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "c b a");
    assert!(
        stderr(&o).contains("300 calls: 300 ok, 0 unlicensed, 0 failed"),
        "{}",
        stderr(&o)
    );
    let s = summary(&sum);
    assert_eq!(s["licenses"]["d"]["checkouts"], 300);
    assert_eq!(s["licenses"]["d"]["peak"], 1);
    assert_seats_back(&s);
}

/// Where the platform will not reserve the pool's address space (here an
/// address-space limit of 16 GiB, far below the pool for 64 calls), the
/// host falls back to mapping memory per call, says why, and still runs.
#[test]
fn without_room_for_the_pool_run_falls_back_to_on_demand_and_says_why() {
    let tmp = scratch();
    let input = tmp.path().join("input");
    std::fs::write(&input, "world").expect("write input");
    let o = Command::new("sh")
        .args(["-c", "ulimit -v 16777216 && exec \"$0\" \"$@\"", BIN, "run"])
        .arg(guest("hello-licensed"))
        .args(["--license", "demo=1", "--concurrency", "64", "--input"])
        .arg(&input)
        .output()
        .expect("run under sh");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello, world! (licensed by demo)");
    let err = stderr(&o);
    assert!(
        err.contains("the pooling allocator could not reserve its slots")
            && err.contains("on demand instead")
            && err.contains("ulimit -v"),
        "{err}"
    );
    // With room for it, the same run says nothing of the kind.
    let o = run_guest(
        "hello-licensed",
        &[
            "--license",
            "demo=1",
            "--concurrency",
            "64",
            "--input",
            input.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("pooling allocator"), "{}", stderr(&o));
}

#[test]
fn every_guest_gets_its_exit_code() {
    let tmp = scratch();
    let cases: &[(&str, &[&str], i32, &str)] = &[
        ("ids", &[], 0, "seat: seats=2 in-use=0->1 expires=never"),
        (
            "no-license",
            &[],
            3,
            "withheld as unlicensed: it did not hold seat (never acquired)",
        ),
        ("leaker", &[], 0, "kept 1 lease(s)"),
        (
            "trapper",
            &[],
            4,
            "plugin trapper trapped: wasm trap: wasm `unreachable` instruction executed",
        ),
        (
            "spinner",
            &["--timeout", "100ms"],
            4,
            "plugin spinner ran past its time limit of 100ms",
        ),
        (
            "hog",
            &["--memory-mib", "16"],
            4,
            "plugin hog tried to grow its memory past its limit of 16777216 bytes",
        ),
        (
            "greedy",
            &[],
            0,
            "seat: took 2, then LicenseError::Exhausted",
        ),
        ("wrong-id", &[], 3, "did not hold seat (never acquired)"),
    ];
    for (name, extra, code, needle) in cases {
        let sum = tmp.path().join(format!("{name}.json"));
        let mut args = vec![
            "--license",
            "seat=2",
            "--summary",
            sum.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let o = run_guest(name, &args);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(*code), "{name}: {all}");
        assert!(
            all.contains(needle),
            "{name}: expected {needle:?} in {all:?}"
        );
        assert_seats_back(&summary(&sum));
    }
}

#[test]
fn denied_license_exits_three() {
    // A license with zero seats: the plugin asks, the host refuses.
    let o = run_guest("hello-licensed", &["--license", "none=0"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("its request was refused: exhausted"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_input_exits_two_with_a_clear_error() {
    let tmp = scratch();
    let text_file = tmp.path().join("not-wasm.wasm");
    std::fs::write(&text_file, "hello, I am text").expect("write");
    let core = tmp.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").expect("write");
    let hello = guest("hello-licensed");
    let hello = hello.to_str().expect("utf-8");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                text_file.to_str().expect("utf-8"),
                "--license",
                "a=1",
            ],
            "not a valid WebAssembly component",
        ),
        (
            vec!["run", core.to_str().expect("utf-8"), "--license", "a=1"],
            "core WebAssembly module, not a component",
        ),
        (
            vec!["run", "/no/such/file.wasm", "--license", "a=1"],
            "cannot read /no/such/file.wasm",
        ),
        (vec!["run", hello, "--license", "a"], "is not ID=SEATS"),
        (
            vec!["run", hello, "--license", "a=-1"],
            "is not a whole number",
        ),
        (
            vec!["run", hello, "--license", "bad id=1"],
            "invalid license id",
        ),
        (
            vec!["run", hello, "--license", "a=1", "--requires", "b"],
            "requires license \"b\" but none is installed",
        ),
        (
            vec!["run", hello, "--license", "a=1", "--license", "a=2"],
            "--license a is given twice",
        ),
        (
            vec![
                "run",
                hello,
                "--license",
                "a=1",
                "--input",
                "/no/such/input",
            ],
            "cannot read input file",
        ),
        (vec!["run", hello, "--repeat", "0"], "--repeat"),
    ];
    for (args, needle) in cases {
        let o = tollgate(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{args:?}: expected {needle:?} in {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn inspect_shows_the_contract_and_refuses_other_versions() {
    let o = tollgate(&["inspect", guest("hello-licensed").to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "sha256:",
        "built for: tollgate:plugin@0.1.0",
        "tollgate:plugin/licensing@0.1.0",
        "tollgate:plugin/service@0.1.0",
        "runs on this host: yes",
    ] {
        assert!(out.contains(needle), "{needle} in {out}");
    }
    let o = tollgate(&["inspect", guest("future-wit").to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("runs on this host: no: plugin inspected: built for tollgate:plugin@0.2.0, but this host provides tollgate:plugin@0.1.0"), "{}", stdout(&o));
    let o = run_guest("future-wit", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("built for tollgate:plugin@0.2.0"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_explains_exit_codes() {
    let o = tollgate(&["run", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("Exit codes: 0 ok; 2 bad usage"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn demo_shows_the_whole_story() {
    let o = tollgate(&["demo"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "host takes a seat of demo-seat and hands lease",
        "hello-licensed sends lease",
        "(the seat stays with the call until it ends)",
        "the call ends: its seat of demo-seat goes back to the pool (invocation-ended)",
        "result delivered: \"hello, operator! (licensed by demo-seat)\"",
        "host refused hello-licensed a seat of demo-seat (exhausted, 1x in that call)",
        "withheld as unlicensed: it did not hold demo-seat (never acquired)",
        "checkouts == releases + reclaims: true; seats taken == seats returned: true",
        "in use 0",
    ] {
        assert!(out.contains(needle), "expected {needle:?} in:\n{out}");
    }
}

/// `tollgate run` at its default log level prints none of a withheld call's
/// bytes (stdout, stderr, output, error string) and no trap text with the
/// plugin's function names; the plugin's stdout/stderr is at debug level,
/// tagged with the invocation id.
#[test]
fn run_leaks_nothing_of_a_withheld_call() {
    const SECRET: &str = "SECRET-7f3a9c";
    const FUNCTION: &str = "secret_function_7f3a9c";
    let tmp = scratch();
    let blab = |action: &str, log: Option<&str>| {
        let input = tmp
            .path()
            .join(format!("blab-{}.txt", action.replace([' ', ':'], "-")));
        std::fs::write(&input, action).expect("write input");
        let path = guest("blabber");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "run",
            path.to_str().expect("utf-8 path"),
            "--license",
            "demo=1",
            "--input",
            input.to_str().expect("utf-8"),
        ]);
        match log {
            Some(filter) => cmd.env("TOLLGATE_LOG", filter),
            None => cmd.env_remove("TOLLGATE_LOG"),
        };
        cmd.output().expect("tollgate runs")
    };
    for (action, exit) in [
        ("print", 3),
        ("err:100", 3),
        ("trap", 4),
        ("panic", 4),
        ("licensed trap", 4),
    ] {
        let o = blab(action, None);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(exit), "{action}: {all}");
        assert!(!all.contains(SECRET), "{action}: {all}");
        assert!(!all.contains(FUNCTION), "{action}: {all}");
    }
    // A delivered result is printed, and the plugin's stdout is still there
    // for whoever asks for debug logs, tagged with the call.
    let o = blab("licensed print", Some("tollgate::plugin=debug"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "SECRET-7f3a9c-blabber");
    let log = stderr(&o);
    assert!(
        log.lines().any(|l| l.contains("DEBUG")
            && l.contains("invocation=")
            && l.contains("stdout says SECRET-7f3a9c")),
        "{log}"
    );
    // Where a call trapped stays available to the operator, at debug level
    // under the invocation id.
    let o = blab("trap", Some("warn,tollgate::call=debug"));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let log = stderr(&o);
    // (The message is the error with its backtrace, over several lines;
    // the fields follow it.)
    assert!(log.contains("DEBUG tollgate::call: stopped:"), "{log}");
    assert!(log.contains("plugin=blabber invocation="), "{log}");
    assert!(log.contains(FUNCTION), "{log}");
}
