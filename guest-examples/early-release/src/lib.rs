//! Rogue plugin on the `tollgate-guest` SDK: takes a seat of every license
//! it may use, sends them back at once, then works for as many milliseconds as its
//! input says (default 5). It answers `START END`, wall-clock nanoseconds
//! since the epoch taken right after `acquire` returned and when the work
//! ended, so a test can check that calls holding one seat never overlap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn early(input: &[u8]) -> Result<Vec<u8>, String> {
    let millis: u64 = String::from_utf8_lossy(input).trim().parse().unwrap_or(5);
    let leases = tollgate_guest::acquire_all().map_err(|e| e.to_string())?;
    let start = nanos();
    for lease in leases {
        lease.release();
    }
    std::thread::sleep(Duration::from_millis(millis));
    let end = nanos();
    Ok(format!("{start} {end}").into_bytes())
}

tollgate_guest::service!(early);
