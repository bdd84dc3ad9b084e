//! Admin API request inputs (license and plugin bodies, the usage query):
//! the first byte picks the route, the rest is its input, read by the very
//! function that route reads it with. Every input is accepted or refused
//! with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_server::{AdminBody, parse_admin_body};

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let kind = match route % 3 {
        0 => AdminBody::License,
        1 => AdminBody::LoadPlugin,
        _ => AdminBody::UsageQuery,
    };
    if let Err(e) = parse_admin_body(kind, body) {
        assert!(!e.is_empty());
    }
});
