//! One call of a plugin: a fresh store, the call under limits, then the end
//! of the call through [`crate::licensing::LicensedCall`]: every lease ended
//! with its reason, and the result released only if licensed and only once
//! its usage is durable.

use super::Runtime;
use super::plugin::Plugin;
use super::sandbox::{InvocationState, LimitHit};
use crate::license::{CallLimits, Holder, LicenseManager, ReclaimReason};
use crate::licensing::{
    CallEnd, EndedCall, LicensedCall, MissingLicense, Withheld, list, unlicensed_code,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTableError;
use wasmtime::{Store, Trap};

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
    #[error("the usage of plugin {plugin}'s call could not be recorded; its result is withheld")]
    NotRecorded {
        /// The plugin.
        plugin: String,
        /// Why: the ledger, or the invocation ids, failed.
        #[source]
        source: RecordError,
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
            InvokeError::Unlicensed { missing, .. } => unlicensed_code(missing),
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

/// A call that has ended, its seats back, whose answer goes out once its
/// usage is durable.
#[must_use = "the answer goes out only through `commit`, once the call's usage is durable"]
pub(crate) struct Invoked {
    plugin: Arc<str>,
    ended: EndedCall<Result<Vec<u8>, InvokeError>>,
}

impl Invoked {
    /// The answer once the call's ledger rows are committed, blocking the
    /// thread until they are.
    pub(crate) fn commit(self) -> Result<Vec<u8>, InvokeError> {
        let Invoked { plugin, ended } = self;
        answer(&plugin, ended.commit())
    }

    /// Like [`Invoked::commit`], awaiting the commit.
    pub(crate) async fn commit_async(self) -> Result<Vec<u8>, InvokeError> {
        let Invoked { plugin, ended } = self;
        answer(&plugin, ended.commit_async().await)
    }
}

/// A committed call's answer, or why the licensing withheld it.
fn answer(
    plugin: &str,
    committed: Result<Result<Vec<u8>, InvokeError>, Withheld>,
) -> Result<Vec<u8>, InvokeError> {
    match committed {
        Ok(outcome) => outcome,
        Err(Withheld::Unlicensed { missing, .. }) => Err(InvokeError::Unlicensed {
            plugin: plugin.to_string(),
            missing,
        }),
        Err(Withheld::NotRecorded { source, .. }) => Err(InvokeError::NotRecorded {
            plugin: plugin.to_string(),
            source: source.into(),
        }),
    }
}

impl Runtime {
    /// Runs one call of `plugin` in a fresh store and ends it: every lease
    /// reclaimed with its reason, every seat returned, the result kept only
    /// if licensed. The call yields to the executor at every epoch tick and
    /// while it waits in a host call, so its time limit holds there too;
    /// dropping the future stops the call and its seats come back as
    /// `store-dropped`.
    pub(crate) async fn invoke(
        &self,
        plugin: &Plugin,
        licenses: &Arc<LicenseManager>,
        invocation: u64,
        input: &[u8],
    ) -> Invoked {
        let started = Instant::now();
        plugin.stats.invocations.fetch_add(1, Ordering::Relaxed);
        let holder = Holder {
            plugin: plugin.name.clone(),
            component_digest: plugin.digest.clone(),
            invocation,
        };
        let licensing = LicensedCall::open(
            licenses,
            holder,
            plugin.entitlement.clone(),
            plugin.spec.requires.clone(),
            CallLimits::from(&plugin.spec.limits),
        );
        // A pooled call waits here for a slot set of its own, so that a
        // call past the pool's size waits rather than fails; the permit
        // lives until the store (and with it the instance) is gone.
        let slot = match &self.slots {
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
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
            Ok(Ok(returned)) => CallEnd::Returned(returned_outcome(plugin, returned)),
            Err(_) => CallEnd::Stopped {
                reason: ReclaimReason::TimedOut,
                report: Err(InvokeError::TimedOut {
                    plugin: plugin.name.to_string(),
                    limit: plugin.spec.limits.time,
                }),
            },
            Ok(Err(err)) => {
                // The full error, with the guest's backtrace and function
                // names, only at debug level: a caller never sees it.
                tracing::debug!(target: "tollgate::call", plugin = %plugin.name, invocation, "stopped: {err:?}");
                CallEnd::Stopped {
                    reason: ReclaimReason::Trapped,
                    report: Err(stopped_error(plugin, store.data().limiter.hit, &err)),
                }
            }
        };
        let failure = match &end {
            CallEnd::Returned(Ok(_)) | CallEnd::Stopped { report: Ok(_), .. } => None,
            CallEnd::Returned(Err(e)) | CallEnd::Stopped { report: Err(e), .. } => Some(e.code()),
        };

        // No guest code runs past this point. Every seat the call took
        // returns now; a required license counts only if the call held its
        // seat to this moment from a grant still in force.
        let ended = store.into_data().licensing.end(end);
        drop(slot);
        let (counter, code) = match (ended.withheld(), failure) {
            (Some(missing), _) => (&plugin.stats.unlicensed, unlicensed_code(missing)),
            (None, None) => (&plugin.stats.ok, "ok"),
            (None, Some(code)) => (&plugin.stats.failed, code),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "tollgate::call",
            plugin = %plugin.name,
            invocation,
            licenses = ?plugin.spec.requires,
            leases = ?ended.leases(),
            outcome = code,
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "call"
        );
        Invoked {
            plugin: plugin.name.clone(),
            ended,
        }
    }
}

/// What a call whose plugin returned delivers if it is licensed: its
/// output, or its own error, each within its output limit (the error text
/// is output too, and bounded alike).
fn returned_outcome(
    plugin: &Plugin,
    returned: Result<Vec<u8>, String>,
) -> Result<Vec<u8>, InvokeError> {
    let limit = plugin.spec.limits.max_output_bytes;
    let too_large = |size| InvokeError::OutputTooLarge {
        plugin: plugin.name.to_string(),
        size,
        limit,
    };
    match returned {
        Err(message) if message.len() > limit => Err(too_large(message.len())),
        Err(message) => Err(InvokeError::Failed {
            plugin: plugin.name.to_string(),
            message,
        }),
        Ok(output) if output.len() > limit => Err(too_large(output.len())),
        Ok(output) => Ok(output),
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

/// Why a call's usage could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The usage ledger failed or refuses new calls.
    #[error(transparent)]
    Ledger(#[from] crate::license::ledger::LedgerError),
    /// No invocation id could be reserved in the state directory.
    #[error("no invocation id could be reserved")]
    InvocationId(#[source] crate::license::store::StoreError),
}

/// Two record errors are equal when they are of one kind and say the same,
/// so [`InvokeError`] keeps its equality for tests and callers.
impl PartialEq for RecordError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for RecordError {}
