//! Rogue plugin: takes a license, then grows its memory without bound.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Hog;

impl Guest for Hog {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let _lease = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![0xA5; 1 << 20]));
        }
    }
}

export!(Hog);
