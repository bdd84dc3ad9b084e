//! Example plugin: asks the host for each license it may use, works on its
//! input, then sends every license back explicitly with `release`.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct HelloLicensed;

impl Guest for HelloLicensed {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut leases = Vec::new();
        for id in licensing::license_ids() {
            let lease = licensing::acquire(&id)
                .map_err(|e| format!("license {id} was refused: {e:?}"))?;
            leases.push(lease);
        }
        let name = String::from_utf8_lossy(&input);
        let held: Vec<String> = leases.iter().map(|l| l.license_id()).collect();
        let output = format!("hello, {}! (licensed by {})", name.trim(), held.join(", "));
        for lease in leases {
            licensing::release(lease);
        }
        Ok(output.into_bytes())
    }
}

export!(HelloLicensed);
