//! `tollgate.toml` is written by hand: any bytes `Config::load` reads from
//! the file must parse or be explained, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Err(e) =
        tollgate_server::config::Config::from_bytes(data, Path::new("/fuzz/tollgate.toml"))
    {
        // Every refusal names at least one problem, each with a message and
        // a place inside the file (line 0: not tied to a place), in order.
        assert!(!e.problems.is_empty());
        let lines = String::from_utf8_lossy(data).lines().count() + 1;
        for p in &e.problems {
            assert!(!p.message.is_empty());
            assert!(p.line <= lines && (p.line == 0 || p.column >= 1), "{p:?}");
        }
        assert!(
            e.problems
                .windows(2)
                .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column))
        );
    }
});
