//! Benchmark plugin: `bench-bare`'s source plus the licensing import, and
//! nothing else: the same work, under one lease of the license id the
//! plugin was built for.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

include!("../../bench_work.rs");

/// The license id the benchmark hosts install.
const LICENSE_ID: &str = "bench";

struct BenchLeased;

impl Guest for BenchLeased {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let lease = licensing::acquire(LICENSE_ID).map_err(|_| String::from("refused"))?;
        let out = work(&input, rounds(&input));
        licensing::release(lease);
        Ok(out)
    }
}

export!(BenchLeased);
