//! The dashboard end to end in a real browser: `e2e/dashboard.mjs` drives
//! headless Chromium through playwright-core against a running
//! `tollgate serve` while this test runs the load it watches.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;

use common::*;

const VIEWER: &str = "viewer-token-0123456789";

#[test]
#[ignore = "needs Debian's chromium and playwright-core: run e2e/install.sh, then cargo test --workspace -- --ignored"]
fn the_dashboard_in_chromium_shows_load_revokes_and_keeps_the_viewer_read_only() {
    let e2e = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../e2e"));
    assert!(
        e2e.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run e2e/install.sh"
    );
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let scratch = prepare("e2e", "2");
    let root = scratch.path();
    std::fs::write(root.join("viewer.token"), VIEWER).expect("token");
    let s = Server::start_with(root, "5s", "viewer_token_file = \"viewer.token\"\n");
    // A second grant of demo, for the page to install.
    sign_license(root, "demo", "3", "more.license");
    let mut node = Command::new("node")
        .arg(e2e.join("dashboard.mjs"))
        .args([s.base.as_str(), TOKEN, VIEWER])
        .arg(&shots)
        .arg(root.join("more.license"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs (install Node.js 20 or later)");
    let mut to_node = node.stdin.take().expect("stdin");
    let from_node = BufReader::new(node.stdout.take().expect("stdout"));
    let mut done = false;
    std::thread::scope(|scope| {
        let mut load = Vec::new();
        for line in from_node.lines() {
            match line.expect("a line from node").as_str() {
                "LOAD" => {
                    // Two calls each hold one of demo's two seats for 2.5 s.
                    for _ in 0..2 {
                        load.push(scope.spawn(|| s.invoke("slow", b"2500")));
                    }
                    writeln!(to_node, "LOADED").expect("to node");
                }
                "DONE" => done = true,
                other => eprintln!("node: {other}"),
            }
        }
        for call in load {
            assert_eq!(
                call.join().expect("load").0,
                200,
                "the load's calls ran licensed"
            );
        }
    });
    let status = node.wait().expect("node exits");
    assert!(
        status.success() && done,
        "the browser run failed ({status}); its log is above"
    );
    for shot in [
        "login.png",
        "dashboard-under-load.png",
        "revoked.png",
        "viewer-phone.png",
    ] {
        let bytes = std::fs::read(shots.join(shot)).unwrap_or_default();
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} was saved as a PNG");
    }
    eprintln!("screenshots: {}", shots.display());
}
