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

#[cfg(test)]
mod tests {
    use super::*;

    /// A section: id, LEB128 size (all test sizes fit one byte), contents.
    fn section(id: u8, contents: &[u8]) -> Vec<u8> {
        let size = u8::try_from(contents.len()).expect("small test section");
        assert!(size < 0x80);
        [&[id, size][..], contents].concat()
    }

    fn custom(name: &str, data: &[u8]) -> Vec<u8> {
        let name_len = u8::try_from(name.len()).expect("short name");
        section(0, &[&[name_len][..], name.as_bytes(), data].concat())
    }

    fn core_module(sections: &[Vec<u8>]) -> Vec<u8> {
        [b"\0asm\x01\0\0\0".to_vec(), sections.concat()].concat()
    }

    fn component_of(module: &[u8]) -> Vec<u8> {
        [b"\0asm\x0d\0\x01\0".to_vec(), section(1, module)].concat()
    }

    #[test]
    fn found_in_a_core_module_nested_in_a_component() {
        let module = core_module(&[custom("other", b"x"), custom(SECTION, b"0.2.0\n")]);
        assert_eq!(
            recorded_version(&component_of(&module)).as_deref(),
            Some("0.2.0")
        );
        assert_eq!(recorded_version(&module).as_deref(), Some("0.2.0"));
    }

    #[test]
    fn absent_or_unparsable_is_none() {
        let module = core_module(&[custom("producers", b"rustc")]);
        assert_eq!(recorded_version(&component_of(&module)), None);
        assert_eq!(recorded_version(b"not wasm"), None);
        assert_eq!(recorded_version(&[]), None);
    }
}
