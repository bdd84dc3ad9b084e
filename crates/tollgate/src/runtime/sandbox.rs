//! Per-invocation store state: a deny-all WASI context, the licensing state,
//! and the limiter that caps what the whole call may allocate.

use super::plugin::{Limits, Plugin};
use super::stdio::PluginLog;
use crate::licensing::{LicensedCall, LicensingView};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// Which per-call limit stopped a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// All of its linear memories together reached `memory_bytes`.
    Memory,
    /// All of its tables together reached `max_table_elements`.
    TableElements,
}

/// Caps what one call may allocate, counted over the whole call rather than
/// per memory or per table: the bytes of all its linear memories together,
/// the elements of all its tables together, and (read by wasmtime when the
/// limiter is installed) how many core instances, memories and tables it
/// may create. Remembers which cap was hit.
pub(crate) struct Limiter {
    memory_bytes: usize,
    memory_used: usize,
    table_elements: usize,
    table_used: usize,
    instances: usize,
    memories: usize,
    tables: usize,
    /// The first cap a growth ran into, if any.
    pub(crate) hit: Option<LimitHit>,
}

impl Limiter {
    /// A limiter for one call of a plugin with these limits.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes,
            memory_used: 0,
            table_elements: limits.max_table_elements,
            table_used: 0,
            instances: limits.max_instances,
            memories: limits.max_memories,
            tables: limits.max_tables,
            hit: None,
        }
    }

    /// Allows growing one memory (`kind` [`LimitHit::Memory`]) or table
    /// ([`LimitHit::TableElements`]) from `current` to `desired` if the
    /// call's total of that kind stays within its cap, and counts it; a
    /// growth refused for the cap is remembered as `hit`. A growth past the
    /// item's own `maximum` fails in wasmtime whatever the limiter says, so
    /// it is refused here without being counted or taken for the call's cap.
    ///
    /// A growth allowed here but then failed by the system (out of memory)
    /// stays counted: the call is charged for more than it got, never less.
    fn grow(
        &mut self,
        kind: LimitHit,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> bool {
        if maximum.is_some_and(|max| desired > max) {
            return false;
        }
        let (used, cap) = match kind {
            LimitHit::TableElements => (&mut self.table_used, self.table_elements),
            LimitHit::Memory => (&mut self.memory_used, self.memory_bytes),
        };
        let total = used.saturating_add(desired.saturating_sub(current));
        if total > cap {
            self.hit.get_or_insert(kind);
            return false;
        }
        *used = total;
        true
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Also called with `current == 0` when a memory is created, so its
        // initial size counts too.
        Ok(self.grow(LimitHit::Memory, current, desired, maximum))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(LimitHit::TableElements, current, desired, maximum))
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.memories
    }

    fn tables(&self) -> usize {
        self.tables
    }
}

/// Everything one invocation's `Store` holds.
pub(crate) struct InvocationState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) licensing: LicensedCall,
}

impl InvocationState {
    /// A sandbox with only the plugin's configured directories and env
    /// vars (none by default), no network, no stdin, and stdout and stderr
    /// logged at debug level under the plugin's name and the invocation id.
    pub(crate) fn new(plugin: &Plugin, invocation: u64, licensing: LicensedCall) -> Self {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(PluginLog::new(plugin.name.clone(), invocation, "stdout"))
            .stderr(PluginLog::new(plugin.name.clone(), invocation, "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &plugin.env {
            wasi.env(key, value);
        }
        for dir in &plugin.spec.sandbox.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            // Checked when the plugin was loaded; a directory removed since
            // then is left out and logged rather than failing the call.
            if let Err(e) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
                tracing::warn!(plugin = %plugin.name, "cannot open {} for the sandbox: {e}", dir.host.display());
            }
        }
        let wasi = wasi.build();
        let mut table = ResourceTable::new();
        // Leases, WASI streams, open files and every other host resource of
        // the call; past this, creating one more fails the host call.
        table.set_max_capacity(plugin.spec.limits.max_resources);
        Self {
            wasi,
            table,
            limiter: Limiter::new(&plugin.spec.limits),
            licensing,
        }
    }

    pub(crate) fn licensing_view(&mut self) -> LicensingView<'_> {
        LicensingView::new(&mut self.licensing, &mut self.table)
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
