//! A real full disk under `tollgate serve`: the state directory lives on a
//! small tmpfs that the test fills. Calls fail closed with
//! `ledger-unavailable`, `/readyz` answers 503 with the reason, no seat is
//! lost, and once there is room again the server recovers by itself.
//!
//! Mounting a tmpfs needs root (CI runs as root); without it the test fails
//! and says so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::*;

/// A tmpfs mounted over a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "this test mounts a {size} tmpfs to fill a real disk and needs root (or CAP_SYS_ADMIN); run it as root or skip it with `--skip a_full_disk`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the disk is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_fails_calls_closed_and_the_server_recovers_without_a_restart() {
    let scratch = prepare("disk-full", "1");
    let root = scratch.path();
    let state = root.join("state");
    let saved = root.join("state.saved");
    copy_dir(&state, &saved);
    std::fs::remove_dir_all(&state).expect("move");
    std::fs::create_dir_all(&state).expect("mount point");
    let disk = Tmpfs::mount(&state, "64m");
    copy_dir(&saved, &state);

    let s = Server::start(root, "5s");
    assert_eq!(s.invoke("hello", b"x").0, 200);
    fill(&state.join("filler"));
    // The next commit needs room the disk no longer has.
    let refused = (0..2_000).find_map(|_| {
        let (st, body, _) = s.invoke("hello", b"x");
        (st != 200).then_some((st, body))
    });
    let (st, body) = refused.expect("a call failed once the disk was full");
    assert_eq!(
        (st, code(&body).as_str()),
        (503, "ledger-unavailable"),
        "{body}"
    );
    let (st, body) = s.admin("GET", "/readyz", None, None);
    assert_eq!(
        (st, code(&body).as_str()),
        (503, "ledger-unavailable"),
        "{body}"
    );
    assert!(
        body.contains("commit failed"),
        "the reason is named: {body}"
    );
    let (st, body, _) = s.invoke("hello", b"x");
    assert_eq!(
        (st, code(&body).as_str()),
        (503, "ledger-unavailable"),
        "refused at once: {body}"
    );
    assert_eq!(
        s.demo()["counters"]["in_use"],
        0,
        "no seat is lost: {}",
        s.demo()
    );

    std::fs::remove_file(state.join("filler")).expect("room again");
    let ready = wait_until(Duration::from_secs(15), || {
        s.admin("GET", "/readyz", None, None).0 == 200
    });
    assert!(ready, "the server did not recover");
    assert_eq!(
        s.invoke("hello", b"x").0,
        200,
        "served again without a restart"
    );
    assert!(s.terminate().success());
    let audit = tg(root, &["audit", "verify"]);
    assert!(
        audit.status.success(),
        "every row committed verifies: {}",
        String::from_utf8_lossy(&audit.stdout)
    );
    drop(disk);
}
