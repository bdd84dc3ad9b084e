//! Prometheus text exposition of calls, latency, seats, denials and reclaims.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tollgate::HostStatus;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Per-plugin call counts by outcome and a latency histogram.
#[derive(Default)]
pub(crate) struct Metrics {
    calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records one finished call.
    pub(crate) fn observe(&self, plugin: &str, outcome: &'static str, took: Duration) {
        *self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((plugin.to_string(), outcome))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut latency = self.latency.lock().unwrap_or_else(PoisonError::into_inner);
        let h = latency.entry(plugin.to_string()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The text exposition, with license counters from `status`.
    pub(crate) fn render(&self, status: &HostStatus) -> String {
        let mut out = String::new();
        out.push_str("# HELP tollgate_invocations_total Plugin calls over HTTP by outcome.\n# TYPE tollgate_invocations_total counter\n");
        for ((plugin, outcome), n) in self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "tollgate_invocations_total{{plugin=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(plugin)
            );
        }
        out.push_str("# HELP tollgate_invoke_duration_seconds Latency of plugin calls over HTTP.\n# TYPE tollgate_invoke_duration_seconds histogram\n");
        for (plugin, h) in self
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let p = label(plugin);
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "tollgate_invoke_duration_seconds_bucket{{plugin=\"{p}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "tollgate_invoke_duration_seconds_bucket{{plugin=\"{p}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "tollgate_invoke_duration_seconds_sum{{plugin=\"{p}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "tollgate_invoke_duration_seconds_count{{plugin=\"{p}\"}} {}",
                h.count
            );
        }
        let gauges = [
            ("tollgate_seats_in_use", "gauge", "Seats held right now."),
            (
                "tollgate_seats_issued",
                "gauge",
                "Seats of the license (absent when unlimited).",
            ),
            (
                "tollgate_checkouts_total",
                "counter",
                "Leases handed to plugins.",
            ),
            (
                "tollgate_releases_total",
                "counter",
                "Leases sent back by plugins.",
            ),
            (
                "tollgate_withheld_total",
                "counter",
                "Calls withheld for lacking the license.",
            ),
        ];
        for (name, kind, help) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in &status.licenses.licenses {
                let c = &l.counters;
                let value = match name {
                    "tollgate_seats_in_use" => Some(u64::from(c.in_use)),
                    "tollgate_seats_issued" => l.seats.limit().map(u64::from),
                    "tollgate_checkouts_total" => Some(c.checkouts),
                    "tollgate_releases_total" => Some(c.releases),
                    _ => Some(c.withheld),
                };
                if let Some(v) = value {
                    let _ = writeln!(out, "{name}{{license=\"{}\"}} {v}", label(&l.id));
                }
            }
        }
        out.push_str("# HELP tollgate_denials_total Seat requests refused, by reason.\n# TYPE tollgate_denials_total counter\n");
        for l in &status.licenses.licenses {
            for (reason, n) in l.counters.denials.iter() {
                let _ = writeln!(
                    out,
                    "tollgate_denials_total{{license=\"{}\",reason=\"{reason}\"}} {n}",
                    label(&l.id)
                );
            }
        }
        out.push_str("# HELP tollgate_reclaims_total Seats taken back by the host, by reason.\n# TYPE tollgate_reclaims_total counter\n");
        for l in &status.licenses.licenses {
            for (reason, n) in l.counters.reclaims.iter() {
                let _ = writeln!(
                    out,
                    "tollgate_reclaims_total{{license=\"{}\",reason=\"{reason}\"}} {n}",
                    label(&l.id)
                );
            }
        }
        out
    }
}
