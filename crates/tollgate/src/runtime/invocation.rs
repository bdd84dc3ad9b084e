//! One call of a plugin: a fresh store, the call under limits, then every
//! lease ended with its reason and the result released only if licensed.

use super::Runtime;
use super::plugin::Plugin;
use super::sandbox::{InvocationState, LimitHit};
use crate::license::{CallLimits, Denial, Holder, LicenseManager, ReclaimReason};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTableError;
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
    #[error(
        "plugin {plugin} trapped: {reason}; where it trapped is logged at debug level (target tollgate::call)"
    )]
    Trapped {
        /// The plugin.
        plugin: String,
        /// The kind of trap, in wasmtime's fixed words (never text or names
        /// from the plugin; those go to the debug log only).
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
        "plugin {plugin} tried to grow its memory past its limit of {limit} bytes (all its memories together) and was stopped"
    )]
    MemoryLimit {
        /// The plugin.
        plugin: String,
        /// Its limit in bytes.
        limit: usize,
    },
    /// The call needed more core instances, memories, tables, table
    /// elements or resources than its limits allow, and was stopped.
    #[error(
        "plugin {plugin} needed more than its limit of {limit} {resource} per call and was stopped; raise the plugin's limit if it really needs more"
    )]
    ResourceLimit {
        /// The plugin.
        plugin: String,
        /// What ran out: `core instances`, `memories`, `tables`,
        /// `table elements` or `resources`.
        resource: &'static str,
        /// Its limit.
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
    /// The output, or the error string, was larger than the plugin's output
    /// limit.
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
            InvokeError::ResourceLimit { .. } => "resource-limit",
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
            | InvokeError::ResourceLimit { plugin, .. }
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

    /// The message a remote caller gets: fixed for each error code, naming
    /// only the plugin and the host's own limits and license ids. Nothing
    /// the plugin wrote reaches it (no trap text, function names, stdout or
    /// stderr), except the error string of a call whose result was
    /// delivered, which is the plugin's answer and is bounded by its output
    /// limit.
    pub fn public_message(&self) -> String {
        match self {
            InvokeError::Trapped { plugin, .. } => format!(
                "plugin {plugin} trapped and was stopped; the operator finds the details in the host's debug log under this call's invocation id"
            ),
            InvokeError::UnknownPlugin(_)
            | InvokeError::Unlicensed { .. }
            | InvokeError::TimedOut { .. }
            | InvokeError::MemoryLimit { .. }
            | InvokeError::ResourceLimit { .. }
            | InvokeError::Failed { .. }
            | InvokeError::NotRecorded { .. }
            | InvokeError::Cancelled { .. }
            | InvokeError::OutputTooLarge { .. } => self.to_string(),
        }
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
                wait: plugin.spec.limits.wait_for_seat,
                max_leases: plugin.spec.limits.max_leases,
                max_acquires: plugin.spec.limits.max_acquires,
            },
        );
        let state = InvocationState::new(plugin, invocation, licensing);
        let mut store = Store::new(&self.engine, state);
        // wasmtime reads the instance, memory and table counts when the
        // limiter is installed.
        store.limiter(|s| &mut s.limiter);
        store.set_max_component_handles(plugin.spec.limits.max_resources);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance
                .tollgate_plugin_service()
                .call_invoke(&mut store, input)
                .await
        };
        let end = match tokio::time::timeout(plugin.spec.limits.time, call).await {
            Ok(Ok(returned)) => CallEnd::Returned(returned),
            Err(_) => {
                let e = InvokeError::TimedOut {
                    plugin: plugin.name.to_string(),
                    limit: plugin.spec.limits.time,
                };
                CallEnd::Stopped(e, ReclaimReason::TimedOut)
            }
            Ok(Err(err)) => {
                // The full error, with the guest's backtrace and function
                // names, only at debug level: a caller never sees it.
                tracing::debug!(target: "tollgate::call", plugin = %plugin.name, invocation, "stopped: {err:?}");
                let e = stopped_error(plugin, store.data().limiter.hit, &err);
                CallEnd::Stopped(e, ReclaimReason::Trapped)
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
            .spec
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
            // The plugin's own error text is output too, and bounded alike.
            CallEnd::Returned(Err(message))
                if message.len() > plugin.spec.limits.max_output_bytes =>
            {
                Err(InvokeError::OutputTooLarge {
                    plugin: plugin.name.to_string(),
                    size: message.len(),
                    limit: plugin.spec.limits.max_output_bytes,
                })
            }
            CallEnd::Returned(Err(message)) => Err(InvokeError::Failed {
                plugin: plugin.name.to_string(),
                message,
            }),
            CallEnd::Returned(Ok(output)) if output.len() > plugin.spec.limits.max_output_bytes => {
                Err(InvokeError::OutputTooLarge {
                    plugin: plugin.name.to_string(),
                    size: output.len(),
                    limit: plugin.spec.limits.max_output_bytes,
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
            licenses = ?plugin.spec.requires,
            leases = ?lease_ids,
            outcome = outcome.as_ref().map_or_else(InvokeError::code, |_| "ok"),
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "call"
        );
        outcome
    }
}

/// What a call stopped by an error (not a timeout) reports: the limit it
/// ran into, or a trap described in fixed words.
fn stopped_error(plugin: &Plugin, hit: Option<LimitHit>, err: &wasmtime::Error) -> InvokeError {
    let name = plugin.name.to_string();
    let limits = &plugin.spec.limits;
    let resource = |resource, limit| InvokeError::ResourceLimit {
        plugin: name.clone(),
        resource,
        limit,
    };
    match hit {
        Some(LimitHit::Memory) => {
            return InvokeError::MemoryLimit {
                plugin: name,
                limit: limits.memory_bytes,
            };
        }
        Some(LimitHit::TableElements) => {
            return resource("table elements", limits.max_table_elements);
        }
        None => {}
    }
    for cause in err.chain() {
        if matches!(
            cause.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        ) {
            return resource("resources", limits.max_resources);
        }
        // wasmtime enforces these counts itself and says so only in words
        // (wasmtime 48); a change of wording makes them plain traps, which
        // still stop the call, and fails the tests that check the code.
        let text = cause.to_string();
        let counted = [
            (
                "resource limit exceeded: instance count",
                "core instances",
                limits.max_instances,
            ),
            (
                "resource limit exceeded: memory count",
                "memories",
                limits.max_memories,
            ),
            (
                "resource limit exceeded: table count",
                "tables",
                limits.max_tables,
            ),
            (
                "store handle limit exceeded",
                "resources",
                limits.max_resources,
            ),
        ];
        for (words, what, limit) in counted {
            if text.contains(words) {
                return resource(what, limit);
            }
        }
    }
    InvokeError::Trapped {
        plugin: name,
        reason: trap_reason(err),
    }
}

/// The kind of trap in wasmtime's fixed words. Anything else (a host call
/// that failed, a broken component-model rule) gets one fixed sentence: its
/// text can carry the guest's function names and strings.
fn trap_reason(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => "a host call failed or the plugin broke a rule of the component model".to_string(),
    }
}
