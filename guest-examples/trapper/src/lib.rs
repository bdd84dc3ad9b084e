//! Rogue plugin: takes a license, then traps before it can send it back.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Trapper;

impl Guest for Trapper {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let _lease = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        core::arch::wasm32::unreachable()
    }
}

export!(Trapper);
