//! Per-invocation store state: a deny-all WASI context, the licensing state,
//! and the memory limiter.

use super::licensing::{LicensingState, LicensingView};
use super::stdio::PluginLog;
use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Caps linear memory and tables, and remembers whether the cap was hit.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) memory_hit: bool,
}

/// Most table elements a plugin may have.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Everything one invocation's `Store` holds.
pub(crate) struct InvocationState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) licensing: LicensingState,
}

impl InvocationState {
    /// A sandbox with no preopens, no env, no network, no stdin, and stdout
    /// and stderr logged under `plugin`'s name.
    pub(crate) fn new(plugin: &Arc<str>, memory_bytes: usize, licensing: LicensingState) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(PluginLog::new(plugin.clone(), "stdout"))
            .stderr(PluginLog::new(plugin.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes,
                memory_hit: false,
            },
            licensing,
        }
    }

    pub(crate) fn licensing_view(&mut self) -> LicensingView<'_> {
        LicensingView {
            state: &mut self.licensing,
            table: &mut self.table,
        }
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
