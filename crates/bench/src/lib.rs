//! Benchmarks of tollgate: see `benches/licensing.rs` and BENCHMARKS.md.
