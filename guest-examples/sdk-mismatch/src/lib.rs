//! A plugin whose imports match this host's WIT but whose SDK recorded
//! another version (`0.2.0`) in the `tollgate:wit-version` custom section:
//! the host must refuse it by that record, naming both versions.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;

struct SdkMismatch;

impl Guest for SdkMismatch {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(b"a host that checks the recorded version never runs this".to_vec())
    }
}

export!(SdkMismatch);

#[used]
#[unsafe(link_section = "tollgate:wit-version")]
static RECORDED: [u8; 5] = *b"0.2.0";
