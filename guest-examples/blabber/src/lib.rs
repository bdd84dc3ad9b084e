//! Rogue plugin: tries to get its bytes to the caller by every way but a
//! delivered result. Every call writes a secret to stdout and stderr; then,
//! as its input says:
//!
//! - `print`: returns the secret as its output;
//! - `err:N`: returns an error string of N bytes made of the secret;
//! - `trap`: fails inside a function whose name carries the secret (a host
//!   call with a forged handle, so the error comes with a backtrace);
//! - `panic`: panics with the secret as the message.
//!
//! With the prefix `licensed ` it first takes a seat of every id it may use
//! and holds them to the end; without it, it takes none, so a host that
//! requires a license withholds the call.

wit_bindgen::generate!({ path: "../../wit", world: "service-offer" });

use exports::tollgate::plugin::service::Guest;
use tollgate::plugin::licensing::{self, Lease};

/// What must never reach the caller of a withheld call.
const SECRET: &str = "SECRET-7f3a9c-blabber";

struct Blabber;

/// Its name is the secret too: it shows up in any backtrace of the trap.
#[inline(never)]
fn blabber_secret_function_7f3a9c(handle: u32) -> String {
    // SAFETY: deliberately unsound: the forged handle is refused by the host,
    // which fails the call with an error that carries a backtrace.
    let forged = unsafe { Lease::from_handle(handle) };
    forged.license_id()
}

impl Guest for Blabber {
    fn invoke(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let input = String::from_utf8_lossy(&input).into_owned();
        let (licensed, action) = match input.trim().strip_prefix("licensed ") {
            Some(rest) => (true, rest.to_string()),
            None => (false, input.trim().to_string()),
        };
        let mut held: Vec<Lease> = Vec::new();
        if licensed {
            for id in licensing::license_ids() {
                let lease = licensing::acquire(&id).map_err(|e| format!("{id}: {e:?}"))?;
                held.push(lease);
            }
        }
        println!("stdout says {SECRET}");
        eprintln!("stderr says {SECRET}");
        let result = match action.split_once(':') {
            _ if action == "print" => Ok(SECRET.as_bytes().to_vec()),
            _ if action == "trap" => {
                let id = blabber_secret_function_7f3a9c(0x0ff0_0000 + held.len() as u32);
                Ok(id.into_bytes())
            }
            _ if action == "panic" => panic!("panicking with {SECRET}"),
            Some(("err", n)) => {
                let n: usize = n.parse().map_err(|_| format!("bad length {n:?}"))?;
                Err(SECRET.chars().cycle().take(n).collect())
            }
            _ => Err(format!("unknown action {action:?}")),
        };
        drop(held);
        result
    }
}

export!(Blabber);
