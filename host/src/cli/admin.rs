//! Operator commands on a state directory: trust, license, status, usage, audit.

use super::{Exit, Failure};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use tollgate::issuer::{IssuerPublicKey, format_time, parse_time, read_small_text};
use tollgate::license::{Clock, SystemClock};
use tollgate::state::{State, UsageFilter};

/// Where the host keeps its state.
#[derive(Debug, Args)]
pub(crate) struct StateArg {
    /// State directory [env: TOLLGATE_STATE; default: $XDG_STATE_HOME/tollgate or ~/.local/state/tollgate].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
}

impl StateArg {
    pub(crate) fn dir(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(State::default_dir)
    }

    fn open(&self) -> Result<State, Failure> {
        State::open(&self.dir()).map_err(Failure::usage)
    }
}

/// `tollgate trust …`
#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust an issuer's public key: licenses it signs can be installed.
    Add {
        /// The issuer's public key file (issuer.pub).
        pubkey: PathBuf,
        /// A name to remember the issuer by.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// List trusted issuers.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
}

/// `tollgate license …`
#[derive(Debug, Subcommand)]
pub(crate) enum LicenseCommand {
    /// Verify a license file (signature, trusted issuer, validity) and install its grant.
    Install {
        /// The license file.
        file: PathBuf,
        #[command(flatten)]
        state: StateArg,
    },
    /// List installed grants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// Revoke a license id (every grant of it, including grants installed
    /// later, until `license unrevoke`), or one grant with --grant. A running
    /// host ends the seats within 2 seconds and withholds their calls.
    Revoke {
        /// The license id.
        #[arg(required_unless_present = "grant")]
        id: Option<String>,
        /// Revoke only this grant (its id is in `tollgate license list`), for good.
        #[arg(long, value_name = "GRANT")]
        grant: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Lift the revocation of a license id; its grants in force give seats
    /// again (grants revoked one by one stay revoked).
    Unrevoke {
        /// The license id.
        id: String,
        #[command(flatten)]
        state: StateArg,
    },
}

/// Output formats of `tollgate usage`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// A JSON array.
    Json,
}

/// Arguments of `tollgate usage`.
#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    /// Only events at or after T (RFC 3339, date, or unix seconds).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    since: Option<u64>,
    /// Only events before T.
    #[arg(long, value_name = "T", value_parser = parse_time)]
    until: Option<u64>,
    /// Only this license id.
    #[arg(long = "license", value_name = "ID")]
    license: Option<String>,
    /// Only this plugin.
    #[arg(long = "plugin", value_name = "NAME")]
    plugin: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    #[command(flatten)]
    state: StateArg,
}

fn now() -> u64 {
    SystemClock.now_secs()
}

fn json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).context("serializing")?;
    println!("{text}");
    Ok(())
}

fn seats(s: Option<u32>) -> String {
    s.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

fn when(t: Option<u64>) -> String {
    t.map_or_else(|| "-".to_string(), format_time)
}

pub(crate) fn trust(cmd: TrustCommand) -> Result<Exit, Failure> {
    match cmd {
        TrustCommand::Add {
            pubkey,
            name,
            state,
        } => {
            let text = read_small_text(&pubkey).map_err(Failure::usage)?;
            let key = IssuerPublicKey::from_file_text(&text)
                .with_context(|| format!("{} is not an issuer public key", pubkey.display()))
                .map_err(Failure::usage)?;
            let state = state.open()?;
            let new = state
                .trust(&key, name.as_deref(), now())
                .map_err(Failure::usage)?;
            let verb = if new { "now trusts" } else { "already trusted" };
            println!(
                "{} {verb} issuer key {}",
                state.dir().display(),
                key.key_id()
            );
            Ok(Exit::Ok)
        }
        TrustCommand::List {
            json: as_json,
            state,
        } => {
            let issuers = state.open()?.trusted().map_err(Failure::usage)?;
            if as_json {
                json(&issuers)?;
            } else if issuers.is_empty() {
                println!("no trusted issuers; add one with `tollgate trust add ISSUER.pub`");
            } else {
                println!("{:<18} {:<22} NAME", "KEY", "ADDED");
                for i in issuers {
                    println!(
                        "{:<18} {:<22} {}",
                        i.key_id,
                        format_time(i.added_at),
                        i.name.unwrap_or_default()
                    );
                }
            }
            Ok(Exit::Ok)
        }
    }
}

pub(crate) fn license(cmd: LicenseCommand) -> Result<Exit, Failure> {
    match cmd {
        LicenseCommand::Install { file, state } => {
            let state = state.open()?;
            let installed = state
                .install_file(&file, now())
                .with_context(|| format!("{} was not installed", file.display()))
                .map_err(Failure::usage)?;
            let g = &installed.grant;
            if installed.new {
                println!(
                    "installed license {}: {} seat(s) from issuer {}, expires {} (grant {})",
                    g.license_id,
                    seats(g.seats),
                    g.issuer,
                    when(g.expires_at),
                    g.grant_id
                );
            } else {
                println!(
                    "grant {} of license {} was already installed; nothing changed",
                    g.grant_id, g.license_id
                );
            }
            if g.not_before.is_some_and(|t| t > now()) {
                println!(
                    "it comes into force at {}; until then it gives no seat",
                    when(g.not_before)
                );
            }
            if installed.revoked {
                println!(
                    "license {} is revoked: this grant gives no seat until `tollgate license unrevoke {}`",
                    g.license_id, g.license_id
                );
            }
            Ok(Exit::Ok)
        }
        LicenseCommand::List {
            json: as_json,
            state,
        } => {
            let grants = state.open()?.grants().map_err(Failure::usage)?;
            if as_json {
                json(&grants)?;
            } else if grants.is_empty() {
                println!("no licenses installed; install one with `tollgate license install FILE`");
            } else {
                println!(
                    "{:<24} {:>9} {:<18} {:<22} {:<20} GRANT",
                    "LICENSE", "SEATS", "ISSUER", "EXPIRES", "CUSTOMER"
                );
                for g in grants {
                    println!(
                        "{:<24} {:>9} {:<18} {:<22} {:<20} {}",
                        g.license_id,
                        seats(g.seats),
                        g.issuer,
                        when(g.expires_at),
                        g.customer.unwrap_or_default(),
                        g.grant_id
                    );
                }
            }
            Ok(Exit::Ok)
        }
        LicenseCommand::Revoke {
            id,
            grant: Some(grant),
            state,
        } => {
            let id_of = state
                .open()?
                .revoke_grant(&grant, now())
                .map_err(Failure::usage)?;
            if let Some(id) = id.filter(|id| *id != id_of) {
                return Err(Failure::usage(anyhow::anyhow!(
                    "grant {grant} is a grant of license {id_of}, not {id}; nothing was revoked"
                )));
            }
            println!(
                "grant {grant} of license {id_of} revoked for good: a running host ends its seats within 2 s"
            );
            Ok(Exit::Ok)
        }
        LicenseCommand::Revoke {
            id: Some(id),
            grant: None,
            state,
        } => {
            state.open()?.revoke(&id, now()).map_err(Failure::usage)?;
            println!(
                "license {id} revoked, every grant of it including grants installed later: a running host ends its seats within 2 s; `tollgate license unrevoke {id}` lifts it"
            );
            Ok(Exit::Ok)
        }
        LicenseCommand::Revoke {
            id: None,
            grant: None,
            ..
        } => Err(Failure::usage(anyhow::anyhow!(
            "name the license id to revoke, or --grant GRANT for one grant"
        ))),
        LicenseCommand::Unrevoke { id, state } => {
            let lifted = state.open()?.unrevoke(&id).map_err(Failure::usage)?;
            if lifted {
                println!("license {id} is no longer revoked: its grants in force give seats again");
            } else {
                println!("license {id} was not revoked; nothing changed");
            }
            Ok(Exit::Ok)
        }
    }
}

/// Arguments of `tollgate status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateArg,
}

pub(crate) fn status(args: StatusArgs) -> Result<Exit, Failure> {
    let reports = args.state.open()?.status(now()).map_err(Failure::usage)?;
    if args.json {
        json(&reports)?;
        return Ok(Exit::Ok);
    }
    if reports.is_empty() {
        println!("no licenses installed; install one with `tollgate license install FILE`");
        return Ok(Exit::Ok);
    }
    println!(
        "{:<24} {:>9} {:>6} {:>5} {:>9} {:>9} {:>8} {:>7} {:>8} {:<22} STATE",
        "LICENSE",
        "SEATS",
        "IN-USE",
        "PEAK",
        "CHECKOUTS",
        "RELEASES",
        "RECLAIMS",
        "DENIALS",
        "WITHHELD",
        "EXPIRES"
    );
    for r in reports {
        let c = &r.counters;
        let expired = r.expires_at.is_some_and(|t| now() > t);
        let state = if r.revoked {
            "revoked"
        } else if expired {
            "expired"
        } else {
            "active"
        };
        println!(
            "{:<24} {:>9} {:>6} {:>5} {:>9} {:>9} {:>8} {:>7} {:>8} {:<22} {state}",
            r.id,
            seats(r.seats),
            c.in_use,
            c.peak,
            c.checkouts,
            c.releases,
            c.reclaims.total(),
            c.denials.total(),
            c.withheld,
            when(r.expires_at)
        );
        for g in &r.grants {
            let state = if g.revoked {
                "revoked"
            } else if g.in_force {
                "in force"
            } else if g.not_before.is_some_and(|t| now() < t) {
                "not yet"
            } else {
                "expired"
            };
            let plugins = if g.plugins.is_empty() {
                "any plugin".to_string()
            } else {
                g.plugins.join(",")
            };
            println!(
                "  grant {} ({}): {} seat(s), {} in use, {} .. {}, {plugins}, {state}",
                g.grant_id,
                g.issuer,
                seats(g.seats),
                g.in_use,
                when(g.not_before),
                when(g.expires_at),
            );
        }
    }
    Ok(Exit::Ok)
}

pub(crate) fn usage(args: UsageArgs) -> Result<Exit, Failure> {
    let filter = UsageFilter {
        since: args.since,
        until: args.until,
        license: args.license,
        plugin: args.plugin,
    };
    let rows = args.state.open()?.usage(&filter).map_err(Failure::usage)?;
    match args.format {
        Format::Json => json(&rows)?,
        Format::Csv => {
            println!("day,license_id,plugin,checkouts,releases,reclaims,denials,withheld");
            for r in rows {
                println!(
                    "{},{},{},{},{},{},{},{}",
                    r.day,
                    r.license_id,
                    r.plugin,
                    r.checkouts,
                    r.releases,
                    r.reclaims,
                    r.denials,
                    r.withheld
                );
            }
        }
        Format::Table => {
            println!(
                "{:<10} {:<24} {:<20} {:>9} {:>9} {:>8} {:>7} {:>8}",
                "DAY",
                "LICENSE",
                "PLUGIN",
                "CHECKOUTS",
                "RELEASES",
                "RECLAIMS",
                "DENIALS",
                "WITHHELD"
            );
            for r in rows {
                println!(
                    "{:<10} {:<24} {:<20} {:>9} {:>9} {:>8} {:>7} {:>8}",
                    r.day,
                    r.license_id,
                    r.plugin,
                    r.checkouts,
                    r.releases,
                    r.reclaims,
                    r.denials,
                    r.withheld
                );
            }
        }
    }
    Ok(Exit::Ok)
}

/// `tollgate audit …`
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the ledger's hash chain: every edited, inserted or deleted row is named.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
}

pub(crate) fn audit(cmd: AuditCommand) -> Result<Exit, Failure> {
    let AuditCommand::Verify {
        json: as_json,
        state,
    } = cmd;
    let report = state.open()?.audit().map_err(Failure::usage)?;
    if as_json {
        json(&report)?;
    } else if report.ok() {
        println!(
            "ledger verified: {} rows, chain head at row {}",
            report.rows, report.head_seq
        );
    } else {
        println!("ledger FAILED verification ({} rows read):", report.rows);
        for p in &report.problems {
            println!("  - {p}");
        }
    }
    Ok(if report.ok() {
        Exit::Ok
    } else {
        Exit::AuditFailed
    })
}
