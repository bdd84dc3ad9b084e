//! Rogue plugin: does its work without ever asking for a license.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;

struct NoLicense;

impl Guest for NoLicense {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut output = input;
        output.reverse();
        Ok(output)
    }
}

export!(NoLicense);
