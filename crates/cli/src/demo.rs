//! `tollgate demo`: the bundled example plugins on the embedded default
//! (in-memory licenses), told step by step.

use super::{Exit, Failure};
use anyhow::Context;
use clap::Args;
use std::sync::Arc;
use test_guests::bytes as examples;
use tollgate::license::ledger::{EventKind, MemoryLedger, UsageEvent};
use tollgate::license::{CallLimits, Entitlement, Holder, ReclaimReason};
use tollgate::{Host, PluginSpec, Seats, Terms};

/// Arguments of `tollgate demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Print the final counters as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The license the demo's plugins require.
const LICENSE: &str = "demo-seat";

struct Demo {
    host: Host,
    ledger: Arc<MemoryLedger>,
    shown: usize,
}

impl Demo {
    /// Prints the ledger events recorded since the last call.
    fn show_events(&mut self) {
        let events = self.ledger.events();
        for e in &events[self.shown.min(events.len())..] {
            println!("    ledger #{:<3} {}", e.seq, describe(e));
        }
        self.shown = events.len();
    }

    fn call(&mut self, plugin: &str, input: &str) {
        println!("  -> invoke {plugin}({input:?})");
        match self.host.invoke(plugin, input.as_bytes()) {
            Ok(out) => {
                self.show_events();
                println!("  <- result delivered: {:?}", String::from_utf8_lossy(&out));
            }
            Err(e) => {
                self.show_events();
                println!("  <- refused: {e}");
            }
        }
        println!();
    }
}

fn describe(e: &UsageEvent) -> String {
    let lease = e
        .lease_id
        .map(|l| format!(" lease {l}"))
        .unwrap_or_default();
    let what = match e.kind {
        EventKind::Checkout => format!(
            "host takes a seat of {} and hands{lease} to {}",
            e.license_id, e.plugin
        ),
        EventKind::Retake => format!(
            "host hands{lease} of {} to {} again, on the seat its call still holds",
            e.license_id, e.plugin
        ),
        EventKind::Release => format!(
            "{} sends{lease} of {} back (the seat stays with the call until it ends)",
            e.plugin, e.license_id
        ),
        EventKind::Return(r) => format!(
            "the call ends: its seat of {} goes back to the pool ({r})",
            e.license_id
        ),
        EventKind::Reclaim(r) => format!(
            "host reclaims{lease} of {} from {} ({r})",
            e.license_id, e.plugin
        ),
        EventKind::Denial(d) => format!(
            "host refused {} a seat of {} ({d}, {}x in that call)",
            e.plugin, e.license_id, e.count
        ),
        EventKind::Withheld => format!("host withholds {}'s result: no {}", e.plugin, e.license_id),
    };
    format!("{what}  [invocation {}]", e.invocation_id)
}

pub(crate) fn run(args: DemoArgs) -> Result<Exit, Failure> {
    let ledger = Arc::new(MemoryLedger::default());
    let host = Host::builder()
        .ledger(ledger.clone())
        .license(LICENSE, Terms::new(Seats::Counted(1)))
        .build()
        .context("starting the host")?;
    let load = |name: &str, bytes: &[u8]| {
        host.load_plugin(PluginSpec::bytes(name, bytes.to_vec()).requires(LICENSE))
            .with_context(|| format!("loading bundled plugin {name}"))
    };
    load("hello-licensed", examples::HELLO_LICENSED)?;
    load("drop-licensed", examples::DROP_LICENSED)?;
    load("ids", examples::IDS)?;
    load("no-license", examples::NO_LICENSE)?;
    let mut demo = Demo {
        host,
        ledger,
        shown: 0,
    };

    println!("tollgate demo: one license, {LICENSE:?}, with 1 seat, held in memory.");
    println!("Each plugin below requires {LICENSE:?}; its result reaches you only if it");
    println!("asked the host for a seat during the call and held it, valid, until the");
    println!("call ended: a seat the plugin sends back stays with its call until then.\n");

    println!("1. A plugin asks for the license ids it may use, and describes them:");
    demo.call("ids", "");
    println!("2. A plugin asks for its license by id, receives it, works, and sends it back:");
    demo.call("hello-licensed", "operator");
    println!("3. Another plugin returns its seat by dropping the handle:");
    demo.call("drop-licensed", "seat the return by drop");

    println!("4. While another tenant holds the only seat, a second call is refused:");
    let tenant = Holder {
        plugin: "other-tenant".into(),
        component_digest: "-".into(),
        invocation: 0,
    };
    let mut held = demo.host.licenses().call(
        tenant,
        Arc::new(Entitlement::to([LICENSE])),
        CallLimits {
            wait: None,
            max_leases: 1,
            max_acquires: 1,
        },
    );
    let lease = held.acquire(LICENSE).map_err(|d| {
        anyhow::anyhow!("the demo could not take the seat for the other tenant: {d}")
    })?;
    held.release(lease);
    demo.show_events();
    println!("   (the tenant sent its license back, but its call still runs and keeps the seat)");
    demo.call("hello-licensed", "second caller");
    held.end(ReclaimReason::InvocationEnded);
    demo.show_events();
    println!("   ...the tenant's call ends, its seat goes back, and the same call now succeeds:");
    demo.call("hello-licensed", "second caller");

    println!("5. A rogue plugin does its work without asking for a license:");
    demo.call("no-license", "free lunch");

    println!("Counters at the end:");
    let status = demo.host.status();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("serializing status")?
        );
    } else {
        for l in &status.licenses.licenses {
            let c = &l.counters;
            let seats = l
                .seats
                .limit()
                .map_or("unlimited".to_string(), |n| n.to_string());
            println!(
                "  license {}: seats {seats}, in use {}, peak {}",
                l.id, c.in_use, c.peak
            );
            println!(
                "    checkouts {}, releases {}, reclaims {}, denials {}, withheld {}",
                c.checkouts,
                c.releases,
                c.reclaims.total(),
                c.denials.total(),
                c.withheld
            );
            println!(
                "    checkouts == releases + reclaims: {}; seats taken == seats returned: {}",
                c.checkouts == c.releases + c.reclaims.total(),
                c.checkouts - c.retakes == c.returns.total()
            );
        }
        for p in &status.plugins {
            println!(
                "  plugin {:<15} calls {}, ok {}, unlicensed {}, failed {}",
                p.name, p.invocations, p.ok, p.unlicensed, p.failed
            );
        }
    }
    Ok(Exit::Ok)
}
