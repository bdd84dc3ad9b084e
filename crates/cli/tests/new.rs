//! `tollgate new` → build → `tollgate run`, for each language, following the
//! generated README's commands. Rust always runs; Python and JavaScript need
//! their toolchains (from `guest-examples/install-other-languages.sh`), so
//! they are ignored by a plain `cargo test` and run with `-- --ignored` (as
//! `.ci/run` does); run so, a missing toolchain fails them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("new-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

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

fn new_project(name: &str, lang: &str) -> PathBuf {
    let dir = scratch(name);
    let o = tollgate(&[
        "new",
        name,
        "--lang",
        lang,
        "--dir",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(dir.join("README.md").is_file());
    dir
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
fn rust_project_builds_and_runs_licensed() {
    let dir = new_project("hello-new-rust", "rust");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("readme");
    assert!(
        readme.contains("cargo build --release --target wasm32-wasip2"),
        "{readme}"
    );
    // Its own `cargo test` (tests/plugin.rs) runs it under this host crate;
    // the calls it makes are run below through greets_and_gives_its_seat_back.
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
    let host_crate = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tollgate")
        .canonicalize()
        .expect("host dir");
    assert!(
        manifest.contains(&format!(
            "tollgate = {{ path = {:?} }}",
            host_crate.display().to_string()
        )),
        "{manifest}"
    );
    let test = std::fs::read_to_string(dir.join("tests/plugin.rs")).expect("tests/plugin.rs");
    assert!(
        test.contains(".license(\"demo\", 1)") && test.contains("assert_balanced()"),
        "{test}"
    );
    // Share the guest build's target dir so the SDK's dependencies are built once.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../guests");
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .current_dir(&dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target);
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        build.env_remove(var);
    }
    let built = build.output().expect("cargo build");
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
    // The plugin author's test from the README's "Test your plugin" section.
    greets_and_gives_its_seat_back(&wasm).expect("the README's test passes");
}

/// The README's example test, run on the scaffolded plugin.
fn greets_and_gives_its_seat_back(wasm: &Path) -> Result<(), tollgate::testing::TestError> {
    use tollgate::testing::TestHost;
    let host = TestHost::builder()
        .license("demo", 1)
        .plugin("hello", wasm, &["demo"])
        .build()?;
    assert_eq!(
        host.call_text("hello", "world")?,
        "hello, world! (from hello-new-rust, licensed by demo)"
    );
    let seats = host.counters("demo");
    assert_eq!((seats.checkouts, seats.releases, seats.in_use), (1, 1, 0));
    host.assert_balanced();
    // No seat to be had: the seat is refused and the result withheld.
    let busy = TestHost::builder()
        .license("demo", 0)
        .plugin("hello", wasm, &["demo"])
        .build()?;
    assert!(busy.call("hello", b"world").is_err());
    let seats = busy.counters("demo");
    assert_eq!(
        (seats.checkouts, seats.withheld, seats.denials.total()),
        (0, 1, 1)
    );
    busy.assert_balanced();
    Ok(())
}

#[test]
fn new_refuses_bad_names_and_non_empty_dirs() {
    for bad in ["../escape", "Hello", "a/b", ""] {
        let o = tollgate(&["new", bad, "--dir", "/nonexistent/never"]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", out(&o));
        assert!(out(&o).contains("invalid plugin name"), "{}", out(&o));
    }
    let dir = scratch("taken");
    std::fs::create_dir_all(&dir).expect("dir");
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
    let o = tollgate(&[
        "new",
        "nosdk",
        "--dir",
        scratch("nosdk").to_str().expect("utf-8"),
        "--sdk",
        "/nonexistent/sdk",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("pass --sdk PATH"), "{}", out(&o));
    let nohost = scratch("nohost");
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
    let dir = new_project("hello-new-python", "python");
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
    let dir = new_project("hello-new-js", "js");
    // `npm install` would fetch the same pinned componentize-js; reuse it.
    std::os::unix::fs::symlink(&modules, dir.join("node_modules")).expect("link node_modules");
    let built = Command::new("npm")
        .args(["run", "build"])
        .current_dir(&dir)
        .output()
        .expect("npm run build");
    assert_greets(&built, &dir, "hello-new-js");
}
