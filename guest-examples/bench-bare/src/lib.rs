//! Benchmark baseline: the same work as `bench-licensed`, built for a world
//! without the licensing import.

wit_bindgen::generate!({
    inline: "package tollgate:bench; world bare { export tollgate:plugin/service@0.1.0; }",
    path: "../../wit",
    world: "tollgate:bench/bare",
});

use exports::tollgate::plugin::service::Guest;

include!("../../bench_work.rs");

struct BenchBare;

impl Guest for BenchBare {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(work(&input, rounds(&input)))
    }
}

export!(BenchBare);
