//! A plugin built for a future version of the contract
//! (`tollgate:plugin@0.2.0`): this host must refuse it with a message naming
//! both versions, not a link error.

wit_bindgen::generate!({
    inline: "
        package tollgate:plugin@0.2.0;
        interface service {
            invoke: func(input: list<u8>) -> result<list<u8>, string>;
        }
        world service-offer {
            export service;
        }
    ",
    world: "tollgate:plugin/service-offer@0.2.0",
});

use exports::tollgate::plugin::service::Guest;

struct FutureWit;

impl Guest for FutureWit {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        Ok(input)
    }
}

export!(FutureWit);
