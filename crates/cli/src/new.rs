//! `tollgate new`: scaffolds a plugin project (Rust, Python or JavaScript)
//! that builds and runs licensed out of the box.

use super::{Exit, Failure};
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use tollgate::license::{LicenseId, PluginName};

/// The WIT contract, copied into Python and JavaScript projects.
const WIT: &str = include_str!("../../../wit/tollgate.wit");
/// Where the `tollgate-guest` SDK lies in the source tree this binary came from.
const SDK_IN_TREE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../guest-examples/tollgate-guest"
);
/// The tollgate host crate this binary was built from, for the Rust
/// project's `cargo test` (through `tollgate::testing`).
const HOST_IN_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tollgate");
/// The componentize-py release the Python template is tested with.
const COMPONENTIZE_PY: &str = "0.25.1";
/// The componentize-js release the JavaScript template is tested with.
const COMPONENTIZE_JS: &str = "0.23.0";

/// A plugin project's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// Rust on the tollgate-guest SDK, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// Arguments of `tollgate new`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tollgate new hello                      # Rust, in ./hello
  tollgate new hello-py --lang python
  tollgate new hello-js --lang js --dir plugins/hello-js
Each project's README.md gives its build command and the `tollgate run` line.")]
pub(crate) struct NewArgs {
    /// Plugin name: 1-64 of a-z, 0-9, '-', '_', starting with a letter.
    name: String,
    /// Language of the project.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// Directory to create. Default: ./NAME
    #[arg(long)]
    dir: Option<PathBuf>,
    /// License id the plugin asks for and requires.
    #[arg(long, default_value = "demo")]
    license: String,
    /// Path of the tollgate-guest SDK crate (Rust only). Default: the one
    /// in the source tree this tollgate was built from.
    #[arg(long)]
    sdk: Option<PathBuf>,
    /// Path of the tollgate host crate that the Rust project's `cargo test`
    /// runs the plugin under. Default: the one in the source tree this
    /// tollgate was built from; if absent, the project gets no test.
    #[arg(long)]
    host_crate: Option<PathBuf>,
}

/// A plugin name (see [`PluginName`]) that also names the project's
/// package: Cargo refuses a package name starting with a digit.
fn check_name(name: &str) -> anyhow::Result<PluginName> {
    let name: PluginName = name.parse()?;
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        anyhow::bail!(
            "plugin name {:?} starts with a digit, which a package name may not; start it with a letter (e.g. hello-world)",
            name.as_str()
        );
    }
    Ok(name)
}

/// The files of a new project, as (relative path, contents).
fn files(args: &NewArgs, sdk: Option<&Path>, host: Option<&Path>) -> Vec<(&'static str, String)> {
    let name = &args.name;
    let license = &args.license;
    let file = name.replace('-', "_");
    let run = format!("tollgate run {file}.wasm --license {license}=1 --input -");
    match args.lang {
        Lang::Rust => {
            let sdk = sdk.map_or_else(String::new, |p| p.display().to_string());
            let dev_dependency = host.map_or_else(String::new, |p| {
                format!(
                    "\n# `cargo test` runs tests/plugin.rs on this machine: it builds the plugin\n\
                     # and calls it under the tollgate host with a license.\n\
                     [target.'cfg(not(target_family = \"wasm\"))'.dev-dependencies]\n\
                     tollgate = {{ path = {:?} }}\n",
                    p.display().to_string()
                )
            });
            let test_section = if host.is_some() {
                "\n## Test it\n\n```sh\ncargo test\n```\n\n\
                 `tests/plugin.rs` builds the plugin for wasm32-wasip2, loads it into a tollgate \
                 host with one seat of the license (`tollgate::testing`), calls it and checks the \
                 counters. The first run compiles the host (a few minutes).\n"
            } else {
                ""
            };
            let mut files = vec![
                (
                    "Cargo.toml",
                    format!(
                        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
tollgate-guest = {{ path = {sdk:?} }}
{dev_dependency}
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"

# A project of its own, even inside another cargo workspace.
[workspace]
"#
                    ),
                ),
                (
                    "src/lib.rs",
                    format!(
                        r#"//! {name}: a licensed tollgate plugin.

/// Takes a seat of license `{license}` for the call; the seat goes back when
/// `_seat` is dropped at the end of the function.
fn serve(input: &[u8]) -> Result<Vec<u8>, String> {{
    let _seat = tollgate_guest::acquire("{license}").map_err(|e| e.to_string())?;
    let who = String::from_utf8_lossy(input);
    Ok(format!("hello, {{}}! (from {name}, licensed by {license})", who.trim()).into_bytes())
}}

tollgate_guest::service!(serve);
"#
                    ),
                ),
                (
                    "README.md",
                    format!(
                        "# {name}\n\nA licensed tollgate plugin in Rust, on the `tollgate-guest` SDK.\n\n\
                         ```sh\nrustup target add wasm32-wasip2\n\
                         cargo build --release --target wasm32-wasip2\n\
                         cp target/wasm32-wasip2/release/{file}.wasm .\n\
                         echo world | {run}\n```\n\n\
                         It prints `hello, world! (from {name}, licensed by {license})`. Without \
                         `--license {license}=1` the host refuses the seat and the call fails.\n\
                         {test_section}"
                    ),
                ),
                (".gitignore", gitignore(Lang::Rust).to_string()),
            ];
            if host.is_some() {
                files.push(("tests/plugin.rs", rust_test(name, license)));
            }
            files
        }
        Lang::Python => vec![
            (
                "app.py",
                format!(
                    r#""""{name}: a licensed tollgate plugin in Python."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import licensing


class Service(exports.Service):
    def invoke(self, input: bytes) -> bytes:
        try:
            lease = licensing.acquire("{license}")
        except Err as refused:
            raise Err(f"license {license} was refused: {{refused.value!r}}")
        try:
            who = input.decode("utf-8", errors="replace").strip()
            return f"hello, {{who}}! (from {name}, licensed by {license})".encode()
        finally:
            licensing.release(lease)
"#
                ),
            ),
            (
                "requirements.txt",
                format!("componentize-py=={COMPONENTIZE_PY}\n"),
            ),
            ("wit/tollgate.wit", WIT.to_string()),
            (
                "build.sh",
                format!(
                    "#!/usr/bin/env bash\n# Builds {file}.wasm from app.py against wit/ (world service-offer).\n\
                     set -euo pipefail\ncd \"$(dirname \"${{BASH_SOURCE[0]}}\")\"\n\
                     want=\"componentize-py {COMPONENTIZE_PY}\"\n\
                     if command -v componentize-py >/dev/null 2>&1 && [ \"$(componentize-py --version)\" = \"$want\" ]; then\n\
                     \x20   tool=componentize-py\n\
                     else\n\
                     \x20   [ -x .venv/bin/componentize-py ] || {{ python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }}\n\
                     \x20   tool=.venv/bin/componentize-py\n\
                     fi\n\
                     \"$tool\" -d wit -w service-offer componentize app -o {file}.wasm\n"
                ),
            ),
            (
                "README.md",
                format!(
                    "# {name}\n\nA licensed tollgate plugin in Python (componentize-py {COMPONENTIZE_PY}).\n\n\
                     ```sh\n./build.sh   # uses componentize-py {COMPONENTIZE_PY} from PATH, else installs it into .venv\n\
                     echo world | {run}\n```\n"
                ),
            ),
            (".gitignore", gitignore(Lang::Python).to_string()),
        ],
        Lang::Js => vec![
            (
                "plugin.js",
                format!(
                    r#"// {name}: a licensed tollgate plugin in JavaScript.
import {{ acquire, release }} from 'tollgate:plugin/licensing@0.1.0';

export const service = {{
  // A thrown string becomes the call's error.
  invoke(input) {{
    let lease;
    try {{
      lease = acquire('{license}');
    }} catch (err) {{
      throw `license {license} was refused: ${{JSON.stringify(err && err.payload)}}`;
    }}
    try {{
      const who = new TextDecoder().decode(input).trim();
      return new TextEncoder().encode(`hello, ${{who}}! (from {name}, licensed by {license})`);
    }} finally {{
      release(lease);
    }}
  }},
}};
"#
                ),
            ),
            (
                "package.json",
                format!(
                    r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {{
    "build": "componentize-js --wit wit --world-name service-offer --disable http fetch-event -o {file}.wasm plugin.js"
  }},
  "devDependencies": {{
    "@bytecodealliance/componentize-js": "{COMPONENTIZE_JS}"
  }}
}}
"#
                ),
            ),
            ("wit/tollgate.wit", WIT.to_string()),
            (
                "README.md",
                format!(
                    "# {name}\n\nA licensed tollgate plugin in JavaScript (componentize-js {COMPONENTIZE_JS}).\n\n\
                     ```sh\nnpm install\nnpm run build\necho world | {run}\n```\n"
                ),
            ),
            (".gitignore", gitignore(Lang::Js).to_string()),
        ],
    }
}

/// The Rust project's `cargo test`: builds the component, runs it licensed.
fn rust_test(name: &str, license: &str) -> String {
    let file = name.replace('-', "_");
    format!(
        r#"//! Runs {name} under a tollgate host with a license, as an operator would.
#![cfg(not(target_family = "wasm"))]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use tollgate::testing::{{TestError, TestHost}};

/// Builds the plugin for wasm32-wasip2 (once) and returns its component.
fn component() -> &'static PathBuf {{
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {{
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(env!("CARGO"))
            .current_dir(&dir)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --release --target wasm32-wasip2 failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
        target.join("wasm32-wasip2/release/{file}.wasm")
    }})
}}

#[test]
fn greets_and_gives_its_seat_back() -> Result<(), TestError> {{
    let host = TestHost::builder()
        .license("{license}", 1)
        .plugin("{name}", component(), &["{license}"])
        .build()?;
    assert_eq!(
        host.call_text("{name}", "world")?,
        "hello, world! (from {name}, licensed by {license})"
    );
    let seats = host.counters("{license}");
    assert_eq!((seats.checkouts, seats.releases, seats.in_use), (1, 1, 0));
    host.assert_balanced(); // every seat came back, none oversold
    Ok(())
}}

#[test]
fn without_a_free_seat_the_result_is_withheld() -> Result<(), TestError> {{
    let host = TestHost::builder()
        .license("{license}", 0)
        .plugin("{name}", component(), &["{license}"])
        .build()?;
    let err = host.call("{name}", b"world").expect_err("no seat, no result");
    assert!(err.is_unlicensed(), "{{err}}");
    let seats = host.counters("{license}");
    assert_eq!((seats.checkouts, seats.withheld), (0, 1));
    host.assert_balanced();
    Ok(())
}}
"#
    )
}

fn gitignore(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "target/\n*.wasm\n",
        Lang::Python => ".venv/\n__pycache__/\n*.wasm\n",
        Lang::Js => "node_modules/\n*.wasm\n",
    }
}

pub(crate) fn run(args: NewArgs) -> Result<Exit, Failure> {
    check_name(&args.name).map_err(Failure::usage)?;
    args.license
        .parse::<LicenseId>()
        .map_err(|e| Failure::usage(anyhow::anyhow!("--license: {e}")))?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))
            .map_err(Failure::usage)?
            .next()
            .is_none();
        if !empty {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} already exists and is not empty; choose another --dir or remove it",
                dir.display()
            )));
        }
    }
    let sdk = match (args.lang, &args.sdk) {
        (Lang::Rust, given) => {
            let path = given.clone().unwrap_or_else(|| PathBuf::from(SDK_IN_TREE));
            let found = path.join("Cargo.toml").is_file();
            let path = path.canonicalize().ok().filter(|_| found).ok_or_else(|| {
                Failure::usage(anyhow::anyhow!(
                    "the tollgate-guest SDK is not at {}; pass --sdk PATH to its crate directory (guest-examples/tollgate-guest in the tollgate sources)",
                    path.display()
                ))
            })?;
            Some(path)
        }
        _ => None,
    };
    let host = match (args.lang, &args.host_crate) {
        (Lang::Rust, Some(given)) => Some(
            given
                .canonicalize()
                .ok()
                .filter(|p| p.join("Cargo.toml").is_file())
                .ok_or_else(|| {
                    Failure::usage(anyhow::anyhow!(
                        "the tollgate host crate is not at {}; pass --host-crate PATH to its directory (crates/tollgate in the tollgate sources)",
                        given.display()
                    ))
                })?,
        ),
        (Lang::Rust, None) => Path::new(HOST_IN_TREE)
            .canonicalize()
            .ok()
            .filter(|p| p.join("Cargo.toml").is_file()),
        _ => None,
    };
    if args.lang == Lang::Rust && host.is_none() {
        eprintln!(
            "note: the tollgate sources are not at {HOST_IN_TREE}, so the project gets no `cargo test`; pass --host-crate PATH to add one"
        );
    }
    for (rel, text) in files(&args, sdk.as_deref(), host.as_deref()) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))
                .map_err(Failure::usage)?;
        }
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(Failure::usage)?;
    }
    #[cfg(unix)]
    if args.lang == Lang::Python {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("build.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", script.display()))
            .map_err(Failure::usage)?;
    }
    println!(
        "created {} ({:?} plugin {}); see {}/README.md to build and run it",
        dir.display(),
        args.lang,
        args.name,
        dir.display()
    );
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "hello", "hello-world", "x_1", "x9"] {
            assert_eq!(check_name(ok).expect(ok), ok);
        }
        for bad in ["", "-a", "A", "a/b", "../x", "a b", "a.b", &"a".repeat(65)] {
            let err = check_name(bad).expect_err(bad).to_string();
            assert!(err.starts_with("invalid plugin name"), "{err}");
        }
        // A plugin name, but not a package name.
        let err = check_name("1a").expect_err("1a").to_string();
        assert!(err.contains("starts with a digit"), "{err}");
    }
}
