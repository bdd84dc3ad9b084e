//! Runs the example plugins written in Python (componentize-py) and
//! JavaScript (componentize-js) against the same `wit/` as the Rust guests,
//! unchanged, and asserts their exact outcome and that every seat came back.
//!
//! The components are built by `guest-examples/build-other-languages.sh` into
//! `<target>/tmp/other-languages` (kept while up to date). Its toolchains come
//! from `guest-examples/install-other-languages.sh`, so these tests are
//! ignored by a plain `cargo test` and run with `-- --ignored` (as `.ci/run`
//! does); run so, a missing toolchain fails them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tollgate::license::Counters;
use tollgate::{Denial, Host, InvokeError, PluginSpec, Seats, Terms};
use tollgate_tests::{assert_balanced, text};

const SEAT: &str = "seat";
/// Sorts after `seat`, so the plugin holds a seat when this one is refused.
const SPARE: &str = "spare";

/// Says `line` on stderr even while the test harness captures output.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Builds `language`'s component with the build script and returns its path;
/// a missing toolchain fails the test, naming what to install.
fn build(language: &str, file: &str) -> PathBuf {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-examples/build-other-languages.sh");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("other-languages");
    let started = Instant::now();
    let run = Command::new("bash")
        .arg(&script)
        .arg(&out_dir)
        .arg(language)
        .output()
        .unwrap_or_else(|e| panic!("could not run bash {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    match run.status.code() {
        Some(0) => {
            say(&format!(
                "other_languages::{language}: {} ({:.1?})",
                stdout.trim(),
                started.elapsed()
            ));
            out_dir.join(file)
        }
        Some(3) => panic!(
            "the {language} toolchain is missing ({}); run guest-examples/install-other-languages.sh {language}",
            stderr.trim()
        ),
        _ => panic!(
            "building the {language} plugin with {} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            script.display(),
            run.status
        ),
    }
}

fn counters(host: &Host, id: &str) -> Counters {
    host.licenses()
        .describe(id)
        .expect("license installed")
        .counters
}

/// The Rust `hello-licensed` contract, with `greeting` naming the language.
fn hello(language: &str, file: &str, greeting: &str) {
    let path = build(language, file);
    let name = format!("hello-{language}");
    let host = Host::builder()
        .license(SEAT, Terms::new(Seats::Counted(1)))
        .build()
        .expect("host starts");

    let started = Instant::now();
    host.load_plugin(PluginSpec::file(&name, &path).requires(SEAT).may_use(SPARE))
        .unwrap_or_else(|e| panic!("{} loads: {e}", path.display()));
    say(&format!(
        "other_languages::{language}: compiled {} ({} bytes) in {:.1?}",
        path.display(),
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        started.elapsed()
    ));

    // `spare` is not installed yet, so `license-ids` is just `seat`.
    let out = host
        .invoke(&name, b"world")
        .expect("licensed call succeeds");
    assert_eq!(
        text(out),
        format!("hello from {greeting}, world! (licensed by seat)")
    );
    let c = counters(&host, SEAT);
    assert_eq!(
        (c.checkouts, c.releases, c.reclaims.total(), c.peak),
        (1, 1, 0, 1),
        "released explicitly"
    );
    assert_balanced(&host);

    // A fresh instance per call; the input is trimmed.
    let out = host
        .invoke(&name, b"  tollgate \n")
        .expect("second call succeeds");
    assert_eq!(
        text(out),
        format!("hello from {greeting}, tollgate! (licensed by seat)")
    );

    // With `spare` installed but out of seats, the plugin reports the refusal
    // and still sends back the seat it already held.
    host.install_license(SPARE, Terms::new(Seats::Counted(0)))
        .expect("installs");
    let err = host.invoke(&name, b"world").expect_err("spare is refused");
    assert_eq!(
        err,
        InvokeError::Failed {
            plugin: name.clone(),
            message: "license spare was refused: exhausted".into()
        }
    );
    let c = counters(&host, SEAT);
    assert_eq!((c.checkouts, c.releases, c.reclaims.total()), (3, 3, 0));
    assert_eq!(counters(&host, SPARE).denials.get(Denial::Exhausted), 1);
    assert_balanced(&host);
}

#[test]
#[ignore = "needs the Python and JS toolchains: run guest-examples/install-other-languages.sh, then cargo test --workspace -- --ignored"]
fn python() {
    hello("python", "hello_python.wasm", "python");
}

#[test]
#[ignore = "needs the Python and JS toolchains: run guest-examples/install-other-languages.sh, then cargo test --workspace -- --ignored"]
fn js() {
    hello("js", "hello_js.wasm", "js");
}
