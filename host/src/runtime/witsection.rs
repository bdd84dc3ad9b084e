//! The WIT version a plugin records about itself: the `tollgate-guest` SDK
//! writes the `tollgate:plugin` package version it was built against into a
//! custom section of the component's core module.

use wasmparser::{Parser, Payload};

/// Name of the custom section holding the WIT package version, e.g. `0.1.0`.
pub const SECTION: &str = "tollgate:wit-version";

/// The version recorded in `bytes`, searching nested core modules too.
/// `None` when there is no such section (raw wit-bindgen plugins, other
/// languages) or the component cannot be parsed; loading reports the latter.
pub(crate) fn recorded_version(bytes: &[u8]) -> Option<String> {
    for payload in Parser::new(0).parse_all(bytes) {
        if let Ok(Payload::CustomSection(section)) = payload
            && section.name() == SECTION
        {
            return Some(String::from_utf8_lossy(section.data()).trim().to_string());
        }
    }
    None
}
