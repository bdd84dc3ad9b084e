//! The contract itself, without the `tollgate-guest` SDK: `hello-licensed`
//! written against raw wit-bindgen bindings of `wit/tollgate.wit`.
//!
//! What every plugin does, in any language:
//! 1. export `tollgate:plugin/service.invoke(list<u8>) -> result<list<u8>, string>`;
//! 2. inside it, ask `tollgate:plugin/licensing.license-ids()` which ids it may use
//!    (or name the id it needs);
//! 3. `acquire(id)` a seat: `ok(lease)` is an owned resource handle,
//!    `err(license-error)` says why not (unknown-license, exhausted, expired,
//!    not-entitled, timed-out, revoked);
//! 4. do the work while holding the lease;
//! 5. send the seat back with `release(lease)`, or by dropping the handle.
//!
//! A call whose plugin did not hold every required license during the call
//! has its result withheld by the host. Leases still held when `invoke`
//! returns or traps are reclaimed by the host and counted as such.
//!
//! Unlike the SDK, raw bindings record no `tollgate:wit-version` section;
//! the host then checks the version from the import and export names alone.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing::{self, Lease, LicenseError};

/// The type that implements the exported `service` interface.
struct HelloRaw;

/// Words a person can read for each `license-error` case.
fn why(error: &LicenseError) -> &'static str {
    match error {
        LicenseError::UnknownLicense => "no such license is installed",
        LicenseError::Exhausted => "every seat is taken",
        LicenseError::Expired => "the license is not valid now",
        LicenseError::NotEntitled => "this plugin may not use that license",
        LicenseError::TimedOut => "no seat came free in time",
        LicenseError::Revoked => "the license was revoked",
    }
}

impl Guest for HelloRaw {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        // Steps 2 and 3: a seat of every id this plugin may use.
        let mut leases: Vec<Lease> = Vec::new();
        for id in licensing::license_ids() {
            match licensing::acquire(&id) {
                Ok(lease) => leases.push(lease),
                // Returning here drops the leases taken so far: their seats go back.
                Err(e) => return Err(format!("license {id} was refused: {}", why(&e))),
            }
        }
        // Step 4: the work.
        let name = String::from_utf8_lossy(&input);
        let held: Vec<String> = leases.iter().map(Lease::license_id).collect();
        let output = format!("hello, {}! (licensed by {})", name.trim(), held.join(", "));
        // Step 5: every seat back, explicitly.
        for lease in leases {
            licensing::release(lease);
        }
        Ok(output.into_bytes())
    }
}

export!(HelloRaw);
