//! Rogue plugin: asks for license ids it was never given.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct WrongId;

impl Guest for WrongId {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let wanted = String::from_utf8_lossy(&input).trim().to_string();
        let id = if wanted.is_empty() { "someone-elses-license".to_string() } else { wanted };
        let outcome = match licensing::acquire(&id) {
            Ok(_) => "granted".to_string(),
            Err(e) => format!("{e:?}"),
        };
        Ok(format!("{id}: {outcome}").into_bytes())
    }
}

export!(WrongId);
