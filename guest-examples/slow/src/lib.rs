//! Example plugin on the `tollgate-guest` SDK: holds a seat of each license
//! it may use for as many milliseconds as its input says (default 10), then
//! reports whether every lease stayed valid.

fn hold(input: &[u8]) -> Result<Vec<u8>, String> {
    let millis: u64 = String::from_utf8_lossy(input).trim().parse().unwrap_or(10);
    let leases = tollgate_guest::acquire_all().map_err(|e| e.to_string())?;
    std::thread::sleep(std::time::Duration::from_millis(millis));
    let valid = leases.iter().all(tollgate_guest::Lease::is_valid);
    Ok(format!("held {millis}ms, valid={valid}").into_bytes())
}

tollgate_guest::service!(hold);
