//! Benchmark plugin: the shared work under one lease, or (input `pairs:N` /
//! `empty:N`) N acquire+release pairs or N near-empty host calls
//! (monotonic clock reads) in one instance.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

include!("../../bench_work.rs");

struct BenchLicensed;

fn count(input: &[u8], prefix: &str) -> Option<u32> {
    std::str::from_utf8(input).ok()?.strip_prefix(prefix)?.trim().parse().ok()
}

impl Guest for BenchLicensed {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        if let Some(n) = count(&input, "pairs:") {
            let id = licensing::license_ids().into_iter().next().ok_or("no license id")?;
            for _ in 0..n {
                let lease = licensing::acquire(&id).map_err(|e| format!("{e:?}"))?;
                licensing::release(lease);
            }
            let lease = licensing::acquire(&id).map_err(|e| format!("{e:?}"))?;
            licensing::release(lease);
            return Ok(format!("{n} pairs").into_bytes());
        }
        if let Some(n) = count(&input, "empty:") {
            let id = licensing::license_ids().into_iter().next().ok_or("no license id")?;
            let lease = licensing::acquire(&id).map_err(|e| format!("{e:?}"))?;
            // The baseline host call: wasi:clocks/monotonic-clock.now, which
            // does next to nothing on the host.
            for _ in 0..n {
                std::hint::black_box(std::time::Instant::now());
            }
            licensing::release(lease);
            return Ok(format!("{n} calls").into_bytes());
        }
        if input.starts_with(b"unlicensed ") {
            // Same work, no host call: isolates what importing licensing costs.
            return Ok(work(&input, rounds(&input[11..])));
        }
        if let Some(rest) = input.strip_prefix(b"id:") {
            // Acquire a license id the plugin knows, without asking for the list.
            let end = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
            let id = std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())?;
            let lease = licensing::acquire(id).map_err(|e| format!("license {id} was refused: {e:?}"))?;
            let body = rest[end..].trim_ascii_start();
            let out = work(body, rounds(body));
            licensing::release(lease);
            return Ok(out);
        }
        let id = licensing::license_ids().into_iter().next().ok_or("no license id")?;
        let lease = licensing::acquire(&id).map_err(|e| format!("license {id} was refused: {e:?}"))?;
        let out = work(&input, rounds(&input));
        licensing::release(lease);
        Ok(out)
    }
}

export!(BenchLicensed);
