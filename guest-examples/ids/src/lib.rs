//! Example plugin: lists the license ids it may use, describes each, and
//! takes a seat of each to show the host's count move.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing::{self, LicenseInfo};

struct Ids;

fn seats(info: &LicenseInfo) -> String {
    info.seats.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

impl Guest for Ids {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut out = String::new();
        let mut leases = Vec::new();
        for id in licensing::license_ids() {
            let before = licensing::describe(&id).map_err(|e| format!("describe {id}: {e:?}"))?;
            let lease = licensing::acquire(&id).map_err(|e| format!("acquire {id}: {e:?}"))?;
            let after = licensing::describe(&id).map_err(|e| format!("describe {id}: {e:?}"))?;
            let expiry = before.expires_at.map_or_else(|| "never".to_string(), |t| t.to_string());
            out.push_str(&format!(
                "{id}: seats={} in-use={}->{} expires={expiry}\n",
                seats(&before),
                before.in_use,
                after.in_use
            ));
            leases.push(lease);
        }
        Ok(out.into_bytes())
    }
}

export!(Ids);
