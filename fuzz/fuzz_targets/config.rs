//! `tollgate.toml` is written by hand: any text must parse or be explained,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = tollgate::config::Config::parse(text, Path::new("/fuzz/tollgate.toml")) {
        assert!(!e.to_string().is_empty());
    }
});
