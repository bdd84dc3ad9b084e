//! Example plugin: holds its license while it works and returns it by
//! dropping the handle at the end of scope.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct DropLicensed;

impl Guest for DropLicensed {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let ids = licensing::license_ids();
        let id = ids.first().ok_or("this host grants me no license id")?;
        let lease = licensing::acquire(id).map_err(|e| format!("license {id} was refused: {e:?}"))?;
        if !lease.valid() {
            return Err(format!("lease of {id} is not valid"));
        }
        let mut words: Vec<&[u8]> = input.split(|b| *b == b' ').collect();
        words.reverse();
        let output = words.join(&b' ');
        drop(lease);
        Ok(output)
    }
}

export!(DropLicensed);
