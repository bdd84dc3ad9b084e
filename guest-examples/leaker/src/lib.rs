//! Rogue plugin on the `tollgate-guest` SDK: never sends its leases back; it
//! keeps one in a static and forgets another, so neither guard ever drops.

use std::sync::Mutex;
use tollgate_guest::Lease;

static KEPT: Mutex<Vec<Lease>> = Mutex::new(Vec::new());

fn leak(_input: &[u8]) -> Result<Vec<u8>, String> {
    let ids = tollgate_guest::license_ids();
    let id = ids.first().ok_or("this host grants me no license id")?;
    let kept = tollgate_guest::acquire(id).map_err(|e| e.to_string())?;
    KEPT.lock().map_err(|_| "poisoned")?.push(kept);
    if let Ok(forgotten) = tollgate_guest::acquire(id) {
        std::mem::forget(forgotten);
    }
    let held = KEPT.lock().map_err(|_| "poisoned")?.len();
    Ok(format!("kept {held} lease(s)").into_bytes())
}

tollgate_guest::service!(leak);
