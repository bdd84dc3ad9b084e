//! tollgate's storage: everything that touches SQL. The schema and its
//! migrations, the group-committing ledger writer and its hash chain, trust,
//! grants, revocations, audit and usage reports, all in one SQLite database
//! (WAL, `synchronous=FULL`) in the host's state directory. It implements
//! the traits of `tollgate-license`; a PostgreSQL store is a second module
//! beside [`state`] and [`ledger`].
#![deny(missing_docs)]

pub mod chain;
pub mod files;
pub mod ledger;
mod open;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod state;

pub use ledger::{CommitStats, SqliteLedger};
pub use state::{State, StateError};
