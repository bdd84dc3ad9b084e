//! Runs {{name}} under a tollgate host with a license, as an operator would.
#![cfg(not(target_family = "wasm"))]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use tollgate::testing::{TestError, TestHost};

/// Builds the plugin for wasm32-wasip2 (once) and returns its component.
fn component() -> &'static PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(env!("CARGO"))
            .current_dir(&dir)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --release --target wasm32-wasip2 failed"
        );
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
        target.join("wasm32-wasip2/release/{{lib_name}}.wasm")
    })
}

#[test]
fn greets_and_gives_its_seat_back() -> Result<(), TestError> {
    let host = TestHost::builder()
        .license("{{license}}", 1)
        .plugin("{{name}}", component(), &["{{license}}"])
        .build()?;
    assert_eq!(
        host.call_text("{{name}}", "world")?,
        "hello, world! (from {{name}}, licensed by {{license}})"
    );
    let seats = host.counters("{{license}}");
    assert_eq!((seats.checkouts, seats.releases, seats.in_use), (1, 1, 0));
    host.assert_balanced(); // every seat came back, none oversold
    Ok(())
}

#[test]
fn without_a_free_seat_the_result_is_withheld() -> Result<(), TestError> {
    let host = TestHost::builder()
        .license("{{license}}", 0)
        .plugin("{{name}}", component(), &["{{license}}"])
        .build()?;
    let err = host
        .call("{{name}}", b"world")
        .expect_err("no seat, no result");
    assert!(err.is_unlicensed(), "{err}");
    let seats = host.counters("{{license}}");
    assert_eq!((seats.checkouts, seats.withheld), (0, 1));
    host.assert_balanced();
    Ok(())
}
