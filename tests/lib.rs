//! Paths of the example and rogue guests, built by this crate's build script.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
