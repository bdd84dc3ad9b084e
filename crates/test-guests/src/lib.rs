//! The example and rogue guests of `guest-examples/`, built for
//! wasm32-wasip2 by this crate's build script: the one place that names
//! where each guest's `.wasm` is. For tests, benchmarks and the demo; not
//! published, and nothing a plugin author's project depends on.
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The component path of the guest named `name` (its crate name, such as
/// `hello-licensed`).
///
/// # Panics
/// If no guest has that name: a test asked for one that does not exist.
pub fn path(name: &str) -> &'static str {
    match GUESTS.iter().find(|(n, _)| *n == name) {
        Some((_, path)) => path,
        None => panic!(
            "no guest named {name:?} in guest-examples; the guests are: {}",
            GUESTS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_listed_guest_exists_and_is_a_component() {
        assert!(super::GUESTS.len() > 20, "{:?}", super::GUESTS);
        for (name, path) in super::GUESTS {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            // A component's preamble: magic, then layer 1 (not a core module).
            assert_eq!(&bytes[..4], b"\0asm", "{name}");
            assert_eq!(&bytes[6..8], &[1, 0], "{name} is not a component");
        }
        assert_eq!(super::path("hello-licensed"), super::HELLO_LICENSED);
        assert_eq!(
            super::bytes::HELLO_LICENSED.len() as u64,
            std::fs::metadata(super::HELLO_LICENSED)
                .map(|m| m.len())
                .unwrap_or(0)
        );
    }
}
