//! Example plugin on the `tollgate-guest` SDK: takes a seat of each license
//! it may use, works on its input, then sends every seat back explicitly.

fn hello(input: &[u8]) -> Result<Vec<u8>, String> {
    let leases = tollgate_guest::acquire_all().map_err(|e| e.to_string())?;
    let name = String::from_utf8_lossy(input);
    let held: Vec<&str> = leases.iter().map(tollgate_guest::Lease::license_id).collect();
    let output = format!("hello, {}! (licensed by {})", name.trim(), held.join(", "));
    for lease in leases {
        lease.release();
    }
    Ok(output.into_bytes())
}

tollgate_guest::service!(hello);
