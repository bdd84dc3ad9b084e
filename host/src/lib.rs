//! tollgate: a WebAssembly component plugin host with a license manager.
//!
//! Plugins are Wasm components of the WIT world `tollgate:plugin/service-offer`.
//! They ask the host for a license by id, receive a lease, and send it back;
//! the host counts every seat and withholds the result of any call that ran
//! without the licenses its plugin requires. Start with [`Host`].
#![deny(missing_docs)]

pub mod config;
mod host;
pub mod issuer;
pub mod ledger;
pub mod license;
mod private_fs;
pub mod runtime;
pub mod server;
pub mod state;
pub mod testing;

pub use host::{Host, HostBuilder, HostError, HostStatus, PluginStatus};
pub use license::{Denial, ReclaimReason, Seats, Terms};
pub use runtime::{InvokeError, Limits, LoadError, PluginSpec};

/// The example plugins bundled with this host, as component bytes.
pub mod examples {
    include!(concat!(env!("OUT_DIR"), "/examples.rs"));
}
