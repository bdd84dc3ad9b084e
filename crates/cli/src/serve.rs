//! `tollgate serve` and `tollgate check-config`.

use super::{Exit, Failure};
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use tollgate_server::config::{Config, LogFormat};

/// Log formats of `--log-format`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormatArg {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Arguments of `tollgate serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
Endpoints: POST /v1/plugins/{name}/invoke (service users); /v1/admin/... and
GET /metrics (bearer admin token); GET /healthz, GET /readyz.
SIGTERM or SIGINT drains: no new connections, calls in flight finish within
grace_period, the rest are cancelled and their seats come back.
With `trusted_issuers` in the config, serve refuses to start on a state
database that trusts other issuer keys, naming each extra and missing key; it
also refuses grants whose database columns disagree with their signed text,
and plugin `dirs` that overlap the state directory, compile cache, admin
token file or config file.

On a loopback listen address only requests whose Host is localhost, 127.0.0.1
or [::1] are served (others get 421); `allowed_hosts` names other hosts.
Each client address may hold max_connections_per_client connections (not
counted for trusted_proxies); a client that takes none of its response for
write_timeout is disconnected.")]
pub(crate) struct ServeArgs {
    /// The config file (see `tollgate check-config`).
    #[arg(long, value_name = "FILE", default_value = "tollgate.toml")]
    config: PathBuf,
    /// Log format; overrides `log_format` in the config.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
}

/// Arguments of `tollgate check-config`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The config file.
    file: PathBuf,
}

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    let mut config = Config::load(path).map_err(Failure::usage)?;
    config
        .apply_env(|k| std::env::var(k).ok())
        .map_err(Failure::usage)?;
    Ok(config)
}

pub(crate) fn check(args: CheckArgs) -> Result<Exit, Failure> {
    let config = load(&args.file)?;
    println!(
        "{}: ok: listen {}, {} plugin(s), {} license rule set(s), admin API {}, trusted issuers {}",
        args.file.display(),
        config.listen,
        config.plugins.len(),
        config.licenses.len(),
        if config.admin_token.is_some() {
            "on"
        } else {
            "off (no admin token)"
        },
        match &config.trusted_issuers {
            Some(pins) => format!("pinned ({})", pins.len()),
            None => "not pinned".to_string(),
        }
    );
    Ok(Exit::Ok)
}

pub(crate) fn serve(args: ServeArgs) -> Result<Exit, Failure> {
    let mut config = load(&args.config)?;
    if let Some(f) = args.log_format {
        config.log_format = match f {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    super::init_logging(true, config.log_format == LogFormat::Json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tollgate-serve")
        .build()
        .context("starting the async runtime")?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    runtime
        .block_on(tollgate_server::serve(config, |addr| {
            // Scripts and tests read the bound address from this line.
            println!("tollgate serve: listening on {scheme}://{addr}");
        }))
        .map_err(Failure::usage)?;
    Ok(Exit::Ok)
}
