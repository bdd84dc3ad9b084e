//! The checks every guest test ends with, and the guests themselves
//! (re-exported from `test-guests`, which builds them).

pub use test_guests::*;

use tollgate::Host;

/// For every license on `host`: every seat is back; every lease handed out
/// ended exactly once (`checkouts == releases + reclaims`); every seat taken
/// went back exactly once (`checkouts - retakes == returns`); no grant's
/// peak passed its seats.
pub fn assert_balanced(host: &Host) {
    for l in host.licenses().status().licenses {
        let c = &l.counters;
        assert_eq!(c.in_use, 0, "{}: seats still in use: {c:?}", l.id);
        assert_eq!(
            c.checkouts,
            c.releases + c.reclaims.total(),
            "{}: a lease not ended once: {c:?}",
            l.id
        );
        assert_eq!(
            c.checkouts - c.retakes,
            c.returns.total(),
            "{}: a seat not returned once: {c:?}",
            l.id
        );
        for g in &l.grants {
            assert!(
                g.counters.peak <= g.terms.seats.limit().unwrap_or(u32::MAX),
                "{} grant {}: oversold {:?}",
                l.id,
                g.id,
                g.counters
            );
        }
    }
}

/// A plugin's output as UTF-8 text.
pub fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("utf-8 output")
}

/// Loads each `(name, path)` guest requiring license `seat`, allowed `open`,
/// under `limits`: the setup of the mixed and soak runs.
pub fn load_mix(host: &Host, plugins: &[(&str, &str)], limits: &tollgate::Limits) {
    for (name, path) in plugins {
        let spec = tollgate::PluginSpec::file(*name, *path)
            .requires("seat")
            .may_use("open")
            .limits(limits.clone());
        host.load_plugin(spec).expect("guest loads");
    }
}

/// Longest [`wait_until`] waits before it fails the test.
pub const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Checks `condition` every millisecond until it holds; fails the test,
/// naming `what` it waited for, if it does not hold within [`WAIT_LIMIT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {WAIT_LIMIT:?} in vain for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
