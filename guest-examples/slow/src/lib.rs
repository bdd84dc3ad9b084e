//! Example plugin: holds a seat of each license it may use for as many
//! milliseconds as its input says (default 10), then sends them back and
//! reports whether every lease stayed valid.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Slow;

impl Guest for Slow {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let millis: u64 = String::from_utf8_lossy(&input).trim().parse().unwrap_or(10);
        let mut leases = Vec::new();
        for id in licensing::license_ids() {
            leases.push(licensing::acquire(&id).map_err(|e| format!("license {id} was refused: {e:?}"))?);
        }
        std::thread::sleep(std::time::Duration::from_millis(millis));
        let valid = leases.iter().all(|l| l.valid());
        for lease in leases {
            licensing::release(lease);
        }
        Ok(format!("held {millis}ms, valid={valid}").into_bytes())
    }
}

export!(Slow);
