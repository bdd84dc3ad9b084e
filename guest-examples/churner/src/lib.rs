//! Rogue plugin: calls `acquire` and `release` in a tight loop, forever.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Churner;

impl Guest for Churner {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        loop {
            if let Ok(lease) = licensing::acquire(id) {
                licensing::release(lease);
            }
        }
    }
}

export!(Churner);
