//! Rogue plugin: holds its license properly but answers with far more bytes
//! than asked (input: how many MiB, default 32).

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Flooder;

impl Guest for Flooder {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let mib: usize = String::from_utf8_lossy(&input).trim().parse().unwrap_or(32);
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let lease = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        licensing::release(lease);
        Ok(vec![b'!'; mib << 20])
    }
}

export!(Flooder);
