//! Rogue plugin: takes a license, then loops forever.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Spinner;

impl Guest for Spinner {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let _lease = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(Spinner);
