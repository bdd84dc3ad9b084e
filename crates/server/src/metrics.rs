//! `GET /metrics`: a `prometheus-client` registry in the Prometheus text
//! format. Calls and their latency are recorded per plugin as calls end;
//! seats, leases, denials and reclaims per license, and what clients hold
//! of the server, are read from the host and the server at each scrape.

use crate::conn::{BodyBudget, ClientSlots};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tollgate::Host;

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Labels of one series of finished calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    plugin: String,
    outcome: String,
}

/// Labels of one plugin's latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

/// A latency histogram with [`BUCKETS`].
fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The server's metrics: what it records as calls end, and collectors that
/// read the rest at each scrape.
pub(crate) struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Family<PluginLabels, Histogram, fn() -> Histogram>,
    /// On a shared store: the last ledger row the store holds.
    shipped: Arc<OnceLock<Arc<AtomicU64>>>,
    /// Alerts firing (1) or not (0), by license and alert.
    alerts: Family<crate::alerts::AlertLabels, prometheus_client::metrics::gauge::Gauge>,
    /// The last [`LATENCY_SAMPLES`] call durations per plugin, in seconds,
    /// for the percentiles the dashboard shows.
    recent: std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<f64>>>,
}

/// How many recent call durations per plugin the percentiles are taken over.
pub(crate) const LATENCY_SAMPLES: usize = 1024;

/// The 50th, 95th and 99th percentiles of recent calls, in milliseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct Percentiles {
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    samples: usize,
}

impl Metrics {
    /// Metrics of a server running `host`, with its body budget and
    /// connection slots.
    pub(crate) fn new(host: Arc<Host>, bodies: Arc<BodyBudget>, clients: Arc<ClientSlots>) -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let calls = Family::<CallLabels, Counter>::default();
        let latency: Family<PluginLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "invocations",
            "Plugin calls over HTTP by outcome",
            calls.clone(),
        );
        registry.register_with_unit(
            "invoke_duration",
            "Latency of plugin calls over HTTP",
            Unit::Seconds,
            latency.clone(),
        );
        let alerts = Family::default();
        registry.register(
            "alert_firing",
            "Alerts firing now (1) or not (0), by license and alert",
            alerts.clone(),
        );
        let shipped = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(LedgerCommits {
            host: host.clone(),
            shipped: shipped.clone(),
        }));
        registry.register_collector(Box::new(LicenseCounters { host }));
        registry.register_collector(Box::new(ClientLimits { bodies, clients }));
        Self {
            registry,
            calls,
            latency,
            shipped,
            alerts,
            recent: std::sync::Mutex::default(),
        }
    }

    /// Latency percentiles of each plugin's recent calls over HTTP.
    pub(crate) fn percentiles(&self) -> std::collections::BTreeMap<String, Percentiles> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(plugin, v)| {
                let mut sorted: Vec<f64> = v.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let at = |p: f64| {
                    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
                    sorted[i.min(sorted.len() - 1)] * 1e3
                };
                let p = Percentiles {
                    p50_ms: at(0.50),
                    p95_ms: at(0.95),
                    p99_ms: at(0.99),
                    samples: sorted.len(),
                };
                (plugin.clone(), p)
            })
            .collect()
    }

    /// The alert gauge, for the alerts to set.
    pub(crate) fn alert_gauge(
        &self,
    ) -> Family<crate::alerts::AlertLabels, prometheus_client::metrics::gauge::Gauge> {
        self.alerts.clone()
    }

    /// Reports the shipping lag from now on: `shipped` holds the last
    /// ledger row the shared store holds.
    pub(crate) fn shipping(&self, shipped: Arc<AtomicU64>) {
        let _ = self.shipped.set(shipped);
    }

    /// Records one finished call.
    pub(crate) fn observe(&self, plugin: &str, outcome: &str, took: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                plugin: plugin.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&PluginLabels {
                plugin: plugin.to_string(),
            })
            .observe(took.as_secs_f64());
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Allocates the plugin's name only for its first call.
        let samples = match recent.get_mut(plugin) {
            Some(samples) => samples,
            None => recent.entry(plugin.to_string()).or_default(),
        };
        if samples.len() == LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(took.as_secs_f64());
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Writes one family of counters read at scrape time: each label set with
/// its value. (The registry ends the help of what it holds with a period;
/// so does every `help` given here.)
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(encoder, name, help, samples, ConstCounter::<u64>::new)
}

/// Writes one family of gauges read at scrape time: each label set with
/// its value.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(encoder, name, help, samples, ConstGauge::<u64>::new)
}

/// Writes one family of metrics of the kind `metric` makes from a value.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
    metric: fn(u64) -> M,
) -> fmt::Result {
    let kind = metric(0).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        metric(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one counter without labels.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// Writes one gauge without labels.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// The license manager's counters per license id, read at each scrape.
struct LicenseCounters {
    host: Arc<Host>,
}

impl fmt::Debug for LicenseCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LicenseCounters").finish_non_exhaustive()
    }
}

impl Collector for LicenseCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = self.host.licenses().status();
        let licenses = &status.licenses;
        let id = |l: &tollgate_license::LicenseStatus| [("license", l.id.clone())];
        gauges(
            &mut encoder,
            "seats_in_use",
            "Seats held right now.",
            licenses
                .iter()
                .map(|l| (id(l), u64::from(l.counters.in_use))),
        )?;
        gauges(
            &mut encoder,
            "seats_issued",
            "Seats of the license (absent when unlimited).",
            licenses
                .iter()
                .filter_map(|l| Some((id(l), u64::from(l.seats.limit()?)))),
        )?;
        gauges(
            &mut encoder,
            "license_expires_at_seconds",
            "When the last grant in force ends, unix seconds (absent when one never ends).",
            licenses.iter().filter_map(|l| Some((id(l), l.expires_at?))),
        )?;
        counters(
            &mut encoder,
            "checkouts",
            "Leases handed to plugins.",
            licenses.iter().map(|l| (id(l), l.counters.checkouts)),
        )?;
        counters(
            &mut encoder,
            "releases",
            "Leases sent back by plugins.",
            licenses.iter().map(|l| (id(l), l.counters.releases)),
        )?;
        counters(
            &mut encoder,
            "withheld",
            "Calls withheld for lacking the license.",
            licenses.iter().map(|l| (id(l), l.counters.withheld)),
        )?;
        counters(
            &mut encoder,
            "denials",
            "Seat requests refused, by reason.",
            licenses.iter().flat_map(|l| {
                l.counters.denials.iter().map(|(reason, n)| {
                    (
                        [
                            ("license", l.id.clone()),
                            ("reason", reason.as_str().into()),
                        ],
                        n,
                    )
                })
            }),
        )?;
        counters(
            &mut encoder,
            "reclaims",
            "Seats taken back by the host, by reason.",
            licenses.iter().flat_map(|l| {
                l.counters.reclaims.iter().map(|(reason, n)| {
                    (
                        [
                            ("license", l.id.clone()),
                            ("reason", reason.as_str().into()),
                        ],
                        n,
                    )
                })
            }),
        )
    }
}

/// What clients hold of the server: buffered request bodies and the
/// requests and connections refused to bound them, read at each scrape.
struct ClientLimits {
    bodies: Arc<BodyBudget>,
    clients: Arc<ClientSlots>,
}

impl fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLimits").finish_non_exhaustive()
    }
}

impl Collector for ClientLimits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let b = &self.bodies;
        gauge(
            &mut encoder,
            "request_body_bytes_buffered",
            "Bytes of request bodies held right now.",
            b.used(),
        )?;
        gauge(
            &mut encoder,
            "request_body_bytes_buffered_peak",
            "The most bytes of request bodies held at once since start.",
            b.peak(),
        )?;
        gauge(
            &mut encoder,
            "request_body_bytes_budget",
            "The most bytes of request bodies held at once (`max_buffered_request_bytes`).",
            b.limit(),
        )?;
        counters(
            &mut encoder,
            "requests_refused",
            "Requests and connections refused to bound what clients hold, by reason.",
            [
                (
                    [("reason", "body-budget")],
                    b.refused.load(Ordering::Relaxed),
                ),
                (
                    [("reason", "connections-per-client")],
                    self.clients.refused.load(Ordering::Relaxed),
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_license::{Seats, Terms};

    /// The value of the sample named `series` (name and labels as written).
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| Some(l.strip_prefix(series)?.strip_prefix(' ')?.to_string()))
    }

    #[test]
    fn calls_and_client_limits_are_exposed_under_their_names() {
        let ending = Terms {
            expires_at: Some(4_000_000_000),
            ..Terms::new(Seats::Counted(3))
        };
        let host = Host::builder()
            .trial_license("demo", ending)
            .trial_license("open", Terms::new(Seats::Unlimited))
            .build()
            .expect("host");
        let bodies = Arc::new(BodyBudget::new(1000));
        let clients = Arc::new(ClientSlots::new(1, Vec::new()));
        let metrics = Metrics::new(Arc::new(host), bodies.clone(), clients.clone());
        metrics.observe("hello", "ok", Duration::from_millis(2));
        metrics.observe("hello", "ok", Duration::from_millis(300));
        metrics.observe("hello", "unlicensed", Duration::from_millis(7));
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let _slot = clients.enter(ip).expect("first");
        assert!(clients.enter(ip).is_err());
        let text = metrics.render().expect("renders");
        for (series, value) in [
            (
                "tollgate_invocations_total{plugin=\"hello\",outcome=\"ok\"}",
                "2",
            ),
            (
                "tollgate_invocations_total{plugin=\"hello\",outcome=\"unlicensed\"}",
                "1",
            ),
            (
                "tollgate_invoke_duration_seconds_bucket{plugin=\"hello\",le=\"0.005\"}",
                "1",
            ),
            (
                "tollgate_invoke_duration_seconds_bucket{plugin=\"hello\",le=\"0.01\"}",
                "2",
            ),
            (
                "tollgate_invoke_duration_seconds_bucket{plugin=\"hello\",le=\"+Inf\"}",
                "3",
            ),
            (
                "tollgate_invoke_duration_seconds_count{plugin=\"hello\"}",
                "3",
            ),
            ("tollgate_seats_issued{license=\"demo\"}", "3"),
            (
                "tollgate_license_expires_at_seconds{license=\"demo\"}",
                "4000000000",
            ),
            ("tollgate_seats_in_use{license=\"open\"}", "0"),
            (
                "tollgate_denials_total{license=\"demo\",reason=\"exhausted\"}",
                "0",
            ),
            ("tollgate_request_body_bytes_budget", "1000"),
            (
                "tollgate_requests_refused_total{reason=\"connections-per-client\"}",
                "1",
            ),
            (
                "tollgate_requests_refused_total{reason=\"body-budget\"}",
                "0",
            ),
        ] {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(value),
                "{series} in\n{text}"
            );
        }
        assert_eq!(
            sample(&text, "tollgate_seats_issued{license=\"open\"}"),
            None,
            "an unlimited license has no issued seats: {text}"
        );
        assert_eq!(
            sample(
                &text,
                "tollgate_license_expires_at_seconds{license=\"open\"}"
            ),
            None,
            "a license that never ends has no end: {text}"
        );
        for family in [
            "# TYPE tollgate_invocations_total counter",
            "# TYPE tollgate_invoke_duration_seconds histogram",
            "# TYPE tollgate_seats_in_use gauge",
            "# TYPE tollgate_denials_total counter",
            "# TYPE tollgate_request_body_bytes_buffered gauge",
        ] {
            assert!(text.lines().any(|l| l == family), "{family} in\n{text}");
        }
    }
}

/// The durable ledger's group commit, read at each scrape: transactions
/// and rows committed and the writer thread's CPU time (how many calls
/// share one commit, and what a commit costs), and on a shared store the
/// rows committed here and not yet there.
#[derive(Debug)]
struct LedgerCommits {
    host: Arc<Host>,
    shipped: Arc<OnceLock<Arc<AtomicU64>>>,
}

impl Collector for LedgerCommits {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(stats) = self.host.ledger_stats() else {
            return Ok(());
        };
        counter(
            &mut encoder,
            "ledger_commits",
            "Ledger transactions committed since the server started (each one sync of the disk).",
            stats.commits,
        )?;
        counter(
            &mut encoder,
            "ledger_rows",
            "Ledger rows committed since the server started.",
            stats.rows,
        )?;
        if let Some(cpu) = stats.writer_cpu {
            ConstCounter::new(cpu.as_secs_f64()).encode(encoder.encode_descriptor(
                "ledger_writer_cpu",
                "CPU time of the ledger's writer thread since the server started.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
        }
        let Some(shipped) = self.shipped.get() else {
            return Ok(());
        };
        let behind = stats
            .last_seq
            .saturating_sub(shipped.load(Ordering::Acquire));
        gauge(
            &mut encoder,
            "ledger_unshipped_rows",
            "Ledger rows committed on this host and not yet in the shared store.",
            usize::try_from(behind).unwrap_or(usize::MAX),
        )
    }
}
