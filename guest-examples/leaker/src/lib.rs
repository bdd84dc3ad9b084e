//! Rogue plugin: never sends its leases back; it keeps one in a static and
//! forgets another.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use std::sync::Mutex;
use tollgate::plugin::licensing::{self, Lease};

static KEPT: Mutex<Vec<Lease>> = Mutex::new(Vec::new());

struct Leaker;

impl Guest for Leaker {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let kept = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        KEPT.lock().map_err(|_| "poisoned")?.push(kept);
        if let Ok(forgotten) = licensing::acquire(id) {
            std::mem::forget(forgotten);
        }
        let held = KEPT.lock().map_err(|_| "poisoned")?.len();
        Ok(format!("kept {held} lease(s)").into_bytes())
    }
}

export!(Leaker);
