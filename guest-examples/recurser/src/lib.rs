//! Rogue plugin: takes a license, then recurses without bound.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Recurser;

#[inline(never)]
#[allow(unconditional_recursion)]
fn deeper(n: u64) -> u64 {
    let frame = std::hint::black_box([n; 16]);
    deeper(frame[(n % 16) as usize] + 1) + frame[0]
}

impl Guest for Recurser {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let _lease = licensing::acquire(id).map_err(|e| format!("acquire {id}: {e:?}"))?;
        Ok(deeper(0).to_string().into_bytes())
    }
}

export!(Recurser);
