//! Rogue plugin: sends its lease back, then forges the stale handle and sends
//! it back again. The second use must fail inside the plugin (a trap), and
//! must not touch the host's seats.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing::{self, Lease};

struct DoubleRelease;

impl Guest for DoubleRelease {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let lease = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        let handle = lease.handle();
        licensing::release(lease);
        // SAFETY: deliberately unsound: this plugin misbehaves on purpose to
        // show the host refuses a stale handle.
        let ghost = unsafe { Lease::from_handle(handle) };
        licensing::release(ghost);
        Ok(b"released twice".to_vec())
    }
}

export!(DoubleRelease);
