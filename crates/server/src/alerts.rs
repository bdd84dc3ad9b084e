//! Alerts before seats run out: each license's thresholds (`[alerts]`) are
//! checked every second against the license manager. A crossing (an alert
//! starting or stopping to fire) is recorded together with its webhook
//! delivery in one transaction of the state database, so it is sent once
//! and a restart loses none; the deliverer sends the outbox in order,
//! signed with HMAC-SHA256, retrying with backoff until the receiver
//! answers 2xx.

use crate::config::{AlertsConfig, Thresholds};
use hmac::{Hmac, Mac};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tollgate::Host;
use tollgate_license::issuer::{format_time, format_time_ms};
use tollgate_license::{Clock, SystemClock};
use tollgate_store::state::OutboxEntry;

/// How often thresholds are checked.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// The wait before the first retry of a failed delivery; it doubles with
/// each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two attempts at one delivery.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The header carrying `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";

/// What an alert watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Seats in use at or above a share of the seats, for a while.
    InUse,
    /// Refused requests per minute.
    Denials,
    /// The license's grants end soon.
    Expiry,
}

impl Kind {
    /// Every kind.
    const ALL: [Kind; 3] = [Kind::InUse, Kind::Denials, Kind::Expiry];

    /// Its name in webhooks, metrics and the state database.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::InUse => "in-use",
            Kind::Denials => "denials",
            Kind::Expiry => "expiry",
        }
    }
}

/// Labels of the alert gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AlertLabels {
    license: String,
    alert: String,
}

/// One alert firing now, as the admin API shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Firing {
    license_id: String,
    alert: &'static str,
    since_ms: u64,
    detail: String,
}

/// The alerts of one server: their thresholds, which fire, and the gauge
/// `/metrics` shows them with.
pub(crate) struct Alerts {
    config: AlertsConfig,
    host_id: String,
    firing: Mutex<BTreeMap<(String, Kind), Firing>>,
    gauge: Family<AlertLabels, Gauge>,
    /// Wakes the deliverer when a crossing is queued.
    queued: tokio::sync::Notify,
}

impl Alerts {
    /// The alerts of `config` on the host with key id `host_id`, showing
    /// which fire on `gauge`; those a previous run left firing (from the
    /// state database) still fire, so their crossing is not sent again.
    pub(crate) fn new(
        config: AlertsConfig,
        host: &Host,
        host_id: String,
        gauge: Family<AlertLabels, Gauge>,
    ) -> Self {
        let alerts = Self {
            config,
            host_id,
            firing: Mutex::new(BTreeMap::new()),
            gauge,
            queued: tokio::sync::Notify::new(),
        };
        let stored = host.state().map(|s| s.firing_alerts()).transpose();
        match stored {
            Ok(stored) => {
                for (license, alert, since_ms) in stored.unwrap_or_default() {
                    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == alert);
                    if let Some(kind) = kind {
                        alerts.mark(&license, kind, 1);
                        alerts.lock().insert(
                            (license.clone(), kind),
                            Firing {
                                license_id: license,
                                alert: kind.as_str(),
                                since_ms,
                                detail: "firing before the restart".into(),
                            },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read which alerts fired before the restart: {e}"),
        }
        alerts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, Kind), Firing>> {
        self.firing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark(&self, license: &str, kind: Kind, value: i64) {
        self.gauge
            .get_or_create(&AlertLabels {
                license: license.to_string(),
                alert: kind.as_str().to_string(),
            })
            .set(value);
    }

    /// The alerts firing now.
    pub(crate) fn firing(&self) -> Vec<Firing> {
        self.lock().values().cloned().collect()
    }

    /// Whether any license has thresholds, or a webhook is set.
    pub(crate) fn configured(&self) -> bool {
        !self.config.licenses.is_empty() || self.config.webhook.is_some()
    }

    /// Sets whether `kind` of `license` fires; on a change, records the
    /// crossing with its webhook body (when a webhook is set).
    fn set(&self, host: &Host, license: &str, kind: Kind, on: bool, detail: String) {
        let key = (license.to_string(), kind);
        let since = {
            let mut firing = self.lock();
            match firing.get_mut(&key) {
                // Still firing: only what it says changes.
                Some(f) if on => {
                    f.detail = detail;
                    return;
                }
                Some(f) => Some(f.since_ms),
                None if !on => return,
                None => None,
            }
        };
        let now_ms = SystemClock.now_ms();
        let since_ms = since.unwrap_or(now_ms);
        let kind_name = kind.as_str();
        let body = json!({
            "id": format!("{}-{license}-{kind_name}-{since_ms}-{}", self.host_id, if on { "firing" } else { "resolved" }),
            "type": if on { "tollgate.alert.firing" } else { "tollgate.alert.resolved" },
            "alert": kind_name,
            "license_id": license,
            "host": self.host_id,
            "time": format_time_ms(now_ms),
            "since": format_time_ms(since_ms),
            "detail": detail,
        })
        .to_string();
        let body = self.config.webhook.as_ref().map(|_| body);
        if let Some(state) = host.state() {
            let stored = tokio::task::block_in_place(|| {
                state.alert_crossed(
                    license,
                    kind_name,
                    on.then_some(since_ms),
                    body.as_deref(),
                    now_ms,
                )
            });
            if let Err(e) = stored {
                // Not recorded: try again at the next tick.
                tracing::error!(
                    license,
                    alert = kind_name,
                    "cannot record an alert crossing: {e}"
                );
                return;
            }
        }
        if on {
            tracing::warn!(license, alert = kind_name, "alert firing: {detail}");
            self.lock().insert(
                key,
                Firing {
                    license_id: license.to_string(),
                    alert: kind_name,
                    since_ms,
                    detail,
                },
            );
        } else {
            tracing::info!(license, alert = kind_name, "alert resolved: {detail}");
            self.lock().remove(&key);
        }
        self.mark(license, kind, i64::from(on));
        if body.is_some() {
            self.queued.notify_one();
        }
    }
}

/// What one license's checks remember between ticks.
#[derive(Default)]
struct Watch {
    /// Since when seats in use have been at or above the threshold.
    above_since: Option<Instant>,
    /// Denials counted at each tick of the last minute.
    denials: VecDeque<(Instant, u64)>,
}

/// Checks every license's thresholds each [`TICK`] until `stop`.
pub(crate) async fn evaluate(host: Arc<Host>, alerts: Arc<Alerts>, stop: CancellationToken) {
    let mut watches: HashMap<String, Watch> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        for (id, th) in &alerts.config.licenses {
            let watch = watches.entry(id.clone()).or_default();
            check(&host, &alerts, id, th, watch);
        }
    }
}

/// One tick of one license's checks.
fn check(host: &Host, alerts: &Alerts, id: &str, th: &Thresholds, watch: &mut Watch) {
    let Some(status) = host.licenses().describe(id) else {
        return;
    };
    let now = Instant::now();
    if let Some(percent) = th.in_use_percent {
        let in_use = status.counters.in_use;
        let seats = status.seats.limit();
        let above = seats
            .is_some_and(|n| n > 0 && u64::from(in_use) * 100 >= u64::from(percent) * u64::from(n));
        watch.above_since = if above {
            watch.above_since.or(Some(now))
        } else {
            None
        };
        let on = watch
            .above_since
            .is_some_and(|t| now.duration_since(t) >= th.in_use_for);
        let detail = format!(
            "{in_use} of {} seats in use; the threshold is {percent}% for {}",
            seats.map_or("unlimited".to_string(), |n| n.to_string()),
            humantime::format_duration(th.in_use_for)
        );
        alerts.set(host, id, Kind::InUse, on, detail);
    }
    if let Some(per_minute) = th.denials_per_minute {
        let total = status.counters.denials.total();
        watch.denials.push_back((now, total));
        while watch
            .denials
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60))
        {
            watch.denials.pop_front();
        }
        let oldest = watch.denials.front().map_or(total, |(_, n)| *n);
        let last_minute = total.saturating_sub(oldest);
        let on = last_minute >= u64::from(per_minute);
        let detail = format!(
            "{last_minute} requests refused in the last minute; the threshold is {per_minute}"
        );
        alerts.set(host, id, Kind::Denials, on, detail);
    }
    if let Some(within) = th.expires_within {
        let now_secs = SystemClock.now_secs();
        let on = !status.revoked
            && status
                .expires_at
                .is_some_and(|end| end.saturating_sub(now_secs) <= within.as_secs());
        let detail = match status.expires_at {
            Some(end) => format!(
                "the last grant in force ends {}; the threshold is {}",
                format_time(end),
                humantime::format_duration(within)
            ),
            None => "no grant in force ends".to_string(),
        };
        alerts.set(host, id, Kind::Expiry, on, detail);
    }
}

/// Sends the outbox to the webhook, oldest first, until `stop`.
pub(crate) async fn deliver(host: Arc<Host>, alerts: Arc<Alerts>, stop: CancellationToken) {
    let (Some(url), Some(secret), Some(state)) = (
        alerts.config.webhook.clone(),
        alerts.config.secret.clone(),
        host.state(),
    ) else {
        return;
    };
    let mut builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(ATTEMPT_TIMEOUT));
    if let Some(pem) = &alerts.config.ca_pem {
        let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                _ => None,
            })
            .collect();
        builder = builder.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                .build(),
        );
    }
    let agent: ureq::Agent = builder.build().into();
    loop {
        let now_ms = SystemClock.now_ms();
        let due = tokio::task::block_in_place(|| state.outbox_due(now_ms, 16));
        match due {
            Ok(due) => {
                for entry in due {
                    if stop.is_cancelled() {
                        return;
                    }
                    let outcome = attempt(&agent, &url, &secret, &entry).await;
                    let now_ms = SystemClock.now_ms();
                    let failed = outcome.is_err();
                    let attempted = match &outcome {
                        Ok(()) => Ok(()),
                        Err(why) => {
                            let wait = backoff(entry.attempts + 1);
                            tracing::warn!(
                                delivery = entry.id,
                                "alert webhook failed ({why}); next try in {}",
                                humantime::format_duration(wait)
                            );
                            let retry =
                                now_ms + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                            Err((why.as_str(), retry))
                        }
                    };
                    let recorded = tokio::task::block_in_place(|| {
                        state.outbox_attempted(entry.id, now_ms, attempted)
                    });
                    if let Err(e) = recorded {
                        tracing::error!(
                            delivery = entry.id,
                            "cannot record a webhook attempt: {e}"
                        );
                    }
                    if failed {
                        // In order: the ones after it wait for its retry.
                        break;
                    }
                }
            }
            Err(e) => tracing::error!("cannot read the alert outbox: {e}"),
        }
        let next = tokio::task::block_in_place(|| state.outbox_next_due())
            .ok()
            .flatten();
        let wait = next.map_or(TICK, |at| {
            Duration::from_millis(at.saturating_sub(SystemClock.now_ms())).min(TICK)
        });
        tokio::select! {
            () = stop.cancelled() => return,
            () = alerts.queued.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The wait after the `failures`-th failed attempt.
fn backoff(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One POST of `entry` to `url`; `Err` says why it did not count as
/// delivered.
async fn attempt(
    agent: &ureq::Agent,
    url: &str,
    secret: &str,
    entry: &OutboxEntry,
) -> Result<(), String> {
    let agent = agent.clone();
    let url = url.to_string();
    let signature = signature(secret, entry.body.as_bytes());
    let body = entry.body.clone();
    let id = entry.id.to_string();
    let sent = tokio::task::spawn_blocking(move || {
        agent
            .post(&url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .header("tollgate-delivery", &id)
            .send(body.as_bytes())
    })
    .await;
    match sent {
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => Err(format!("the receiver answered {}", r.status())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
