//! tollgate: a WebAssembly component plugin host with a license manager.
//!
//! Plugins are Wasm components of the WIT world `tollgate:plugin/service-offer`.
//! They ask the host for a license by id, receive a lease, and send it back;
//! the host counts every seat and withholds the result of any call that ran
//! without the licenses its plugin requires. Start with [`Host`].
//!
//! This crate is the runtime: the wasmtime engine, linker and sandbox, one
//! invocation per call, [`Host`], the [`testing`] harness, and
//! [`licensing`], the host side of the licensing interface for embedders
//! who run plugins in a wasmtime store of their own. The license
//! core ([`license`]) and the SQLite store ([`store`]) are their own crates,
//! re-exported here so one dependency reaches all of them.
#![deny(missing_docs)]

mod host;
pub mod licensing;
pub mod runtime;
pub mod testing;

pub use tollgate_license as license;
pub use tollgate_store as store;

pub use host::{Host, HostBuilder, HostError, HostStatus, PluginStatus};
pub use license::{Denial, ReclaimReason, Seats, Terms};
pub use runtime::{InvokeError, Limits, LoadError, PluginSpec};
