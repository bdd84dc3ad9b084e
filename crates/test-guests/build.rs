//! Builds every member of `guest-examples/` for wasm32-wasip2 with a nested
//! `cargo build`, then writes one path constant and one bytes constant per
//! guest, the list of all guests, and a macro that checks each has a test.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables of the outer build that must not leak into the nested one.
const OUTER_BUILD_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "RUSTC_WORKSPACE_WRAPPER",
    // A host built with another toolchain (e.g. `cargo +nightly fuzz`) still
    // builds its guests with the one pinned in rust-toolchain.toml, which has
    // the wasm32-wasip2 target.
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
];

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let repo = manifest_dir.join("../..");
    let guests_dir = repo.join("guest-examples");
    let guests_dir = guests_dir.canonicalize().unwrap_or(guests_dir);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>/out: share one guest build
    // under <target>/guests across profiles.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("guests"))
        .unwrap_or_else(|| out_dir.join("guests"));

    println!("cargo:rerun-if-changed={}", guests_dir.display());
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());

    build(&guests_dir, &target_dir);
    let guests = members(&guests_dir, &target_dir);
    std::fs::write(out_dir.join("guests.rs"), generate(&guests)).expect("write guests.rs");
}

/// Runs the nested release build of the guest workspace.
fn build(guests_dir: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests_dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(target_dir);
    for var in OUTER_BUILD_VARS {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("failed to run the nested cargo build of guest-examples");
    if !status.success() {
        panic!(
            "building guest-examples for wasm32-wasip2 failed ({status}).\n\
             If the target is missing, run: rustup target add wasm32-wasip2"
        );
    }
}

/// `(package name, component path)` of every workspace member, by name.
fn members(guests_dir: &Path, target_dir: &Path) -> Vec<(String, PathBuf)> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(guests_dir.join("Cargo.toml"))
        .no_deps()
        .exec()
        .expect("read guest-examples' cargo metadata");
    let mut guests: Vec<(String, PathBuf)> = metadata
        .workspace_packages()
        .into_iter()
        .filter(|p| p.targets.iter().any(|t| t.is_cdylib()))
        .map(|p| {
            let file = format!("{}.wasm", p.name.replace('-', "_"));
            let path = target_dir.join("wasm32-wasip2/release").join(file);
            assert!(
                path.exists(),
                "guest {} was built but {} is missing",
                p.name,
                path.display()
            );
            (p.name.to_string(), path)
        })
        .collect();
    guests.sort();
    guests
}

/// The Rust source of the crate's generated half.
fn generate(guests: &[(String, PathBuf)]) -> String {
    let mut code = String::from(
        "/// Every guest in guest-examples, as (name, component path), by name.\npub const GUESTS: &[(&str, &str)] = &[\n",
    );
    for (name, path) in guests {
        let _ = writeln!(code, "    ({name:?}, {:?}),", path.display().to_string());
    }
    code.push_str("];\n\n");
    for (name, path) in guests {
        let konst = name.to_uppercase().replace('-', "_");
        let _ = writeln!(
            code,
            "/// Path of the `{name}` guest component.\npub const {konst}: &str = {:?};",
            path.display().to_string()
        );
    }
    code.push_str("\n/// Every guest's component bytes (only those a crate uses end up in it).\npub mod bytes {\n");
    for (name, path) in guests {
        let konst = name.to_uppercase().replace('-', "_");
        let _ = writeln!(
            code,
            "    /// The `{name}` guest, as component bytes.\n    pub const {konst}: &[u8] = include_bytes!({:?});",
            path.display().to_string()
        );
    }
    code.push_str("}\n\n/// Calls `$m!(guest_name)` once per guest, to check every guest has a test.\n#[macro_export]\nmacro_rules! for_each_guest {\n    ($m:ident) => {\n");
    for (name, _) in guests {
        let _ = writeln!(code, "        $m!({});", name.replace('-', "_"));
    }
    code.push_str("    };\n}\n");
    code
}
