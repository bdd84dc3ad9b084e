//! The `tollgate` command: run plugins, serve them over HTTP, manage
//! issuers, licenses and the ledger. `anyhow` lives here, at the edge.

mod admin;
mod demo;
mod inspect;
mod issuer;
mod new;
mod run;
mod serve;
mod store;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exit codes shared by every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Everything worked.
    Ok = 0,
    /// Bad usage or bad input.
    Usage = 2,
    /// A result was withheld as unlicensed, or a license was denied.
    Unlicensed = 3,
    /// A plugin trapped, failed or timed out.
    PluginFailed = 4,
    /// `audit verify` found the ledger altered.
    AuditFailed = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: Exit,
    pub(crate) error: anyhow::Error,
}

impl Failure {
    pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            exit: Exit::Usage,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            exit: Exit::PluginFailed,
            error,
        }
    }
}

/// tollgate: run WebAssembly plugins that must hold a license to do their work.
#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "\
How a call is licensed: the plugin asks the host for a seat of a license by
id; a seat comes from one grant (one signed license file) in force at that
moment that entitles the plugin. A seat that a call takes stays taken until
the call ends: sending the license back (release, or dropping the handle)
ends the lease, but the seat lingers with the call and returns to the pool
when the call ends. The result is delivered only if, for every license the
plugin requires, the call held a seat to its end from a grant still in force
then; otherwise it is withheld and none of the plugin's own bytes reach the
caller. Each trusted issuer has an id scope (`trust add --ids PATTERN...`,
default `*`: ids no other issuer was given); a grant outside its issuer's
scope, or of an id another issuer granted without both scopes naming it,
gives no seat. Every seat, lease, refusal and withheld call is a
hash-chained ledger row; `audit checkpoint` signs the chain's head to keep
elsewhere, and `audit verify --checkpoint FILE` checks the ledger still
extends it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a plugin component once (or many times) under in-memory licenses.
    Run(Box<run::RunArgs>),
    /// Show the bundled example plugins asking for, using and returning licenses.
    Demo(demo::DemoArgs),
    /// Issue licenses: make a signing key, sign license files.
    #[command(subcommand)]
    Issuer(issuer::IssuerCommand),
    /// Manage the issuer keys this host trusts.
    #[command(subcommand)]
    Trust(admin::TrustCommand),
    /// Install, list and revoke licenses.
    #[command(subcommand)]
    License(admin::LicenseCommand),
    /// Per license: issued seats, in use, peak, checkouts, releases, reclaims, denials, expiry.
    Status(admin::StatusArgs),
    /// Usage from the ledger, per license, plugin and day.
    Usage(admin::UsageArgs),
    /// Run the plugin host as an HTTP service (see `tollgate.toml`).
    Serve(serve::ServeArgs),
    /// Check a config file and explain every problem in it, with its line.
    CheckConfig(serve::CheckArgs),
    /// Scaffold a plugin project (Rust, Python or JavaScript) that builds and runs licensed.
    New(new::NewArgs),
    /// Show a plugin's world, imports, exports, sha256 and WIT version, and whether this host runs it.
    Inspect(inspect::InspectArgs),
    /// Check the usage ledger's hash chain; make and check signed checkpoints of it.
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// The shared store of several hosts: move a single host's state directory into it.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// Logs to stderr, filtered by `TOLLGATE_LOG`; a server logs every call by
/// default. Plugin stdout/stderr is at debug level (target
/// `tollgate::plugin`), so it shows only when asked for.
pub(crate) fn init_logging(server: bool, json: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// Parses arguments, runs the command, prints any error and maps it to an exit code.
fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve(_) => {} // logs once its config says how
        _ => init_logging(false, false),
    }
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Demo(args) => demo::run(args),
        Command::Issuer(cmd) => issuer::run(cmd),
        Command::Trust(cmd) => admin::trust(cmd),
        Command::License(cmd) => admin::license(cmd),
        Command::Status(args) => admin::status(args),
        Command::Usage(args) => admin::usage(args),
        Command::Audit(cmd) => admin::audit(cmd),
        Command::Store(cmd) => store::run(cmd),
        Command::Serve(args) => serve::serve(args),
        Command::Inspect(args) => inspect::run(args),
        Command::New(args) => new::run(args),
        Command::CheckConfig(args) => serve::check(args),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(Failure { exit, error }) => {
            eprintln!("error: {error:#}");
            exit.into()
        }
    }
}
