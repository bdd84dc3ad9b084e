// Shared by the build scripts of `host/` and `tests/` through `include!`:
// builds every guest in this workspace for wasm32-wasip2 with a nested
// `cargo build`, and returns each guest's name and component path.

/// Builds the guest workspace and returns `(crate name, component path)` for
/// every member, sorted by name.
fn build_guests() -> Vec<(String, std::path::PathBuf)> {
    use std::path::PathBuf;
    use std::process::Command;

    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guests_dir = manifest_dir.join("../guest-examples");
    let guests_dir = guests_dir.canonicalize().unwrap_or(guests_dir);
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>/out: share one guest build
    // under <target>/guests across packages and profiles.
    let target_dir = out_dir.ancestors().nth(4).map(|t| t.join("guests")).unwrap_or_else(|| out_dir.join("guests"));

    println!("cargo:rerun-if-changed={}", guests_dir.display());
    println!("cargo:rerun-if-changed={}", guests_dir.join("../wit").display());

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests_dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "RUSTC_WORKSPACE_WRAPPER",
        // A host built with another toolchain (e.g. `cargo +nightly fuzz`)
        // still builds its guests with the one pinned in rust-toolchain.toml,
        // which has the wasm32-wasip2 target.
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("failed to run the nested cargo build of guest-examples");
    if !status.success() {
        panic!(
            "building guest-examples for wasm32-wasip2 failed ({status}).\n\
             If the target is missing, run: rustup target add wasm32-wasip2"
        );
    }

    let manifest = std::fs::read_to_string(guests_dir.join("Cargo.toml")).expect("read guest-examples/Cargo.toml");
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("guest-examples/Cargo.toml lists its members");
    let mut guests: Vec<(String, PathBuf)> = members
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .map(|name| {
            let file = format!("{}.wasm", name.replace('-', "_"));
            let path = target_dir.join("wasm32-wasip2/release").join(file);
            assert!(path.exists(), "guest {name} was built but {} is missing", path.display());
            (name, path)
        })
        .collect();
    guests.sort();
    guests
}
