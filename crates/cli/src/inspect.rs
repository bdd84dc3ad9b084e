//! `tollgate inspect`: what a plugin component is and whether this host runs it.

use super::{Exit, Failure};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use tollgate::Host;
use tollgate::runtime::WIT_PACKAGE;

/// Arguments of `tollgate inspect`.
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The plugin component (.wasm).
    plugin: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: InspectArgs) -> Result<Exit, Failure> {
    let bytes = std::fs::read(&args.plugin)
        .with_context(|| format!("cannot read {}", args.plugin.display()))
        .map_err(Failure::usage)?;
    let host = Host::builder().build().context("starting the runtime")?;
    let report = host.inspect(&bytes).map_err(Failure::usage)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serializing")?
        );
    } else {
        println!("{}", args.plugin.display());
        println!("  sha256:  {}", report.sha256);
        println!("  size:    {} bytes", report.size);
        let built = if report.wit_packages.is_empty() {
            "none".to_string()
        } else {
            report.wit_packages.join(", ")
        };
        println!("  built for: {built} (this host provides {WIT_PACKAGE})");
        match &report.recorded_wit_version {
            Some(v) => println!("  SDK-recorded WIT version: {v}"),
            None => println!("  SDK-recorded WIT version: none (not built with tollgate-guest)"),
        }
        println!("  imports:");
        for i in &report.imports {
            println!("    {i}");
        }
        println!("  exports:");
        for e in &report.exports {
            println!("    {e}");
        }
        match &report.refused {
            None => println!("  runs on this host: yes"),
            Some(why) => println!("  runs on this host: no: {why}"),
        }
    }
    Ok(if report.refused.is_some() {
        Exit::Usage
    } else {
        Exit::Ok
    })
}
