//! `tollgate new` → build → `tollgate run`, for each language, following the
//! generated README's commands; the Rust project's own `cargo test` runs too.
//! Rust always runs; Python and JavaScript need their toolchains (from
//! `guest-examples/install-other-languages.sh`), so they are ignored by a
//! plain `cargo test` and run with `-- --ignored` (as `.ci/run` does); run
//! so, a missing toolchain fails them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn tollgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run tollgate")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `echo world | tollgate run FILE --license demo=1 --input -`, as the README says.
fn run_licensed(wasm: &Path) -> Output {
    let mut child = Command::new(BIN)
        .arg("run")
        .arg(wasm)
        .args(["--license", "demo=1", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"world\n")
        .expect("write input");
    child.wait_with_output().expect("tollgate run")
}

/// The build succeeded and the project's component, run licensed, greets.
fn assert_greets(built: &Output, dir: &Path, name: &str) {
    assert!(built.status.success(), "{}", out(built));
    let o = run_licensed(&dir.join(format!("{}.wasm", name.replace('-', "_"))));
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("hello, world! (from {name}, licensed by demo)")
    );
}

/// A new temporary directory, removed when dropped.
fn scratch() -> TempDir {
    TempDir::new().expect("temporary directory")
}

/// `tollgate new NAME --lang LANG EXTRA…` into a new temporary directory:
/// the directory (removed when dropped) and the project in it.
fn new_project(name: &str, lang: &str, extra: &[&str]) -> (TempDir, PathBuf) {
    let tmp = scratch();
    let dir = tmp.path().join(name);
    let mut args = vec![
        "new",
        name,
        "--lang",
        lang,
        "--dir",
        dir.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let o = tollgate(&args);
    assert!(o.status.success(), "{}", out(&o));
    assert!(dir.join("README.md").is_file());
    (tmp, dir)
}

/// Cargo in the scaffolded project `dir`, building into `target` and free of
/// the flags and target of the build running this test. Its debug builds
/// carry no debug info: the host and wasmtime take a fraction of the disk
/// and link time, and the tests run the same.
fn cargo(dir: &Path, target: &Path) -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_PROFILE_DEV_DEBUG", "false");
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cargo.env_remove(var);
    }
    cargo
}

/// Passed and failed counts of each `test result:` line `cargo test` printed;
/// `None` for a line that does not say `ok`.
fn test_results(stdout: &str) -> Vec<Option<(u32, u32)>> {
    let count = |part: Option<&str>, what: &str| {
        part?.trim().strip_suffix(what)?.trim().parse::<u32>().ok()
    };
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("test result: "))
        .map(|result| {
            let mut parts = result.strip_prefix("ok.")?.split(';');
            Some((
                count(parts.next(), "passed")?,
                count(parts.next(), "failed")?,
            ))
        })
        .collect()
}

/// Fails the test when `tool` is missing, naming what to run.
fn require(tool: &Path, language: &str) {
    assert!(
        tool.exists(),
        "{} is missing: run guest-examples/install-other-languages.sh {language}",
        tool.display()
    );
}

#[test]
fn rust_project_passes_its_own_test_and_runs_licensed() {
    let host_crate = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tollgate")
        .canonicalize()
        .expect("host crate");
    let (_tmp, dir) = new_project(
        "hello-new-rust",
        "rust",
        &["--host-crate", host_crate.to_str().expect("utf-8 path")],
    );
    // One target dir for every run, so the host and wasmtime build once.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../scaffolded");

    // The host dev-dependency brings the runtime, not the test guests.
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .exec()
        .expect("cargo metadata of the scaffolded project");
    let packages: Vec<&str> = metadata.packages.iter().map(|p| p.name.as_str()).collect();
    assert!(packages.contains(&"tollgate"), "{packages:?}");
    assert!(packages.contains(&"tollgate-guest"), "{packages:?}");
    assert!(!packages.contains(&"test-guests"), "{packages:?}");

    // The project's own `cargo test` (tests/plugin.rs), as its README says.
    let tested = cargo(&dir, &target)
        .arg("test")
        .output()
        .expect("cargo test");
    assert!(tested.status.success(), "{}", out(&tested));
    let results = test_results(&String::from_utf8_lossy(&tested.stdout));
    assert!(
        !results.is_empty() && results.iter().all(Option::is_some),
        "{results:?}\n{}",
        out(&tested)
    );
    let (passed, failed) = results
        .iter()
        .flatten()
        .fold((0, 0), |(p, f), (passed, failed)| (p + passed, f + failed));
    let test = std::fs::read_to_string(dir.join("tests/plugin.rs")).expect("tests/plugin.rs");
    let declared = test.matches("#[test]").count();
    assert!(declared >= 1, "{test}");
    assert_eq!(
        (passed as usize, failed),
        (declared, 0),
        "every test of tests/plugin.rs passed:\n{}",
        out(&tested)
    );

    // The README's build command; the test above built the same component.
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("readme");
    assert!(
        readme.contains("cargo build --release --target wasm32-wasip2"),
        "{readme}"
    );
    let built = cargo(&dir, &target)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .output()
        .expect("cargo build");
    assert!(built.status.success(), "{}", out(&built));
    let wasm = target.join("wasm32-wasip2/release/hello_new_rust.wasm");

    let o = run_licensed(&wasm);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "hello, world! (from hello-new-rust, licensed by demo)"
    );
    // Without the license the seat is refused and no result comes back.
    let o = tollgate(&["run", wasm.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(4), "{}", out(&o));
    assert!(
        out(&o).contains("license demo was refused: no such license is installed"),
        "{}",
        out(&o)
    );
    // The SDK recorded this host's WIT version in the component.
    let o = tollgate(&["inspect", wasm.to_str().expect("utf-8")]);
    assert!(
        out(&o).contains("SDK-recorded WIT version: 0.1.0"),
        "{}",
        out(&o)
    );
}

#[test]
fn new_refuses_bad_names_and_non_empty_dirs() {
    for bad in ["../escape", "Hello", "a/b", ""] {
        let o = tollgate(&["new", bad, "--dir", "/nonexistent/never"]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", out(&o));
        assert!(out(&o).contains("invalid plugin name"), "{}", out(&o));
    }
    let taken = scratch();
    let dir = taken.path();
    std::fs::write(dir.join("keep.txt"), "mine").expect("file");
    let o = tollgate(&["new", "taken", "--dir", dir.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        out(&o).contains("already exists and is not empty"),
        "{}",
        out(&o)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).expect("kept"),
        "mine"
    );
    let tmp = scratch();
    let nosdk = tmp.path().join("nosdk");
    let o = tollgate(&[
        "new",
        "nosdk",
        "--dir",
        nosdk.to_str().expect("utf-8"),
        "--sdk",
        "/nonexistent/sdk",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("pass --sdk PATH"), "{}", out(&o));
    assert!(!nosdk.exists(), "nothing written on a refusal");
    let nohost = tmp.path().join("nohost");
    let o = tollgate(&[
        "new",
        "nohost",
        "--dir",
        nohost.to_str().expect("utf-8"),
        "--host-crate",
        "/nonexistent/host",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("pass --host-crate PATH"), "{}", out(&o));
    assert!(!nohost.exists(), "nothing written on a refusal");
}

#[test]
#[ignore = "needs the Python and JS toolchains: run guest-examples/install-other-languages.sh, then cargo test --workspace -- --ignored"]
fn python_project_builds_and_runs_licensed() {
    let examples =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-examples/python/hello-python");
    let venv_bin = examples.join(".venv/bin");
    require(&venv_bin.join("componentize-py"), "python");
    let (_tmp, dir) = new_project("hello-new-python", "python", &[]);
    // The README's command; the installed componentize-py is found on PATH.
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let built = Command::new("bash")
        .arg(dir.join("build.sh"))
        .env("PATH", path)
        .output()
        .expect("build.sh");
    assert_greets(&built, &dir, "hello-new-python");
}

#[test]
#[ignore = "needs the Python and JS toolchains: run guest-examples/install-other-languages.sh, then cargo test --workspace -- --ignored"]
fn js_project_builds_and_runs_licensed() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-examples/js/hello-js");
    let modules = examples.join("node_modules");
    require(&modules.join(".bin/componentize-js"), "js");
    let (_tmp, dir) = new_project("hello-new-js", "js", &[]);
    // `npm install` would fetch the same pinned componentize-js; reuse it.
    std::os::unix::fs::symlink(&modules, dir.join("node_modules")).expect("link node_modules");
    let built = Command::new("npm")
        .args(["run", "build"])
        .current_dir(&dir)
        .output()
        .expect("npm run build");
    assert_greets(&built, &dir, "hello-new-js");
}
