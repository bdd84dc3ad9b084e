//! Rogue plugin on the `tollgate-guest` SDK: takes a license, then traps
//! before its lease guard can send the seat back.

fn trap(_input: &[u8]) -> Result<Vec<u8>, String> {
    let ids = tollgate_guest::license_ids();
    let id = ids.first().ok_or("this host grants me no license id")?;
    let _lease = tollgate_guest::acquire(id).map_err(|e| e.to_string())?;
    core::arch::wasm32::unreachable()
}

tollgate_guest::service!(trap);
