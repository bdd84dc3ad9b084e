//! `tollgate store …`: the shared store of several hosts.

use super::{Exit, Failure};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use tollgate::store::postgres::check_url;
use tollgate::store::postgres::migrate::{Moved, SourceDir};
use tollgate::store::state::HOST_KEY_FILE;

/// `tollgate store …`
#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Move a single host's state directory into a shared PostgreSQL store.
    ///
    /// Moves the trusted issuer keys (with their names and id scopes), every
    /// installed grant (its signed license file, installed again through the
    /// store's own checks as of when it was installed here), the
    /// revocations of license ids and of single grants (with their times),
    /// and the whole ledger as this host's hash chain in the store: the same
    /// rows with the same hashes. The host's id in the store is the id of
    /// STATE_DIR/host.key, made if the directory has none.
    ///
    /// Refused, with nothing moved: while a host runs on STATE_DIR; when its
    /// ledger's chain does not verify (the first bad row is named); when the
    /// URL is bad or the store cannot be reached; and when the store holds
    /// an item differently (the same issuer key under another name or scope,
    /// another grant with the same id, other ledger rows of this host).
    /// After moving it verifies this host's chain in the store and compares
    /// its rows and head hash with the local chain.
    ///
    /// Safe to run again: what the store holds already is counted, not moved
    /// twice. STATE_DIR's data is only read; it stays this host's ledger
    /// spool. Then start the host with `store = "URL"` in its tollgate.toml
    /// and the same state directory. Exits 2 when refused.
    Migrate(MigrateArgs),
}

/// Arguments of `tollgate store migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The state directory of the host to move (stop the host first).
    #[arg(long, value_name = "STATE_DIR")]
    from: PathBuf,
    /// The shared store: postgres://USER@HOST:PORT/DB (a password belongs
    /// in a password file, not the URL).
    #[arg(long, value_name = "URL")]
    to: String,
}

pub(crate) fn run(cmd: StoreCommand) -> Result<Exit, Failure> {
    match cmd {
        StoreCommand::Migrate(args) => migrate(&args),
    }
}

/// `moved N, M already there`, for the summary.
fn counted(m: Moved) -> String {
    format!("{} moved, {} already there", m.moved, m.already)
}

fn migrate(args: &MigrateArgs) -> Result<Exit, Failure> {
    check_url(&args.to)
        .map_err(anyhow::Error::msg)
        .map_err(Failure::usage)?;
    let source = SourceDir::open(&args.from).map_err(Failure::usage)?;
    let (store, rt) = super::admin::connect_store(&args.to)?;
    let done = rt
        .block_on(store.migrate_from(&source))
        .map_err(Failure::usage)?;
    drop(source);
    println!(
        "state directory {} is in the shared store as host {}",
        args.from.display(),
        done.host_id
    );
    println!("  issuers:           {}", counted(done.issuers));
    println!("  grants:            {}", counted(done.grants));
    println!("  revoked licenses:  {}", counted(done.revocations));
    println!("  revoked grants:    {}", counted(done.grant_revocations));
    println!("  ledger rows:       {}", counted(done.rows));
    println!(
        "  chain verified in the store: {} rows, head hash {}",
        done.rows.moved + done.rows.already,
        done.head_hash
    );
    if done.host_key_made {
        println!(
            "  made the host key {} (the host's id in the store; keep it with the state directory)",
            args.from.join(HOST_KEY_FILE).display()
        );
    }
    println!(
        "next: start this host with `store = \"URL\"` (the URL given to --to) and state directory {} in its tollgate.toml; other hosts get state directories of their own and the same store. `tollgate audit verify --store URL` checks every host's chain.",
        args.from.display()
    );
    Ok(Exit::Ok)
}
