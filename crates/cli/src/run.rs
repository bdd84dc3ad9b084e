//! `tollgate run`: one plugin, in-memory licenses, N calls at concurrency C.

use super::{Exit, Failure};
use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tollgate::license::{LicenseId, PluginName};
use tollgate::runtime::Allocator;
use tollgate::{Host, InvokeError, Limits, PluginSpec, Seats, Terms};

/// Bytes in a MiB, the unit of `--memory-mib`.
const MIB: usize = 1 << 20;

/// Arguments of `tollgate run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Exit codes: 0 ok; 2 bad usage or bad input; 3 result withheld as unlicensed or \
license denied; 4 plugin trapped, failed, timed out or hit a per-call limit.

What a plugin prints is logged at debug level, tagged with the invocation id, \
and a trap is reported without the plugin's function names; to see both: \
TOLLGATE_LOG=warn,tollgate::plugin=debug,tollgate::call=debug.

Examples:
  tollgate run hello.wasm --license demo=1 --input name.txt
  echo world | tollgate run hello.wasm --license demo=2 --input -
  tollgate run hello.wasm --license demo=4 --repeat 1000 --concurrency 2 --summary out.json")]
pub(crate) struct RunArgs {
    /// The plugin component (.wasm, built for wasm32-wasip2).
    plugin: PathBuf,

    /// License the plugin must hold on every call; repeatable. Default: every --license id.
    #[arg(long = "requires", value_name = "ID")]
    requires: Vec<LicenseId>,

    /// License the plugin may use without requiring it; repeatable.
    #[arg(long = "allow", value_name = "ID")]
    allow: Vec<LicenseId>,

    /// Install an in-memory license: ID=SEATS or ID=unlimited; repeatable.
    #[arg(long = "license", value_name = "ID=SEATS", value_parser = parse_license)]
    licenses: Vec<(LicenseId, Seats)>,

    /// Input bytes for the plugin: a file, or - for standard input. Default: empty.
    #[arg(long, value_name = "FILE|-")]
    input: Option<String>,

    /// Call the plugin this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,

    /// Run this many calls at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,

    /// Write a JSON summary of outcomes and license counters to FILE.
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,

    /// Name the plugin is loaded under. Default: from the file name.
    #[arg(long)]
    name: Option<PluginName>,

    /// Memory limit per call, in MiB.
    #[arg(long, default_value_t = Limits::default().memory_bytes / MIB, value_name = "MIB")]
    memory_mib: usize,

    /// Time limit per call (e.g. 500ms, 5s).
    #[arg(long, default_value_t = Limits::default().time.into())]
    timeout: humantime::Duration,

    /// Wait this long for a free seat instead of refusing at once (e.g. 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,

    /// Use the licenses installed in this state directory; usage is billed to its
    /// durable ledger. --license ids then stay trials (counted, not billed).
    #[arg(long, value_name = "DIR", env = "TOLLGATE_STATE")]
    state: Option<PathBuf>,

    /// Append a line "INVOCATION OUTCOME" to FILE for each call once its usage is durable.
    #[arg(long, value_name = "FILE")]
    ack_log: Option<PathBuf>,
}

fn parse_license(s: &str) -> Result<(LicenseId, Seats), String> {
    let (id, seats) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=SEATS (for example demo=2 or demo=unlimited)"))?;
    let id: LicenseId = id
        .parse()
        .map_err(|e: tollgate::license::InvalidLicenseId| e.to_string())?;
    let seats = match seats {
        "unlimited" => Seats::Unlimited,
        n => Seats::Counted(n.parse().map_err(|_| {
            format!("seat count {n:?} in {s:?} is not a whole number from 0 to 4294967295 or 'unlimited'")
        })?),
    };
    Ok((id, seats))
}

fn read_input(input: Option<&str>) -> Result<Vec<u8>, Failure> {
    match input {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading standard input")
                .map_err(Failure::usage)?;
            Ok(buf)
        }
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read input file {path}"))
            .map_err(Failure::usage),
    }
}

/// `--name`, or a plugin name made from the file name.
fn plugin_name(args: &RunArgs) -> Result<PluginName, Failure> {
    if let Some(name) = &args.name {
        return Ok(name.clone());
    }
    let stem = args
        .plugin
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_start_matches(['-', '_'])
        .chars()
        .take(64)
        .collect();
    let name = if name.is_empty() { "plugin" } else { &name };
    name.parse()
        .with_context(|| {
            format!(
                "cannot name the plugin after {}; pass --name",
                args.plugin.display()
            )
        })
        .map_err(Failure::usage)
}

/// Tallies of outcomes across calls.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unlicensed: AtomicU64,
    failed: AtomicU64,
}

pub(crate) fn run(args: RunArgs) -> Result<Exit, Failure> {
    let input = read_input(args.input.as_deref())?;
    let limits = Limits {
        memory_bytes: args.memory_mib.saturating_mul(MIB),
        time: args.timeout.into(),
        wait_for_seat: args.wait,
        ..Limits::default()
    };
    // A pooled slot set for each caller thread, each as large as the
    // plugin's limits allow.
    let mut builder = Host::builder().allocator(Allocator::pooling(args.concurrency, [&limits]));
    let mut trials = BTreeSet::new();
    for (id, seats) in &args.licenses {
        if !trials.insert(id.clone()) {
            return Err(Failure::usage(anyhow!("--license {id} is given twice")));
        }
        builder = match &args.state {
            Some(_) => builder.trial_license(id.as_str(), Terms::new(*seats)),
            None => builder.license(id.as_str(), Terms::new(*seats)),
        };
    }
    if let Some(dir) = &args.state {
        builder = builder.state(dir.clone());
    }
    let host = builder
        .build()
        .context("starting the host")
        .map_err(Failure::usage)?;
    let installed: BTreeSet<String> = host.licenses().ids().into_iter().collect();
    let requires: Vec<LicenseId> = if args.requires.is_empty() {
        trials.iter().cloned().collect()
    } else {
        args.requires.clone()
    };
    for id in &requires {
        if !installed.contains(id.as_str()) {
            return Err(Failure::usage(anyhow!(
                "the plugin requires license {id:?} but none is installed; add --license {id}=SEATS{}",
                if args.state.is_some() {
                    " or install a license file with `tollgate license install`"
                } else {
                    ""
                }
            )));
        }
    }
    let name = plugin_name(&args)?;
    let mut spec = PluginSpec::file(name.clone(), &args.plugin);
    spec.limits = limits;
    spec.requires = requires.into_iter().map(String::from).collect();
    spec.may_use = args.allow.iter().map(ToString::to_string).collect();
    host.load_plugin(spec).map_err(Failure::usage)?;
    let ack_log = match &args.ack_log {
        None => None,
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open ack log {}", path.display()))
                .map_err(Failure::usage)?,
        )),
    };

    let tally = Tally::default();
    let next = AtomicU64::new(0);
    let last_ok: Mutex<Option<(u64, Vec<u8>)>> = Mutex::new(None);
    let last_err: Mutex<Option<(u64, InvokeError)>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..args
            .concurrency
            .min(u32::try_from(args.repeat).unwrap_or(u32::MAX))
        {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= args.repeat {
                        break;
                    }
                    let (invocation, result) = host.invoke_call(&name, &input);
                    if let Some(log) = &ack_log {
                        let outcome = match &result {
                            Ok(_) => "ok",
                            Err(InvokeError::NotRecorded { .. }) => "not-recorded",
                            Err(e) if e.is_unlicensed() => "unlicensed",
                            Err(_) => "failed",
                        };
                        let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = writeln!(f, "{invocation} {outcome}") {
                            tracing::error!("cannot write the ack log: {e}");
                        }
                    }
                    match result {
                        Ok(out) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            keep_latest(&last_ok, n, out);
                        }
                        Err(e) => {
                            let counter = if e.is_unlicensed() {
                                &tally.unlicensed
                            } else {
                                &tally.failed
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            keep_latest(&last_err, n, e);
                        }
                    }
                }
            });
        }
    });

    let (ok, unlicensed, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.unlicensed.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    if let Some(path) = &args.summary {
        let summary = summary_json(&host, args.repeat, ok, unlicensed, failed);
        let text =
            serde_json::to_string_pretty(&summary).map_err(|e| Failure::usage(anyhow!(e)))?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write summary to {}", path.display()))
            .map_err(Failure::usage)?;
    }
    if let Some((_, out)) = last_ok.into_inner().unwrap_or_else(|e| e.into_inner()) {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&out)
            .and_then(|()| stdout.flush())
            .context("writing output")
            .map_err(Failure::usage)?;
    }
    if args.repeat > 1 {
        eprintln!(
            "{} calls: {ok} ok, {unlicensed} unlicensed, {failed} failed",
            args.repeat
        );
    }
    match last_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        None => Ok(Exit::Ok),
        Some((_, e)) => {
            let exit = if failed > 0 {
                Exit::PluginFailed
            } else {
                Exit::Unlicensed
            };
            Err(Failure {
                exit,
                error: anyhow!(e),
            })
        }
    }
}

fn keep_latest<T>(slot: &Mutex<Option<(u64, T)>>, n: u64, value: T) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|(m, _)| *m < n) {
        *slot = Some((n, value));
    }
}

fn summary_json(host: &Host, invocations: u64, ok: u64, unlicensed: u64, failed: u64) -> Value {
    let mut licenses = serde_json::Map::new();
    for l in host.licenses().status().licenses {
        let c = &l.counters;
        licenses.insert(
            l.id.clone(),
            json!({
                "seats": l.seats.limit(),
                "in_use": c.in_use,
                "peak": c.peak,
                "checkouts": c.checkouts,
                "retakes": c.retakes,
                "releases": c.releases,
                "reclaims": c.reclaims,
                "returns": c.returns,
                "denials": c.denials,
                "withheld": c.withheld,
            }),
        );
    }
    json!({
        "invocations": invocations,
        "ok": ok,
        "unlicensed": unlicensed,
        "failed": failed,
        "licenses": licenses,
    })
}
