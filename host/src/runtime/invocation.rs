//! One call of a plugin: a fresh store, the call under limits, then every
//! lease ended with its reason and the result released only if licensed.

use super::Runtime;
use super::plugin::Plugin;
use super::sandbox::InvocationState;
use crate::license::{CallLimits, Denial, Holder, LicenseManager, ReclaimReason};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap};

/// A required license a call did not hold, and why, if it asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingLicense {
    /// The required license id.
    pub id: String,
    /// Why the host refused it, if the plugin asked.
    pub denial: Option<Denial>,
}

impl fmt::Display for MissingLicense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.denial {
            Some(d) => write!(f, "{} (its request was refused: {d})", self.id),
            None => write!(f, "{} (never acquired)", self.id),
        }
    }
}

fn list(missing: &[MissingLicense]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a call's result did not reach the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    /// No plugin of that name is loaded.
    #[error("no plugin named {0:?} is loaded")]
    UnknownPlugin(String),
    /// The plugin ran without a required license: its result is withheld.
    #[error("result of plugin {plugin} withheld as unlicensed: it did not hold {}", list(.missing))]
    Unlicensed {
        /// The plugin.
        plugin: String,
        /// The required licenses it lacked.
        missing: Vec<MissingLicense>,
    },
    /// The plugin trapped.
    #[error("plugin {plugin} trapped: {reason}")]
    Trapped {
        /// The plugin.
        plugin: String,
        /// The trap.
        reason: String,
    },
    /// The plugin ran past its time limit and was stopped.
    #[error("plugin {plugin} ran past its time limit of {limit:?} and was stopped")]
    TimedOut {
        /// The plugin.
        plugin: String,
        /// Its limit.
        limit: Duration,
    },
    /// The plugin tried to grow its memory past its limit and was stopped.
    #[error(
        "plugin {plugin} tried to grow its memory past its limit of {limit} bytes and was stopped"
    )]
    MemoryLimit {
        /// The plugin.
        plugin: String,
        /// Its limit in bytes.
        limit: usize,
    },
    /// The plugin returned an error of its own.
    #[error("plugin {plugin} returned an error: {message}")]
    Failed {
        /// The plugin.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The call's usage could not be made durable, so it is not acknowledged.
    #[error(
        "the usage of plugin {plugin}'s call could not be recorded ({reason}); its result is withheld"
    )]
    NotRecorded {
        /// The plugin.
        plugin: String,
        /// What the ledger reported.
        reason: String,
    },
    /// The caller cancelled the call (e.g. an HTTP client disconnected); its
    /// seats came back as `store-dropped`.
    #[error("the call of plugin {plugin} was cancelled by its caller")]
    Cancelled {
        /// The plugin.
        plugin: String,
    },
    /// The output was larger than the plugin's output limit.
    #[error("plugin {plugin} returned {size} bytes, over its output limit of {limit}")]
    OutputTooLarge {
        /// The plugin.
        plugin: String,
        /// Bytes returned.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl InvokeError {
    /// A short stable code for the outcome, used in logs and HTTP errors.
    pub fn code(&self) -> &'static str {
        match self {
            InvokeError::UnknownPlugin(_) => "unknown-plugin",
            InvokeError::Unlicensed { missing, .. } => {
                match missing.iter().find_map(|m| m.denial) {
                    Some(Denial::NotEntitled) => "not-entitled",
                    Some(Denial::Exhausted) => "exhausted",
                    Some(Denial::TimedOut) => "seat-wait-timed-out",
                    Some(Denial::Revoked) => "revoked",
                    Some(Denial::Expired) => "expired",
                    _ => "unlicensed",
                }
            }
            InvokeError::Trapped { .. } => "plugin-trap",
            InvokeError::MemoryLimit { .. } => "memory-limit",
            InvokeError::TimedOut { .. } => "time-limit",
            InvokeError::Failed { .. } => "plugin-error",
            InvokeError::NotRecorded { .. } => "ledger-unavailable",
            InvokeError::Cancelled { .. } => "cancelled",
            InvokeError::OutputTooLarge { .. } => "response-too-large",
        }
    }

    /// The plugin concerned, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            InvokeError::UnknownPlugin(_) => None,
            InvokeError::Unlicensed { plugin, .. }
            | InvokeError::Trapped { plugin, .. }
            | InvokeError::TimedOut { plugin, .. }
            | InvokeError::MemoryLimit { plugin, .. }
            | InvokeError::Failed { plugin, .. }
            | InvokeError::OutputTooLarge { plugin, .. }
            | InvokeError::NotRecorded { plugin, .. }
            | InvokeError::Cancelled { plugin } => Some(plugin),
        }
    }

    /// Whether the call was refused for licensing (withheld or denied).
    pub fn is_unlicensed(&self) -> bool {
        matches!(self, InvokeError::Unlicensed { .. })
    }
}

/// How the guest call itself ended, before the licensing check.
enum CallEnd {
    Returned(Result<Vec<u8>, String>),
    Stopped(InvokeError, ReclaimReason),
}

impl Runtime {
    /// Runs one call of `plugin` in a fresh store. The call yields to the
    /// executor at every epoch tick and while it waits in a host call, so
    /// its time limit holds there too; dropping the future stops the call
    /// and its seats come back as `store-dropped`.
    pub(crate) async fn invoke(
        &self,
        plugin: &Plugin,
        licenses: &Arc<LicenseManager>,
        invocation: u64,
        input: &[u8],
    ) -> Result<Vec<u8>, InvokeError> {
        let started = Instant::now();
        plugin.stats.invocations.fetch_add(1, Ordering::Relaxed);
        let holder = Holder {
            plugin: plugin.name.clone(),
            component_digest: plugin.digest.clone(),
            invocation,
        };
        let licensing = licenses.call(
            holder.clone(),
            plugin.entitlement.clone(),
            CallLimits {
                wait: plugin.limits.wait_for_seat,
                max_leases: plugin.limits.max_leases,
                max_acquires: plugin.limits.max_acquires,
            },
        );
        let state = InvocationState::new(plugin, licensing);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance
                .tollgate_plugin_service()
                .call_invoke(&mut store, input)
                .await
        };
        let end = match tokio::time::timeout(plugin.limits.time, call).await {
            Ok(Ok(returned)) => CallEnd::Returned(returned),
            Err(_) => {
                let e = InvokeError::TimedOut {
                    plugin: plugin.name.to_string(),
                    limit: plugin.limits.time,
                };
                CallEnd::Stopped(e, ReclaimReason::TimedOut)
            }
            Ok(Err(err)) => {
                let name = plugin.name.to_string();
                if store.data().limiter.memory_hit {
                    let e = InvokeError::MemoryLimit {
                        plugin: name,
                        limit: plugin.limits.memory_bytes,
                    };
                    CallEnd::Stopped(e, ReclaimReason::Trapped)
                } else {
                    let e = InvokeError::Trapped {
                        plugin: name,
                        reason: trap_reason(&err),
                    };
                    CallEnd::Stopped(e, ReclaimReason::Trapped)
                }
            }
        };

        let state = store.data_mut();
        let reason = match &end {
            CallEnd::Returned(_) => ReclaimReason::InvocationEnded,
            CallEnd::Stopped(_, reason) => *reason,
        };
        // Every seat the call took returns now; a required license counts
        // only if the call held its seat to this moment from a grant still
        // in force.
        let ended = state.licensing.end(reason);
        let missing: Vec<MissingLicense> = plugin
            .requires
            .iter()
            .filter(|id| !ended.held_to_end.contains(*id))
            .map(|id| MissingLicense {
                id: id.clone(),
                denial: ended.denied.get(id).copied(),
            })
            .collect();
        let lease_ids = ended.leases;
        drop(store);

        let outcome = match end {
            CallEnd::Stopped(e, _) => Err(e),
            CallEnd::Returned(_) if !missing.is_empty() => {
                for m in &missing {
                    licenses.record_withheld(&holder, &m.id);
                }
                Err(InvokeError::Unlicensed {
                    plugin: plugin.name.to_string(),
                    missing,
                })
            }
            CallEnd::Returned(Err(message)) => Err(InvokeError::Failed {
                plugin: plugin.name.to_string(),
                message,
            }),
            CallEnd::Returned(Ok(output)) if output.len() > plugin.limits.max_output_bytes => {
                Err(InvokeError::OutputTooLarge {
                    plugin: plugin.name.to_string(),
                    size: output.len(),
                    limit: plugin.limits.max_output_bytes,
                })
            }
            CallEnd::Returned(Ok(output)) => Ok(output),
        };
        let counter = match &outcome {
            Ok(_) => &plugin.stats.ok,
            Err(InvokeError::Unlicensed { .. }) => &plugin.stats.unlicensed,
            Err(_) => &plugin.stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "tollgate::call",
            plugin = %plugin.name,
            invocation,
            licenses = ?plugin.requires,
            leases = ?lease_ids,
            outcome = outcome.as_ref().map_or_else(InvokeError::code, |_| "ok"),
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "call"
        );
        outcome
    }
}

/// The trap code, or the error's first line, without the backtrace.
fn trap_reason(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => err.to_string(),
    }
}
