//! Operator commands on a state directory: trust, license, status, usage, audit.

use super::{Exit, Failure};
use anyhow::{Context, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use std::io::Write as _;
use std::path::PathBuf;
use tollgate::license::issuer::{IssuerPublicKey, format_time, parse_time, read_small_text};
use tollgate::license::{Clock, SystemClock};
use tollgate::store::postgres::PgStore;
use tollgate::store::postgres::grants::HostShare;
use tollgate::store::state::{
    Checkpoint, CheckpointReport, ExportCursor, Grant, HostKey, Installed, IntegrityError, State,
    StateError, TrustedIssuer, UsageFilter,
};

/// Where the host keeps its state.
#[derive(Debug, Args)]
pub(crate) struct StateArg {
    /// State directory [env: TOLLGATE_STATE; default: $XDG_STATE_HOME/tollgate or ~/.local/state/tollgate].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// The shared store of several hosts, a postgres:// URL, instead of the
    /// state directory (trust add/list, license install/list/revoke/unrevoke,
    /// status, usage, audit verify).
    #[arg(
        long,
        value_name = "URL",
        env = "TOLLGATE_STORE",
        hide_env_values = true
    )]
    store: Option<String>,
}

impl StateArg {
    pub(crate) fn dir(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(State::default_dir)
    }

    /// The state directory; refused with `--store`, for a command that
    /// works on a state directory only.
    fn open(&self) -> Result<State, Failure> {
        if let Some(url) = &self.store {
            return Err(Failure::usage(anyhow::anyhow!(
                "this command works on a state directory only, for now; with a shared store ({url}) use `trust add`, `trust list`, `trust scope`, `license install`, `license list`, `license revoke`, `license unrevoke`, `status`, `usage` or `audit verify`, or drop --store (and TOLLGATE_STORE)"
            )));
        }
        State::open(&self.dir()).map_err(Failure::usage)
    }

    /// The state directory, or the shared store `--store` names.
    fn target(&self) -> Result<Target, Failure> {
        match &self.store {
            None => Ok(Target::Dir(self.open()?)),
            Some(url) => {
                let (store, rt) = connect_store(url)?;
                Ok(Target::Shared { store, rt })
            }
        }
    }
}

/// Connects to the shared store at `url` (migrating its schema), with the
/// runtime its calls run on.
pub(crate) fn connect_store(url: &str) -> Result<(PgStore, tokio::runtime::Runtime), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .map_err(Failure::usage)?;
    let store = rt
        .block_on(PgStore::connect(url, 1))
        .map_err(Failure::usage)?;
    Ok((store, rt))
}

/// Where an operator command acts: one host's state directory, or the
/// store several hosts share. Both make the same checks.
enum Target {
    /// A state directory.
    Dir(State),
    /// A shared store, with the runtime its calls run on.
    Shared {
        store: PgStore,
        rt: tokio::runtime::Runtime,
    },
}

impl Target {
    /// What it is, for messages.
    fn describe(&self) -> String {
        match self {
            Target::Dir(state) => state.dir().display().to_string(),
            Target::Shared { .. } => "the shared store".to_string(),
        }
    }

    fn trust(
        &self,
        key: &IssuerPublicKey,
        name: Option<&str>,
        ids: Option<&[String]>,
    ) -> anyhow::Result<bool> {
        Ok(match self {
            Target::Dir(state) => state.trust_scoped(key, name, ids, now())?,
            Target::Shared { store, rt } => rt.block_on(store.trust(key, name, ids, now()))?,
        })
    }

    fn trusted(&self) -> anyhow::Result<Vec<TrustedIssuer>> {
        Ok(match self {
            Target::Dir(state) => state.trusted()?,
            Target::Shared { store, rt } => rt.block_on(store.trusted())?,
        })
    }

    fn install(&self, file: &std::path::Path) -> anyhow::Result<Installed> {
        Ok(match self {
            Target::Dir(state) => state.install_file(file, now())?,
            Target::Shared { store, rt } => {
                let text = read_small_text(file)?;
                rt.block_on(store.install_text(&text, now()))?
            }
        })
    }

    fn revoke(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Target::Dir(state) => state.revoke(id, now())?,
            Target::Shared { store, rt } => rt.block_on(store.revoke(id, now()))?,
        }
        Ok(())
    }

    fn revoke_grant(&self, grant: &str) -> anyhow::Result<String> {
        Ok(match self {
            Target::Dir(state) => state.revoke_grant(grant, now())?,
            Target::Shared { store, rt } => rt.block_on(store.revoke_grant(grant, now()))?,
        })
    }

    fn grants(&self) -> anyhow::Result<Vec<Grant>> {
        Ok(match self {
            Target::Dir(state) => state.grants()?,
            Target::Shared { store, rt } => rt.block_on(store.grants())?,
        })
    }

    fn unrevoke(&self, id: &str) -> anyhow::Result<bool> {
        Ok(match self {
            Target::Dir(state) => state.unrevoke(id)?,
            Target::Shared { store, rt } => rt.block_on(store.unrevoke(id))?,
        })
    }
}

/// `tollgate trust …`
#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust an issuer's public key: licenses it signs for ids in its
    /// issuer's scope can be installed.
    ///
    /// Scopes belong to the issuer's name, not to a key: a new key added
    /// with the same --name (a rotated key) keeps the issuer's scope. A key
    /// added without --name is named by its key id. An id one issuer has
    /// granted cannot be granted by another unless both scopes name it
    /// explicitly (by a pattern other than the default `*`).
    Add {
        /// The issuer's public key file (issuer.pub).
        pubkey: PathBuf,
        /// The issuer's name; its keys share one scope [default: the key id].
        #[arg(long)]
        name: Option<String>,
        /// License id patterns this issuer may grant (`*`: any run of
        /// characters, `?`: one). Without --ids a new name gets the default
        /// scope `*`, which covers any id that no other issuer's scope names
        /// explicitly, so it never lets one issuer take another's ids; a
        /// name that has a scope keeps it. Refused if the name already has
        /// another scope (change it with `trust scope`).
        #[arg(long, value_name = "PATTERN", num_args = 1..)]
        ids: Option<Vec<String>>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Set the license id patterns an issuer (by name) may grant, replacing
    /// its scope; `*` alone is the default scope (ids no other issuer names
    /// explicitly). Installed grants outside the new scope stop giving
    /// seats (a running host within 2 s) until the scope covers them again.
    Scope {
        /// The issuer's name, as `tollgate trust list` shows it.
        name: String,
        /// The patterns (`*`: any run of characters, `?`: one).
        #[arg(long, value_name = "PATTERN", num_args = 1.., required = true)]
        ids: Vec<String>,
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
    /// Show the license rules every host on a shared store runs with, or
    /// set them from a config file's [license.*] tables (running hosts put
    /// them in force within 2 s; a host whose own config differs refuses
    /// to start).
    Rules {
        /// The shared store.
        #[arg(
            long,
            value_name = "URL",
            env = "TOLLGATE_STORE",
            hide_env_values = true
        )]
        store: String,
        /// Set the shared rules from this config file's [license.*] tables.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
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
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct UsageArgs {
    #[command(subcommand)]
    command: Option<UsageCommand>,
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
    /// Sum per UTC day, or per hour (the DAY column then holds YYYY-MM-DDTHH:00Z).
    #[arg(long, value_enum, default_value_t = Per::Day)]
    per: Per,
    #[command(flatten)]
    state: StateArg,
}

/// The period `tollgate usage` sums over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Per {
    /// Per UTC day.
    Day,
    /// Per hour.
    Hour,
}

/// `tollgate usage` subcommands.
#[derive(Debug, Subcommand)]
enum UsageCommand {
    /// Every ledger row after a cursor as a CloudEvents 1.0 JSON line, for a
    /// billing system (Stripe meters, OpenMeter, Lago): `id` is stable per
    /// row and host, an idempotency key.
    #[command(after_help = "\
The cursor is opaque: pass back what the last export printed (or kept in
--cursor-file). Rows are read once committed; an export stopped at any
point resumes from its cursor file with nothing doubled or lost.

Examples:
  tollgate usage export --after 0 --limit 100
  tollgate usage export --cursor-file billing.cursor >> events.jsonl")]
    Export(ExportArgs),
}

/// Arguments of `tollgate usage export`.
#[derive(Debug, Args)]
struct ExportArgs {
    /// Start after this cursor, or after this ledger row number (0: from
    /// the first row). Default: the cursor in --cursor-file, else 0.
    #[arg(long, value_name = "CURSOR|SEQ")]
    after: Option<String>,
    /// Most events to print (default: every row committed so far).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Read the cursor from FILE (when --after is not given) and write the
    /// next one there after every page printed.
    #[arg(long, value_name = "FILE")]
    cursor_file: Option<PathBuf>,
    /// Event format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Cloudevents)]
    format: ExportFormat,
    #[command(flatten)]
    state: StateArg,
}

/// Formats of `usage export`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    /// CloudEvents 1.0, structured JSON, one event per line.
    Cloudevents,
}

fn now() -> u64 {
    SystemClock.now_secs()
}

fn json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).context("serializing")?;
    println!("{text}");
    Ok(())
}

/// Prints `rows` as JSON, or as a table under `columns` (a header and
/// its width each: negative aligns right, 0 for the last, unpadded), or
/// `empty` when there are none.
fn listing<T: serde::Serialize>(
    rows: &[T],
    as_json: bool,
    empty: &str,
    columns: &[(&str, isize)],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<(), Failure> {
    if as_json {
        return json(&rows);
    }
    if rows.is_empty() {
        println!("{empty}");
        return Ok(());
    }
    let line = |texts: Vec<String>| {
        let padded: Vec<String> = columns
            .iter()
            .zip(texts)
            .map(|(&(_, width), text)| match width {
                0 => text,
                w if w < 0 => format!("{text:>0$}", w.unsigned_abs()),
                w => format!("{text:<0$}", w.unsigned_abs()),
            })
            .collect();
        println!("{}", padded.join(" "));
    };
    line(columns.iter().map(|(name, _)| name.to_string()).collect());
    for row in rows {
        line(cells(row));
    }
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
            ids,
            state,
        } => {
            let text = read_small_text(&pubkey).map_err(Failure::usage)?;
            let key = IssuerPublicKey::from_file_text(&text)
                .with_context(|| format!("{} is not an issuer public key", pubkey.display()))
                .map_err(Failure::usage)?;
            let target = state.target()?;
            let new = target
                .trust(&key, name.as_deref(), ids.as_deref())
                .with_context(|| format!("issuer key {} was not trusted", key.key_id()))
                .map_err(Failure::usage)?;
            let issuer = target
                .trusted()
                .map_err(Failure::usage)?
                .into_iter()
                .find(|i| i.key_id == key.key_id());
            let (issuer_name, scope) = issuer
                .map(|i| (i.name.unwrap_or_default(), i.scope))
                .unwrap_or_default();
            let verb = if new { "now trusts" } else { "already trusted" };
            println!(
                "{} {verb} issuer key {} as issuer {issuer_name:?}, which may grant license ids [{}]",
                target.describe(),
                key.key_id(),
                scope.join(", ")
            );
            if !new && name.as_deref().is_some_and(|n| n.trim() != issuer_name) {
                println!("the key keeps the name it was trusted under");
            }
            Ok(Exit::Ok)
        }
        TrustCommand::Scope { name, ids, state } => {
            let state = match state.target()? {
                Target::Dir(state) => state,
                Target::Shared { store, rt } => {
                    let old = rt
                        .block_on(store.set_scope(&name, &ids))
                        .map_err(Failure::usage)?;
                    let issuers = rt.block_on(store.trusted()).map_err(Failure::usage)?;
                    let now = issuers
                        .iter()
                        .find(|i| i.name.as_deref() == Some(name.as_str()))
                        .map(|i| i.scope.join(", "))
                        .unwrap_or_default();
                    println!(
                        "issuer {name:?} may now grant license ids [{now}] (was [{}]) on the shared store; every host applies it within 2 s",
                        old.join(", ")
                    );
                    return Ok(Exit::Ok);
                }
            };
            let old = state.set_scope(&name, &ids).map_err(Failure::usage)?;
            println!(
                "issuer {name:?} may now grant license ids [{}] (was [{}]); a running host applies it within 2 s",
                state.scope_of(&name).map_err(Failure::usage)?.join(", "),
                old.join(", ")
            );
            let problems = state.scope_problems().map_err(Failure::usage)?;
            for p in &problems {
                println!("warning: {}", p.decide);
            }
            Ok(Exit::Ok)
        }
        TrustCommand::List {
            json: as_json,
            state,
        } => {
            let issuers = state.target()?.trusted().map_err(Failure::usage)?;
            listing(
                &issuers,
                as_json,
                "no trusted issuers; add one with `tollgate trust add ISSUER.pub`",
                &[("KEY", 18), ("ADDED", 22), ("NAME", 20), ("SCOPE", 0)],
                |i| {
                    vec![
                        i.key_id.clone(),
                        format_time(i.added_at),
                        i.name.clone().unwrap_or_default(),
                        i.scope.join(" "),
                    ]
                },
            )?;
            Ok(Exit::Ok)
        }
    }
}

pub(crate) fn license(cmd: LicenseCommand) -> Result<Exit, Failure> {
    match cmd {
        LicenseCommand::Install { file, state } => {
            let installed = state
                .target()?
                .install(&file)
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
            let grants = state.target()?.grants().map_err(Failure::usage)?;
            listing(
                &grants,
                as_json,
                "no licenses installed; install one with `tollgate license install FILE`",
                &[
                    ("LICENSE", 24),
                    ("SEATS", -9),
                    ("ISSUER", 18),
                    ("EXPIRES", 22),
                    ("CUSTOMER", 20),
                    ("GRANT", 0),
                ],
                |g| {
                    vec![
                        g.license_id.clone(),
                        seats(g.seats),
                        g.issuer.clone(),
                        when(g.expires_at),
                        g.customer.clone().unwrap_or_default(),
                        g.grant_id.clone(),
                    ]
                },
            )?;
            Ok(Exit::Ok)
        }
        LicenseCommand::Revoke {
            id,
            grant: Some(grant),
            state,
        } => {
            let id_of = state
                .target()?
                .revoke_grant(&grant)
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
            state.target()?.revoke(&id).map_err(Failure::usage)?;
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
        LicenseCommand::Rules { store, config } => shared_rules(&store, config.as_deref()),
        LicenseCommand::Unrevoke { id, state } => {
            let lifted = state.target()?.unrevoke(&id).map_err(Failure::usage)?;
            if lifted {
                println!("license {id} is no longer revoked: its grants in force give seats again");
            } else {
                println!("license {id} was not revoked; nothing changed");
            }
            Ok(Exit::Ok)
        }
    }
}

/// `tollgate license rules`: prints the shared rules, or sets them from
/// `config` and prints what changed.
fn shared_rules(url: &str, config: Option<&std::path::Path>) -> Result<Exit, Failure> {
    let (store, rt) = connect_store(url)?;
    let Some(config) = config else {
        let rules = rt.block_on(store.shared_rules()).map_err(Failure::usage)?;
        match rules {
            Some(rules) => println!(
                "{}",
                serde_json::to_string_pretty(&rules)
                    .map_err(|e| Failure::usage(anyhow::Error::from(e)))?
            ),
            None => println!(
                "no license rules set yet: the first host to start sets them from its config, or set them with `tollgate license rules --store URL --config FILE`"
            ),
        }
        return Ok(Exit::Ok);
    };
    let rules = tollgate_server::config::Config::load(config)
        .map_err(Failure::usage)?
        .licenses;
    let changed = rt
        .block_on(store.set_rules(
            &rules,
            &format!("tollgate license rules --config {}", config.display()),
            now(),
        ))
        .map_err(Failure::usage)?;
    if changed.is_empty() {
        println!(
            "the shared license rules already were those of {}; nothing changed",
            config.display()
        );
    } else {
        println!(
            "the shared license rules are now those of {} ({} rule set(s)); running hosts put them in force within 2 s. Changed:",
            config.display(),
            rules.len()
        );
        for change in changed {
            println!("  {change}");
        }
    }
    Ok(Exit::Ok)
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
    if args.state.store.is_some()
        && let Target::Shared { store, rt } = args.state.target()?
    {
        return shared_status(&store, &rt, args.json);
    }
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
        for report in &r.grants {
            let g = &report.grant;
            let state = if report.revoked {
                "revoked"
            } else if report.left_out {
                "left out (issuer scopes)"
            } else if report.in_force {
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
                report.in_use,
                when(g.not_before),
                when(g.expires_at),
            );
        }
        for c in &r.conflicts {
            println!("  warning: {}", c.decide);
        }
    }
    Ok(Exit::Ok)
}

pub(crate) fn usage(args: UsageArgs) -> Result<Exit, Failure> {
    if let Some(UsageCommand::Export(export)) = args.command {
        return usage_export(export);
    }
    let filter = UsageFilter {
        since: args.since,
        until: args.until,
        license: args.license,
        plugin: args.plugin,
        hourly: args.per == Per::Hour,
    };
    let rows = match args.state.target()? {
        Target::Dir(state) => state.usage(&filter).map_err(Failure::usage)?,
        Target::Shared { store, rt } => {
            rt.block_on(store.usage(&filter)).map_err(Failure::usage)?
        }
    };
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
    ///
    /// The chain alone cannot show a ledger whose tail was cut off (with the
    /// chain head moved back) or whose chain was computed again from start:
    /// pass --checkpoint with a checkpoint kept outside the state directory
    /// to catch those. Exits 5 when anything does not verify.
    Verify {
        /// Also check that the ledger still extends this checkpoint (written
        /// by `tollgate audit checkpoint`) and that this host signed it.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Re-compute only the rows after the --checkpoint's row, once the
        /// checkpoint verifies: the time grows with what was added since,
        /// not with the whole ledger. Rows up to the checkpoint are not
        /// read again (they were verified when it was made); run without
        /// this flag for the full check. A state directory only.
        #[arg(long, requires = "checkpoint")]
        since_checkpoint: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// Verify the chain, then print a checkpoint of its last row (sequence
    /// number, hash, time) signed with this host's key.
    ///
    /// Keep checkpoints outside the state directory (another machine, a
    /// write-once store): they are what shows later that the ledger was not
    /// cut short or rewritten. The host key is STATE/host.key (mode 0600),
    /// made on first use; the signature says which host made a checkpoint.
    /// Exits 5, printing nothing to stdout, when the chain does not verify.
    Checkpoint {
        /// Write the checkpoint to FILE (mode 0600) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        state: StateArg,
    },
}

pub(crate) fn audit(cmd: AuditCommand) -> Result<Exit, Failure> {
    match cmd {
        AuditCommand::Verify {
            checkpoint,
            since_checkpoint,
            json: as_json,
            state,
        } => verify(checkpoint, since_checkpoint, as_json, &state),
        AuditCommand::Checkpoint { out, state } => checkpoint(out, &state),
    }
}

fn verify(
    checkpoint: Option<PathBuf>,
    since_checkpoint: bool,
    as_json: bool,
    state: &StateArg,
) -> Result<Exit, Failure> {
    let checkpoint = checkpoint
        .map(|path| Checkpoint::read(&path))
        .transpose()
        .map_err(Failure::usage)?;
    if state.store.is_some()
        && let Target::Shared { store, rt } = state.target()?
    {
        if since_checkpoint {
            return Err(Failure::usage(anyhow::anyhow!(
                "--since-checkpoint checks a host's state directory; with --store every host's chain is verified in full: leave the flag out"
            )));
        }
        return verify_shared(&store, &rt, checkpoint.as_ref(), as_json);
    }
    let state = state.open()?;
    let anchored = checkpoint
        .as_ref()
        .map(|cp| state.verify_checkpoint(cp))
        .transpose()
        .map_err(Failure::usage)?;
    // Only the rows after a checkpoint that verifies; else all of them.
    let report = match (&checkpoint, &anchored) {
        (Some(cp), Some(c)) if since_checkpoint && c.ok() && cp.seq > 0 => {
            state.audit_after(cp.seq, cp.hash)
        }
        _ => state.audit(),
    }
    .map_err(Failure::usage)?;
    let ok = report.ok() && anchored.as_ref().is_none_or(CheckpointReport::ok);
    if as_json {
        let mut value = serde_json::to_value(&report).context("serializing")?;
        value["checkpoint"] = serde_json::to_value(&anchored).context("serializing")?;
        json(&value)?;
    } else {
        if report.ok() && report.after > 0 {
            println!(
                "ledger verified after checkpoint row {}: {} rows, chain head at row {}",
                report.after, report.rows, report.head_seq
            );
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
        if let Some(c) = &anchored {
            print_checkpoint(c, "signed by this host");
        }
    }
    Ok(if ok { Exit::Ok } else { Exit::AuditFailed })
}

/// Prints what a checkpoint's check found; `whose` says whose ledger the
/// row is in.
fn print_checkpoint(c: &CheckpointReport, whose: &str) {
    if c.ok() {
        println!(
            "checkpoint verified: the ledger extends row {} ({}) {whose} (key {}) at {}",
            c.seq, c.hash, c.host_key, c.time
        );
    } else {
        println!(
            "checkpoint FAILED: row {} at {}, signed by host key {}:",
            c.seq, c.time, c.host_key
        );
        for p in &c.problems {
            println!("  - {p}");
        }
    }
}

/// Every grant on the shared store with each host's batch and seats in use.
fn shared_status(
    store: &PgStore,
    rt: &tokio::runtime::Runtime,
    as_json: bool,
) -> Result<Exit, Failure> {
    let grants = rt.block_on(store.shared_status()).map_err(Failure::usage)?;
    if as_json {
        json(&grants)?;
        return Ok(Exit::Ok);
    }
    if grants.is_empty() {
        println!(
            "no licenses on the shared store; install one with `tollgate license install --store URL FILE`"
        );
    }
    let mut license = "";
    for g in &grants {
        if g.license_id != license {
            license = &g.license_id;
            println!("license {license}");
        }
        let per_host = |f: fn(&HostShare) -> u32| {
            let parts: Vec<String> = g
                .hosts
                .iter()
                .filter(|h| f(h) > 0)
                .map(|h| format!("{} {}", h.host, f(h)))
                .collect();
            let total: u32 = g.hosts.iter().map(f).sum();
            if parts.is_empty() {
                total.to_string()
            } else {
                format!("{total} ({})", parts.join(", "))
            }
        };
        println!(
            "  grant {}: {} seat(s){}, in batches {}, in use {}, waiting {}",
            g.grant_id,
            seats(g.seats),
            if g.revoked { ", revoked" } else { "" },
            per_host(|h| h.batch),
            per_host(|h| h.in_use),
            per_host(|h| h.waiting),
        );
        let holders: Vec<String> = g
            .hosts
            .iter()
            .flat_map(|h| {
                h.holders
                    .iter()
                    .map(move |(plugin, n)| format!("{plugin} {n} on {}", h.host))
            })
            .collect();
        if !holders.is_empty() {
            println!("    held by {}", holders.join(", "));
        }
    }
    Ok(Exit::Ok)
}

/// Verifies every host's chain in the shared ledger.
fn verify_shared(
    store: &PgStore,
    rt: &tokio::runtime::Runtime,
    checkpoint: Option<&Checkpoint>,
    as_json: bool,
) -> Result<Exit, Failure> {
    let anchored = checkpoint
        .map(|cp| rt.block_on(store.verify_checkpoint(cp)))
        .transpose()
        .map_err(Failure::usage)?;
    let hosts = rt.block_on(store.ledger_hosts()).map_err(Failure::usage)?;
    let mut reports = Vec::new();
    for (host, rows) in hosts {
        let verified = rt
            .block_on(store.verify_host_chain(&host))
            .map_err(Failure::usage)?;
        reports.push(serde_json::json!({
            "host": host,
            "rows": rows,
            "ok": verified.is_ok(),
            "broken_at": verified.err(),
        }));
    }
    let ok = reports.iter().all(|r| r["ok"] == true)
        && anchored.as_ref().is_none_or(CheckpointReport::ok);
    if as_json {
        match &anchored {
            None => json(&reports)?,
            Some(c) => json(&serde_json::json!({ "hosts": reports, "checkpoint": c }))?,
        }
        return Ok(if ok { Exit::Ok } else { Exit::AuditFailed });
    }
    if let Some(c) = &anchored {
        print_checkpoint(c, "signed by that host, in its chain in the shared store");
    }
    if reports.is_empty() {
        println!("the shared ledger has no rows yet");
    } else {
        for r in &reports {
            match r["broken_at"].as_u64() {
                None => println!("host {}: {} rows, chain verified", r["host"], r["rows"]),
                Some(seq) => println!(
                    "host {}: chain FAILED verification at row {seq} (edited, inserted or deleted)",
                    r["host"]
                ),
            }
        }
    }
    Ok(if ok { Exit::Ok } else { Exit::AuditFailed })
}

fn checkpoint(out: Option<PathBuf>, state: &StateArg) -> Result<Exit, Failure> {
    let state = state.open()?;
    let checkpoint = match state.checkpoint(now()) {
        Ok(cp) => cp,
        Err(StateError::Integrity(e @ IntegrityError::ChainBroken(_))) => {
            return Err(Failure {
                exit: Exit::AuditFailed,
                error: e.into(),
            });
        }
        Err(e) => return Err(Failure::usage(e)),
    };
    let text = checkpoint.to_text();
    match out {
        None => print!("{text}"),
        Some(path) => {
            write_private(&path, &text)
                .with_context(|| format!("cannot write the checkpoint to {}", path.display()))
                .map_err(Failure::usage)?;
            eprintln!(
                "checkpoint of row {} written to {}; keep a copy outside {}",
                checkpoint.seq,
                path.display(),
                state.dir().display()
            );
        }
    }
    Ok(Exit::Ok)
}

/// Writes `text` to `path`, replacing it, readable by this user only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// `tollgate usage export`: pages of CloudEvents to stdout, the cursor
/// saved after each page.
fn usage_export(args: ExportArgs) -> Result<Exit, Failure> {
    let ExportFormat::Cloudevents = args.format;
    let state = match args.state.target()? {
        Target::Dir(state) => state,
        Target::Shared { .. } => {
            return Err(Failure::usage(anyhow!(
                "usage export reads one host's state directory (its ledger chain); run it with --state on each host"
            )));
        }
    };
    let host = HostKey::open_or_create(state.dir())
        .map_err(Failure::usage)?
        .key_id();
    let start = match (&args.after, &args.cursor_file) {
        (Some(after), _) => after.clone(),
        (None, Some(file)) if file.exists() => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read cursor file {}", file.display()))
            .map_err(Failure::usage)?,
        (None, _) => "0".to_string(),
    };
    let mut cursor = ExportCursor::parse(&start, &host).map_err(Failure::usage)?;
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    while left > 0 {
        let page = usize::try_from(left.min(1000)).unwrap_or(1000);
        let page = state
            .usage_events(&host, &cursor, page)
            .map_err(Failure::usage)?;
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            let line = serde_json::to_string(event).context("serializing an event")?;
            writeln!(out, "{line}").context("writing events")?;
        }
        out.flush().context("writing events")?;
        left -= page.events.len() as u64;
        printed += page.events.len() as u64;
        cursor = page.next;
        if let Some(file) = &args.cursor_file {
            save_cursor(file, &cursor.encode())?;
        }
    }
    eprintln!(
        "exported {printed} events; next cursor: {}",
        cursor.encode()
    );
    Ok(Exit::Ok)
}

/// Writes `cursor` to `file` so that a crash leaves the old or the new one,
/// never half of either.
fn save_cursor(file: &std::path::Path, cursor: &str) -> Result<(), Failure> {
    tollgate::store::files::write_atomic(file, cursor.as_bytes())
        .with_context(|| format!("cannot write cursor file {}", file.display()))
        .map_err(Failure::usage)
}
