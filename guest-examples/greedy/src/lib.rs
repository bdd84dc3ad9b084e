//! Rogue plugin: takes every seat of every license it can get and never
//! gives one back.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing;

struct Greedy;

/// Stops asking after this many seats of one id, so an uncounted license
/// cannot make it loop forever.
const ENOUGH: usize = 1000;

impl Guest for Greedy {
    fn invoke(_input: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut hoard = Vec::new();
        let mut report = Vec::new();
        for id in licensing::license_ids() {
            let mut taken = 0;
            let stop = loop {
                if taken == ENOUGH {
                    break "enough".to_string();
                }
                match licensing::acquire(&id) {
                    Ok(lease) => {
                        hoard.push(lease);
                        taken += 1;
                    }
                    Err(e) => break format!("{e:?}"),
                }
            };
            report.push(format!("{id}: took {taken}, then {stop}"));
        }
        // Keep every seat to the end: the host has to take them back.
        std::mem::forget(hoard);
        Ok(report.join("\n").into_bytes())
    }
}

export!(Greedy);
